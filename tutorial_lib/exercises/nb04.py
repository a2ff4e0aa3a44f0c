"""Exercises of notebook 04 (RGA, relation-aware global attention)."""
from __future__ import annotations

import torch

from ..cost import count_parameters
from ..rga import RGA
from .core import exercise, expect_shape, random_input

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


def _random_rga_s(channels: int, height: int, width: int, seed: int) -> RGA:
    """An RGA-S in eval mode whose weights and BN statistics are random and of order one."""
    module = RGA(channels, (height, width), use_channel=False, cha_ratio=2, spa_ratio=2, down_ratio=2)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(0.5 * torch.randn(parameter.shape, generator=g))
        for layer in module.modules():
            if isinstance(layer, torch.nn.BatchNorm2d):
                layer.running_mean.copy_(0.1 * torch.randn(layer.num_features, generator=g))
                layer.running_var.copy_(0.5 + torch.rand(layer.num_features, generator=g))
    return module.eval()


def _reordered(weight: torch.Tensor, order: torch.Tensor, halves: tuple[bool, bool] = (True, True),
               swap: bool = False) -> torch.Tensor:
    """φ′'s weight with the node axis of the chosen halves indexed by ``order`` (for diagnoses)."""
    n = weight.shape[1] // 2
    first, second = weight[:, :n], weight[:, n:]
    first = first[:, order] if halves[0] else first
    second = second[:, order] if halves[1] else second
    return torch.cat([second, first] if swap else [first, second], dim=1)


@exercise("04.3", "the same trained RGA-S for transposed maps",
          hint="which input channels of φ′ belong to which node, and where does a node of the h x w map "
               "sit, in raster order, once the map is transposed? Both halves of the relation vector list "
               "the N nodes; every other layer is 1x1 and needs no change")
def _check_transposed(fn):
    for c, h, w, seed in ((6, 3, 5, 45), (4, 2, 4, 46)):
        n = h * w
        old = _random_rga_s(c, h, w, seed)
        weight = old.gg_spatial[0].weight.detach().clone()
        what = f"transposed_relation_weight(weight of shape {tuple(weight.shape)}, h={h}, w={w})"
        got = fn(weight.clone(), h, w)
        expect_shape(got, tuple(weight.shape), what)
        new = RGA(c, (w, h), use_channel=False, cha_ratio=2, spa_ratio=2, down_ratio=2).eval()
        state = old.state_dict()
        state["gg_spatial.0.weight"] = got.detach().to(weight.dtype)
        new.load_state_dict(state)
        x = random_input(3, c, h, w, seed=seed + 100)
        with torch.no_grad():
            wanted = old.spatial_gate(x).transpose(-1, -2)
            gate = new.spatial_gate(x.transpose(-1, -2).contiguous())
        if torch.allclose(gate, wanted, atol=1e-5, rtol=1e-4):
            continue
        got = got.detach().to(weight.dtype)
        moved = torch.arange(n).reshape(h, w).t().reshape(-1)       # new raster position -> old node
        back = torch.argsort(moved)
        diagnoses = (
            (weight, "the weights are unchanged: after the transposition most nodes sit at another raster "
                     "position, so the weights that multiply their relations must move with them"),
            (_reordered(weight, back), "the weights moved the wrong way: look at which old node lands on each "
                                       "raster position of the w x h map, not where each old node goes"),
            (_reordered(weight, moved, (True, False)), "only the first half of the 2N input channels moved: "
                                                       "the second half lists the same N nodes"),
            (_reordered(weight, moved, (False, True)), "only the second half of the 2N input channels moved: "
                                                       "the first half lists the same N nodes"),
            (_reordered(weight, moved, swap=True), "the two halves changed places: transposing the map does "
                                                   "not change which half holds a node's row R(i, :)"),
            (_reordered(weight, torch.arange(n), swap=True), "the two halves changed places, and the nodes "
                                                             "kept their old order"),
        )
        for wrong, message in diagnoses:
            if torch.equal(got, wrong):
                raise AssertionError(f"{what}: {message}")
        off = ((gate - wanted).abs() > 1e-4).float().mean().item()
        raise AssertionError(f"{what}: the new module's gates on the transposed map differ from the transposed "
                             f"gates at {off:.0%} of the positions")


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
