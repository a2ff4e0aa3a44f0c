"""Exercises of notebook 01 (Squeeze-and-Excitation).

Every checker computes its reference itself: plain loops over the equations, the module's
parameters counted on real layers, or the measured value of the experiment a prediction is
about.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..cost import count_parameters
from ..se import SqueezeExcitation
from .core import exercise, expect_close, expect_prediction, random_input

RESNET18_STAGES = ((2, 64), (2, 128), (2, 256), (2, 512))   # (blocks, output channels), basic blocks


def _randomise(module: nn.Module, seed: int, std: float = 0.5) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return module


@exercise("01.1", "predict, then run: a sum instead of a mean in the squeeze",
          hint="how do a sum and a mean over the same positions differ? And what does each layer of a "
               "bias-free excitation do to an input multiplied by a positive number?")
def _check_sum_factor(prediction) -> None:
    se = _randomise(SqueezeExcitation(16, 4, bias=False), seed=21)
    u = random_input(1, 16, 64, 64, seed=22).abs()         # a rectified 64x64 map, like U

    def largest_logit(z):
        with torch.no_grad():
            return se.fc2(se.act(se.fc1(z[:, :, None, None]))).abs().max().item()

    measured = largest_logit(u.sum(dim=(2, 3))) / largest_logit(u.mean(dim=(2, 3)))
    expect_prediction(prediction, measured, "factor by which the largest logit grows (64x64 map, no biases)",
                      rel=0.02)


@exercise("01.2", "SE for video clips: one gate per clip and channel",
          hint="a clip has a time axis as well: the squeeze must average over time, height and width "
               "together (one number per clip and channel), and the gate must reach every frame")
def _check_se_video(fn) -> None:
    B, C, T, H, W, D = 2, 4, 3, 2, 5, 2
    x = random_input(B, C, T, H, W, seed=23)
    x[:, :, 0] += 2.0                                       # frames differ in their means
    w1, b1 = random_input(D, C, seed=24), random_input(D, seed=25)
    w2, b2 = random_input(C, D, seed=26), random_input(C, seed=27)
    expected = torch.empty_like(x)
    for b in range(B):                                      # plain loops over the three equations
        z = [x[b, c].sum().item() / (T * H * W) for c in range(C)]
        hidden = [max(0.0, sum(w1[d, c].item() * z[c] for c in range(C)) + b1[d].item()) for d in range(D)]
        for c in range(C):
            s = 1 / (1 + math.exp(-(sum(w2[c, d].item() * hidden[d] for d in range(D)) + b2[c].item())))
            expected[b, c] = s * x[b, c]
    expect_close(fn(x, w1, b1, w2, b2), expected, "se_video(x, w1, b1, w2, b2) for x of shape (B, C, T, H, W) "
                 "= (2, 4, 3, 2, 5)")


@exercise("01.3", "find the bug: gates that depend on the rest of the batch",
          hint="run one image alone and the same image inside a batch: its gates must not change. "
               "Which axes does the squeeze average over, and which must it keep?")
def _check_fixed_se(fn) -> None:
    torch.manual_seed(0)
    C, D = 6, 3
    fc1, fc2 = _randomise(nn.Linear(C, D), seed=28), _randomise(nn.Linear(D, C), seed=29)
    u = random_input(3, C, 4, 5, seed=30)
    u[1:] += 3.0                                            # the other images are brighter
    with torch.no_grad():
        alone, batch = fn(u[:1], fc1, fc2), fn(u, fc1, fc2)
        z = u.mean(dim=(2, 3))
        expected = u * torch.sigmoid(fc2(torch.relu(fc1(z))))[:, :, None, None]
    expect_close(alone, expected[:1], "se_forward(u, fc1, fc2) on one image of shape (1, 6, 4, 5)")
    if not torch.allclose(batch[:1], alone, atol=1e-5, rtol=1e-4):
        raise AssertionError("the output for image 0 changes when other images share its batch: each "
                             "image's gates must come from that image alone")
    expect_close(batch, expected, "se_forward(u, fc1, fc2) on a batch of shape (3, 6, 4, 5)")


def _timm_hidden(channels: int, reduction: int = 16, divisor: int = 8) -> int:
    """timm's SEModule width: C/r rounded to the nearest multiple of 8, at least 8 (round_limit=0)."""
    return max(divisor, int(channels / reduction + divisor / 2) // divisor * divisor)


@exercise("01.4", "count: SE's parameters in SE-ResNet-18, the paper's width and timm's",
          hint="SE-ResNet-18 has 2 basic blocks in each of 4 stages, with 64, 128, 256 and 512 output "
               "channels, and one SE block with biased layers per residual block; the two rules differ "
               "only in the hidden width (the floor of C/16, or C/16 rounded to a multiple of 8 and at "
               "least 8)")
def _check_resnet18_counts(answer) -> None:
    if not isinstance(answer, (tuple, list)) or len(answer) != 2:
        raise AssertionError(f"write your answer as two numbers (paper, timm), but got {type(answer).__name__}")
    paper = sum(n * count_parameters(SqueezeExcitation(c, 16)) for n, c in RESNET18_STAGES)
    timm = sum(n * count_parameters(nn.Sequential(nn.Conv2d(c, _timm_hidden(c), 1), nn.Conv2d(_timm_hidden(c), c, 1)))
               for n, c in RESNET18_STAGES)
    for name, got, counted in (("paper's", answer[0], paper), ("timm", answer[1], timm)):
        if isinstance(got, bool) or not isinstance(got, int):
            raise AssertionError(f"the {name} count should be a whole number, but it is {type(got).__name__}")
        if got != counted:
            raise AssertionError(f"your {name} count is too {'high' if got > counted else 'low'} "
                                 f"(the checker counts the parameters of the real layers)")
