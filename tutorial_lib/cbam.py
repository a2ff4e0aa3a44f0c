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

Cost (ours, beyond the paper). The four poolings and the two products run over the whole
(B, C, H, W) map; everything else (the MLP on 2 x C numbers, the 2-channel convolution)
is small. When gradients are recorded, each gate runs as one autograd function
(``fast_backward=True``, the default) whose backward pass computes the gradient of the input
in one buffer: the gradient through the product, plus the mean's share added in place,
plus the maximum's gradient scattered to the one position that held it (the index comes
from ``max_pool2d`` in the channel gate and from ``torch.max`` in the spatial gate, the two
calls of the official code). The small parts still go through autograd. Values are
identical to the literal path; gradients are equal up to rounding, except where a maximum
is tied: the literal path (einops' max, i.e. ``amax``) splits the gradient evenly over the
tied elements, this one sends it to the first of them, as the official code does.
``fast_backward=False`` gives the literal autograd path, which also supports double
backward and ``torch.func`` transforms (with the default, ``torch.func`` stops with
PyTorch's error about ``setup_context``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange, reduce
from torch import nn
from torch.autograd.function import once_differentiable

from .capture import AttentionModule
from .checks import check_bool, check_choice, check_input, check_int, check_odd
from .se import _hidden_width

__all__ = ["ChannelAttention", "SpatialAttention", "CBAM"]

POOL_ORDERS = ("max_mean", "mean_max")


def _records_gradients(x: torch.Tensor, module: nn.Module) -> bool:
    """True when autograd will record this call (the input or a parameter needs a gradient)."""
    return torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in module.parameters()))


def _small_backward(output: torch.Tensor, pooled: torch.Tensor, params: tuple, grad: torch.Tensor):
    """Backward through the small graph pooled -> gate: grads of ``pooled`` and of each parameter."""
    wanted = [pooled] + [p for p in params if p.requires_grad]
    # retain_graph: the small graph stays usable if the caller back-propagates twice
    found = iter(torch.autograd.grad(output, wanted, grad, retain_graph=True))
    grad_pooled = next(found)
    return grad_pooled, tuple(next(found) if p.requires_grad else None for p in params)


class _ChannelGateFunction(torch.autograd.Function):
    """``x * M_c(x)`` with the backward pass over (B, C, H, W) written out (see the module docstring)."""

    @staticmethod
    def forward(ctx, x, gate, *params):
        b, c, h, w = x.shape
        avg = x.mean(dim=(2, 3))
        # the spatial maximum and where it sits (index into h * w), as the official max_pool2d
        mx, index = F.max_pool2d(x, kernel_size=(h, w), return_indices=True)
        with torch.enable_grad():  # keep the small graph descriptors -> gate for the backward pass
            descriptors = torch.stack([avg, mx.view(b, c)], dim=1).requires_grad_()  # (b, 2, c)
            s = gate._gate(descriptors)  # (b, c, 1, 1)
        ctx.save_for_backward(x, index.view(b, c, 1))
        ctx.graph = (descriptors, s, params)
        ctx.set_materialize_grads(False)
        s_value = s.detach()
        return x * s_value, s_value

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out, grad_map):
        x, index = ctx.saved_tensors
        descriptors, s, params = ctx.graph
        b, c, h, w = x.shape
        if grad_out is None:
            grad_out = torch.zeros_like(x)
        work = grad_out * x                                     # one (B, C, H, W) buffer, reused below
        grad_s = work.sum(dim=(2, 3), keepdim=True)
        if grad_map is not None:
            grad_s = grad_s + grad_map
        grad_descriptors, grad_params = _small_backward(s, descriptors, params, grad_s)
        grad_x = None
        if ctx.needs_input_grad[0]:
            # through the product x * s, plus the mean's share (1 / (h w) of its gradient everywhere)
            mean_share = (grad_descriptors[:, 0] / (h * w)).view(b, c, 1, 1)
            grad_x = torch.addcmul(mean_share, grad_out, s.detach(), out=work)
            if not grad_x.is_contiguous():
                grad_x = grad_x.contiguous()
            # the max's gradient goes to the one position that held the maximum
            grad_x.view(b, c, h * w).scatter_add_(2, index, grad_descriptors[:, 1, :, None])
        return (grad_x, None, *grad_params)


class _SpatialGateFunction(torch.autograd.Function):
    """``x * M_s(x)`` with the backward pass over (B, C, H, W) written out (see the module docstring)."""

    @staticmethod
    def forward(ctx, x, gate, *params):
        c = x.shape[1]
        mx, index = torch.max(x, dim=1, keepdim=True)            # index: the channel that holds the max
        mean = x.mean(dim=1, keepdim=True)
        with torch.enable_grad():  # keep the small graph pooled -> gate for the backward pass
            pooled = gate._stack(mx, mean).requires_grad_()
            m = gate._gate(pooled)  # (b, 1, h, w)
        ctx.save_for_backward(x, index)
        ctx.graph = (pooled, m, params, c, gate.pool_order == "max_mean")
        ctx.set_materialize_grads(False)
        m_value = m.detach()
        return x * m_value, m_value

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out, grad_map):
        x, index = ctx.saved_tensors
        pooled, m, params, c, max_first = ctx.graph
        if grad_out is None:
            grad_out = torch.zeros_like(x)
        work = grad_out * x                                     # one (B, C, H, W) buffer, reused below
        grad_m = work.sum(dim=1, keepdim=True)
        if grad_map is not None:
            grad_m = grad_m + grad_map
        grad_pooled, grad_params = _small_backward(m, pooled, params, grad_m)
        grad_x = None
        if ctx.needs_input_grad[0]:
            i_max, i_mean = (0, 1) if max_first else (1, 0)
            # through the product x * m, plus the mean's share (1 / c of its gradient, every channel)
            grad_x = torch.addcmul(grad_pooled[:, i_mean:i_mean + 1] / c, grad_out, m.detach(), out=work)
            grad_x.scatter_add_(1, index, grad_pooled[:, i_max:i_max + 1])  # the max's, one channel
        return (grad_x, None, *grad_params)


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
        fast_backward: True (default): when gradients are recorded, one autograd function
            with a hand-written backward pass over the (B, C, H, W) tensors (same values;
            at a tied maximum the gradient goes to the first tied position, as in the
            official code). False: the literal autograd path (einops' max splits the
            gradient over ties; supports double backward).

    Official details kept: the MLP is two ``nn.Linear`` layers on the pooled (B, C)
    descriptors, with PyTorch's default weight initialisation and biases set to zero (the
    official ResNet constructor zeroes every bias). The two descriptors run through the MLP
    as one batch of two, and the logits are summed before the single sigmoid.
    Parameters: ``2 C (C // r) + C // r + C`` with biases.
    """

    def __init__(self, channels: int, reduction: int = 16, *, bias: bool = True,
                 fast_backward: bool = True) -> None:
        super().__init__()
        name = type(self).__name__
        self.channels = check_int(name, "channels", channels, minimum=1)
        self.reduction = check_int(name, "reduction", reduction, minimum=1)
        self.bias = check_bool(name, "bias", bias)
        self.fast_backward = check_bool(name, "fast_backward", fast_backward)
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
        return (f"channels={self.channels}, reduction={self.reduction}, bias={self.bias}, "
                f"fast_backward={self.fast_backward}")

    def _gate(self, descriptors: torch.Tensor) -> torch.Tensor:
        """(b, branch=2, c) descriptors -> (b, c, 1, 1) gate: one shared MLP, summed logits, one sigmoid."""
        first, last = self.mlp[0], self.mlp[2]  # the layers of self.mlp, called directly (less overhead)
        logits = F.linear(torch.relu(F.linear(descriptors, first.weight, first.bias)), last.weight, last.bias)
        return torch.sigmoid(logits.sum(dim=1))[:, :, None, None]

    def forward(self, x: torch.Tensor, return_attention: bool = False):
        check_input(type(self).__name__, x, ndim=4, layout="(B, C, H, W)", channels=self.channels)
        if not self.fast_backward:  # the literal path: the notebook's derivation, autograd throughout
            # two descriptors per channel: spatial average and spatial maximum
            avg = reduce(x, "b c h w -> b c", "mean")
            mx = reduce(x, "b c h w -> b c", "max")
            # one shared MLP for both: run them as a batch of two descriptors per sample
            s = self._gate(rearrange([avg, mx], "branch b c -> b branch c"))
            out = x * s
        elif _records_gradients(x, self):
            out, s = _ChannelGateFunction.apply(x, self, *self.parameters())
        else:  # no gradient: the same operations, without einops' per-call overhead
            s = self._gate(torch.stack([x.mean(dim=(2, 3)), x.amax(dim=(2, 3))], dim=1))
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
        fast_backward: as in ``ChannelAttention`` (default True; False: the literal path).

    The convolution weight is Kaiming-normal with ``mode="fan_out"`` (std sqrt(2 / (k k)))
    as in the official initialisation loop. Parameters: ``2 k k + 2`` (official) or
    ``2 k k + 1`` (paper). In training mode the BatchNorm uses the statistics of the
    batch, so one sample's output depends on the others; in eval mode it does not.
    """

    def __init__(self, kernel_size: int = 7, *, batch_norm: bool = True,
                 pool_order: str = "max_mean", fast_backward: bool = True) -> None:
        super().__init__()
        name = type(self).__name__
        self.kernel_size = check_odd(name, "kernel_size", kernel_size)
        self.batch_norm = check_bool(name, "batch_norm", batch_norm)
        self.pool_order = check_choice(name, "pool_order", pool_order, POOL_ORDERS)
        self.fast_backward = check_bool(name, "fast_backward", fast_backward)
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
                f"pool_order={self.pool_order!r}, fast_backward={self.fast_backward}")

    def _stack(self, mx: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
        """Two (b, 1, h, w) maps -> (b, 2, h, w) in the module's ``pool_order``."""
        return torch.cat([mx, mean] if self.pool_order == "max_mean" else [mean, mx], dim=1)

    def _gate(self, pooled: torch.Tensor) -> torch.Tensor:
        """(b, 2, h, w) pooled maps -> (b, 1, h, w) gate: conv, BatchNorm, sigmoid."""
        return torch.sigmoid(self.bn(self.conv(pooled)))

    def forward(self, x: torch.Tensor, return_attention: bool = False, *, inplace: bool = False):
        """``inplace=True`` multiplies ``x`` itself by the gate when no gradient is recorded
        (``CBAM`` does so on its own intermediate F'); it is ignored when one is."""
        check_input(type(self).__name__, x, ndim=4, layout="(B, C, H, W)")
        recording = _records_gradients(x, self)
        if not self.fast_backward:  # the literal path: the notebook's derivation, autograd throughout
            # two maps per position: maximum and mean over the channels
            mx = reduce(x, "b c h w -> b 1 h w", "max")
            mean = reduce(x, "b c h w -> b 1 h w", "mean")
            s = self._gate(self._stack(mx, mean))
        elif recording:
            out, s = _SpatialGateFunction.apply(x, self, *self.parameters())
        else:  # no gradient: the same operations, without einops' per-call overhead
            s = self._gate(self._stack(x.amax(dim=1, keepdim=True), x.mean(dim=1, keepdim=True)))
        if not (self.fast_backward and recording):
            out = x.mul_(s) if inplace and not recording else x * s
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
        fast_backward: True (default): each gate's backward pass is written out over the
            (B, C, H, W) tensors (same values; a tied maximum passes its gradient to the
            first tied position, as in the official code); False: the literal autograd
            path (ties split the gradient; double backward works).

    Defaults follow the official code (r = 16, k = 7, biased MLP, spatial conv without bias
    followed by BatchNorm with momentum 0.01, [max, mean], the official initialisation).
    Parameters: ``2 C (C // r) + C // r + C + 2 k k + 2``: 8,564 for C = 256, r = 16, k = 7.
    With all parameters zero, in eval mode, the module multiplies its input by 0.25.
    """

    def __init__(self, channels: int, reduction: int = 16, kernel_size: int = 7, *,
                 spatial_bn: bool = True, pool_order: str = "max_mean", mlp_bias: bool = True,
                 fast_backward: bool = True) -> None:
        super().__init__()
        name = type(self).__name__
        self.channels = check_int(name, "channels", channels, minimum=1)
        reduction = check_int(name, "reduction", reduction, minimum=1)
        _hidden_width(name, self.channels, reduction)
        kernel_size = check_odd(name, "kernel_size", kernel_size)
        spatial_bn = check_bool(name, "spatial_bn", spatial_bn)
        check_choice(name, "pool_order", pool_order, POOL_ORDERS)
        mlp_bias = check_bool(name, "mlp_bias", mlp_bias)
        fast_backward = check_bool(name, "fast_backward", fast_backward)
        self.channel_gate = ChannelAttention(self.channels, reduction, bias=mlp_bias,
                                             fast_backward=fast_backward)
        self.spatial_gate = SpatialAttention(kernel_size, batch_norm=spatial_bn, pool_order=pool_order,
                                             fast_backward=fast_backward)

    def forward(self, x: torch.Tensor, return_attention: bool = False):
        check_input(type(self).__name__, x, ndim=4, layout="(B, C, H, W)", channels=self.channels)
        refined, channel_maps = self.channel_gate(x, return_attention=True)
        # refined is a new tensor made here: without gradients the spatial gate may overwrite it
        out, spatial_maps = self.spatial_gate(refined, return_attention=True, inplace=True)
        maps = {"channel": channel_maps["channel"], "spatial": spatial_maps["spatial"]}
        self._record(maps)
        return (out, maps) if return_attention else out
