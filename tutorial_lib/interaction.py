"""Interaction-aware (PCA-inspired) pyramid attention, with its two losses.

Paper: Du, Yuan, Li, Zhao, Li, Hu, "Interaction-aware Spatio-temporal Pyramid Attention
Networks for Action Classification", ECCV 2018, arXiv:1808.01106 (journal extension: IEEE
TPAMI 44(10), 2022, same title). No official code has been released, so the paper's Fig. 1 and
its equations are the only reference. The layer has a file of its own, not a place beside the
non-local block: the two share no code, only the idea of a positions x positions matrix (here
its rows are scores of learned directions, not pairwise similarities).

The file follows the paper's layer and losses:

1. ``InteractionAwareAttention``: a pyramid of N feature maps, each down-sampled to the last
   (host) map's grid; one linear score map per scale; element-wise fusion; softmax over the
   positions; rows normalised to unit L2 norm; the output A X, reshaped to the host map's size.
   The spatio-temporal form stacks the K frames of a clip along the position axis;
2. ``l_interactive``: the paper's Eq. (6), the PCA objective -tr(A X Xᵀ Aᵀ) plus a soft
   orthogonality penalty on the rows of A;
3. ``l_attn``: the scale-diversity loss, which asks every scale's own softmax to differ from
   the fused one.

What the paper shows and what the course chose is said at every argument: the paper leaves the
down-sampling, the fusion, the initialisation, a residual and several loss details open.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from einops import einsum, rearrange, reduce
from torch import nn

from .capture import AttentionModule
from .checks import check_bool, check_choice, check_input, check_int
from .non_local import _autocast_enabled

__all__ = ["InteractionAwareAttention", "l_interactive", "l_attn"]

FUSIONS = ("sum", "mean", "max")
DOWNSAMPLING = ("avg", "max")
BIASES = ("row", "position", "none")
DIVERSITY_SCALES = ("all", "lower")
REDUCTIONS = ("mean", "sum", "none")
LAYOUTS = {2: "(B, C, H, W)", 3: "(B, C, K, H, W)"}


class InteractionAwareAttention(AttentionModule):
    r"""Interaction-aware pyramid attention (Du et al., "Interaction-aware Spatio-temporal
    Pyramid Attention Networks for Action Classification", ECCV 2018, arXiv:1808.01106).

    **Equation.** A pyramid of N maps f_{i-N+1}, ..., f_i (the last one, f_i, is the *host*
    layer, H x W x C_i). Every earlier map is down-sampled to H x W and flattened to
    X_j ∈ R^{P x C_j}, one row per position (P = H·W; K·H·W for a clip of K frames):

    .. math::
        Y_j = W_j X_j^\top + b_j \mathbf{1}^\top \in \mathbb{R}^{d \times P}, \qquad
        a = \mathrm{softmax}_k\big(\mathcal{F}(Y_{i-N+1}, \dots, Y_i)\big), \qquad
        A_{m,:} = a_{m,:} / \lVert a_{m,:} \rVert_2, \qquad
        M = A X_i \in \mathbb{R}^{d \times C_i}.

    Entry (m, k) of Y_j is w_mᵀ x_k + b_m: the score that row m gives to local feature k. The
    softmax runs over the positions k of each row m; the L2 step makes every row of A a unit
    vector (Fig. 1: "Softmax, L2 Normalize"). Only the host map's features are weighted; the
    earlier maps contribute scores only. With d = H·W, M is reshaped (rows in raster order) to
    an H x W x C_i map that replaces f_i. In the paper's PCA reading, X_i X_iᵀ (positions x
    positions) holds the interactions between local features and A plays the projection S of
    argmin -tr(S X Xᵀ Sᵀ) subject to S Sᵀ = I, which ``l_interactive`` turns into a loss.

    **What is the paper's** (Fig. 1 and the equation images): the pyramid down-sampled to the
    host grid; one linear map W_j ∈ R^{d x C_j} with a bias b_j ∈ R^d per scale; an
    element-wise fusion 𝓕; softmax, then L2 normalisation of the rows; M = A X_i reshaped to
    the host map's size, which needs ``d = H·W`` (the default: the figure's d, "preserve the
    unchanged size"); no residual is drawn (``residual=False``, the default). The losses are the
    paper's equations (see ``l_interactive`` and ``l_attn``).

    **What is the course's reading** of the figure (inferred from its shapes, not stated in a
    recovered source): that the softmax runs over the positions k of each row m (A weights the
    local features, and the diversity loss indexes a_{m,k} over positions), the order of the
    product W_j X_jᵀ, and the spatio-temporal form (the K frames' features stacked along the
    position axis, read from the index range K·W_iH_i of the diversity loss).

    **What is the course's choice** (not recovered from the paper; every one is an argument):

    * ``downsample="avg"``: adaptive average pooling to the host grid (``"max"``: adaptive max
      pooling). Windows follow PyTorch's adaptive pooling: output cell r of n covers input
      rows floor(r·S/n) to ceil((r+1)·S/n) - 1, so any larger size works. For a clip each
      frame is pooled on its own (time is not pooled);
    * ``fusion="sum"``: 𝓕 adds the N score maps (``"mean"`` divides the sum by N, which is a
      softmax temperature of N; ``"max"`` keeps the largest score per entry). With ``"sum"``
      the fused scores are one linear map of the channel-stacked pyramid;
    * ``bias="row"``: the transcribed b_j ∈ R^d, one number per row m and scale. Under
      ``"sum"``/``"mean"`` such a bias adds a constant to the whole row and cannot change the
      softmax, the output or either loss (its gradient is zero); under ``"max"`` it can, since it
      changes which scale wins an entry. ``bias="position"`` (the course's extension) gives
      each scale a bias per row and per grid position, b_j ∈ R^{d x H·W}, shared by the
      frames of a clip: the only kind that moves the softmax under additive fusion.
      ``bias="none"`` drops it;
    * ``d=None`` means d = H·W (the paper's figure). Another d gives the d rows of M
      unreshaped, as (B, C_i, d), the "d principal directions" reading (course's extension);
      a residual then has no meaning and is refused;
    * ``residual=False``: f_i is replaced, as drawn. ``residual=True`` returns f_i + M
      (2-D only: a clip's output is one map for the whole clip, with no single input map to
      add it to);
    * initialisation: W_j as ``nn.Linear`` (uniform in ±1/√C_j), biases 0;
    * losses: ``l_attn`` compares every scale's softmax with the fused one,
      ``diversity_scales="all"`` (j includes the host layer i) or ``"lower"`` (the N-1
      earlier maps only); both losses are averaged over the batch.

    **Shapes.** ``spatial_dims=2``: maps (B, C_j, H_j, W_j) with H_j >= H, W_j >= W, the last
    one exactly (B, C_i, H, W) (the ``size`` the layer was built for); output (B, C_i, H, W).
    ``spatial_dims=3`` (clips): maps (B, C_j, K, H_j, W_j), the same K in all, the K·H·W
    positions of each map stacked frame after frame (P = K·H·W; W_j and b_j do not depend on
    P, so K is free); output one map (B, C_i, H, W) for the clip. With ``d != H·W``, output
    (B, C_i, d). The input is a list or tuple of N tensors, ordered from the earliest (largest)
    map to the host map; a single tensor is accepted when N = 1. Inputs share the layer's
    dtype and device (any floating dtype under ``torch.autocast``).

    **Maps and losses.** ``forward(maps, return_attention=False, return_losses=False)``
    returns the output, then (with ``return_attention``) a dict of maps, then (with
    ``return_losses``) a dict of losses, as a tuple when either is asked for:

    * ``"attention"``: A, (B, d, *grid) with grid (H, W) or (K, H, W): row m laid out on the
      positions it weights (``maps["attention"][b, m]`` is an image of where output row m
      looks); unit L2 norm per row;
    * ``"softmax"``: a, the fused softmax before the L2 step, same layout; each row sums to 1;
    * ``"scales"``: softmax_k(Y_j) of every scale, (B, N, d, *grid) (what ``l_attn`` compares);
    * losses ``{"interactive": l_interactive(A, X_i), "attn": l_attn(a, scales)}``, scalars
      averaged over the batch.

    Parameters: Σ_j d·C_j weights, plus N·d (``bias="row"``) or N·d·H·W (``"position"``).
    """

    def __init__(self, channels: int | Sequence[int], size: int | Sequence[int], *, d: int | None = None,
                 spatial_dims: int = 2, downsample: str = "avg", fusion: str = "sum", bias: str = "row",
                 residual: bool = False, diversity_scales: str = "all") -> None:
        super().__init__()
        name = type(self).__name__
        if isinstance(channels, (int, bool)) or not isinstance(channels, Sequence):
            channels = (channels,)
        if len(channels) == 0:
            raise ValueError(f"{name}: expected channels to list the channels of at least one map, but got "
                             f"an empty sequence")
        channels = tuple(check_int(name, f"channels[{j}]", c, minimum=1) for j, c in enumerate(channels))
        if isinstance(size, (int, bool)) or not isinstance(size, Sequence):
            size = (size, size)
        if len(size) != 2:
            raise ValueError(f"{name}: expected size to be (H, W) of the host map, but got {tuple(size)!r}")
        size = tuple(check_int(name, "size", s, minimum=1) for s in size)
        positions = size[0] * size[1]
        d = positions if d is None else check_int(name, "d", d, minimum=1)
        spatial_dims = check_int(name, "spatial_dims", spatial_dims, minimum=2, maximum=3)
        self.downsample = check_choice(name, "downsample", downsample, DOWNSAMPLING)
        self.fusion = check_choice(name, "fusion", fusion, FUSIONS)
        self.bias = check_choice(name, "bias", bias, BIASES)
        self.residual = check_bool(name, "residual", residual)
        self.diversity_scales = check_choice(name, "diversity_scales", diversity_scales, DIVERSITY_SCALES)
        if residual and spatial_dims == 3:
            raise ValueError(f"{name}: expected residual=False for clips (spatial_dims=3): the output is one "
                             f"map for the whole clip, with no single input map to add it to, but got "
                             f"residual=True")
        if residual and d != positions:
            raise ValueError(f"{name}: a residual needs an output of the host map's size, d = H·W = "
                             f"{positions}, but got d={d} with residual=True")
        if diversity_scales == "lower" and len(channels) < 2:
            raise ValueError(f"{name}: diversity_scales='lower' compares the earlier maps with the fused "
                             f"attention, so expected a pyramid of at least 2 maps, but got channels="
                             f"{channels}")
        self.channels, self.size, self.d, self.spatial_dims = channels, size, d, spatial_dims
        # one linear score map per scale: Y_j = W_j X_jᵀ (+ b_j 1ᵀ), W_j ∈ R^{d x C_j}
        self.scores = nn.ModuleList(nn.Linear(c, d, bias=bias == "row") for c in channels)
        if bias == "position":
            self.position_bias = nn.Parameter(torch.zeros(len(channels), d, positions))
        else:
            self.register_parameter("position_bias", None)
        self.reset_parameters()

    @property
    def num_scales(self) -> int:
        """N, the number of maps in the pyramid."""
        return len(self.channels)

    def reset_parameters(self) -> None:
        """Course's initialisation: W_j as ``nn.Linear`` (uniform in ±1/√C_j), every bias 0."""
        for linear in self.scores:
            linear.reset_parameters()
            if linear.bias is not None:
                nn.init.zeros_(linear.bias)
        if self.position_bias is not None:
            nn.init.zeros_(self.position_bias)

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, size={self.size}, d={self.d}, spatial_dims={self.spatial_dims}, "
                f"downsample={self.downsample!r}, fusion={self.fusion!r}, bias={self.bias!r}, "
                f"residual={self.residual}, diversity_scales={self.diversity_scales!r}")

    # --- the layer ------------------------------------------------------------------------

    def forward(self, maps: torch.Tensor | Sequence[torch.Tensor], return_attention: bool = False,
                return_losses: bool = False):
        """M = A X_i reshaped to the host map's size; optionally the maps and the losses.

        Returns ``out``, or a tuple ``(out, maps)`` / ``(out, losses)`` / ``(out, maps, losses)``.
        """
        pyramid = self._check(maps, return_attention, return_losses)
        want_map = return_attention or self.capturing
        host = pyramid[-1]
        rows = [self._rows(x) for x in pyramid]                         # X_j: (B, P, C_j)
        scale_scores = torch.stack([self._scores(j, x) for j, x in enumerate(rows)], dim=1)  # (B, N, d, P)
        fused = self._fuse(scale_scores)                                # (B, d, P)
        a = torch.softmax(fused, dim=-1)                                # each row sums to 1 over P
        attention = a / torch.linalg.vector_norm(a, dim=-1, keepdim=True)  # unit rows: A
        m = einsum(attention, rows[-1], "b d p, b p c -> b d c")        # M = A X_i
        if self.d == self.size[0] * self.size[1]:
            out = rearrange(m, "b (h w) c -> b c h w", h=self.size[0])
        else:
            out = rearrange(m, "b d c -> b c d")
        if self.residual:
            out = host + out
        attention_maps, losses = {}, {}
        if want_map or return_losses:
            scales = torch.softmax(scale_scores, dim=-1)
        if want_map:
            grid = self._grid(host)
            attention_maps = {"attention": self._on_grid(attention, grid), "softmax": self._on_grid(a, grid),
                              "scales": self._on_grid(scales, grid)}
            self._record(attention_maps)
        if return_losses:
            compared = scales if self.diversity_scales == "all" else scales[:, :-1]
            losses = {"interactive": _interactive(attention, m).mean(dim=0),
                      "attn": _diversity(a, compared).mean(dim=0)}
        result = (out,) + ((attention_maps,) if return_attention else ()) + ((losses,) if return_losses else ())
        return result if len(result) > 1 else out

    def _rows(self, x: torch.Tensor) -> torch.Tensor:
        """Down-sample a map to the host grid (frame by frame) and flatten it to (B, P, C)."""
        h, w = self.size
        if tuple(x.shape[-2:]) != (h, w):
            if self.spatial_dims == 2:
                pool = F.adaptive_avg_pool2d if self.downsample == "avg" else F.adaptive_max_pool2d
                x = pool(x, (h, w))
            else:
                pool = F.adaptive_avg_pool3d if self.downsample == "avg" else F.adaptive_max_pool3d
                x = pool(x, (x.shape[2], h, w))                         # time kept
        if self.spatial_dims == 2:
            return rearrange(x, "b c h w -> b (h w) c")
        return rearrange(x, "b c k h w -> b (k h w) c")                 # frames stacked along positions

    def _scores(self, j: int, x: torch.Tensor) -> torch.Tensor:
        """Y_j = W_j X_jᵀ (+ bias), as (B, d, P)."""
        linear = self.scores[j]
        y = einsum(x, linear.weight, "b p c, d c -> b d p")
        if linear.bias is not None:
            y = y + rearrange(linear.bias, "d -> 1 d 1")
        if self.position_bias is not None:                              # one bias per grid position,
            frames = y.shape[-1] // self.position_bias.shape[-1]        # the same for every frame
            y = rearrange(rearrange(y, "b d (k p) -> b d k p", k=frames)
                          + rearrange(self.position_bias[j], "d p -> 1 d 1 p"), "b d k p -> b d (k p)")
        return y

    def _fuse(self, scale_scores: torch.Tensor) -> torch.Tensor:
        """𝓕: the element-wise fusion of the N score maps (B, N, d, P) -> (B, d, P)."""
        return reduce(scale_scores, "b n d p -> b d p", self.fusion)

    def _grid(self, host: torch.Tensor) -> dict[str, int]:
        axes = {"h": self.size[0], "w": self.size[1]}
        if self.spatial_dims == 3:
            axes["k"] = host.shape[2]
        return axes

    def _on_grid(self, t: torch.Tensor, grid: dict[str, int]) -> torch.Tensor:
        """(..., P) -> (..., H, W) or (..., K, H, W): positions laid out on the host grid."""
        if self.spatial_dims == 2:
            return rearrange(t, "... (h w) -> ... h w", **grid)
        return rearrange(t, "... (k h w) -> ... k h w", **grid)

    # --- input checks ---------------------------------------------------------------------

    def _check(self, maps: object, return_attention: object, return_losses: object) -> list[torch.Tensor]:
        name = type(self).__name__
        check_bool(name, "return_attention", return_attention)
        check_bool(name, "return_losses", return_losses)
        n, nd = self.num_scales, self.spatial_dims
        if isinstance(maps, torch.Tensor):
            maps = [maps]
        if not isinstance(maps, (list, tuple)):
            raise TypeError(f"{name}: expected a list or tuple of {n} feature maps {LAYOUTS[nd]} (or one tensor "
                            f"when N = 1), but got {type(maps).__name__}")
        if len(maps) != n:
            raise ValueError(f"{name}: was built for a pyramid of {n} map(s) (channels={self.channels}), but "
                             f"got {len(maps)}")
        for j, (x, c) in enumerate(zip(maps, self.channels)):
            check_input(name, x, ndim=nd + 2, layout=LAYOUTS[nd], channels=c, name=f"map {j}")
        host = maps[-1]
        weight = self.scores[0].weight
        h, w = self.size
        if tuple(host.shape[-2:]) != (h, w):
            raise ValueError(f"{name}: was built for {h}x{w} host maps (size={self.size}, d={self.d}), but the "
                             f"last map is {host.shape[-2]}x{host.shape[-1]}")
        for j, x in enumerate(maps):
            if x.shape[0] != host.shape[0]:
                raise ValueError(f"{name}: expected every map of the pyramid to have batch {host.shape[0]} "
                                 f"(the host map's), but map {j} has {x.shape[0]}")
            if nd == 3 and x.shape[2] != host.shape[2]:
                raise ValueError(f"{name}: expected every map of the clip to have {host.shape[2]} frames (the "
                                 f"host map's), but map {j} has {x.shape[2]}")
            if x.shape[-2] < h or x.shape[-1] < w:
                raise ValueError(f"{name}: expected every map to be at least the host grid {h}x{w} (earlier "
                                 f"maps are down-sampled to it), but map {j} is {x.shape[-2]}x{x.shape[-1]}")
            if x.device != weight.device:
                raise ValueError(f"{name}: expected maps on the layer's device ({weight.device}), but map {j} "
                                 f"is on {x.device}; move the layer or the input with .to()")
            if x.dtype != weight.dtype and not _autocast_enabled(x.device.type):
                raise TypeError(f"{name}: expected maps of the layer's dtype ({weight.dtype}), but map {j} "
                                f"is {x.dtype}; convert the layer or the input with .to(), or run under "
                                f"torch.autocast")
        return list(maps)


# --- the losses -------------------------------------------------------------------------------

def _interactive(attention: torch.Tensor, projected: torch.Tensor) -> torch.Tensor:
    """Eq. (6) per sample from A (B, d, P) and A X (B, d, C): -||A X||²_F + Σ_{m≠n} (A Aᵀ)²_mn."""
    variance = reduce(projected.square(), "b d c -> b", "sum")          # tr(A X Xᵀ Aᵀ)
    gram = einsum(attention, attention, "b m p, b n p -> b m n")        # A Aᵀ
    diagonal = torch.diagonal(gram, dim1=-2, dim2=-1)
    off_diagonal = reduce(gram.square(), "b m n -> b", "sum") - reduce(diagonal.square(), "b m -> b", "sum")
    return off_diagonal - variance


def _diversity(a: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """l_attn per sample from a (B, d, P) and the scales' softmaxes (B, N, d, P)."""
    delta = (rearrange(a, "b d p -> b 1 d p") - scales).abs()
    return torch.sqrt(reduce(1.0 - delta.square(), "b n d p -> b", "sum"))


def _reduce(per_sample: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return per_sample.mean(dim=0)
    if reduction == "sum":
        return per_sample.sum(dim=0)
    return per_sample


def l_interactive(attention: torch.Tensor, features: torch.Tensor, *, reduction: str = "mean") -> torch.Tensor:
    r"""The interaction loss, Eq. (6) of Du et al. (ECCV 2018, arXiv:1808.01106).

    .. math::
        l_{interactive} = -\mathcal{X}\big((A X X^\top A^\top) \circ I\big)
                          + \mathcal{Y}\big((A A^\top) \circ (1 - I)\big),

    𝒳 the sum of all elements, 𝒴 the sum of squares, ∘ the element-wise product (the paper's
    equation). The first term is -tr(A X Xᵀ Aᵀ) = -‖A X‖²_F, the variance that PCA's projection
    S maximises (X Xᵀ holds the interactions between local features); the second penalises the
    squared off-diagonal of A Aᵀ, a soft form of the constraint S Sᵀ = I (after the L2 step the
    diagonal is already 1). With orthonormal rows the penalty is 0 and the loss is minimised by
    the top-d eigenvectors of X Xᵀ. The first term is unbounded below if X can grow (scaling X by
    s scales it by s²): a caution, the course's.

    ``attention``: A, (B, d, P); ``features``: X, (B, P, C) (the host map's rows, P positions,
    K·H·W for a clip). ``reduction``: ``"mean"`` over the batch (default, the course's),
    ``"sum"`` or ``"none"`` (B,). Computed as written, any A (the layer's A has unit rows).
    """
    fn = "l_interactive"
    check_input(fn, attention, ndim=3, layout="(B, d, P)", name="attention")
    check_input(fn, features, ndim=3, layout="(B, P, C)", name="features")
    check_choice(fn, "reduction", reduction, REDUCTIONS)
    if attention.shape[0] != features.shape[0] or attention.shape[2] != features.shape[1]:
        raise ValueError(f"{fn}: expected attention (B, d, P) and features (B, P, C) with the same B and P, "
                         f"but got {tuple(attention.shape)} and {tuple(features.shape)}")
    projected = einsum(attention, features, "b d p, b p c -> b d c")
    return _reduce(_interactive(attention, projected), reduction)


def l_attn(attention: torch.Tensor, scales: torch.Tensor | Sequence[torch.Tensor], *,
           reduction: str = "mean") -> torch.Tensor:
    r"""The scale-diversity loss of Du et al. (ECCV 2018, arXiv:1808.01106).

    .. math::
        \delta_{j,m,k} = \lvert a_{m,k} - \mathrm{softmax}(y^j)_{m,k} \rvert, \qquad
        l_{attn} = \sqrt{\textstyle\sum_j \sum_m \sum_k \big(1 - \delta_{j,m,k}^2\big)},

    m over the d rows, k over the P positions (K·H·W for a clip), j over the scales passed (the
    paper's equation; whether j includes the host layer was not recovered: the layer's
    ``diversity_scales`` chooses). Minimising it pushes every scale's own attention away from
    the fused one a. a is the fused softmax *before* the L2 step (the paper writes a = softmax(𝓕)
    and A for the normalised rows; the course's reading), so both sides are distributions.

    ``attention``: a, (B, d, P); ``scales``: (B, N, d, P), or a sequence of N tensors (B, d, P).
    ``reduction``: ``"mean"`` over the batch (default, the course's), ``"sum"`` or ``"none"``.
    """
    fn = "l_attn"
    if isinstance(scales, (list, tuple)):
        if len(scales) == 0:
            raise ValueError(f"{fn}: expected at least one scale's softmax, but got an empty {type(scales).__name__}")
        for j, s in enumerate(scales):
            check_input(fn, s, ndim=3, layout="(B, d, P)", name=f"scale {j}")
        if any(s.shape != scales[0].shape for s in scales):
            raise ValueError(f"{fn}: expected every scale's softmax to have one shape (B, d, P), but got "
                             f"{[tuple(s.shape) for s in scales]}")
        scales = torch.stack(list(scales), dim=1)
    check_input(fn, attention, ndim=3, layout="(B, d, P)", name="attention")
    check_input(fn, scales, ndim=4, layout="(B, N, d, P)", name="scales")
    check_choice(fn, "reduction", reduction, REDUCTIONS)
    if scales.shape[0] != attention.shape[0] or scales.shape[2:] != attention.shape[1:]:
        raise ValueError(f"{fn}: expected scales (B, N, d, P) matching attention (B, d, P), but got "
                         f"{tuple(scales.shape)} and {tuple(attention.shape)}")
    return _reduce(_diversity(attention, scales), reduction)
