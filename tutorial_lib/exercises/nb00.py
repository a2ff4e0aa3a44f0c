"""Exercises of notebook 00: feature maps as sets of nodes, einops as the language of shapes."""
from __future__ import annotations

import torch

from .core import exercise, expect_close, random_input


@exercise("00.1", "feature map -> spatial nodes",
          hint="one rearrange: 'b c h w -> b (h w) c' puts the H*W positions in raster order, "
               "each a vector of C numbers")
def _spatial_nodes(fn) -> None:
    x = random_input(2, 3, 4, 5, seed=1)
    expected = x.permute(0, 2, 3, 1).reshape(2, 20, 3)  # written without einops on purpose
    expect_close(fn(x), expected, "to_spatial_nodes(x) for x of shape (2, 3, 4, 5)")
    y = random_input(1, 6, 3, 3, seed=2)
    expect_close(fn(y), y.permute(0, 2, 3, 1).reshape(1, 9, 6), "to_spatial_nodes(x) for x of shape (1, 6, 3, 3)")


@exercise("00.2", "channel affinity matrix",
          hint="channels are the nodes: einsum('b c n, b d n -> b c d') after flattening h and w "
               "into n, or directly einsum('b c h w, b d h w -> b c d')")
def _channel_affinity(fn) -> None:
    x = random_input(2, 4, 3, 5, seed=3)
    b, c, h, w = x.shape
    expected = torch.zeros(b, c, c)
    for i in range(b):  # plain loops over the definition A[c, d] = sum_p x[c, p] x[d, p]
        for p in range(c):
            for q in range(c):
                expected[i, p, q] = (x[i, p] * x[i, q]).sum()
    expect_close(fn(x), expected, "channel_affinity(x)", atol=1e-4)


@exercise("00.3", "softmax over positions, per channel",
          hint="flatten (h w) into one axis, softmax with dim= that axis, then unflatten; every "
               "channel's map must sum to 1 over its H*W positions")
def _spatial_softmax(fn) -> None:
    x = random_input(2, 3, 4, 5, seed=4)
    got = fn(x)
    expected = torch.empty_like(x)
    for i in range(2):
        for ch in range(3):
            e = x[i, ch].exp()
            expected[i, ch] = e / e.sum()
    expect_close(got, expected, "spatial_softmax(x)")


@exercise("00.4", "2x2 max pooling with reduce",
          hint="split each spatial axis into (blocks, 2) inside the pattern: "
               "'b c (h h2) (w w2) -> b c h w' with h2=2, w2=2 and 'max'")
def _max_pool(fn) -> None:
    x = random_input(2, 3, 6, 8, seed=5)
    expected = torch.nn.functional.max_pool2d(x, 2)
    expect_close(fn(x), expected, "max_pool_2x2(x)")
