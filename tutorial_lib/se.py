"""Squeeze-and-Excitation: a learned, input-dependent gate per channel.

Paper: Jie Hu, Li Shen, Gang Sun, "Squeeze-and-Excitation Networks", CVPR 2018,
arXiv:1709.01507. Official code: hujie-frank/SENet (Caffe prototxts).

The method section in three steps, on a feature map U of shape (B, C, H, W):

1. Squeeze: one number per channel, the spatial mean
   z_c = 1/(H W) * sum_{i, j} u_c(i, j)                                   z: (B, C)
2. Excitation: a bottleneck MLP with a ReLU inside and a sigmoid outside
   s = sigmoid(W2 relu(W1 z + b1) + b2),  W1: (C/r, C),  W2: (C, C/r)      s: (B, C)
3. Scale: every channel is multiplied by its gate
   x~_c = s_c * u_c                                                       (B, C, H, W)

Where it sits: in an SE-ResNet the block is applied to the output of the residual branch
(after its last BatchNorm) and *before* the addition of the shortcut; the notebook
``01_squeeze_excitation.ipynb`` shows why.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange, reduce
from torch import nn

from .capture import AttentionModule
from .checks import check_bool, check_input, check_int

__all__ = ["SqueezeExcitation"]


def _hidden_width(module: str, channels: int, reduction: int) -> int:
    """``channels // reduction``, refusing a reduction that would leave no hidden unit."""
    if reduction > channels:
        raise ValueError(f"{module}: expected reduction <= channels ({channels}) so that the hidden "
                         f"width channels // reduction is at least 1, but got reduction={reduction}")
    return channels // reduction


class SqueezeExcitation(AttentionModule):
    """Squeeze-and-Excitation block (Hu, Shen, Sun, CVPR 2018, arXiv:1709.01507).

    ``out = x * sigmoid(W2 relu(W1 mean_hw(x) + b1) + b2)``, one gate per sample and channel.

    Shapes: input ``x`` (B, C, H, W) with C = ``channels``; output the same shape. With
    ``return_attention=True`` the call returns ``(out, {"channel": s})`` with the gate
    ``s`` of shape (B, C, 1, 1), values in (0, 1).

    Args:
        channels: C, the number of channels the block is built for.
        reduction: r; the hidden width is ``channels // reduction`` (floor division, as in
            the official prototxts, e.g. 256 -> 16 -> 256 for r = 16). It must be at most
            ``channels``: a larger r would leave no hidden unit. Default 16, the value of
            every official model.
        bias: True (default) gives the two 1x1 convolutions biases, as the official Caffe
            models have them (Caffe's default ``bias_term``); False gives the paper's
            equation, which writes no biases.

    Parameters: ``2 * C * (C // r) + (C // r) + C`` with biases (8,464 for C = 256, r = 16),
    ``2 * C * (C // r)`` without. The excitation is written as two 1x1 convolutions
    ``fc1`` and ``fc2`` (the official layers), which on a (B, C, 1, 1) tensor are the fully
    connected layers of the paper. The official deploy files do not say how the layers were
    initialised; this module keeps PyTorch's default initialisation.

    The forward pass applies those weights as matrix products on the (B, C) squeezed vector
    (same numbers as the 1x1 convolutions on a 1x1 map): on a CPU the backward pass of a 1x1
    convolution on a 1x1 map costs several times a matrix product's (``benchmarks/bench_se.py``).
    """

    def __init__(self, channels: int, reduction: int = 16, *, bias: bool = True) -> None:
        super().__init__()
        name = type(self).__name__
        self.channels = check_int(name, "channels", channels, minimum=1)
        self.reduction = check_int(name, "reduction", reduction, minimum=1)
        self.bias = check_bool(name, "bias", bias)
        self.hidden_channels = _hidden_width(name, self.channels, self.reduction)
        self.fc1 = nn.Conv2d(self.channels, self.hidden_channels, kernel_size=1, bias=bias)
        self.act = nn.ReLU()
        self.fc2 = nn.Conv2d(self.hidden_channels, self.channels, kernel_size=1, bias=bias)
        self.gate = nn.Sigmoid()

    def extra_repr(self) -> str:
        return f"channels={self.channels}, reduction={self.reduction}, bias={self.bias}"

    def forward(self, x: torch.Tensor, return_attention: bool = False):
        check_input(type(self).__name__, x, ndim=4, layout="(B, C, H, W)", channels=self.channels)
        # 1. squeeze: the spatial mean of each channel (a mean, not a sum)
        z = rearrange(reduce(x, "b c h w -> b c 1 1", "mean"), "b c 1 1 -> b c")
        # 2. excitation: C -> C/r -> C, ReLU inside, sigmoid outside; fc1 and fc2 hold 1x1
        #    kernels (out, in, 1, 1), applied here as the (out, in) matrices they are
        hidden = self.act(F.linear(z, rearrange(self.fc1.weight, "o i 1 1 -> o i"), self.fc1.bias))
        logits = F.linear(hidden, rearrange(self.fc2.weight, "o i 1 1 -> o i"), self.fc2.bias)
        s = rearrange(self.gate(logits), "b c -> b c 1 1")
        # 3. scale: broadcast the (b, c, 1, 1) gate over h and w
        out = x * s
        maps = {"channel": s}
        self._record(maps)
        return (out, maps) if return_attention else out
