"""Exercises of notebook 06 (TASN: trilinear attention, the attention sampler, distillation)."""
from __future__ import annotations

import torch

from ..cost import count_flops
from ..tasn import AttentionSampler
from .core import exercise, expect_close, expect_prediction, random_input

STRIPE_SIZE, STRIPE_OUT = 64, 16


def stripe_map(size: int = STRIPE_SIZE) -> torch.Tensor:
    """(1, size, size): 1 on rows 20-23 across the whole width, 0 elsewhere."""
    a = torch.zeros(1, size, size)
    a[0, 20:24, :] = 1.0
    return a


@exercise("06.1", "predict, then run: how much a stripe is magnified",
          hint="compare the two profiles: the row profile is peaked, but what is the maximum of the "
               "column profile, and which cap do the two axes share?")
def _check_stripe(prediction):
    m_rows, _ = AttentionSampler(STRIPE_OUT).density(stripe_map(), STRIPE_SIZE)
    actual = (m_rows.max() / (STRIPE_OUT / STRIPE_SIZE)).item()
    expect_prediction(prediction, actual, "the largest row magnification of the stripe", rel=0.1)


def _magnification_reference(grid: torch.Tensor, size: int) -> torch.Tensor:
    out = grid.shape[1]
    rows = []
    for b in range(grid.shape[0]):
        y = [(float(g) + 1) * (size - 1) / 2 for g in grid[b, :, 0, 1]]       # pixel rows, corners convention
        rows.append([(size - 1) / out / (y[i + 1] - y[i]) for i in range(out - 1)])
    return torch.tensor(rows, dtype=grid.dtype)


@exercise("06.2", "the magnification of each row gap, read from a grid",
          hint="turn the normalised y coordinates into pixel rows with the sampler's corner convention, "
               "then compare each gap with the gap of the uniform grid")
def _check_magnification(fn):
    for size, out, seed in ((20, 8, 61), (64, 16, 62)):
        attention = random_input(2, 6, 6, seed=seed).abs() ** 3
        grid = AttentionSampler(out).grid(attention.double(), size)
        expect_close(fn(grid, size), _magnification_reference(grid, size),
                     f"row_magnification(grid, size={size}) for a ({2}, {out}, {out}, 2) grid",
                     atol=1e-9, rtol=1e-9)


def _gram_first(x: torch.Tensor) -> torch.Tensor:
    """The unnormalised trilinear product (X Xᵀ) X computed as X (Xᵀ X): the N x N matrix first."""
    X = x.flatten(2)                                                          # (B, C, N)
    gram = torch.einsum("bcn,bcm->bnm", X, X)                                 # Xᵀ X: (B, N, N)
    return torch.einsum("bcn,bnm->bcm", X, gram)                              # X (Xᵀ X): (B, C, N)


GRAM_FIRST_SHAPES = ((512, 28, 28), (64, 14, 14), (3, 5, 7), (40, 2, 3))


@exercise("06.3", "multiply-adds of the other order, X (Xᵀ X)",
          hint="find the two matrix products of X (Xᵀ X) and the shapes of their factors (N = H·W "
               "positions, C channels); an (a x b) by (b x d) product costs a·b·d multiply-adds")
def _check_gram_first(fn):
    if not callable(fn):
        raise AssertionError("write other_order_multiply_adds as a function of (C, H, W)")
    for c, h, w in GRAM_FIRST_SHAPES:
        counted = count_flops(_gram_first, torch.zeros(1, c, h, w)) // 2          # 2 FLOPs per multiply-add
        got = fn(c, h, w)
        if isinstance(got, bool) or not isinstance(got, (int, float)) and not (
                isinstance(got, torch.Tensor) and got.numel() == 1):
            raise AssertionError(f"other_order_multiply_adds({c}, {h}, {w}) should return one number, "
                                 f"but returns {type(got).__name__}")
        if float(got) != counted:
            side = "high" if float(got) > counted else "low"
            raise AssertionError(f"other_order_multiply_adds(C={c}, H={h}, W={w}) is too {side}")


def _detail_reference(maps: torch.Tensor) -> torch.Tensor:
    sums = maps.sum(dim=(2, 3)).tolist()
    probs = torch.zeros(maps.shape[:2], dtype=maps.dtype)
    for b, row in enumerate(sums):
        firsts = [c for c, v in enumerate(row) if v not in row[:c]]
        for c in firsts:
            probs[b, c] = 1.0 / len(firsts)
    return probs


@exercise("06.4", "which channel the detail map draws, and how often",
          hint="count each distinct channel sum once; the probability belongs to a channel in the "
               "original order (the first of equal ones), not to a position in sorted order")
def _check_detail_probabilities(fn):
    maps = random_input(3, 7, 4, 4, seed=64).abs()
    maps[0, 5] = maps[0, 1]                    # duplicated maps, in different places
    maps[0, 6] = maps[0, 1]
    maps[1, 0] = maps[1, 4] = 0.0              # two dead channels
    maps[2, 2] = maps[2, 6] + 3.0              # the largest sum, duplicated
    maps[2, 6] = maps[2, 2]
    expect_close(fn(maps), _detail_reference(maps), "detail_probabilities(maps) for 3 images of 7 maps")
