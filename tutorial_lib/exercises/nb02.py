"""Exercises of notebook 02 (CBAM).

02.1  a variant the notebook does not show: the official ChannelGate with the 'lse' pooling
02.2  find the bug: a spatial gate that works on a batch of one image only
02.3  predict, then run: the share of a sigmoid gate's mass that lies on the tile
02.4  a formula for a new configuration: how wide a window one spatial-gate value sees
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .core import exercise, expect_close, expect_prediction, expect_shape, random_input


def _reference_mlp(c: int, d: int, seed: int):
    w0, b0 = random_input(d, c, seed=seed) / c ** 0.5, random_input(d, seed=seed + 1) * 0.1
    w1, b1 = random_input(c, d, seed=seed + 2) / d ** 0.5, random_input(c, seed=seed + 3) * 0.1

    def mlp(v: torch.Tensor) -> torch.Tensor:
        """The shared MLP: (B, C) -> (B, C) logits."""
        return torch.clamp(v @ w0.T + b0, min=0.0) @ w1.T + b1

    return mlp


@exercise("02.1", "a channel gate with the official 'lse' pooling (average and log-sum-exp)",
          hint="both descriptors summarise the positions of each channel (one number per channel); "
               "the exponential overflows float32 for activations near 100, and subtracting a constant "
               "from a channel before the exponential (and adding it back after the logarithm) leaves "
               "the log-sum-exp unchanged; one shared MLP, the two logits summed, one sigmoid")
def _check_lse_gate(fn):
    mlp = _reference_mlp(6, 3, seed=10)

    def expected(x):
        flat = x.double().flatten(2)
        logits = mlp(flat.mean(dim=2).float()) + mlp(torch.logsumexp(flat, dim=2).float())
        return torch.sigmoid(logits)

    for shape, seed, scale, shift in (((2, 6, 4, 5), 11, 1.0, 0.0), ((3, 6, 1, 7), 12, 1.0, 0.0),
                                      ((2, 6, 5, 5), 13, 20.0, 100.0), ((2, 6, 3, 4), 14, 5.0, -150.0)):
        x = random_input(*shape, seed=seed) * scale + shift
        got = fn(x, mlp)
        what = f"lse_channel_gate(x, mlp) for x of shape {shape}"
        expect_shape(got, (shape[0], shape[1]), what)
        if not torch.isfinite(got).all():
            raise AssertionError(f"{what} with activations around {shift:g} is not finite (inf or nan): "
                                 f"the exponential overflowed or underflowed")
        expect_close(got, expected(x), what + (f" with activations around {shift:g}" if shift else ""))


def spatial_gate_buggy(x: torch.Tensor, conv_weight: torch.Tensor) -> torch.Tensor:
    """A spatial gate (paper form: no BatchNorm) with a bug that a batch of one image hides."""
    pooled = torch.stack([x.amax(dim=1), x.mean(dim=1)], dim=1)              # [max, mean] over channels
    gate = torch.sigmoid(F.conv2d(pooled, conv_weight, padding=conv_weight.shape[-1] // 2))[:, 0]
    return x * gate


@exercise("02.2", "find the bug: a spatial gate that is right for one image only",
          hint="broadcasting lines up axes from the right: compare the gate's shape with the input's, "
               "and ask which axis of the input meets the gate's batch axis")
def _check_spatial_gate(fn):
    conv_weight = random_input(1, 2, 5, 5, seed=20) * 0.3
    for shape, seed in (((1, 4, 6, 5), 21), ((3, 3, 6, 5), 22), ((2, 5, 4, 7), 23)):
        x = random_input(*shape, seed=seed)
        pooled = torch.stack([x.amax(dim=1), x.mean(dim=1)], dim=1)
        gate = torch.sigmoid(F.conv2d(pooled, conv_weight, padding=2))        # (B, 1, H, W)
        expect_close(fn(x, conv_weight), x * gate, f"spatial_gate(x, conv_weight) for x of shape {shape}")


def tile_share_of_gate(on_tile: float = 0.9, elsewhere: float = 0.5, size: int = 32, tile: int = 8) -> float:
    """Measured: the share of a gate's mass on an 8x8 tile of a 32x32 image (tl.attention_on_mask)."""
    from ..data import attention_on_mask

    mask = torch.zeros(1, size, size, dtype=torch.bool)
    mask[:, 5:5 + tile, 11:11 + tile] = True
    gate = torch.where(mask, torch.tensor(on_tile), torch.tensor(elsewhere))
    return float(attention_on_mask(gate, mask)[0])


@exercise("02.3", "predict: the share of a sigmoid gate's mass on the tile",
          hint="the share is the gate summed over the tile divided by the gate summed over the whole image; "
               "count the pixels of the tile and of the background")
def _check_tile_share(prediction):
    expect_prediction(prediction, tile_share_of_gate(), "share of the gate's mass on the tile", abs_=0.005)


def _measured_window(kernel_size: int, size: int = 160) -> int:
    """Side, in input pixels, of the window that one central spatial-gate value depends on.

    The ClutterNet geometry (3x3 conv, 2x2 pool, 3x3 conv, 2x2 pool, 3x3 conv, k x k gate conv),
    with every weight 1 and average pooling (same windows as max pooling, but every pixel of a
    window passes gradient), on a blank input: the gradient of the central value is non-zero
    exactly on the window.
    """
    layers = nn.Sequential(nn.Conv2d(1, 1, 3, padding=1, bias=False), nn.AvgPool2d(2),
                           nn.Conv2d(1, 1, 3, padding=1, bias=False), nn.AvgPool2d(2),
                           nn.Conv2d(1, 1, 3, padding=1, bias=False),
                           nn.Conv2d(1, 1, kernel_size, padding=kernel_size // 2, bias=False)).double()
    for layer in layers:
        if isinstance(layer, nn.Conv2d):
            nn.init.ones_(layer.weight)
    x = torch.zeros(1, 1, size, size, dtype=torch.float64, requires_grad=True)
    out = layers(x)
    out[0, 0, out.shape[2] // 2, out.shape[3] // 2].backward()
    rows = torch.nonzero(x.grad[0, 0].abs().sum(dim=1))
    return int(rows.max() - rows.min() + 1)


@exercise("02.4", "how wide a window of the image one spatial-gate value sees",
          hint="follow two numbers through the layers: the window's side in input pixels, and the distance "
               "in input pixels between neighbouring positions of the layer's output; a layer with a "
               "larger kernel widens the window, and each pooling changes the distance")
def _check_window(fn):
    for k in (3, 7, 11):
        measured, got = _measured_window(k), fn(k)
        if isinstance(got, bool) or not isinstance(got, int):
            raise AssertionError(f"gate_window({k}) should be an integer number of pixels, but it is "
                                 f"{type(got).__name__}")
        if got != measured:
            side = "wider" if measured > got else "narrower"
            raise AssertionError(f"gate_window({k}) gives {got}, but the measured window is {side}")
