"""Exercises of notebook 02 (CBAM)."""
from __future__ import annotations

import torch

from ..cbam import CBAM
from ..cost import count_parameters
from .core import exercise, expect_close, random_input


@exercise("02.1", "channel pooling for the spatial gate",
          hint="reduce over c (not over h, w), then stack [max, mean] in that order on a new axis 1")
def _check_channel_pool(fn):
    for shape, seed in (((2, 6, 4, 5), 1), ((1, 3, 2, 7), 2)):
        x = random_input(*shape, seed=seed)
        expected = torch.stack([x.amax(dim=1), x.mean(dim=1)], dim=1)
        expect_close(fn(x), expected, f"channel_pool(x) for x of shape {shape}")


@exercise("02.2", "the channel gate: both descriptors, one shared MLP, one sigmoid",
          hint="sigmoid(mlp(spatial mean) + mlp(spatial max)): sum the logits, then one sigmoid")
def _check_channel_gate(fn):
    c, d = 6, 3
    w0, b0 = random_input(d, c, seed=3), random_input(d, seed=4)
    w1, b1 = random_input(c, d, seed=5), random_input(c, seed=6)

    def mlp(v):
        return torch.clamp(v @ w0.T + b0, min=0.0) @ w1.T + b1

    x = random_input(2, c, 5, 4, seed=7)
    logits = mlp(x.mean(dim=(2, 3))) + mlp(x.amax(dim=(2, 3)))
    expect_close(fn(x, mlp), 1.0 / (1.0 + torch.exp(-logits)), "channel_gate(x, mlp)")


@exercise("02.3", "parameters of a CBAM block",
          hint="the SE-like MLP with biases, 2·k·k conv weights (no bias) and the BatchNorm's gamma and beta")
def _check_parameters(fn):
    for c, r, k in ((256, 16, 7), (64, 16, 7), (512, 8, 3), (48, 4, 5)):
        counted = count_parameters(CBAM(c, r, k))
        got = fn(c, r, k)
        assert got == counted, (f"CBAM({c}, reduction={r}, kernel_size={k}) holds {counted:,} "
                                f"parameters (counted), but your formula gives {got}")
