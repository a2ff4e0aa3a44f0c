"""Plotting helpers: image grids, attention overlays, curves. Every figure gets a title and
labelled axes. Each function returns the figure; end a notebook cell with ``plt.show()``.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch

__all__ = ["show_images", "show_attention", "plot_curves", "to_numpy_image"]


def to_numpy_image(img: torch.Tensor) -> np.ndarray:
    """(C, H, W) or (H, W) tensor -> an array imshow understands ((H, W, 3) or (H, W))."""
    img = img.detach().float().cpu()
    if img.dim() == 3:
        if img.shape[0] == 1:
            img = img[0]
        elif img.shape[0] == 3:
            img = img.permute(1, 2, 0).clamp(0, 1)
        else:
            raise ValueError(f"to_numpy_image: expected 1 or 3 channels, but got {img.shape[0]}")
    elif img.dim() != 2:
        raise ValueError(f"to_numpy_image: expected (C, H, W) or (H, W), but got {tuple(img.shape)}")
    return img.numpy()


def _grid(n: int, ncols: int, scale: float):
    ncols = max(1, min(ncols, n))
    nrows = (n + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(scale * ncols, (scale + 0.3) * nrows + 0.7),
                             squeeze=False)
    return fig, axes


def _finish(fig, axes, n: int, title: str, xlabel: str, ylabel: str):
    for ax in axes.flat[n:]:
        ax.axis("off")
    for ax in axes.flat[:n]:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title)
    fig.supxlabel(xlabel, fontsize="small")
    fig.supylabel(ylabel, fontsize="small")
    fig.tight_layout()
    return fig


def show_images(images: torch.Tensor | Sequence[torch.Tensor], *, titles: Sequence[str] | None = None,
                title: str = "Images", ncols: int = 8, cmap: str = "gray", scale: float = 1.6,
                xlabel: str = "width (pixels)", ylabel: str = "height (pixels)",
                symmetric: bool = False, vmin: float | None = None, vmax: float | None = None,
                masks: torch.Tensor | None = None):
    """A grid of images: (N, 3, H, W) colour, (N, 1, H, W) or (N, H, W) single-channel maps.

    Single-channel maps use ``cmap`` with their own range unless ``vmin``/``vmax`` fix one
    shared range (``symmetric`` centres it on 0 with a diverging map). ``masks`` (N, H, W),
    if given, is outlined in cyan.
    """
    n = len(images)
    fig, axes = _grid(n, ncols, scale)
    for i, ax in enumerate(axes.flat[:n]):
        arr = to_numpy_image(images[i])
        if arr.ndim == 2:
            if symmetric:
                lim = float(np.abs(arr).max()) or 1.0
                ax.imshow(arr, cmap="RdBu_r", vmin=-lim, vmax=lim)
            else:
                ax.imshow(arr, cmap=cmap, vmin=vmin, vmax=vmax)
        else:
            ax.imshow(arr)
        if masks is not None:
            ax.contour(masks[i].float().cpu().numpy(), levels=[0.5], colors="cyan", linewidths=1.0)
        if titles is not None:
            ax.set_title(titles[i], fontsize="small")
    return _finish(fig, axes, n, title, xlabel, ylabel)


def show_attention(images: torch.Tensor, attention: torch.Tensor, *, titles: Sequence[str] | None = None,
                   title: str = "Attention", ncols: int = 6, alpha: float = 0.55, cmap: str = "inferno",
                   masks: torch.Tensor | None = None, scale: float = 1.9,
                   value_range: tuple[float, float] | None = None, label: str | None = None):
    """Attention maps laid over their images.

    ``images`` (N, 3, H, W) or (N, H, W); ``attention`` (N, h, w) or (N, 1, h, w) at any
    resolution, resized bilinearly to (H, W). By default each map is stretched to its own
    [min, max] for display (the colour bar then reads "scaled per image"): good for where a
    softmax distribution looks, misleading for gates. Gates in (0, 1) should be drawn on
    their absolute scale: ``value_range=(0, 1)`` fixes one colour scale for every map, and
    ``label`` names the colour bar (default "gate value" with a range, else "attention
    (scaled per image)"). ``masks`` (N, H, W), if given, is outlined in cyan (the ground truth).
    """
    if attention.dim() == 4:
        attention = attention[:, 0]
    n = len(images)
    if attention.shape[0] != n:
        raise ValueError(f"show_attention: expected one map per image ({n}), but got {attention.shape[0]}")
    size = images.shape[-2:]
    up = torch.nn.functional.interpolate(attention[:, None].detach().float().cpu(), size=size,
                                         mode="bilinear", align_corners=False)[:, 0]
    if value_range is None:
        lo = up.flatten(1).min(1).values[:, None, None]
        hi = up.flatten(1).max(1).values[:, None, None]
        up = (up - lo) / (hi - lo).clamp_min(1e-12)
        vmin, vmax = 0.0, 1.0
        label = label or "attention (scaled per image)"
    else:
        vmin, vmax = (float(v) for v in value_range)
        if not vmin < vmax:
            raise ValueError(f"show_attention: expected value_range (low, high) with low < high, but got {value_range}")
        label = label or "gate value"
    fig, axes = _grid(n, ncols, scale)
    for i, ax in enumerate(axes.flat[:n]):
        arr = to_numpy_image(images[i])
        ax.imshow(arr, cmap="gray" if arr.ndim == 2 else None)
        im = ax.imshow(up[i].numpy(), cmap=cmap, alpha=alpha, vmin=vmin, vmax=vmax)
        if masks is not None:
            ax.contour(masks[i].float().numpy(), levels=[0.5], colors="cyan", linewidths=1.0)
        if titles is not None:
            ax.set_title(titles[i], fontsize="small")
    fig = _finish(fig, axes, n, title, "width (pixels)", "height (pixels)")
    fig.colorbar(im, ax=list(axes.flat), shrink=0.8, label=label)
    return fig


def plot_curves(x: Sequence[float], series: Mapping[str, Sequence[float]], *, title: str, xlabel: str,
                ylabel: str, logy: bool = False, logx: bool = False, figsize=(6, 3.6)):
    """Line plot of several named series over one x axis (scaling curves, learning curves)."""
    fig, ax = plt.subplots(figsize=figsize)
    for name, ys in series.items():
        ax.plot(list(x), list(ys), marker="o", label=name)
    if logy:
        ax.set_yscale("log")
    if logx:
        ax.set_xscale("log")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig
