"""CBAM: a channel gate, then a spatial gate.

Paper: Sanghyun Woo, Jongchan Park, Joon-Young Lee, In So Kweon, "CBAM: Convolutional Block
Attention Module", ECCV 2018, arXiv:1807.06521. Official code: Jongchan/attention-module
(MODELS/cbam.py, MODELS/model_resnet.py).

The method section, on a feature map F of shape (B, C, H, W):

1. Channel attention: two descriptors per channel, the spatial average and the spatial
   maximum, go through ONE shared MLP (C -> C/r -> C); the two outputs are summed and
   squashed by one sigmoid:
   M_c(F) = sigmoid(MLP(AvgPool_hw(F)) + MLP(MaxPool_hw(F)))               (B, C, 1, 1)
   F' = M_c(F) * F
2. Spatial attention: two maps per position, the maximum and the mean over channels,
   stacked as two channels and convolved by one k x k filter (k = 7):
   M_s(F') = sigmoid(BN(conv_kxk([MaxPool_c(F'); AvgPool_c(F')])))          (B, 1, H, W)
   F'' = M_s(F') * F'
3. Channel first, then spatial (the best order in the paper's ablation). No residual:
   in a CBAM-ResNet the shortcut is added outside, after the module.

Where the paper and the official code differ, the official code is the default and the
paper is an option: the BatchNorm after the spatial convolution (official; the paper has
none: ``spatial_bn=False`` / ``batch_norm=False``) and the order of the two channel-pooled
maps (official [max, mean]; the paper writes [avg; max]: ``pool_order="mean_max"``).
"""
from __future__ import annotations

import torch
from einops import pack, rearrange, reduce
from torch import nn

from .capture import AttentionModule
from .checks import check_bool, check_choice, check_input, check_int, check_odd
from .se import _hidden_width

__all__ = ["ChannelAttention", "SpatialAttention", "CBAM"]

POOL_ORDERS = ("max_mean", "mean_max")


class ChannelAttention(AttentionModule):
    """CBAM's channel gate (Woo et al., ECCV 2018, arXiv:1807.06521, Eq. 2).

    ``out = x * sigmoid(MLP(mean_hw(x)) + MLP(max_hw(x)))`` with
    ``MLP(v) = W1 relu(W0 v + b0) + b1``, one MLP shared by both descriptors.

    Shapes: input (B, C, H, W) with C = ``channels``; output the same shape;
    ``return_attention=True`` adds ``{"channel": (B, C, 1, 1)}``, values in (0, 1).

    Args:
        channels: C.
        reduction: r; hidden width ``channels // reduction`` (at least 1). Default 16.
        bias: biases in both layers of the MLP (default True, as the official
            ``nn.Linear`` layers); False gives the bias-free MLP that timm uses.

    Official details kept: the MLP is two ``nn.Linear`` layers on the pooled (B, C)
    descriptors, with PyTorch's default weight initialisation and biases set to zero (the
    official ResNet constructor zeroes every bias). The two descriptors run through the MLP
    as one batch of two, and the logits are summed before the single sigmoid.
    Parameters: ``2 C (C // r) + C // r + C`` with biases.
    """

    def __init__(self, channels: int, reduction: int = 16, *, bias: bool = True) -> None:
        super().__init__()
        name = type(self).__name__
        self.channels = check_int(name, "channels", channels, minimum=1)
        self.reduction = check_int(name, "reduction", reduction, minimum=1)
        self.bias = check_bool(name, "bias", bias)
        self.hidden_channels = _hidden_width(name, self.channels, self.reduction)
        self.mlp = nn.Sequential(
            nn.Linear(self.channels, self.hidden_channels, bias=bias),
            nn.ReLU(),
            nn.Linear(self.hidden_channels, self.channels, bias=bias),
        )
        for layer in (self.mlp[0], self.mlp[2]):
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, reduction={self.reduction}, bias={self.bias}"

    def forward(self, x: torch.Tensor, return_attention: bool = False):
        check_input(type(self).__name__, x, ndim=4, layout="(B, C, H, W)", channels=self.channels)
        # two descriptors per channel: spatial average and spatial maximum
        avg = reduce(x, "b c h w -> b c", "mean")
        mx = reduce(x, "b c h w -> b c", "max")
        # one shared MLP for both: run them as a batch of two descriptors per sample
        descriptors = rearrange([avg, mx], "branch b c -> b branch c")
        logits = reduce(self.mlp(descriptors), "b branch c -> b c 1 1", "sum")
        s = torch.sigmoid(logits)
        out = x * s
        maps = {"channel": s}
        self._record(maps)
        return (out, maps) if return_attention else out


class SpatialAttention(AttentionModule):
    """CBAM's spatial gate (Woo et al., ECCV 2018, arXiv:1807.06521, Eq. 3).

    ``out = x * sigmoid(BN(conv_kxk([max_c(x); mean_c(x)])))``.

    Shapes: input (B, C, H, W), any C; output the same shape;
    ``return_attention=True`` adds ``{"spatial": (B, 1, H, W)}``, values in (0, 1).

    Args:
        kernel_size: k, odd, default 7 (padding k // 2 keeps H and W).
        batch_norm: True (default, official): the convolution has no bias and is followed
            by ``BatchNorm2d(1, eps=1e-5, momentum=0.01)``, whose weight and bias start at
            zero, as the official ResNet constructor sets them: the gate is exactly
            sigmoid(0) = 0.5 everywhere at initialisation. False (paper): no BatchNorm,
            and the convolution gets a bias (zero-initialised), as a plain conv layer has.
        pool_order: ``"max_mean"`` (default, official ``ChannelPool`` order) or
            ``"mean_max"`` (the order the paper writes). It only fixes which input channel
            of the convolution sees which map; it matters when loading weights.

    The convolution weight is Kaiming-normal with ``mode="fan_out"`` (std sqrt(2 / (k k)))
    as in the official initialisation loop. Parameters: ``2 k k + 2`` (official) or
    ``2 k k + 1`` (paper). In training mode the BatchNorm uses the statistics of the
    batch, so one sample's output depends on the others; in eval mode it does not.
    """

    def __init__(self, kernel_size: int = 7, *, batch_norm: bool = True,
                 pool_order: str = "max_mean") -> None:
        super().__init__()
        name = type(self).__name__
        self.kernel_size = check_odd(name, "kernel_size", kernel_size)
        self.batch_norm = check_bool(name, "batch_norm", batch_norm)
        self.pool_order = check_choice(name, "pool_order", pool_order, POOL_ORDERS)
        self.conv = nn.Conv2d(2, 1, self.kernel_size, padding=self.kernel_size // 2,
                              bias=not batch_norm)
        self.bn = nn.BatchNorm2d(1, eps=1e-5, momentum=0.01) if batch_norm else nn.Identity()
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out")
        if self.conv.bias is not None:
            nn.init.zeros_(self.conv.bias)
        if batch_norm:
            nn.init.zeros_(self.bn.weight)
            nn.init.zeros_(self.bn.bias)

    def extra_repr(self) -> str:
        return (f"kernel_size={self.kernel_size}, batch_norm={self.batch_norm}, "
                f"pool_order={self.pool_order!r}")

    def forward(self, x: torch.Tensor, return_attention: bool = False):
        check_input(type(self).__name__, x, ndim=4, layout="(B, C, H, W)")
        # two maps per position: maximum and mean over the channels
        mx = reduce(x, "b c h w -> b 1 h w", "max")
        mean = reduce(x, "b c h w -> b 1 h w", "mean")
        pair = [mx, mean] if self.pool_order == "max_mean" else [mean, mx]
        pooled, _ = pack(pair, "b * h w")  # (b, 2, h, w)
        s = torch.sigmoid(self.bn(self.conv(pooled)))
        out = x * s
        maps = {"spatial": s}
        self._record(maps)
        return (out, maps) if return_attention else out


class CBAM(AttentionModule):
    """Convolutional Block Attention Module (Woo, Park, Lee, Kweon, ECCV 2018, arXiv:1807.06521).

    ``F' = M_c(F) * F``, ``F'' = M_s(F') * F'``: ``ChannelAttention`` then
    ``SpatialAttention``, with no residual inside (a CBAM-ResNet adds the shortcut after
    the module, on the output of the residual branch).

    Shapes: input (B, C, H, W) with C = ``channels``; output the same shape.
    ``return_attention=True`` returns ``(out, {"channel": (B, C, 1, 1), "spatial": (B, 1, H, W)})``;
    the spatial map is the one computed on the channel-refined F'. Inside
    ``capture_attention`` the two halves also record their own maps, under
    ``"<name>.channel_gate"`` and ``"<name>.spatial_gate"``.

    Args:
        channels: C.
        reduction: r of the shared channel MLP (hidden width ``channels // reduction``),
            default 16.
        kernel_size: odd size of the spatial convolution, default 7.
        spatial_bn: True (default, official): BatchNorm after the spatial convolution,
            zero-initialised, so the spatial gate starts at 0.5 everywhere. False: the
            paper's form (no BatchNorm, a biased convolution).
        pool_order: ``"max_mean"`` (default, official) or ``"mean_max"`` (paper).
        mlp_bias: biases in the channel MLP (default True, official).

    Defaults follow the official code (r = 16, k = 7, biased MLP, spatial conv without bias
    followed by BatchNorm with momentum 0.01, [max, mean], the official initialisation).
    Parameters: ``2 C (C // r) + C // r + C + 2 k k + 2``: 8,564 for C = 256, r = 16, k = 7.
    With all parameters zero, in eval mode, the module multiplies its input by 0.25.
    """

    def __init__(self, channels: int, reduction: int = 16, kernel_size: int = 7, *,
                 spatial_bn: bool = True, pool_order: str = "max_mean", mlp_bias: bool = True) -> None:
        super().__init__()
        name = type(self).__name__
        self.channels = check_int(name, "channels", channels, minimum=1)
        reduction = check_int(name, "reduction", reduction, minimum=1)
        _hidden_width(name, self.channels, reduction)
        kernel_size = check_odd(name, "kernel_size", kernel_size)
        spatial_bn = check_bool(name, "spatial_bn", spatial_bn)
        check_choice(name, "pool_order", pool_order, POOL_ORDERS)
        mlp_bias = check_bool(name, "mlp_bias", mlp_bias)
        self.channel_gate = ChannelAttention(self.channels, reduction, bias=mlp_bias)
        self.spatial_gate = SpatialAttention(kernel_size, batch_norm=spatial_bn, pool_order=pool_order)

    def forward(self, x: torch.Tensor, return_attention: bool = False):
        check_input(type(self).__name__, x, ndim=4, layout="(B, C, H, W)", channels=self.channels)
        refined, channel_maps = self.channel_gate(x, return_attention=True)
        out, spatial_maps = self.spatial_gate(refined, return_attention=True)
        maps = {"channel": channel_maps["channel"], "spatial": spatial_maps["spatial"]}
        self._record(maps)
        return (out, maps) if return_attention else out
