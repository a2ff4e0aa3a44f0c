"""The zoo of notebook 08: every mechanism of the course in one small backbone, on one task.

One backbone for every arm, so that the mechanism is the only difference (``size`` is the
side of the square images, a multiple of 4; the zoo table uses 64):

    image (3, size, size)
      -> conv-BN-ReLU 3->16, max-pool 2 -> conv-BN-ReLU 16->32, max-pool 2 -> conv-BN-ReLU 32->32
      -> [the mechanism, on the (32, size/4, size/4) feature map]           "block" arms
      -> global average pooling -> linear 32->K                             (the plain head)
         or global max pooling -> linear 32->K                              ("plain-max")
         or [global average; global max] -> linear 64->K                    ("plain-avgmax")
         or CSRA on the (32, size/4, size/4) map                            "head" arm

* ``plain``: no mechanism, global average pooling: the network every block arm is added to;
* ``plain-max``: no mechanism, global *max* pooling: the free baseline (no extra parameter,
  no extra multiply-add) that a classifier head or a spatial mechanism must beat;
* ``plain-avgmax``: no mechanism, both poolings side by side ([average; max], 2 x 32 numbers)
  and a linear layer on them: the other free read-out (32 K weights more, nothing else);
* block arms (same place, same width: the last feature map, 32 channels):
  ``SE`` (r = 4: 8 hidden units), ``CBAM`` (r = 4, 7x7), ``non-local`` (embedded Gaussian,
  official defaults: inner 16, 2x2-pooled keys), ``RGA-SC`` (both branches, as the paper's
  model), ``RGA-S`` (its spatial branch alone), ``RGA-S-zero`` (RGA-S with its relations
  zeroed: the relation embedding's BatchNorm weight and bias set to zero and frozen, so the gate
  sees only its summary of each position's own features, the ablation of notebook 04; the
  weights that compute and embed the relations then get no gradient either),
  ``RGA-C`` (its channel branch alone), all with
  spa_ratio 8 as official, cha_ratio 4 and down_ratio 4 (on 32 channels the official 8 and 8
  leave the channel head no hidden unit), ``A2`` (double attention, m = n = 8 = C/4);
* the head arm: ``CSRA`` (one head, T = 1, λ = 0.1, the official VOC setting) replaces global
  average pooling + linear: it is a classifier head, and belongs where the classifier is;
  ``CSRA-max`` is the same head with T = inf, the ablation of its softmax over positions: the
  attention term becomes the maximum of each class's score (its map is one-hot at that position).

The TASN sampler belongs *in front of* a network, when the image has more pixels than the
network can afford to look at; it changes the input, not a feature map, so it has no place in
this backbone: notebook 06 measures it against its own baselines.

The reduction ratios are the course's choice for a 32-channel map (SE's official r = 16 would
leave 2 hidden units; RGA's as above); everything else follows each module's defaults.
``build`` makes a model from a seed so that every arm starts from the same backbone weights
(the backbone is drawn first, from the seed; the mechanism after it).
"""
from __future__ import annotations

import math

import torch
from einops import reduce
from torch import nn

__all__ = ["ARMS", "BLOCK_ARMS", "HEAD_ARMS", "ZooNet", "build", "mass_on_object", "object_cells", "spatial_map"]

ARMS = ("plain", "plain-max", "plain-avgmax", "SE", "CBAM", "non-local", "RGA-S", "RGA-S-zero", "RGA-C", "RGA-SC", "A2",
        "CSRA", "CSRA-max")
HEAD_ARMS = ("CSRA", "CSRA-max")
BLOCK_ARMS = ("SE", "CBAM", "non-local", "RGA-S", "RGA-S-zero", "RGA-C", "RGA-SC", "A2")
WIDTH, SIZE = 32, 32
_RGA_BRANCHES = {"RGA-S": (True, False), "RGA-S-zero": (True, False), "RGA-C": (False, True),
                 "RGA-SC": (True, True)}


def _conv_bn(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


class _AvgMaxPool(nn.Module):
    """[global average; global max] over the positions: (B, C, H, W) -> (B, 2C, 1, 1)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([reduce(x, "b c h w -> b c 1 1", "mean"), reduce(x, "b c h w -> b c 1 1", "max")], dim=1)


def _block(arm: str, grid: int) -> nn.Module:
    import tutorial_lib as tl

    if arm == "SE":
        return tl.SqueezeExcitation(WIDTH, reduction=4)
    if arm == "CBAM":
        return tl.CBAM(WIDTH, reduction=4)
    if arm == "non-local":
        return tl.NonLocalBlock(WIDTH)
    if arm in _RGA_BRANCHES:
        spatial, channel = _RGA_BRANCHES[arm]
        rga = tl.RGA(WIDTH, (grid, grid), use_spatial=spatial, use_channel=channel, cha_ratio=4, down_ratio=4)
        if arm == "RGA-S-zero":  # the embedded relations are ReLU(BN(.)) with BN's weight and bias 0: always 0
            relation_bn = rga.gg_spatial[1]
            with torch.no_grad():
                relation_bn.weight.zero_()
                relation_bn.bias.zero_()
            relation_bn.requires_grad_(False)
        return rga
    if arm == "A2":
        return tl.DoubleAttention(WIDTH, WIDTH // 4, WIDTH // 4)
    return nn.Identity()


class ZooNet(nn.Module):
    """The backbone, one mechanism (or none) and a head; see the module docstring."""

    def __init__(self, arm: str, num_classes: int, size: int = SIZE) -> None:
        super().__init__()
        if arm not in ARMS:
            raise ValueError(f"ZooNet: expected arm to be one of {', '.join(ARMS)}, but got {arm!r}")
        if isinstance(size, bool) or not isinstance(size, int) or size < 8 or size % 4:
            raise ValueError(f"ZooNet: expected size (the side of the square input images) to be a multiple "
                             f"of 4, at least 8, but got {size!r}")
        self.arm, self.size = arm, size
        self.features = nn.Sequential(*_conv_bn(3, 16), nn.MaxPool2d(2), *_conv_bn(16, 32), nn.MaxPool2d(2),
                                      *_conv_bn(32, WIDTH))
        self.block = _block(arm, size // 4)
        if arm in HEAD_ARMS:
            import tutorial_lib as tl

            self.head = tl.CSRA(WIDTH, num_classes, temperature=math.inf if arm == "CSRA-max" else 1.0)
        else:
            pool = {"plain-max": nn.AdaptiveMaxPool2d(1), "plain-avgmax": _AvgMaxPool()}.get(arm, nn.AdaptiveAvgPool2d(1))
            self.head = nn.Sequential(pool, nn.Flatten(),
                                      nn.Linear(2 * WIDTH if arm == "plain-avgmax" else WIDTH, num_classes))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(self.features(images)))


def build(arm: str, num_classes: int, seed: int, size: int = SIZE) -> ZooNet:
    """A ``ZooNet`` whose backbone and linear classifier depend on ``seed`` only, not on the arm."""
    torch.manual_seed(seed)
    features = nn.Sequential(*_conv_bn(3, 16), nn.MaxPool2d(2), *_conv_bn(16, 32), nn.MaxPool2d(2),
                             *_conv_bn(32, WIDTH))
    plain_head = nn.Linear(WIDTH, num_classes)
    torch.manual_seed(seed + 10_000)  # the mechanism's own weights, drawn after the shared ones
    net = ZooNet(arm, num_classes, size)
    net.features.load_state_dict(features.state_dict())
    if arm not in (*HEAD_ARMS, "plain-avgmax"):  # heads of their own: they replace pooling + linear
        net.head[2].load_state_dict(plain_head.state_dict())
    return net


@torch.no_grad()
def spatial_map(net: ZooNet, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor | None:
    """Where the model looks, one non-negative (B, h, w) map per image, or None (no spatial map).

    plain, plain-max, plain-avgmax: the channel mean of the last feature map (a map that needs no attention,
    the control); CBAM, RGA-S, RGA-S-zero, RGA-SC: the spatial gate; non-local: the attention weights
    averaged over all queries, on the grid of its 2x2-pooled keys (where the block reads from,
    half the side of the feature map); A2: the n attention maps averaged; CSRA: the
    class-specific attention of the class in ``labels`` (single-label; without labels, the
    class with the largest score) — for multi-label use the maps returned by the head directly.
    SE and RGA-C gate channels only: None.
    """
    was_training = net.training
    net.eval()
    try:
        features = net.features(images)
        if net.arm in ("plain", "plain-max", "plain-avgmax"):
            return features.mean(dim=1)
        if net.arm in ("SE", "RGA-C"):
            return None
        if net.arm in HEAD_ARMS:
            _, maps = net.head(features, return_attention=True)
            chosen = labels if labels is not None else maps["attention"].flatten(2).amax(-1).argmax(-1)
            return maps["attention"][torch.arange(len(images)), chosen]
        _, maps = net.block(features, return_attention=True)
        if net.arm in ("CBAM", "RGA-S", "RGA-S-zero", "RGA-SC"):
            return maps["spatial"][:, 0]
        if net.arm == "non-local":
            return maps["attention"].mean(dim=1)
        if net.arm == "A2":
            return maps["attention_maps"].mean(dim=1)
        raise ValueError(f"spatial_map: no map for arm {net.arm!r}")  # pragma: no cover
    finally:
        net.train(was_training)


def object_cells(masks: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(B, h, w) booleans: the cells of an h x w grid that share at least one pixel with the object.

    ``masks`` (B, H, W) booleans at image resolution, H and W multiples of h and w: each grid
    position is a cell of (H/h) x (W/w) pixels.
    """
    if masks.dim() != 3:
        raise ValueError(f"object_cells: expected masks (B, H, W), but got {tuple(masks.shape)}")
    h, w = grid
    if masks.shape[1] % h or masks.shape[2] % w:
        raise ValueError(f"object_cells: the masks' {masks.shape[1]}x{masks.shape[2]} pixels do not split "
                         f"into the maps' {h}x{w} cells")
    return reduce(masks.float(), "b (h p1) (w p2) -> b h w", "max", h=h, w=w) > 0


def mass_on_object(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Per image, the share of the map's total on the cells that touch the object: (B,) in [0, 1].

    ``maps`` (B, h, w), non-negative, on the map's own grid; ``masks`` (B, H, W) booleans at image
    resolution (see ``object_cells``). The control is the same score of a uniform map on the
    same grid: the share of the grid's cells that touch the object, ``mass_on_object(ones, masks)``
    (a random map has the same expectation). A gate that weighs every position alike scores that
    control; a map with all its weight on the object scores 1.
    """
    if maps.dim() != 3 or masks.dim() != 3 or len(maps) != len(masks):
        raise ValueError(f"mass_on_object: expected maps (B, h, w) and masks (B, H, W) with the same B, "
                         f"but got {tuple(maps.shape)} and {tuple(masks.shape)}")
    if bool((maps < 0).any()):
        raise ValueError("mass_on_object: expected a non-negative map (a gate, a distribution or a mean of "
                         "ReLU features), but some values are negative")
    cells = object_cells(masks, tuple(maps.shape[1:])).flatten(1)
    flat = maps.flatten(1).double()
    total = flat.sum(dim=1).clamp_min(1e-300)
    return (flat * cells).sum(dim=1) / total
