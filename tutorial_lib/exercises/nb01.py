"""Exercises of notebook 01 (Squeeze-and-Excitation)."""
from __future__ import annotations

import torch

from ..cost import count_parameters
from ..se import SqueezeExcitation
from .core import exercise, expect_close, random_input


@exercise("01.1", "squeeze: one number per channel",
          hint="reduce(x, 'b c h w -> b c', 'mean'): the spatial mean, not the sum")
def _check_squeeze(fn):
    for shape, seed in (((2, 5, 4, 6), 1), ((1, 3, 7, 2), 2)):
        x = random_input(*shape, seed=seed) + 0.3
        expect_close(fn(x), x.mean(dim=(2, 3)), f"squeeze(x) for x of shape {shape}")


@exercise("01.2", "excitation: the gate s from the squeezed vector z",
          hint="s = sigmoid(W2 · relu(W1 · z + b1) + b2); with z as rows: z @ w1.T + b1")
def _check_excite(fn):
    b, c, d = 3, 8, 2
    z = random_input(b, c, seed=3)
    w1, b1 = random_input(d, c, seed=4), random_input(d, seed=5)
    w2, b2 = random_input(c, d, seed=6), random_input(c, seed=7)
    hidden = torch.clamp(torch.einsum("dc,bc->bd", w1, z) + b1, min=0.0)
    expected = 1.0 / (1.0 + torch.exp(-(torch.einsum("cd,bd->bc", w2, hidden) + b2)))
    expect_close(fn(z, w1, b1, w2, b2), expected, "excite(z, w1, b1, w2, b2)")


@exercise("01.3", "SE in a residual block: where the gate goes",
          hint="gate the residual branch only, then add the shortcut, then the block's ReLU")
def _check_se_block(fn):
    torch.manual_seed(0)
    se = SqueezeExcitation(8, reduction=2)
    g = torch.Generator().manual_seed(8)
    with torch.no_grad():
        for p in se.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    branch, shortcut = random_input(2, 8, 5, 5, seed=9), random_input(2, 8, 5, 5, seed=10)
    with torch.no_grad():
        gate = se(branch, return_attention=True)[1]["channel"]
        expected = torch.clamp(branch * gate + shortcut, min=0.0)
        got = fn(branch, shortcut, se)
    expect_close(got, expected, "se_block(branch, shortcut, se)")


@exercise("01.4", "parameters an SE block adds to a network",
          hint="per block 2·C·(C//r) weights plus the biases of both 1x1 convs (C//r and C)")
def _check_extra(fn):
    cases = (([(3, 256), (4, 512), (6, 1024), (3, 2048)], 16),   # SE-ResNet-50
             ([(3, 256), (4, 512), (23, 1024), (3, 2048)], 16),  # SE-ResNet-101
             ([(2, 64), (2, 128)], 8))
    for stages, r in cases:
        counted = sum(n * count_parameters(SqueezeExcitation(c, r)) for n, c in stages)
        got = fn(stages, r)
        assert got == counted, (f"for stages {stages} and r={r} the SE blocks hold {counted:,} "
                                f"parameters (counted), but your formula gives {got}")
