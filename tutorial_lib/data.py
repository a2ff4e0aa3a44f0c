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
    "MultiLabelImages",
    "objects_on_clutter_multilabel",
    "beacon_lookup",
    "fine_grained_details",
    "PALETTE",
    "TileMatching",
    "matching_tiles",
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


# --- notebook 05: several objects per image, multi-hot labels ---

@dataclass
class MultiLabelImages(Dataset):
    """Images holding several objects: multi-hot targets and one mask per class.

    ``images`` (N, C, H, W) float32; ``targets`` (N, K) float32, 1 where class k is in the
    image; ``class_names`` one per class; ``masks`` (N, K, H, W) bool, the tile of the
    object of class k (all False where class k is absent). Indexing returns
    ``(image, targets)``, so ``tl.fit`` slices the set directly (it reads ``images`` and
    ``targets``); train it with a binary cross-entropy on the logits.
    """

    images: torch.Tensor
    targets: torch.Tensor
    class_names: tuple[str, ...]
    masks: torch.Tensor
    description: str = field(default="", repr=False)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[i], self.targets[i]

    def subset(self, index: slice | torch.Tensor) -> "MultiLabelImages":
        """The same data set restricted to ``index`` (a slice or an index tensor)."""
        return replace(self, images=self.images[index], targets=self.targets[index], masks=self.masks[index])

    def split(self, n_train: int) -> tuple["MultiLabelImages", "MultiLabelImages"]:
        """The first ``n_train`` samples and the rest (samples are already in random order)."""
        if not 0 < n_train < len(self):
            raise ValueError(f"MultiLabelImages.split: expected 0 < n_train < {len(self)}, "
                             f"but got {n_train}")
        return self.subset(slice(0, n_train)), self.subset(slice(n_train, None))

    def as_single_label(self) -> LabelledImages:
        """The single-label view of a set with exactly one object per image.

        ``labels`` (N,) int64 is the class of the one object and ``masks`` (N, H, W) its tile,
        as ``objects_on_clutter`` gives them (for cross-entropy and accuracy).
        """
        per_image = self.targets.sum(dim=1)
        if not bool((per_image == 1).all()):
            raise ValueError(f"MultiLabelImages.as_single_label: expected exactly one object per image "
                             f"(make the set with objects=1), but the counts range from "
                             f"{int(per_image.min())} to {int(per_image.max())}")
        labels = self.targets.argmax(dim=1)
        masks = self.masks[torch.arange(len(labels)), labels]
        return LabelledImages(images=self.images, labels=labels, class_names=self.class_names, masks=masks,
                              description=self.description + ".as_single_label()")


_BLOB_DY, _BLOB_DX = (v.ravel() for v in np.mgrid[-2:3, -2:3])


def _draw_clutter(rng: np.random.Generator, img: np.ndarray, clutter: int) -> None:
    """Random bars, diagonal strokes and blobs in random colours, drawn into img (3, S, S).

    The strokes of ``objects_on_clutter`` (its kinds and sizes), drawn by slicing, clipped at
    the border; the random numbers of one image are drawn at once.
    """
    size = img.shape[-1]
    colours = rng.random((clutter, 3, 1))
    where = rng.integers(0, size, (clutter, 2)).tolist()
    kinds = rng.integers(0, 4, clutter).tolist()
    lengths = rng.integers(3, 7, clutter).tolist()
    radii = rng.integers(1, 5, clutter).tolist()  # squared radius of a blob
    for colour, (y, x), kind, length, r2 in zip(colours, where, kinds, lengths, radii):
        if kind == 0:    # horizontal bar
            img[:, y:y + 2, x:x + length] = colour[..., None]
        elif kind == 1:  # vertical bar
            img[:, y:y + length, x:x + 2] = colour[..., None]
        elif kind == 2:  # diagonal stroke
            d = np.arange(min(length, size - y, size - x))
            img[:, y + d, x + d] = colour
        else:            # blob: the pixels within the squared radius
            yy, xx = y + _BLOB_DY, x + _BLOB_DX
            keep = (_BLOB_DY ** 2 + _BLOB_DX ** 2 <= r2) & (yy >= 0) & (yy < size) & (xx >= 0) & (xx < size)
            img[:, yy[keep], xx[keep]] = colour


def objects_on_clutter_multilabel(n: int = 2000, *, size: int = 32, objects: int | tuple[int, int] = (1, 3),
                                  clutter: int = 12, noise: float = 0.04, seed: int = 0) -> MultiLabelImages:
    """Several glyphs on tiles on a cluttered background; every glyph present is a label.

    The pieces of ``objects_on_clutter`` (smooth colour noise, ``clutter`` random strokes and
    blobs, 8x8 tiles of a flat colour carrying one of the four ``GLYPHS`` in a contrasting
    colour, pixel noise of standard deviation ``noise``), with between ``objects[0]`` and
    ``objects[1]`` tiles per image (uniformly; an int means exactly that many), each of a
    different class, placed at random without overlapping. ``targets[i, k]`` is 1 when
    class k is in image i; ``masks[i, k]`` marks the tile of that object.

    ``objects=1`` gives the single-label variant of the same task (one object per image,
    same pieces and sizes): ``.as_single_label()`` turns it into class indices.
    """
    name = "objects_on_clutter_multilabel"
    n = _check_n(f"{name}: n", n)
    size = _check_n(f"{name}: size", size, minimum=TILE + 2)
    clutter = _check_n(f"{name}: clutter", clutter, minimum=0)
    names = tuple(GLYPHS)
    lo, hi = (objects, objects) if isinstance(objects, (int, np.integer)) and not isinstance(objects, bool) \
        else tuple(objects) if isinstance(objects, (tuple, list)) and len(objects) == 2 else (None, None)
    if lo is None or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) for v in (lo, hi)) \
            or not 1 <= lo <= hi <= len(names):
        raise ValueError(f"{name}: expected objects to be an int or a (min, max) pair with "
                         f"1 <= min <= max <= {len(names)} (one object per class at most), but got {objects!r}")
    if noise < 0:
        raise ValueError(f"{name}: expected noise >= 0, but got {noise}")
    if hi * (TILE + 1) ** 2 > size * size // 2:
        raise ValueError(f"{name}: {hi} tiles of {TILE}x{TILE} do not fit loosely in a {size}x{size} image; "
                         f"use a larger size or fewer objects")
    rng = np.random.default_rng([seed, 5])
    glyphs = np.stack([GLYPHS[k] for k in names])
    k = len(names)

    images = 0.15 + 0.5 * _smooth_noise(rng, n, size, 3, cells=4)
    targets = np.zeros((n, k), dtype=np.float32)
    masks = np.zeros((n, k, size, size), dtype=bool)
    for i in range(n):
        img = images[i]
        _draw_clutter(rng, img, clutter)
        count = int(rng.integers(lo, hi + 1))
        classes = rng.permutation(k)[:count]
        placed: list[tuple[int, int]] = []
        for c in classes:
            for _ in range(1000):  # rejection sampling: tiles do not overlap
                y, x = (int(v) for v in rng.integers(0, size - TILE + 1, 2))
                if all(abs(y - py) >= TILE or abs(x - px) >= TILE for py, px in placed):
                    break
            else:  # pragma: no cover - the size check above leaves ample room
                raise RuntimeError(f"{name}: could not place {count} tiles without overlap")
            placed.append((y, x))
            tile = rng.random(3) * 0.5
            ink = 0.5 + rng.random(3) * 0.5
            if rng.random() < 0.5:
                tile, ink = ink, tile
            img[:, y:y + TILE, x:x + TILE] = tile[:, None, None]
            patch = img[:, y + 1:y + TILE - 1, x + 1:x + TILE - 1]
            patch[:, glyphs[c]] = ink[:, None]
            targets[i, c] = 1.0
            masks[i, c, y:y + TILE, x:x + TILE] = True
    noise_rng = np.random.default_rng([seed, 6])
    images = np.clip(images + noise * noise_rng.standard_normal(images.shape), 0.0, 1.0)
    return MultiLabelImages(
        images=torch.from_numpy(images.astype(np.float32)),
        targets=torch.from_numpy(targets),
        class_names=names,
        masks=torch.from_numpy(masks),
        description=(f"{name}(n={n}, size={size}, objects={objects!r}, clutter={clutter}, "
                     f"noise={noise}, seed={seed})"),
    )


# --- notebook 07: gather a few global descriptors, distribute them per position ---

def beacon_lookup(n: int = 1500, *, size: int = 8, kinds: int = 2, probes: int = 8, decoys: int = 3,
                  noise: float = 0.1, seed: int = 0) -> LabelledImages:
    """Every probe must report the bit of the one beacon of its own kind, wherever that is.

    Each map (``size`` x ``size``) holds one *beacon* per kind (``kinds`` of them) carrying a
    random bit, ``probes`` probe positions of random kinds, and ``decoys`` positions of random
    kinds carrying random bits but no beacon flag; all at distinct random places. Channels:
    ``0 .. kinds-1`` the kind (one-hot, at beacons, probes and decoys), ``kinds`` the beacon flag,
    ``kinds + 1`` the bit as +1 or -1 (beacons and decoys). Gaussian noise of standard deviation
    ``noise`` is added to every channel everywhere, from its own random stream.

    ``labels`` (N, size, size) is a per-position target: at a probe, 1 if the beacon of the
    probe's kind carries +1, else 0; -100 elsewhere (ignored by ``F.cross_entropy``). ``masks``
    marks the beacons, the only places worth gathering from (chance share ``kinds / size²``).
    No local filter can answer (the beacon is anywhere); one global summary broadcast to every
    position must hold all ``kinds`` bits and leave each probe to pick its own; a few gathered
    descriptors, one per kind, distributed by each probe's kind, fit the task exactly.
    """
    n = _check_n("beacon_lookup: n", n)
    size = _check_n("beacon_lookup: size", size, minimum=2)
    kinds = _check_n("beacon_lookup: kinds", kinds)
    probes = _check_n("beacon_lookup: probes", probes)
    decoys = _check_n("beacon_lookup: decoys", decoys, minimum=0)
    if kinds + probes + decoys > size * size:
        raise ValueError(f"beacon_lookup: expected kinds + probes + decoys <= size * size ({size * size}), "
                         f"but got {kinds + probes + decoys}")
    if noise < 0:
        raise ValueError(f"beacon_lookup: expected noise >= 0, but got {noise}")
    rng = np.random.default_rng([seed, 3])
    places = np.argsort(rng.random((n, size * size)), axis=1)[:, :kinds + probes + decoys]
    beacon, probe, decoy = np.split(places, [kinds, kinds + probes], axis=1)
    bits = rng.choice([-1.0, 1.0], (n, kinds))
    probe_kind = rng.integers(0, kinds, (n, probes))
    decoy_kind = rng.integers(0, kinds, (n, decoys))
    decoy_bits = rng.choice([-1.0, 1.0], (n, decoys))
    row = np.arange(n)[:, None]
    images = np.zeros((n, kinds + 2, size * size))
    images[row, np.arange(kinds)[None], beacon] = 1.0                  # beacon k has kind k
    images[row, kinds, beacon] = 1.0
    images[row, kinds + 1, beacon] = bits
    images[row, probe_kind, probe] = 1.0
    images[row, decoy_kind, decoy] = 1.0
    images[row, kinds + 1, decoy] = decoy_bits
    labels = np.full((n, size * size), -100, dtype=np.int64)
    labels[row, probe] = (np.take_along_axis(bits, probe_kind, axis=1) > 0).astype(np.int64)
    masks = np.zeros((n, size * size), dtype=bool)
    masks[row, beacon] = True
    noise_rng = np.random.default_rng([seed, 4])
    images = images + noise * noise_rng.standard_normal(images.shape)
    shape = (n, size, size)
    return LabelledImages(
        images=torch.from_numpy(images.reshape(n, kinds + 2, size, size).astype(np.float32)),
        labels=torch.from_numpy(labels.reshape(shape)),
        class_names=("bit 0", "bit 1"),
        masks=torch.from_numpy(masks.reshape(shape)),
        description=(f"beacon_lookup(n={n}, size={size}, kinds={kinds}, probes={probes}, decoys={decoys}, "
                     f"noise={noise}, seed={seed})"),
    )


# --- notebook 06: fine-grained classes that differ only by a small detail ---------------------

def _stamp(images: np.ndarray, top: np.ndarray, left: np.ndarray, shape: np.ndarray,
           colour: np.ndarray) -> None:
    """Paint ``colour`` (n, 3) where ``shape`` (n, k, l) is True, with its corner at (top, left).

    Works on a small window per image (the part outside the image is dropped), so drawing a
    small shape costs n·k·l, not n·H·W.
    """
    n, k, l = shape.shape
    size = images.shape[-1]
    ys = top[:, None, None] + np.arange(k)[None, :, None]
    xs = left[:, None, None] + np.arange(l)[None, None, :]
    keep = shape & (ys >= 0) & (ys < size) & (xs >= 0) & (xs < size)
    which, i, j = np.nonzero(keep)
    images[which, :, ys[which, i, 0], xs[which, 0, j]] = colour[which]


def fine_grained_details(n: int = 2000, *, size: int = 64, mark: int = 2, clutter: int = 6,
                         noise: float = 0.03, seed: int = 0) -> LabelledImages:
    """Fine-grained classes: the same kind of object in every image, told apart by a small mark.

    Each RGB image (``size`` x ``size``, values in [0, 1]) shows an object at a random place on
    a cluttered background (smooth colour noise and ``clutter`` random bars and blobs): an oval
    body of random size and colour with a round head at one end (facing left or right at
    random), like a bird. The head carries a square patch of its own colour with one of the
    four ``GLYPHS`` (plus, cross, ring, triangle) drawn in a contrasting ink, each glyph cell
    ``mark`` x ``mark`` pixels (a 12x12 mark on a 14x14 patch for ``mark=2``): that mark, about
    1/20 of a 64x64 image, is the only thing that decides the class. Everything else (where the
    object is, its size, its colours, the clutter) is random and the same for every class, as
    in fine-grained recognition, where all classes share the object and differ in a detail.
    Shrunk 4 times, a ``mark=2`` glyph is 3 pixels wide, barely readable; a network that knows
    where to look can sample it more densely. ``masks`` marks the patch of the mark. Pixel
    noise of standard deviation ``noise`` comes last from its own random stream.
    """
    n = _check_n("fine_grained_details: n", n)
    mark = _check_n("fine_grained_details: mark", mark, minimum=1)
    patch = 6 * mark + 2                              # the glyph and a 1-pixel border
    head_r = int(np.ceil(patch / np.sqrt(2)))         # the patch fits inside the head
    size = _check_n("fine_grained_details: size", size, minimum=4 * head_r + 8)
    clutter = _check_n("fine_grained_details: clutter", clutter, minimum=0)
    if noise < 0:
        raise ValueError(f"fine_grained_details: expected noise >= 0, but got {noise}")
    rng = np.random.default_rng([seed, 6])
    names = tuple(GLYPHS)
    labels = rng.integers(0, len(names), n)
    coarse = torch.from_numpy(rng.random((n, 3, 4, 4), dtype=np.float32))
    smooth = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=True)
    images = (0.2 + 0.45 * smooth).numpy()
    yy, xx = np.mgrid[0:12, 0:12]
    for _ in range(clutter):                          # bars and blobs in random colours, in 12x12 windows
        colour = rng.random((n, 3), dtype=np.float32)
        top, left = rng.integers(-6, size - 6, n), rng.integers(-6, size - 6, n)
        length = rng.integers(4, 11, n)[:, None, None]
        kind = rng.integers(0, 3, n)[:, None, None]
        radius2 = rng.integers(2, 10, n)[:, None, None]
        bar_h = (yy < 2) & (xx < length)
        bar_v = (xx < 2) & (yy < length)
        blob = (yy - 5) ** 2 + (xx - 5) ** 2 <= radius2
        _stamp(images, top, left, np.where(kind == 0, bar_h, np.where(kind == 1, bar_v, blob)), colour)
    # the body: an oval; the head: a disc at one end, facing left or right
    ry_max, rx_max = max(0.75 * head_r, size / 7), max(1.3 * head_r, size / 4.5)
    ry = rng.uniform(0.7 * ry_max, ry_max, n)
    rx = rng.uniform(0.75 * rx_max, rx_max, n)
    facing = np.where(rng.random(n) < 0.5, 1, -1)
    reach = rx + 1.6 * head_r                         # body centre to the far side of the head
    cy = rng.uniform(ry + 1, size - ry - 1)
    cx = rng.uniform(np.where(facing < 0, reach, rx) + 1, size - np.where(facing > 0, reach, rx) - 1)
    body = (rng.random((n, 3)) * 0.6 + 0.2).astype(np.float32)
    head = np.clip(body + rng.choice([-1, 1], (n, 3)) * rng.uniform(0.15, 0.3, (n, 3)), 0, 1).astype(np.float32)
    by, bx = np.mgrid[0:2 * int(ry_max) + 3, 0:2 * int(rx_max) + 3]
    top, left = np.floor(cy - int(ry_max) - 1).astype(int), np.floor(cx - int(rx_max) - 1).astype(int)
    oval = (((by + top[:, None, None] - cy[:, None, None]) / ry[:, None, None]) ** 2
            + ((bx + left[:, None, None] - cx[:, None, None]) / rx[:, None, None]) ** 2) <= 1
    _stamp(images, top, left, oval, body)
    hy = np.clip(np.round(cy - 0.5 * ry), head_r, size - head_r - 1).astype(int)
    hx = np.clip(np.round(cx + facing * (rx + 0.6 * head_r)), head_r, size - head_r - 1).astype(int)
    hyy, hxx = np.mgrid[-head_r:head_r + 1, -head_r:head_r + 1]
    disc = np.broadcast_to(hyy ** 2 + hxx ** 2 <= head_r ** 2, (n, 2 * head_r + 1, 2 * head_r + 1))
    _stamp(images, hy - head_r, hx - head_r, disc, head)
    # the mark: a glyph in a contrasting ink on a patch (1-pixel border) of the head's colour
    ink = (np.where(head > 0.5, head - 0.5, head + 0.5) * rng.uniform(0.8, 1.0, (n, 3))).astype(np.float32)
    glyphs = np.stack([GLYPHS[k] for k in names]).repeat(mark, axis=1).repeat(mark, axis=2)
    y0, x0 = hy - patch // 2, hx - patch // 2
    _stamp(images, y0 + 1, x0 + 1, glyphs[labels], ink)
    masks = np.zeros((n, size, size), dtype=bool)
    rows, cols = y0[:, None] + np.arange(patch)[None], x0[:, None] + np.arange(patch)[None]
    masks[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]] = True
    noise_rng = np.random.default_rng([seed, 7])
    images = np.clip(images + noise * noise_rng.standard_normal(images.shape, dtype=np.float32), 0.0, 1.0)
    return LabelledImages(
        images=torch.from_numpy(images.astype(np.float32)),
        labels=torch.from_numpy(labels.astype(np.int64)),
        class_names=names,
        masks=torch.from_numpy(masks),
        description=(f"fine_grained_details(n={n}, size={size}, mark={mark}, clutter={clutter}, "
                     f"noise={noise}, seed={seed})"),
    )


# --- notebook 03: which tile matches the corner? ---

PALETTE = {"red": (0.9, 0.15, 0.15), "green": (0.15, 0.75, 0.2), "blue": (0.2, 0.3, 0.95),
           "yellow": (0.95, 0.85, 0.1), "magenta": (0.85, 0.2, 0.85), "cyan": (0.1, 0.8, 0.85)}
MATCHING_QUESTIONS = ("match", "absent")


@dataclass
class TileMatching(LabelledImages):
    """``LabelledImages`` of ``matching_tiles``, with the two tiles that do not match the corner.

    ``masks`` marks the tile whose colour matches the corner tile, ``other_masks`` (N, H, W)
    the two other glyph tiles, ``tile_glyphs`` (N, 3) the glyph index on the matching tile and
    on the two others (in that order).
    """

    other_masks: torch.Tensor | None = None
    tile_glyphs: torch.Tensor | None = None

    def subset(self, index: slice | torch.Tensor) -> "TileMatching":
        out = super().subset(index)
        return replace(out, other_masks=self.other_masks[index], tile_glyphs=self.tile_glyphs[index])


def matching_tiles(n: int = 2000, *, question: str = "match", size: int = 24, clutter: int = 4,
                   noise: float = 0.03, seed: int = 0) -> TileMatching:
    """Four coloured tiles: one in the top-left corner, three with glyphs elsewhere.

    The image is a grid of 8x8 cells (``size`` // 8 on a side). The corner cell holds a tile
    of a flat colour from ``PALETTE``; three other cells, drawn at random, hold tiles with
    three different glyphs of ``GLYPHS`` in black on three different palette colours, exactly
    one of which is the corner's colour. The background is smooth grey noise with ``clutter``
    grey bars. ``question`` picks the label, from the same images (the same ``seed`` gives the
    same images):

    * ``"match"``: the glyph on the tile whose colour matches the corner tile. What a position
      needs depends on what it holds itself (the corner's colour): a relation between the
      reading position and the rest of the image;
    * ``"absent"``: the one glyph of the four that is on none of the tiles. Every position
      needs the same fact about the whole image: a global summary answers it.

    ``masks`` marks the matching tile, ``other_masks`` the other two, ``tile_glyphs`` holds the
    three glyph indices (matching tile first).
    """
    n = _check_n("matching_tiles: n", n)
    size = _check_n("matching_tiles: size", size, minimum=2 * TILE)
    cells = size // TILE
    clutter = _check_n("matching_tiles: clutter", clutter, minimum=0)
    if question not in MATCHING_QUESTIONS:
        raise ValueError(f"matching_tiles: expected question to be one of {MATCHING_QUESTIONS}, "
                         f"but got {question!r}")
    if noise < 0:
        raise ValueError(f"matching_tiles: expected noise >= 0, but got {noise}")
    rng = np.random.default_rng([seed, 3])
    names = tuple(GLYPHS)
    glyphs = np.stack([GLYPHS[k] for k in names])
    palette = np.array(list(PALETTE.values()))
    grey = 0.35 + 0.3 * _smooth_noise(rng, n, size, 1, cells=4)
    images = np.repeat(grey, 3, axis=1)
    masks = np.zeros((n, size, size), dtype=bool)
    other_masks = np.zeros((n, size, size), dtype=bool)
    tile_glyphs = np.zeros((n, 3), dtype=np.int64)
    absent = np.zeros(n, dtype=np.int64)
    for i in range(n):
        img = images[i]
        for _ in range(clutter):  # grey bars: things elsewhere that carry no colour
            y, x = rng.integers(0, size, 2)
            length = rng.integers(3, 8)
            tall, wide = (2, length) if rng.random() < 0.5 else (length, 2)
            img[:, y:y + tall, x:x + wide] = rng.random()
        colours = rng.choice(len(palette), 3, replace=False)    # first one: the corner's colour
        order = rng.permutation(len(names))
        tile_glyphs[i], absent[i] = order[:3], order[3]
        img[:, :TILE, :TILE] = palette[colours[0]][:, None, None]
        for t, cell in enumerate(rng.choice(cells * cells - 1, 3, replace=False) + 1):  # not the corner
            y, x = (cell // cells) * TILE, (cell % cells) * TILE
            img[:, y:y + TILE, x:x + TILE] = palette[colours[t]][:, None, None]
            patch = img[:, y + 1:y + TILE - 1, x + 1:x + TILE - 1]
            patch[:, glyphs[tile_glyphs[i, t]]] = 0.05
            (masks if t == 0 else other_masks)[i, y:y + TILE, x:x + TILE] = True
    noise_rng = np.random.default_rng([seed, 4])
    images = np.clip(images + noise * noise_rng.standard_normal(images.shape), 0.0, 1.0)
    labels = tile_glyphs[:, 0] if question == "match" else absent
    return TileMatching(
        images=torch.from_numpy(images.astype(np.float32)),
        labels=torch.from_numpy(labels),
        class_names=names,
        masks=torch.from_numpy(masks),
        other_masks=torch.from_numpy(other_masks),
        tile_glyphs=torch.from_numpy(tile_glyphs),
        description=f"matching_tiles(n={n}, question={question!r}, size={size}, clutter={clutter}, "
                    f"noise={noise}, seed={seed})",
    )


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
