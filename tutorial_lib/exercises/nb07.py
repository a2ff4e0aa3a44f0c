"""Exercises of notebook 07 (A²-Nets: double attention).

Positions are the last axis: A (B, m, N) holds the features to gather, B (B, n, N) the n
attention-map logits, V (B, n, N) the attention-vector logits.
"""
from __future__ import annotations

import math

import torch

from ..cost import count_flops
from .core import exercise, expect_close, expect_prediction, random_input


def _gather(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The paper's gather, G = A softmax_space(B)ᵀ, (B, m, n)."""
    return torch.einsum("bms,bns->bmn", a, torch.softmax(b, dim=-1))


def _survey_gather(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The survey snippet's gather: the mean over positions of A times softmax_space(B)."""
    return (a[:, None, :, :] * torch.softmax(b, dim=-1)[:, :, None, :]).mean(dim=-1).transpose(1, 2)


def _tile(t: torch.Tensor, h: int) -> torch.Tensor:
    """(B, k, h·w) -> (B, k, 2h·2w): the map repeated twice along height and width."""
    grid = t.reshape(t.shape[0], t.shape[1], h, -1)
    return grid.repeat(1, 1, 2, 2).reshape(t.shape[0], t.shape[1], -1)


@exercise("07.1", "gather over the valid positions of a padded map",
          hint="each attention map is still normalised over space, but over the valid positions only: "
               "a padded position must get weight exactly 0 while the weights of the valid ones sum to 1")
def _check_masked_gather(fn):
    batch, m, n, positions = 3, 4, 2, 10
    a, b = random_input(batch, m, positions, seed=71), random_input(batch, n, positions, seed=72) * 2
    valid = torch.zeros(batch, positions, dtype=torch.bool)
    for i, count in enumerate((10, 6, 1)):                         # all valid, some padded, one valid
        valid[i, :count] = True
    expected = torch.zeros(batch, m, n)
    for i in range(batch):                                          # literal: loops over the valid positions
        for k in range(n):
            logits = [float(b[i, k, j]) for j in range(positions) if valid[i, j]]
            top = max(logits)
            weights = [math.exp(t - top) for t in logits]
            total = sum(weights)
            kept = [j for j in range(positions) if valid[i, j]]
            for w, j in zip(weights, kept):
                expected[i, :, k] += w / total * a[i, :, j]
    expect_close(fn(a, b, valid), expected, "masked_gather(a, b, valid)")
    noisy_a = torch.where(valid[:, None, :], a, a + 100.0)          # the padded values must not matter
    noisy_b = torch.where(valid[:, None, :], b, b + 50.0)
    expect_close(fn(noisy_a, noisy_b, valid), expected,
                 "masked_gather(a, b, valid) after changing the values at the padded positions")


@exercise("07.2", "predict: descriptors of a map tiled 2x2",
          hint="tiling makes every position appear 4 times; a softmax over 4N positions divides each "
               "weight by 4. Compare a weighted sum (weights summing to 1) with a mean over positions")
def _check_tiling(prediction):
    if not isinstance(prediction, (tuple, list)) or len(prediction) != 2:
        raise AssertionError("write two predictions: (factor for the paper's gather, factor for the snippet's)")
    h, w = 4, 5
    a, b = random_input(2, 3, h * w, seed=73), random_input(2, 2, h * w, seed=74)
    paper = (_gather(_tile(a, h), _tile(b, h)) / _gather(a, b)).mean().item()
    survey = (_survey_gather(_tile(a, h), _tile(b, h)) / _survey_gather(a, b)).mean().item()
    expect_prediction(prediction[0], paper, "the paper's gather (sum with softmax weights)", rel=0.05)
    expect_prediction(prediction[1], survey, "the survey snippet's gather (mean over positions)", rel=0.05)


def _right_first_block(x, w_embed, w_out, m, n):
    """The block in the other order: the N x N matrix W = softmax_n(V)ᵀ softmax_space(B) first."""
    a, b, v = torch.split(torch.matmul(w_embed, x), [m, n, n], dim=1)
    w = torch.matmul(torch.softmax(v, dim=1).transpose(1, 2), torch.softmax(b, dim=-1))  # (B, N, N)
    z = torch.matmul(a, w.transpose(1, 2))
    return x + torch.matmul(w_out, z)


@exercise("07.3", "multiply-adds of the N x N order",
          hint="count a product as rows x inner size x columns: forming the N x N matrix from the n maps "
               "and n vectors, then applying it to the m x N features; add the three input 1x1 "
               "convolutions (m + 2n outputs) and W_out (m -> c), per image")
def _check_right_first(fn):
    for c, m, n, positions in ((8, 4, 2, 12), (6, 3, 5, 20), (16, 8, 8, 9), (5, 1, 1, 30)):
        x = random_input(1, c, positions, seed=75)
        w_embed, w_out = random_input(m + 2 * n, c, seed=76), random_input(c, m, seed=77)
        counted = count_flops(_right_first_block, x, w_embed, w_out, m, n) // 2
        got = fn(c, m, n, positions)
        assert got == counted, (f"for c={c}, m={m}, n={n}, N={positions} the N x N order takes {counted:,} "
                                f"multiply-adds (counted), but your formula gives {got}")


def _batch_softmax_maps(x: torch.Tensor, w_b: torch.Tensor) -> torch.Tensor:
    """The attention maps of a block whose softmax has no dim on a (B, n, N) tensor: over the batch."""
    return torch.softmax(torch.einsum("nc,bcs->bns", w_b, x), dim=0)


@exercise("07.4", "predict: the batch-softmax block on copies of one image",
          hint="without a dim, the softmax of a 3-D tensor runs over its first axis, the batch; "
               "ask what each entry is compared with")
def _check_batch_copies(prediction):
    image = random_input(1, 6, 20, seed=78)
    maps = _batch_softmax_maps(image.expand(4, -1, -1), random_input(3, 6, seed=79))
    values = maps.unique()
    measured = maps.mean().item()
    assert torch.allclose(values, values.new_full(values.shape, measured)), "internal: maps differ"
    expect_prediction(prediction, measured, "every entry of the attention maps", rel=0.02)
