"""Exercises of notebook 00: feature maps as sets of nodes, einops as the language of shapes.

Every checker builds its reference without einops (plain loops or torch's own pooling), so a
learner's einops pattern is compared with an independent computation.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .core import exercise, expect_close, expect_prediction, random_input


def _check_number_pair(answer, names: tuple[str, str]) -> tuple[float, float]:
    if not isinstance(answer, (tuple, list)) or len(answer) != 2:
        raise AssertionError(f"write your prediction as two numbers ({names[0]}, {names[1]}), "
                             f"but got {type(answer).__name__}")
    return answer[0], answer[1]


@exercise("00.1", "predict, then run: what survives pooling and upsampling",
          hint="in every 2x2 block, how many of the four entries can equal the value that is copied "
               "back into all four places? Think of the max first, then of the mean of four random "
               "numbers")
def _pool_then_upsample(answer) -> None:
    max_guess, mean_guess = _check_number_pair(answer, ("after max pooling", "after mean pooling"))
    x = random_input(2, 8, 16, 16, seed=11)          # continuous values: no ties
    max_back = F.interpolate(F.max_pool2d(x, 2), scale_factor=2.0, mode="nearest")
    mean_back = F.interpolate(F.avg_pool2d(x, 2), scale_factor=2.0, mode="nearest")
    expect_prediction(max_guess, (max_back == x).float().mean().item(),
                      "share of entries unchanged after 2x2 max pooling and x2 upsampling", abs_=0.02)
    expect_prediction(mean_guess, (mean_back == x).float().mean().item(),
                      "share of entries unchanged after 2x2 mean pooling and x2 upsampling", abs_=0.02)


@exercise("00.2", "one descriptor per frame of a video feature map",
          hint="a clip has five axes (batch, channel, time, height, width): average over the two "
               "spatial axes only, keep every frame, and put the frame axis before the channel axis")
def _frame_descriptors(fn) -> None:
    v = random_input(2, 3, 4, 5, 6, seed=12)   # (B, C, T, H, W), all sizes different
    B, C, T, H, W = v.shape
    expected = torch.empty(B, T, C)
    for b in range(B):                           # plain loops over the definition
        for t in range(T):
            for c in range(C):
                expected[b, t, c] = v[b, c, t].sum() / (H * W)
    expect_close(fn(v), expected, "frame_descriptors(v) for v of shape (B, C, T, H, W) = (2, 3, 4, 5, 6)")


@exercise("00.3", "find the bug: a channel Gram matrix for channels-last maps",
          hint="an einops pattern names the axes in the order in which they are stored, whatever the "
               "letters are; in a channels-last tensor, which position holds the channels?")
def _gram_channels_last(fn) -> None:
    for shape, seed in (((2, 3, 4, 5), 13), ((1, 6, 6, 6), 14)):   # (B, H, W, C); then a square one
        x = random_input(*shape, seed=seed)
        B, H, W, C = x.shape
        expected = torch.zeros(B, C, C)
        for b in range(B):
            for c in range(C):
                for d in range(C):
                    expected[b, c, d] = (x[b, :, :, c] * x[b, :, :, d]).sum()
        expect_close(fn(x), expected, f"channel_gram_nhwc(x) for x of shape (B, H, W, C) = {shape}",
                     atol=1e-4)


@exercise("00.4", "attention pooling: a softmax-weighted sum over all positions",
          hint="the weights of one image must sum to 1 over all its H*W positions together (not per "
               "row, not across the batch); each channel is then summed with those weights, not averaged")
def _attention_pool(fn) -> None:
    x, scores = random_input(2, 3, 4, 5, seed=15), random_input(2, 4, 5, seed=16)
    B, C, H, W = x.shape
    expected = torch.zeros(B, C)
    for b in range(B):
        weights = scores[b].exp() / scores[b].exp().sum()        # one distribution over H*W positions
        for c in range(C):
            expected[b, c] = (weights * x[b, c]).sum()
    expect_close(fn(x, scores), expected, "attention_pool(x, scores) for x (2, 3, 4, 5), scores (2, 4, 5)")
    flat = torch.full((2, 4, 5), 0.7)
    expect_close(fn(x, flat), x.mean(dim=(2, 3)),
                 "with equal scores at every position, attention_pool(x, scores) (it should equal the "
                 "plain mean of each channel)")
