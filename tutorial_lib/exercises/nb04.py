"""Exercises of notebook 04 (RGA, relation-aware global attention)."""
from __future__ import annotations

import torch

from ..cost import count_parameters
from ..rga import RGA
from .core import exercise, expect_close, expect_shape, random_input

MiB = 2 ** 20


def _compare_prediction(got, actual: float, what: str, rel: float) -> None:
    """Like ``expect_prediction``, but the message says only too high or too low, never the value."""
    if isinstance(got, bool) or not isinstance(got, (int, float)) and not (
            isinstance(got, torch.Tensor) and got.numel() == 1):
        raise AssertionError(f"{what}: write your prediction as a single number, but it is {type(got).__name__}")
    got = float(got)
    if got != got:
        raise AssertionError(f"{what}: your prediction is nan")
    if abs(got - actual) > rel * abs(actual):
        side = "too high" if got > actual else "too low"
        raise AssertionError(f"{what}: your prediction {got:.4g} is {side} (more than {rel:.0%} off)")


def _channel_relation_bytes(batch: int, channels: int, height: int, width: int) -> int:
    """Bytes of the tensor the literal channel branch feeds to its relation embedding (measured on meta)."""
    module = RGA(channels, (height, width), use_spatial=False, relation="literal").to("meta").eval()
    seen = {}

    def record(conv, inputs, output):
        seen["bytes"] = inputs[0].numel() * inputs[0].element_size()
    handle = module.gg_channel[0].register_forward_hook(record)
    try:
        module(torch.empty(batch, channels, height, width, device="meta"))
    finally:
        handle.remove()
    return seen["bytes"]


@exercise("04.1", "predict: the channel branch's stacked relations at the last ReID stage",
          hint="which are the nodes of the channel branch, and how many relations does each node's vector "
               "hold? Then the batch, and 4 bytes per float32 number; the map's size enters only through C")
def _check_channel_relation_bytes(prediction):
    measured = _channel_relation_bytes(2, 2048, 16, 8) / MiB
    _compare_prediction(prediction, measured, "MiB fed to the channel branch's relation embedding "
                        "(B=2, C=2048, 16x8, relation='literal')", rel=0.02)


class _BuiltAModule(AssertionError):
    pass


def _refuse_rga(*args, **kwargs):
    raise _BuiltAModule("exercise 04.2 asks for the closed form: derive the count from the widths of the "
                        "layers instead of building an RGA module and counting it")


@exercise("04.2", "parameters of RGA-SC for any map",
          hint="both branches have three embeddings, a relation embedding and a head; in the channel branch "
               "the positions are the input channels; every width is a floor division; BatchNorms add two "
               "numbers per channel; no conv has a bias")
def _check_parameters(fn):
    configs = ((256, 64, 32), (512, 32, 16), (2048, 16, 8), (64, 9, 7), (128, 12, 10), (96, 5, 13))
    counted = {config: count_parameters(RGA(config[0], config[1:])) for config in configs}   # before the answer runs
    original_init, built = RGA.__init__, []

    def refuse(self, *args, **kwargs):
        built.append(True)
        _refuse_rga()
    RGA.__init__ = refuse            # every reference to the class (tl.RGA, tutorial_lib.rga.RGA, imports) refuses
    try:
        answers = {config: fn(*config) for config in configs}
    finally:
        RGA.__init__ = original_init
    if built:
        _refuse_rga()
    for (c, h, w), got in answers.items():
        if isinstance(got, bool) or not isinstance(got, (int, float)):
            raise AssertionError(f"rga_parameters({c}, {h}, {w}) should return a number, but returned "
                                 f"{type(got).__name__}")
        if got != counted[(c, h, w)]:
            side = "too many" if got > counted[(c, h, w)] else "too few"
            raise AssertionError(f"rga_parameters({c}, {h}, {w}) gives {got:,}: {side} for "
                                 f"RGA({c}, spatial_size=({h}, {w})) with both branches")


@exercise("04.3", "from the stacked relation maps back to the relation matrix",
          hint="in the first half, channel j at position i holds R(i, j); positions are in raster order; "
               "the second half holds the same numbers with the roles of i and j exchanged")
def _check_unstack(fn):
    for b, h, w, seed in ((2, 3, 5, 41), (1, 4, 2, 42)):
        n = h * w
        r = random_input(b, n, n, seed=seed)
        stacked = torch.empty(b, 2 * n, h, w)
        for i in range(n):                     # position i = (row, column) in raster order
            row, col = divmod(i, w)
            for j in range(n):
                stacked[:, j, row, col] = r[:, i, j]        # first half: R(i, :)
                stacked[:, n + j, row, col] = r[:, j, i]    # second half: R(:, i)
        expect_close(fn(stacked, h, w), r, f"unstack_relations(stacked of shape {tuple(stacked.shape)}, h={h}, w={w})")


@exercise("04.4", "a parameter-free oddness score from relations",
          hint="look at what the score compares: the cosine sees directions only, so lengths must not matter; "
               "over which axis a feature vector runs; which positions the mean runs over; and the sign "
               "(an odd position scores high)")
def _check_oddness(fn):
    for shape, seed in (((2, 6, 3, 5), 43), ((1, 4, 4, 4), 44)):
        x = random_input(*shape, seed=seed).abs() + 0.1
        b, c, h, w = shape
        expected = torch.zeros(b, h, w)
        for k in range(b):
            vectors = [x[k, :, p // w, p % w] for p in range(h * w)]
            units = [v / v.norm() for v in vectors]
            for i, u in enumerate(units):
                expected[k, i // w, i % w] = -sum(float(u @ v) for v in units) / (h * w)
        what = f"oddness(features of shape {shape})"
        got = fn(x)
        expect_shape(got, (b, h, w), what)
        if torch.allclose(got.to(expected.dtype), expected, atol=1e-5, rtol=1e-4):
            continue
        if torch.allclose(got.to(expected.dtype), -expected, atol=1e-5, rtol=1e-4):
            raise AssertionError(f"{what}: the sign is flipped: a position unlike the others must score high")
        rescaled = x.clone()
        rescaled[:, :, 0, 0] *= 3.0                    # one position's vector three times as long
        if not torch.allclose(fn(rescaled).to(expected.dtype), got.to(expected.dtype), atol=1e-5, rtol=1e-4):
            raise AssertionError(f"{what}: the score changes when one position's feature vector is made longer; "
                                 f"a cosine similarity depends on directions only")
        raise AssertionError(f"{what} has the right shape and ignores lengths, but its values are wrong")
