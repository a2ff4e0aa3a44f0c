"""Exercises of notebook 04 (RGA, relation-aware global attention)."""
from __future__ import annotations

import torch

from ..cost import count_parameters
from ..rga import RGA
from .core import exercise, expect_close, expect_prediction, random_input

MiB = 2 ** 20


@exercise("04.1", "predict: the tensor the official code feeds to its relation embedding",
          hint="count the channels (both halves of every relation vector), the positions that carry them, "
               "the batch, and 4 bytes per float32 number")
def _check_stacked_bytes(prediction):
    batch, channels, side = 4, 64, 24
    module = RGA(channels, (side, side), use_channel=False, relation="literal").eval()
    seen = {}

    def record(conv, inputs, output):
        seen["bytes"] = inputs[0].numel() * inputs[0].element_size()
    handle = module.gg_spatial[0].register_forward_hook(record)
    try:
        with torch.no_grad():
            module(torch.zeros(batch, channels, side, side))
    finally:
        handle.remove()
    expect_prediction(prediction, seen["bytes"] / MiB,
                      f"MiB fed to the relation conv (B={batch}, C={channels}, {side}x{side})", rel=0.02)


@exercise("04.2", "parameters of RGA-SC for any map",
          hint="both branches have three embeddings, a relation embedding and a head; in the channel branch "
               "the positions are the input channels; every width is a floor division; BatchNorms add two "
               "numbers per channel; no conv has a bias")
def _check_parameters(fn):
    for c, h, w in ((256, 64, 32), (512, 32, 16), (2048, 16, 8), (64, 9, 7), (128, 12, 10), (96, 5, 13)):
        counted = count_parameters(RGA(c, (h, w)))
        got = fn(c, h, w)
        assert got == counted, (f"RGA({c}, spatial_size=({h}, {w})) holds {counted:,} parameters (counted), "
                                f"but your formula gives {got}")


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
          hint="compare directions, not lengths: scale every position's feature vector to unit length over "
               "the channels; then each position's relations to all N positions, averaged; large similarity "
               "means common, so flip the sign")
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
        expect_close(fn(x), expected, f"oddness(features of shape {shape})")
