"""Exercises of notebook 08 (the zoo side by side).

08.1 derives the chance level of the "peak on object" score; 08.2 predicts how the non-local
block's multiply-adds grow with the image, measured on the zoo's own block.
"""
from __future__ import annotations

from fractions import Fraction

import torch

from ..cost import count_flops
from .core import exercise, expect_close


def _chance_literal(size: int, tile: int, cell: int) -> float:
    """Every placement of the tile, every cell of the grid: the share of cells it touches."""
    cells = size // cell
    placements = range(size - tile + 1)
    touched = Fraction(0)
    for y in placements:
        for x in placements:
            count = 0
            for cy in range(cells):
                for cx in range(cells):
                    overlap_y = cy * cell < y + tile and y < (cy + 1) * cell
                    overlap_x = cx * cell < x + tile and x < (cx + 1) * cell
                    count += overlap_y and overlap_x
            touched += Fraction(count, cells * cells)
    return float(touched / len(placements) ** 2)


@exercise("08.1", "the chance level of the peak-on-object score",
          hint="a tile touches every cell it shares at least one pixel with, so how many cells it touches "
               "along one axis depends on its offset within a cell; average over all the placements the "
               "data can draw (the two axes are drawn independently), and divide by the number of cells")
def _check_chance_level(fn):
    for size, tile, cell in [(64, 8, 4), (32, 8, 8), (48, 5, 4), (30, 7, 3), (16, 16, 4), (12, 1, 3)]:
        got = fn(size, tile, cell)
        if isinstance(got, torch.Tensor):
            got = got.item()
        assert isinstance(got, (int, float)) and not isinstance(got, bool), \
            f"chance_level({size}, {tile}, {cell}) should return a number, but returned {type(got).__name__}"
        expect_close(torch.tensor(float(got), dtype=torch.float64),
                     torch.tensor(_chance_literal(size, tile, cell), dtype=torch.float64),
                     f"chance_level(size={size}, tile={tile}, cell={cell})", atol=1e-9, rtol=1e-9)


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
