"""Exercises of notebook 07 (A²-Nets: double attention).

Positions are the last axis: A (B, m, N) holds the features to gather, B (B, n, N) the n
attention-map logits, V (B, n, N) the attention-vector logits.
"""
from __future__ import annotations

import math
import numbers

import torch

from ..a2net import DoubleAttention
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
          hint="look at how each gather is normalised: weights that sum to 1 over all positions, or a "
               "division by the number of positions; then ask what tiling changes in each")
def _check_tiling(prediction):
    if not isinstance(prediction, (tuple, list)) or len(prediction) != 2:
        raise AssertionError("write two predictions: (factor for the paper's gather, factor for the snippet's)")
    h, w = 4, 5
    a, b = random_input(2, 3, h * w, seed=73), random_input(2, 2, h * w, seed=74)
    paper = (_gather(_tile(a, h), _tile(b, h)) / _gather(a, b)).mean().item()
    survey = (_survey_gather(_tile(a, h), _tile(b, h)) / _survey_gather(a, b)).mean().item()
    expect_prediction(prediction[0], paper, "the paper's gather (sum with softmax weights)", rel=0.05)
    expect_prediction(prediction[1], survey, "the survey snippet's gather (mean over positions)", rel=0.05)


def _table_first_block(x, w_embed, w_out, m, n):
    """The block in the other order: the N x N table W = softmax_n(V)ᵀ softmax_space(B) first."""
    a, b, v = torch.split(torch.matmul(w_embed, x), [m, n, n], dim=1)
    table = torch.matmul(torch.softmax(v, dim=1).transpose(1, 2), torch.softmax(b, dim=-1))  # (B, N, N)
    z = torch.matmul(a, table.transpose(1, 2))
    return x + torch.matmul(w_out, z)


def _break_even(c: int, m: int, n: int) -> int:
    """Smallest N at which the table-first order takes more multiply-adds than the paper's order."""
    gather_first = DoubleAttention(c, m, n, spatial_dims=1, order="literal").to("meta")
    w_embed = torch.empty(m + 2 * n, c, device="meta")
    w_out = torch.empty(c, m, device="meta")
    for positions in range(1, 10 * (m + n) + 2):
        x = torch.empty(1, c, positions, device="meta")
        if count_flops(_table_first_block, x, w_embed, w_out, m, n) > count_flops(gather_first, x):
            return positions
    raise RuntimeError("internal: no break-even found")


@exercise("07.3", "where forming the N x N table stops paying",
          hint="write both multiply-add counts per image as functions of N; the convolutions are the same "
               "in both orders and cancel. One order grows like N·N, the other like N: solve for N")
def _check_break_even(fn):
    for c, m, n in ((16, 8, 8), (32, 4, 12), (8, 3, 5), (64, 64, 64), (12, 2, 9)):
        counted = _break_even(c, m, n)
        got = fn(c, m, n)
        if isinstance(got, bool) or not isinstance(got, numbers.Real):
            raise AssertionError(f"break_even({c}, {m}, {n}) should return a number of positions, "
                                 f"but it returned {type(got).__name__}")
        if got != counted:                          # the direction only: the counted N stays the checker's
            side = "high" if got > counted else "low"
            raise AssertionError(f"for c={c}, m={m}, n={n} your answer {got} is too {side}: the smallest N at "
                                 f"which the table-first order takes more multiply-adds")


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
