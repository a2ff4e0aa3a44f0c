"""Exercises of notebook 08 (the zoo side by side).

08.1 derives the chance level of the "mass on object" score (a uniform map's share, on the
map's own grid); 08.2 predicts how the non-local block's multiply-adds grow with the image,
measured on the zoo's own block.
"""
from __future__ import annotations

from fractions import Fraction

import numpy as np
import torch

from ..cost import count_flops
from .core import exercise


def _chance_literal(size: int, tile: int, cell: int) -> float:
    """Every placement of the tile against every cell of the grid: the mean share of cells it touches.

    ``touches[y, x, cy, cx]`` is True when the tile with its corner at (y, x) shares a pixel with
    cell (cy, cx); the placements and cells are enumerated as arrays, not derived by a formula.
    """
    placements, cells = np.arange(size - tile + 1), np.arange(size // cell)
    overlap = (cells[None, :] * cell < placements[:, None] + tile) & (placements[:, None] < (cells[None, :] + 1) * cell)
    touches = overlap[:, None, :, None] & overlap[None, :, None, :]          # (y, x, cy, cx)
    return float(Fraction(int(touches.sum()), touches.size))


@exercise("08.1", "the chance level of the mass-on-object score",
          hint="a tile touches every cell it shares at least one pixel with, so how many cells it touches "
               "along one axis depends on its offset within a cell; average over all the placements the "
               "data can draw (the two axes are drawn independently), and divide by the number of cells")
def _check_chance_level(fn):
    # a wrong value is answered "too high" or "too low" for the setting that fails, never with the
    # expected value or the difference (from which the expected value follows)
    for size, tile, cell in [(64, 8, 4), (64, 8, 8), (32, 8, 8), (48, 5, 4), (30, 7, 3), (16, 16, 4), (12, 1, 3)]:
        what = f"chance_level(size={size}, tile={tile}, cell={cell})"
        got = fn(size, tile, cell)
        if isinstance(got, torch.Tensor) and got.numel() == 1:
            got = got.item()
        assert isinstance(got, (int, float)) and not isinstance(got, bool), \
            f"{what} should return a number, but returned {type(got).__name__}"
        assert got == got, f"{what} returned nan"
        expected = _chance_literal(size, tile, cell)
        if not abs(got - expected) <= 1e-9 * max(1.0, abs(expected)):
            raise AssertionError(f"{what} is too {'high' if got > expected else 'low'}")


def _non_local_multiply_adds(size: int) -> int:
    from ..zoo import build

    block = build("non-local", 4, seed=0, size=size).block.eval()
    return count_flops(block, torch.zeros(1, 32, size // 4, size // 4)) // 2


@exercise("08.2", "predict: the non-local block's multiply-adds at 128 x 128",
          hint="split the block's multiply-adds into the terms that grow with the number of positions N "
               "(the 1x1 convolutions, remembering which ones see the pooled map) and the terms that grow "
               "with N times the number of keys; evaluate both at the zoo's 16 x 16 map first")
def _check_non_local_growth(factor):
    # compared like expect_prediction, but a wrong try says only "too high" or "too low": nothing in
    # the notebook prints the measured factor, so the message must not give it away
    what = "the factor by which the non-local block's multiply-adds grow from 64 x 64 to 128 x 128 images"
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or factor != factor:
        raise AssertionError(f"{what}: write your prediction as a single number, but it is {factor!r}")
    measured = _non_local_multiply_adds(128) / _non_local_multiply_adds(64)
    if abs(factor - measured) > 0.05 * measured:
        raise AssertionError(f"{what}: your prediction {factor:.4g} is too {'high' if factor > measured else 'low'}")
