"""Exercises of notebook 03 (non-local neural networks).

Positions are rows: theta (B, N, d) for the N query positions, phi (B, M, d) and g (B, M, e)
for the M key positions (M differs from N when the keys are sub-sampled, which is how the
checkers tell a division by N from a division by M).
"""
from __future__ import annotations

import torch

from ..cost import count_parameters
from ..non_local import NonLocalBlock
from .core import exercise, expect_close, random_input

_B, _N, _M, _D, _E = 2, 12, 5, 3, 4  # N queries, M keys (N != M), widths d and e (d != e)


@exercise("03.1", "embedded Gaussian: softmax over the keys",
          hint="y = softmax(scale · θ φᵀ, dim=-1) g  (multiply by the scale; normalise over the keys)")
def _check_embedded_gaussian(fn):
    theta, phi = random_input(_B, _N, _D, seed=31) * 2, random_input(_B, _M, _D, seed=32) * 2
    g = random_input(_B, _M, _E, seed=33)
    for scale in (_D ** -0.5, 1.0):
        # literal: y_i = sum_j exp(s θ_i·φ_j) g_j / sum_j exp(s θ_i·φ_j)
        f = torch.exp(scale * torch.einsum("bnd,bmd->bnm", theta, phi))
        expected = torch.einsum("bnm,bme->bne", f, g) / f.sum(dim=2, keepdim=True)
        expect_close(fn(theta, phi, g, scale), expected,
                     f"embedded_gaussian(theta, phi, g, scale={scale:.3f})")


@exercise("03.2", "dot product: normalised by the number of key positions",
          hint="y = (θ φᵀ / M) g with M = phi.shape[1], the number of keys; no softmax")
def _check_dot_product(fn):
    theta, phi = random_input(_B, _N, _D, seed=34), random_input(_B, _M, _D, seed=35)
    g = random_input(_B, _M, _E, seed=36)
    expected = torch.zeros(_B, _N, _E)
    for j in range(_M):  # y_i = (1/M) sum_j (θ_i·φ_j) g_j
        expected += (theta * phi[:, j:j + 1]).sum(-1, keepdim=True) * g[:, j:j + 1] / _M
    expect_close(fn(theta, phi, g), expected, "dot_product(theta, phi, g)")


@exercise("03.3", "concatenation: f without building [θ_i; φ_j]",
          hint="w_fᵀ[θ_i; φ_j] = w[:d]·θ_i + w[d:]·φ_j: a column plus a row, then ReLU")
def _check_concatenation(fn):
    theta, phi = random_input(_B, _N, _D, seed=37), random_input(_B, _M, _D, seed=38)
    w = random_input(2 * _D, seed=39)
    pairs = torch.cat([theta[:, :, None, :].expand(-1, -1, _M, -1),
                       phi[:, None, :, :].expand(-1, _N, -1, -1)], dim=-1)  # (B, N, M, 2d)
    expected = torch.relu((pairs * w).sum(-1))
    expect_close(fn(theta, phi, w), expected, "concatenation_f(theta, phi, w)")


@exercise("03.4", "parameters of the default block",
          hint="θ, φ, g: C·(C/2) weights + C/2 biases each; W_z: (C/2)·C + C; BN: γ and β (2C)")
def _check_parameters(fn):
    for c in (2, 8, 64, 512, 1024):
        counted = count_parameters(NonLocalBlock(c))
        got = fn(c)
        assert got == counted, (f"NonLocalBlock({c}) holds {counted:,} parameters (counted), "
                                f"but your formula gives {got}")
