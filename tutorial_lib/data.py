"""Seeded, offline synthetic data sets with ground truth for attention.

Nothing is downloaded: every image is drawn by numpy from a seed, so a data set is the same
on every machine, and the ground truth an attention map should find is known exactly.

* ``objects_on_clutter``: the class is decided by a small glyph on a tile at a random place on
  a cluttered background; ``masks`` marks the tile (where a spatial attention map should
  look).
* ``channel_signal``: the class lives in a few channels out of many; which channels carry it
  changes from image to image and ``channel_masks`` says which. A fixed convolution cannot
  know in advance which channels to trust; an input-dependent channel gate can.
* ``sample_image``: a natural photograph shipped with matplotlib, as a (3, H, W) tensor.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = [
    "LabelledImages",
    "GLYPHS",
    "objects_on_clutter",
    "channel_signal",
    "sample_image",
    "FEATURE_NAMES",
    "handmade_features",
    "attention_on_mask",
    "OddOneOutImages",
    "odd_one_out",
]

# 6x6 glyphs, drawn on an 8x8 tile (1-pixel border of tile colour). 1 = glyph pixel.
_G = {
    "plus": ["..##..",
             "..##..",
             "######",
             "######",
             "..##..",
             "..##.."],
    "cross": ["##..##",
              ".####.",
              "..##..",
              "..##..",
              ".####.",
              "##..##"],
    "ring": ["######",
             "#....#",
             "#....#",
             "#....#",
             "#....#",
             "######"],
    "triangle": ["#.....",
                 "##....",
                 "###...",
                 "####..",
                 "#####.",
                 "######"],
}
GLYPHS: dict[str, np.ndarray] = {k: np.array([[c == "#" for c in row] for row in v]) for k, v in _G.items()}
TILE = 8  # tile side in pixels; the glyph sits inside a 1-pixel border


@dataclass
class LabelledImages(Dataset):
    """Images with labels and the ground truth an attention map can be scored against.

    ``images`` (N, C, H, W) float32, ``labels`` (N,) int64, ``class_names`` one per class;
    ``masks`` (N, H, W) bool where the class-deciding object is (or None); ``channel_masks``
    (N, C) bool, the channels that carry the class (or None).
    Indexing returns ``(image, label)`` so the set plugs into a ``DataLoader``.
    """

    images: torch.Tensor
    labels: torch.Tensor
    class_names: tuple[str, ...]
    masks: torch.Tensor | None = None
    channel_masks: torch.Tensor | None = None
    description: str = field(default="", repr=False)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[i], self.labels[i]

    def subset(self, index: slice | torch.Tensor) -> "LabelledImages":
        """The same data set restricted to ``index`` (a slice or an index tensor)."""
        pick = (lambda t: None if t is None else t[index])
        return replace(self, images=self.images[index], labels=self.labels[index],
                       masks=pick(self.masks), channel_masks=pick(self.channel_masks))

    def split(self, n_train: int) -> tuple["LabelledImages", "LabelledImages"]:
        """The first ``n_train`` samples and the rest (samples are already in random order)."""
        if not 0 < n_train < len(self):
            raise ValueError(f"LabelledImages.split: expected 0 < n_train < {len(self)}, "
                             f"but got {n_train}")
        return self.subset(slice(0, n_train)), self.subset(slice(n_train, None))


def _check_n(name: str, n: object, minimum: int = 1) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, but got {n!r}")
    return int(n)


def _smooth_noise(rng: np.random.Generator, n: int, size: int, channels: int, cells: int) -> np.ndarray:
    """Low-frequency colour noise: a coarse random grid upsampled bilinearly."""
    coarse = rng.random((n, channels, cells + 1, cells + 1))
    t = np.linspace(0, cells, size)
    i0 = np.clip(np.floor(t).astype(int), 0, cells - 1)
    f = (t - i0)[None, None]
    rows = coarse[:, :, i0, :] * (1 - f[..., None]) + coarse[:, :, i0 + 1, :] * f[..., None]
    out = rows[..., i0] * (1 - f) + rows[..., i0 + 1] * f
    return out


def objects_on_clutter(n: int = 2000, *, size: int = 32, clutter: int = 12, noise: float = 0.04,
                       seed: int = 0) -> LabelledImages:
    """Classify a glyph on a tile placed at random on a cluttered background.

    Each RGB image (``size`` x ``size``, values in [0, 1]) holds: smooth colour noise;
    ``clutter`` random strokes (short horizontal, vertical and diagonal bars) and blobs in
    random colours, built from the same pieces as the glyphs, so no single pixel or stroke
    reveals the class; and one 8x8 tile of a flat colour carrying one of four glyphs
    (``GLYPHS``: plus, cross, ring, triangle) in a contrasting colour. The glyph decides
    the label. ``masks`` marks the tile's 64 pixels. Pixel noise of standard deviation
    ``noise`` is added last, from its own random stream, so changing ``noise`` changes no
    layout.
    """
    n = _check_n("objects_on_clutter: n", n)
    size = _check_n("objects_on_clutter: size", size, minimum=TILE + 2)
    clutter = _check_n("objects_on_clutter: clutter", clutter, minimum=0)
    if noise < 0:
        raise ValueError(f"objects_on_clutter: expected noise >= 0, but got {noise}")
    rng = np.random.default_rng([seed, 0])
    names = tuple(GLYPHS)
    glyphs = np.stack([GLYPHS[k] for k in names])

    images = 0.15 + 0.5 * _smooth_noise(rng, n, size, 3, cells=4)
    labels = rng.integers(0, len(names), n)
    masks = np.zeros((n, size, size), dtype=bool)
    yy, xx = np.mgrid[0:size, 0:size]
    for i in range(n):
        img = images[i]
        for _ in range(clutter):
            colour = rng.random(3)
            y, x = rng.integers(0, size, 2)
            kind = rng.integers(0, 4)
            length = rng.integers(3, 7)
            if kind == 0:    # horizontal bar
                sel = (yy >= y) & (yy < y + 2) & (xx >= x) & (xx < x + length)
            elif kind == 1:  # vertical bar
                sel = (xx >= x) & (xx < x + 2) & (yy >= y) & (yy < y + length)
            elif kind == 2:  # diagonal stroke
                d = yy - y
                sel = (d >= 0) & (d < length) & (np.abs(xx - x - d) <= 0)
            else:            # blob
                sel = (yy - y) ** 2 + (xx - x) ** 2 <= rng.integers(1, 5)
            img[:, sel] = colour[:, None]
        # the tile and its glyph: colours far apart so the glyph is always visible
        tile = rng.random(3) * 0.5
        ink = 0.5 + rng.random(3) * 0.5
        if rng.random() < 0.5:
            tile, ink = ink, tile
        y, x = rng.integers(0, size - TILE + 1, 2)
        img[:, y:y + TILE, x:x + TILE] = tile[:, None, None]
        g = glyphs[labels[i]]
        patch = img[:, y + 1:y + TILE - 1, x + 1:x + TILE - 1]
        patch[:, g] = ink[:, None]
        masks[i, y:y + TILE, x:x + TILE] = True
    noise_rng = np.random.default_rng([seed, 1])
    images = np.clip(images + noise * noise_rng.standard_normal(images.shape), 0.0, 1.0)
    return LabelledImages(
        images=torch.from_numpy(images.astype(np.float32)),
        labels=torch.from_numpy(labels.astype(np.int64)),
        class_names=names,
        masks=torch.from_numpy(masks),
        description=f"objects_on_clutter(n={n}, size={size}, clutter={clutter}, noise={noise}, seed={seed})",
    )


def channel_signal(n: int = 2000, *, channels: int = 16, informative: int = 3, size: int = 16,
                   amplitude: float = 1.0, noise: float = 1.0, seed: int = 0) -> LabelledImages:
    """Two classes told apart by a pattern that lives in a few channels only.

    Every channel of every image holds a unit-variance noise texture plus a grating. In
    ``informative`` channels, chosen at random per image, the grating is horizontal for
    class 0 and vertical for class 1; in the other channels it has a random orientation
    unrelated to the class (a distractor of the same strength). The informative channels
    are flagged by a positive mean offset of ``amplitude``: a per-channel summary (what a
    squeeze computes) tells which channels to trust, but no fixed per-channel weight can,
    because the informative set changes from image to image. ``channel_masks`` (N, C) marks
    the informative channels.
    """
    n = _check_n("channel_signal: n", n)
    channels = _check_n("channel_signal: channels", channels, minimum=2)
    informative = _check_n("channel_signal: informative", informative)
    size = _check_n("channel_signal: size", size, minimum=4)
    if informative >= channels:
        raise ValueError(f"channel_signal: expected informative < channels ({channels}), "
                         f"but got {informative}")
    rng = np.random.default_rng([seed, 2])
    labels = rng.integers(0, 2, n)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    freq = 2 * np.pi * 3 / size
    chosen = np.argsort(rng.random((n, channels)), axis=1)[:, :informative]
    cmask = np.zeros((n, channels), dtype=bool)
    np.put_along_axis(cmask, chosen, True, axis=1)
    # orientation per (image, channel): informative follow the label, others are random
    vertical = np.where(cmask, labels[:, None] == 1, rng.random((n, channels)) < 0.5)
    phase = rng.random((n, channels)) * 2 * np.pi
    coord = np.where(vertical[..., None, None], xx, yy)  # (n, C, H, W)
    grating = np.sin(freq * coord + phase[..., None, None])
    images = grating + noise * rng.standard_normal((n, channels, size, size))
    images += amplitude * cmask[..., None, None]
    return LabelledImages(
        images=torch.from_numpy(images.astype(np.float32)),
        labels=torch.from_numpy(labels.astype(np.int64)),
        class_names=("horizontal", "vertical"),
        channel_masks=torch.from_numpy(cmask),
        description=(f"channel_signal(n={n}, channels={channels}, informative={informative}, "
                     f"size={size}, amplitude={amplitude}, noise={noise}, seed={seed})"),
    )


def sample_image(name: str = "grace_hopper.jpg", size: int | None = 128) -> torch.Tensor:
    """A photograph shipped with matplotlib as a (3, H, W) float tensor in [0, 1].

    ``size`` resizes the shorter side (area interpolation) and centre-crops to a square;
    ``None`` keeps the original. Works offline: the file is part of matplotlib.
    """
    import matplotlib.cbook as cbook
    import matplotlib.image as mpimg

    with cbook.get_sample_data(name, asfileobj=True) as f:
        arr = mpimg.imread(f, format=name.rsplit(".", 1)[-1])
    img = torch.from_numpy(np.array(arr, dtype=np.float32))  # a copy: the decoded array is read-only
    if img.dim() == 2:
        img = img.unsqueeze(-1).expand(-1, -1, 3)
    img = img[..., :3].permute(2, 0, 1)
    if img.max() > 1.0:
        img = img / 255.0
    if size is not None:
        h, w = img.shape[1:]
        s = min(h, w)
        top, left = (h - s) // 2, (w - s) // 2
        img = img[:, top:top + s, left:left + s]
        img = torch.nn.functional.interpolate(img[None], size=(size, size), mode="area")[0]
    return img.contiguous()


FEATURE_NAMES = ("brightness", "red-green", "blue-yellow", "edge |", "edge -", "edge \\", "edge /",
                 "spot")


def handmade_features(image: torch.Tensor) -> torch.Tensor:
    """A feature map with channels one can name, from a (3, H, W) or (B, 3, H, W) RGB image.

    Eight fixed filters stand in for a trained network's first layer, so the derivations can
    run on a real feature map whose channels mean something (``FEATURE_NAMES``): brightness,
    two colour-opponent channels, four oriented edge detectors (3x3, on brightness) and a
    centre-surround spot detector. Every channel is rectified (ReLU), as features after a
    conv-BN-ReLU are. Returns (8, H, W) or (B, 8, H, W); 'same' padding keeps H and W.
    """
    single = image.dim() == 3
    x = image[None] if single else image
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"handmade_features: expected an RGB image (3, H, W) or (B, 3, H, W), "
                         f"but got shape {tuple(image.shape)}")
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    lum = 0.299 * r + 0.587 * g + 0.114 * b
    k = torch.tensor([
        [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]],      # responds to vertical edges  |
        [[-1, -2, -1], [0, 0, 0], [1, 2, 1]],      # horizontal edges  -
        [[0, 1, 2], [-1, 0, 1], [-2, -1, 0]],      # diagonal edges \\ (brightness grows to the top right)
        [[2, 1, 0], [1, 0, -1], [0, -1, -2]],      # diagonal edges /
        [[-1, -1, -1], [-1, 8, -1], [-1, -1, -1]],  # centre-surround spot
    ], dtype=x.dtype, device=x.device)[:, None] / 4.0
    edges = torch.nn.functional.conv2d(torch.nn.functional.pad(lum, (1, 1, 1, 1), mode="replicate"), k)
    edges = torch.cat([edges[:, :4].abs(), edges[:, 4:]], dim=1)
    colour = torch.cat([lum, r - g, (r + g) / 2 - b], dim=1)
    out = torch.relu(torch.cat([colour, edges], dim=1))
    return out[0] if single else out


def attention_on_mask(attention: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Share of attention mass that falls on the mask, per image.

    ``attention`` (B, h, w) or (B, 1, h, w), non-negative, at any resolution; it is resized
    bilinearly to the masks' (H, W). Returns (B,) values in [0, 1]. A uniform map scores the
    mask's area fraction (1/16 for an 8x8 tile in a 32x32 image), the chance level.
    """
    if attention.dim() == 4:
        if attention.shape[1] != 1:
            raise ValueError(f"attention_on_mask: expected attention (B, 1, h, w), but got shape "
                             f"{tuple(attention.shape)}")
        attention = attention[:, 0]
    if attention.dim() != 3 or masks.dim() != 3 or attention.shape[0] != masks.shape[0]:
        raise ValueError(f"attention_on_mask: expected attention (B, h, w) and masks (B, H, W) with "
                         f"the same B, but got {tuple(attention.shape)} and {tuple(masks.shape)}")
    if (attention < 0).any():
        raise ValueError("attention_on_mask: expected a non-negative attention map, but it has "
                         "negative values")
    up = torch.nn.functional.interpolate(attention[:, None].float(), size=masks.shape[-2:],
                                         mode="bilinear", align_corners=False)[:, 0]
    total = up.flatten(1).sum(1).clamp_min(1e-12)
    return (up * masks.float()).flatten(1).sum(1) / total


# --- notebook 04: the odd one out ---

@dataclass
class OddOneOutImages(LabelledImages):
    """``LabelledImages`` with ``object_masks`` (N, H, W) bool: the tiles of all objects.

    ``masks`` marks the odd object's tile only; ``object_masks`` marks every object's tile (the
    odd one's included), so a map can be scored on the odd tile against the other tiles.
    """

    object_masks: torch.Tensor | None = None

    def subset(self, index: slice | torch.Tensor) -> "OddOneOutImages":
        out = super().subset(index)
        return replace(out, object_masks=None if self.object_masks is None else self.object_masks[index])


def odd_one_out(n: int = 2000, *, size: int = 32, objects: int = 4, clutter: int = 6, noise: float = 0.04,
                seed: int = 0) -> OddOneOutImages:
    """Find the odd one out: several glyphs on tiles, all alike but one; the odd glyph is the class.

    Each RGB image (``size`` x ``size``, values in [0, 1]) holds smooth colour noise, ``clutter``
    random strokes and blobs (the pieces ``objects_on_clutter`` uses), and ``objects`` 8x8
    tiles at random places that do not overlap. Every tile has its own random tile and ink
    colours; ``objects - 1`` tiles carry the same glyph (the majority) and one tile carries
    another glyph (the odd one). The label is the odd glyph (``GLYPHS``: plus, cross, ring,
    triangle); the majority glyph is drawn uniformly from the other three. So whether a tile
    matters depends on all the other tiles: the same tile is the answer in one image and a
    distractor in another. ``masks`` marks the odd tile, ``object_masks`` every tile. Pixel
    noise of standard deviation ``noise`` comes last, from its own random stream.
    """
    n = _check_n("odd_one_out: n", n)
    objects = _check_n("odd_one_out: objects", objects, minimum=3)
    clutter = _check_n("odd_one_out: clutter", clutter, minimum=0)
    size = _check_n("odd_one_out: size", size, minimum=TILE + 2)
    if (size // TILE) ** 2 < objects:
        raise ValueError(f"odd_one_out: expected room for {objects} non-overlapping {TILE}x{TILE} tiles, "
                         f"but a {size}x{size} image holds at most {(size // TILE) ** 2}; use a larger size")
    if noise < 0:
        raise ValueError(f"odd_one_out: expected noise >= 0, but got {noise}")
    rng = np.random.default_rng([seed, 4])
    names = tuple(GLYPHS)
    glyphs = np.stack([GLYPHS[k] for k in names])
    k = len(names)

    images = 0.15 + 0.5 * _smooth_noise(rng, n, size, 3, cells=4)
    labels = rng.integers(0, k, n)
    majority = (labels + rng.integers(1, k, n)) % k            # any glyph but the odd one
    masks = np.zeros((n, size, size), dtype=bool)
    object_masks = np.zeros((n, size, size), dtype=bool)
    yy, xx = np.mgrid[0:size, 0:size]
    for i in range(n):
        img = images[i]
        for _ in range(clutter):
            colour = rng.random(3)
            y, x = rng.integers(0, size, 2)
            kind, length = rng.integers(0, 4), rng.integers(3, 7)
            if kind == 0:
                sel = (yy >= y) & (yy < y + 2) & (xx >= x) & (xx < x + length)
            elif kind == 1:
                sel = (xx >= x) & (xx < x + 2) & (yy >= y) & (yy < y + length)
            elif kind == 2:
                sel = (yy - y >= 0) & (yy - y < length) & (xx - x == yy - y)
            else:
                sel = (yy - y) ** 2 + (xx - x) ** 2 <= rng.integers(1, 5)
            img[:, sel] = colour[:, None]
        # tile places: rejection sampling until they do not overlap (a grid fallback guarantees it)
        places: list[tuple[int, int]] = []
        for _ in range(200):
            y, x = rng.integers(0, size - TILE + 1, 2)
            if all(abs(y - py) >= TILE or abs(x - px) >= TILE for py, px in places):
                places.append((int(y), int(x)))
                if len(places) == objects:
                    break
        if len(places) < objects:
            cells = rng.permutation((size // TILE) ** 2)[:objects]
            places = [(int(c // (size // TILE)) * TILE, int(c % (size // TILE)) * TILE) for c in cells]
        odd = rng.integers(0, objects)
        for j, (y, x) in enumerate(places):
            tile, ink = rng.random(3) * 0.5, 0.5 + rng.random(3) * 0.5
            if rng.random() < 0.5:
                tile, ink = ink, tile
            img[:, y:y + TILE, x:x + TILE] = tile[:, None, None]
            patch = img[:, y + 1:y + TILE - 1, x + 1:x + TILE - 1]
            patch[:, glyphs[labels[i] if j == odd else majority[i]]] = ink[:, None]
            object_masks[i, y:y + TILE, x:x + TILE] = True
            if j == odd:
                masks[i, y:y + TILE, x:x + TILE] = True
    noise_rng = np.random.default_rng([seed, 5])
    images = np.clip(images + noise * noise_rng.standard_normal(images.shape), 0.0, 1.0)
    return OddOneOutImages(
        images=torch.from_numpy(images.astype(np.float32)),
        labels=torch.from_numpy(labels.astype(np.int64)),
        class_names=names,
        masks=torch.from_numpy(masks),
        object_masks=torch.from_numpy(object_masks),
        description=(f"odd_one_out(n={n}, size={size}, objects={objects}, clutter={clutter}, noise={noise}, "
                     f"seed={seed})"),
    )
