"""TASN: trilinear attention, attention-based sampling, part/master distillation.

Paper: H. Zheng, J. Fu, Z.-J. Zha, J. Luo, "Looking for the Devil in the Details: Learning
Trilinear Attention Sampling Network for Fine-grained Image Recognition", CVPR 2019,
arXiv:1903.06150. Official code (MXNet): researchmm/tasn, ``tasn-mxnet/example/tasn/model.py``
and the custom operator ``tasn-mxnet/src/operator/contrib/att_sampler-inl.h`` / ``.cu`` (a CUDA
operator without a CPU version; ours is plain PyTorch).

The file follows the method section:

1. ``TrilinearAttention``: attention maps M(X) = N(N(X) Xᵀ) X from a feature map X, without
   parameters;
2. ``structure_map`` and ``detail_map``: the two single maps the sampler uses, made from the
   C attention maps;
3. ``AttentionSampler``: resamples the *image* so that attended regions get more pixels (a
   separable, non-uniform grid from the map's marginals, then bilinear sampling);
4. ``distillation_loss``: the part-net teaches the master-net with soft targets.

Conventions shared by the whole file. Attention maps are non-negative. The sampler's
coordinates use the align-corners convention everywhere: pixel centres sit at 0, 1, ..., S-1
and the normalised coordinate g in [-1, 1] stands for the pixel position (g + 1)(S - 1)/2, the
convention of the official grid and of its bilinear kernel, here handed to
``F.grid_sample(..., align_corners=True)``. Resizing a map is bilinear with the same convention
(MXNet 1.x ``BilinearResize2D`` maps corners to corners).
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from einops import einsum, rearrange, reduce

from .capture import AttentionModule
from .checks import check_bool, check_choice, check_float, check_input, check_int

__all__ = ["TrilinearAttention", "structure_map", "detail_map", "AttentionSampler", "distillation_loss"]

SOFTMAX_SCALE = 7.0    # official: softmax(7 X) over positions
DENSE = 4.0            # official AttSampler: largest magnification (before the last shift)
ITERS = 5              # official AttSampler: iterations of the capped-density loop
TEMPERATURE = 10.0     # official distillation: softmax(z / 10)
DUPLICATE_ULPS = 4     # channel sums this close (units in the last place) count as one value


# --- 1. trilinear attention ---------------------------------------------------------------

class TrilinearAttention(AttentionModule):
    r"""Trilinear attention of TASN (Zheng et al., CVPR 2019, arXiv:1903.06150), Sec. 3.1.

    **Equation.** With the feature map reshaped to X ∈ R^{C×N} (N = H·W positions),

    .. math::
        M(X) = \mathcal{N}\big(\mathcal{N}(s X)\, X^\top\big)\, X,

    where N(·) is a softmax over the last axis. In the official order:

    1. F = softmax over the N positions of s·X: every channel becomes a spatial distribution
       (``softmax_scale`` s = 7, official: "to obtain an appropriate scale for the input of
       softmax"; the paper writes no s);
    2. R = F Xᵀ ∈ R^{C×C}: R_ij is the mean of channel j under channel i's distribution;
    3. R ← softmax over j (each row sums to 1): how much channel i borrows from channel j;
    4. M = R X ∈ R^{C×N}: every attention map M_i is a convex combination of the channel
       maps X_j (so X ≥ 0 gives M ≥ 0, and identical channels give M = X).

    **Shapes.** Input X (B, C, H, W), output M (B, C, H, W). ``return_attention=True`` also
    returns ``{"relation": (B, C, C)}``, the row-stochastic matrix R of step 3.

    **No parameters, no gradient into X.** The official graph wraps M in ``BlockGrad``: the
    attention network that produces X is trained by its own classification loss only, never
    through the sampler. ``detach=True`` (default) does the same (the output does not
    require grad); ``detach=False`` lets gradients flow, for analysis and tests.
    """

    def __init__(self, softmax_scale: float = SOFTMAX_SCALE, *, detach: bool = True) -> None:
        super().__init__()
        name = type(self).__name__
        self.softmax_scale = check_float(name, "softmax_scale", softmax_scale, minimum=0.0, strict_minimum=True)
        self.detach = check_bool(name, "detach", detach)

    def extra_repr(self) -> str:
        return f"softmax_scale={self.softmax_scale}, detach={self.detach}"

    def forward(self, x: torch.Tensor, return_attention: bool = False):
        name = type(self).__name__
        check_input(name, x, ndim=4, layout="(B, C, H, W)")
        check_bool(name, "return_attention", return_attention)
        if self.detach:
            x = x.detach()
        h = x.shape[2]
        X = rearrange(x, "b c h w -> b c (h w)")
        spatial = torch.softmax(self.softmax_scale * X, dim=-1)                  # each channel sums to 1 over n
        relation = torch.softmax(einsum(spatial, X, "b i n, b j n -> b i j"), dim=-1)  # rows sum to 1 over j
        M = einsum(relation, X, "b i j, b j n -> b i n")
        maps = {"relation": relation}
        self._record(maps)
        M = rearrange(M, "b c (h w) -> b c h w", h=h)
        return (M, maps) if return_attention else M


# --- 2. the two sampling maps -------------------------------------------------------------

def distinct_channels(sums: torch.Tensor, rtol: float | None = None) -> torch.Tensor:
    """(B, C) bool: True for the first channel (lowest index) of each distinct value of ``sums``.

    The official code keeps a channel when its sum differs from the previous one in sorted
    order (exact float comparison). Here values are duplicates when they differ by at most
    ``rtol`` times the larger of the two (sorted neighbours are compared); the default,
    ``DUPLICATE_ULPS`` units in the last place of ``sums``' dtype (4 eps), absorbs the
    last-bit differences that matrix-product kernels sometimes leave between copies of one
    map, and nothing more: the sums of 512 distinct attention maps crowd into a narrow range,
    so a looser tolerance (say 1e-5) would merge distinct maps by the dozen. Channels whose
    sums are equal are, in practice, equal maps: every all-zero channel of X gives one and
    the same attention map. The mask is built in sorted order and scattered back to channel
    order, which is what the official code intended (researchmm/tasn #3: its structure map
    applies the sorted-order mask to the channels in their original order).
    """
    if rtol is None:
        rtol = DUPLICATE_ULPS * torch.finfo(sums.dtype).eps
    values, order = torch.sort(sums, dim=-1, stable=True)
    gap = (values[:, 1:] - values[:, :-1]).abs()
    scale = torch.maximum(values[:, 1:].abs(), values[:, :-1].abs())
    new = torch.cat([torch.ones_like(values[:, :1], dtype=torch.bool), gap > rtol * scale], dim=1)
    return torch.zeros_like(new).scatter(1, order, new)


def _channel_sums(maps: torch.Tensor) -> torch.Tensor:
    """(B, C) sums of the maps over space, in float32 at least (bfloat16 sums are too coarse)."""
    return reduce(maps.to(torch.promote_types(maps.dtype, torch.float32)), "b c h w -> b c", "sum")


def _check_maps(fn: str, maps: object) -> torch.Tensor:
    check_input(fn, maps, ndim=4, layout="(B, C, h, w) of attention maps", name="attention maps")
    return maps


def _resize(m: torch.Tensor, size: int | tuple[int, int] | None, fn: str) -> torch.Tensor:
    """(B, h, w) -> (B, *size), bilinear, corners to corners (MXNet's BilinearResize2D)."""
    if size is None:
        return m
    if isinstance(size, int):
        size = (size, size)
    size = tuple(check_int(fn, "size", s, minimum=1) for s in size)
    if tuple(m.shape[-2:]) == size:
        return m
    return F.interpolate(m[:, None], size=size, mode="bilinear", align_corners=True)[:, 0]


def structure_map(maps: torch.Tensor, size: int | tuple[int, int] | None = None, *,
                  square: bool = True) -> torch.Tensor:
    """The structure-preserved map: the sum of the distinct attention maps, resized, squared.

    ``maps`` (B, C, h, w) from ``TrilinearAttention``; returns (B, *size) (or (B, h, w)).
    Official ``Structure_Att``: channels with duplicated sums count once (see
    ``distinct_channels``), the sum is resized bilinearly to the image size (``size``, 512
    in the official code), then squared element-wise ("optional ... the later has a larger
    value for important regions"; ``square=False`` keeps the plain sum). Resizing comes
    before squaring, as in the official graph. No gradient flows back (the official custom
    operator returns zeros), so the result is detached.
    """
    fn = "structure_map"
    maps = _check_maps(fn, maps).detach()
    check_bool(fn, "square", square)
    keep = distinct_channels(_channel_sums(maps)).to(maps.dtype)
    out = _resize(einsum(keep, maps, "b c, b c h w -> b h w"), size, fn)
    return out * out if square else out


def detail_map(maps: torch.Tensor, size: int | tuple[int, int] | None = None, *, training: bool,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """The detail-preserved map: one random attention map in training, their sum at test.

    ``maps`` (B, C, h, w); returns (B, *size) (or (B, h, w)). Official ``Detail_Att``: in
    training, each image gets one channel drawn uniformly among its channels with distinct
    sums (duplicates of one map count once, so a map shared by many dead channels is not
    drawn more often); at test, the plain sum of all C maps (no de-duplication, no square).
    Then a bilinear resize to ``size``. ``generator`` (a ``torch.Generator`` on the maps'
    device) makes the draw reproducible. ``training`` has no default: pass
    ``module.training``. The result is detached (the official operator returns zero
    gradients).
    """
    fn = "detail_map"
    maps = _check_maps(fn, maps).detach()
    check_bool(fn, "training", training)
    if training:
        keep = distinct_channels(_channel_sums(maps))
        pick = torch.multinomial(keep.to(torch.float32), 1, generator=generator)   # (B, 1)
        out = maps[torch.arange(maps.shape[0], device=maps.device), pick[:, 0]]
    else:
        out = reduce(maps, "b c h w -> b h w", "sum")
    return _resize(out, size, fn)


# --- 3. the attention-based sampler -------------------------------------------------------

@functools.lru_cache(maxsize=64)
def _interpolation(n_out: int, n_in: int, device: torch.device, dtype: torch.dtype,
                   extremes_only: bool = False, transposed: bool = False) -> torch.Tensor:
    """(n_out, n_in) matrix of 1-D linear interpolation, corners to corners (cached).

    Output sample o sits at input position p = o (n_in - 1)/(n_out - 1); its row holds the
    weights 1 - frac(p) and frac(p) of the two input samples around p. ``extremes_only``
    keeps only the rows of the output samples that can hold a maximum: between two
    neighbouring input samples the interpolant is linear, so over the output samples that
    fall between them its maximum sits at the first or the last of them. At most
    2 (n_in - 1) rows replace n_out.
    """
    if n_in == 1:
        R = torch.ones(n_out, 1, dtype=torch.float64)
        R = R[:1] if extremes_only else R
        return (R.T if transposed else R).contiguous().to(device=device, dtype=dtype)
    pos = torch.arange(n_out, dtype=torch.float64) * ((n_in - 1) / max(n_out - 1, 1))
    left = pos.floor().clamp(0, n_in - 2)
    frac = pos - left
    R = torch.zeros(n_out, n_in, dtype=torch.float64)
    R.scatter_(1, left.long()[:, None], (1 - frac)[:, None])
    R.scatter_add_(1, left.long()[:, None] + 1, frac[:, None])
    if extremes_only:
        edge = left[1:] != left[:-1]
        first = torch.cat([edge.new_ones(1), edge])
        last = torch.cat([edge, edge.new_ones(1)])
        R = R[first | last]
    return (R.T if transposed else R).contiguous().to(device=device, dtype=dtype)


class AttentionSampler(AttentionModule):
    r"""Attention-based sampler of TASN (Zheng et al., CVPR 2019, arXiv:1903.06150), Sec. 3.2.

    Resamples an image (B, C, S, S) to (B, C, ``out_size``, ``out_size``) on a non-uniform,
    separable grid: rows and columns where the attention map is high are sampled more
    densely, so the attended part gets more output pixels than a uniform down-scaling gives
    it. The official ``_contrib_AttSampler`` operator, step by step:

    1. **Resize** the map (B, h, w) bilinearly to the image size S×S (official: 28 -> 512).
    2. **Marginals by max**: the row profile p_r(y) = max_x A(y, x), the column profile
       p_c(x) = max_y A(y, x), each normalised to sum 1, then multiplied by ``out_size``:
       m(k) is the number of output samples that input row (column) k should receive; the
       uniform density is u = out_size / S. (An all-zero profile counts as uniform.)
    3. **Capped density**, ``iters`` times (official 5): t = min(max m_r, max m_c), and in the
       first iteration also t ≤ ``dense``·u (official dense = 4); clip both profiles at t;
       add (out_size - Σm)/S to every entry, which restores the sum. The two profiles share
       the cap t, so the largest magnification is the same along both axes. Bound: the
       first iteration leaves max m < (dense + 1)·u and later iterations never raise a
       maximum, so the magnification m/u stays below ``dense`` + 1 (about ``dense`` for
       smooth maps).
    4. **Inverse CDF with linear interpolation**: c(0) = 0, c(k) = m(1) + ... + m(k) (the
       mass of the interval between pixel k-1 and pixel k is m(k)); output sample i goes to
       the position u_i where the piecewise-linear c reaches i·c(S-1)/out_size; normalised as
       2u_i/(S - 1) - 1. A uniform map gives u_i = i(S - 1)/out_size, i.e. the linear grid
       2i/out_size - 1: an ordinary down-scaling whose last sample stops at
       (S - 1)(1 - 1/out_size), short of the border.
    5. **Separable grid**: output pixel (i, j) samples the image at
       (x, y) = (u^c_j, u^r_i): rows depend on the row profile, columns on the column
       profile, linked only through the shared cap t.
    6. **Bilinear sampling**, ``F.grid_sample(..., align_corners=True)``: the same convention
       as the grid (and as the official kernel); coordinates never leave the image, so the
       padding mode does not matter.

    **Decisions where the official code is not well defined.** MXNet starts the cumulative
    sum at c(0) = 1 and its search at j = 0, so output sample 0 reads c(-1): memory before the
    buffer for the first image, the previous image's total for the others. We use c(0) = 0
    and start the search at j = 1, as the repository's PyTorch port does: sample 0 then sits
    exactly at pixel 0 and the uniform map gives the linear grid above (for a flat map, MXNet's
    samples o >= 1 sit (S/out_size)(1 - o/out_size) pixels closer to pixel 0). Step 1 computes the
    maxima of the resized map from the few rows and columns where a maximum of a linear
    interpolation can lie (exact, far cheaper than resizing); ``full_resize=True`` resizes
    the whole map first, literally.

    **Gradients** flow to the image only; the map is detached (the official backward sets the
    gradients of both marginals to zero).

    **Shapes.** ``sampler(images, attention)`` with images (B, C, S, S) (square, as the official
    operator assumes) and attention (B, h, w) of any square resolution, non-negative; returns
    (B, C, out_size, out_size), and with ``return_grid=True`` also the grid (B, out_size,
    out_size, 2) of (x, y) in [-1, 1] (``F.grid_sample``'s layout; a view of two planes, call
    ``.contiguous()`` if a packed tensor is needed). ``out_size`` larger than S
    is refused unless ``allow_upsampling=True``. No parameters. The methods ``marginals``,
    ``density``, ``coordinates`` and ``grid`` return the intermediate steps for plotting.
    """

    def __init__(self, out_size: int, dense: float = DENSE, iters: int = ITERS, *,
                 allow_upsampling: bool = False, full_resize: bool = False) -> None:
        super().__init__()
        name = type(self).__name__
        self.out_size = check_int(name, "out_size", out_size, minimum=1)
        self.dense = check_float(name, "dense", dense, minimum=1.0)
        self.iters = check_int(name, "iters", iters, minimum=1)
        self.allow_upsampling = check_bool(name, "allow_upsampling", allow_upsampling)
        self.full_resize = check_bool(name, "full_resize", full_resize)

    def extra_repr(self) -> str:
        return (f"out_size={self.out_size}, dense={self.dense}, iters={self.iters}, "
                f"allow_upsampling={self.allow_upsampling}, full_resize={self.full_resize}")

    # --- the steps, each usable on its own ------------------------------------------------

    def marginals(self, attention: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Steps 1-2: row and column profiles (B, size) of the map resized to size x size (max)."""
        rows, cols = self._marginals(self._check_attention(attention, size), size)
        return rows, cols

    def density(self, attention: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Step 3: capped densities (m_rows, m_cols), (B, size) each, each summing to out_size.

        m(k) is the number of output samples given to input row (column) k; the uniform
        density is out_size / size.
        """
        m_rows, m_cols = self._density(self._check_attention(attention, size), size)
        return m_rows, m_cols

    def coordinates(self, attention: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Step 4: normalised row and column coordinates (B, out_size) each, in [-1, 1]."""
        y, x = self._coordinates(self._density(self._check_attention(attention, size), size))
        return y, x

    def grid(self, attention: torch.Tensor, size: int) -> torch.Tensor:
        """Step 5: the sampling grid (B, out_size, out_size, 2), (x, y) per output pixel."""
        return self._grid(self._coordinates(self._density(self._check_attention(attention, size), size)))

    # --- the module ---------------------------------------------------------------------------

    def forward(self, images: torch.Tensor, attention: torch.Tensor, return_grid: bool = False):
        name = type(self).__name__
        check_input(name, images, ndim=4, layout="(B, C, S, S)", name="images")
        check_bool(name, "return_grid", return_grid)
        size = images.shape[-1]
        if images.shape[-2] != size:
            raise ValueError(f"{name}: expected square images (the official operator assumes H = W), "
                             f"but got {images.shape[-2]}x{size}")
        if size < 2:
            raise ValueError(f"{name}: expected images of at least 2x2 pixels, but got {size}x{size}")
        if self.out_size > size and not self.allow_upsampling:
            raise ValueError(f"{name}: out_size={self.out_size} is larger than the {size}x{size} input; "
                             f"the sampler is meant to shrink images (pass allow_upsampling=True to "
                             f"allow it)")
        attention = self._check_attention(attention, size)
        if attention.shape[0] != images.shape[0]:
            raise ValueError(f"{name}: expected one attention map per image, but got {images.shape[0]} "
                             f"images and {attention.shape[0]} maps")
        if attention.device != images.device:
            raise ValueError(f"{name}: expected images and attention on one device, but got "
                             f"{images.device} and {attention.device}")
        with torch.no_grad():
            m = self._density(attention, size)
            grid = self._grid(self._coordinates(m)).to(images.dtype)
        out = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        self._record({"grid": grid, "row_density": m[0], "col_density": m[1]})
        return (out, grid) if return_grid else out

    # --- the computations on checked inputs; rows and columns stacked as (2, B, ...) ----------

    def _marginals(self, a: torch.Tensor, size: int) -> torch.Tensor:
        """(2, B, size): the row profile and the column profile of the resized map."""
        a = a.detach()
        a = a.float() if a.dtype in (torch.float16, torch.bfloat16) else a
        h = a.shape[-1]
        if self.full_resize or h == size:
            up = _resize(a, size, type(self).__name__)
            return torch.stack([up.amax(dim=-1), up.amax(dim=-2)])
        # The column profile of A is the row profile of Aᵀ: both are row profiles of the pair.
        # A row's maximum over the resized width lies at one of the n columns that
        # _interpolation(extremes_only=True) keeps, so the resized map is computed at those
        # columns only (every row, n columns), and the maximum is taken over the n.
        pair = torch.stack([rearrange(a, "b y x -> b x y"), a])               # (2, B, x, y): A and Aᵀ
        columns = _interpolation(size, h, a.device, a.dtype, extremes_only=True)   # (n, x)
        rows_t = _interpolation(size, h, a.device, a.dtype, transposed=True)      # (y, size)
        at_columns = columns @ pair                                                 # (2, B, n, y)
        return (at_columns @ rows_t).amax(dim=-2)                                   # (2, B, size)

    def _density(self, a: torch.Tensor, size: int) -> torch.Tensor:
        """(2, B, size): the capped densities of rows and columns (step 3)."""
        m = self._marginals(a, size)
        out = float(self.out_size)
        # normalised to sum out_size; an all-zero map stays 0 here and the first clip-and-shift
        # (at t = 0) makes it uniform
        m = m * (out / m.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(m.dtype).tiny ** 0.5))
        threshold = self.dense * out / size
        for j in range(self.iters):
            t = m.amax(dim=-1, keepdim=True).amin(dim=0)              # (B, 1): min of the two maxima
            if j == 0:
                t = t.clamp_(max=threshold)
            m = torch.minimum(m, t)
            m += (out - m.sum(dim=-1, keepdim=True)) / size           # restore the sum out_size
        return m

    def _coordinates(self, m: torch.Tensor) -> torch.Tensor:
        """(2, B, out_size): normalised row and column coordinates (step 4)."""
        two, b, size = m.shape
        u = _inverse_cdf(rearrange(m, "two b k -> (two b) k"), self.out_size)
        return rearrange(u, "(two b) i -> two b i", two=2)

    def _grid(self, coords: torch.Tensor) -> torch.Tensor:
        """(B, out, out, 2): output pixel (i, j) samples at (x, y) = (column j, row i) (step 5).

        Written as two planes (B, 2, out, out) and returned as a (B, out, out, 2) view, which
        ``F.grid_sample`` reads as fast as a contiguous grid and which is several times
        cheaper to fill than an interleaved one.
        """
        n = self.out_size
        planes = coords.new_empty(coords.shape[1], 2, n, n)
        planes[:, 0] = rearrange(coords[1], "b j -> b 1 j")            # x: the column's coordinate
        planes[:, 1] = rearrange(coords[0], "b i -> b i 1")            # y: the row's coordinate
        return rearrange(planes, "b two i j -> b i j two")

    def _check_attention(self, attention: object, size: int) -> torch.Tensor:
        name = type(self).__name__
        check_int(name, "size", size, minimum=2)
        check_input(name, attention, ndim=3, layout="(B, h, w)", name="attention map")
        h, w = attention.shape[-2:]
        if h != w:
            raise ValueError(f"{name}: expected a square attention map like the square image it is "
                             f"resized to ({size}x{size}), but got {h}x{w}")
        if not ((attention >= 0) & (attention < float("inf"))).all():   # one pass for the usual case
            if not torch.isfinite(attention).all():
                raise ValueError(f"{name}: expected a finite attention map, but it holds inf or nan")
            raise ValueError(f"{name}: expected a non-negative attention map, but its smallest value "
                             f"is {attention.min().item():.3g}")
        return attention


def _inverse_cdf(m: torch.Tensor, n_out: int) -> torch.Tensor:
    """Normalised coordinates (B, n_out) of the inverse of the piecewise-linear CDF of m (B, S).

    c(0) = 0, c(k) = m(1) + ... + m(k); output sample i goes where c reaches i·c(S-1)/n_out,
    found with ``searchsorted`` (the smallest j >= 1 with c(j) >= target) and refined by
    linear interpolation between c(j-1) and c(j).
    """
    size = m.shape[-1]
    c = F.pad(torch.cumsum(m[:, 1:], dim=-1), (1, 0))                 # (B, S), c[:, 0] = 0
    target = torch.arange(n_out, dtype=m.dtype, device=m.device) * (c[:, -1:] / n_out)   # (B, n_out)
    j = torch.searchsorted(c, target, side="left").clamp_(1, size - 1)
    hi, lo = c.gather(1, j), c.gather(1, j - 1)
    # c(j-1) < target <= c(j), so the step is positive, except for sample 0 (target 0), which
    # always sits at pixel 0 (also when c(1) = 0, where the interpolation is 0 / 0)
    u = j - (hi - target) / (hi - lo).clamp_min(torch.finfo(m.dtype).tiny)
    u[:, 0] = 0.0
    return u * (2.0 / (size - 1)) - 1.0


# --- 4. part/master distillation ----------------------------------------------------------

def distillation_loss(master_logits: torch.Tensor, part_logits: torch.Tensor, *,
                      temperature: float = TEMPERATURE, form: str = "official",
                      reduction: str = "mean") -> torch.Tensor:
    r"""Soft cross-entropy from the part-net (teacher) to the master-net (student), TASN Sec. 3.3.

    .. math::
        L = -\sum_k \mathrm{softmax}(z_{part}/T)_k \, \log \mathrm{softmax}(z_{master}/T)_k

    ``form="official"`` (default) is the official graph: T = 10, **no T² factor** and **no
    stop-gradient on the teacher** (the part-net's soft targets receive gradient too),
    ``SoftmaxCrossEntropyLoss(fc2 / 10, softmax(fc1 / 10))`` in ``model.py``, where fc1 is the
    part-net (detail) head and fc2 the master-net (structure) head. ``form="hinton"`` is the
    usual knowledge distillation of Hinton et al. (2015): the same soft cross-entropy times
    T² (which keeps the gradient's size independent of T) with the teacher detached.
    Logits are (B, K).

    **Batch reduction.** ``reduction``: "mean" over the batch (default), "sum", or "none"
    (per sample, (B,)). The official *symbol* is a sum: ``SoftmaxCrossEntropyLoss`` returns one
    loss per sample and ``mx.sym.make_loss`` sends a gradient of 1 to each (so do the
    ``SoftmaxOutput`` heads of the cross-entropies). But MXNet's ``Module.init_optimizer``
    multiplies every gradient by ``rescale_grad = 1 / batch_size`` (its default, which the
    official ``common/fit.py`` keeps), so the training divides every term by the batch size.
    "mean" therefore gives this term the same weight next to ``F.cross_entropy`` (a mean) as
    the official training gives it next to its heads; "sum" is the symbol's value itself, B
    times larger, which weighs the term B times more against mean-reduced cross-entropies
    (use it with sum-reduced cross-entropies and a learning rate divided by B).
    """
    fn = "distillation_loss"
    check_input(fn, master_logits, ndim=2, layout="(B, K)", name="master logits")
    check_input(fn, part_logits, ndim=2, layout="(B, K)", name="part logits")
    if master_logits.shape != part_logits.shape:
        raise ValueError(f"{fn}: expected master and part logits of one shape (B, K), but got "
                         f"{tuple(master_logits.shape)} and {tuple(part_logits.shape)}")
    temperature = check_float(fn, "temperature", temperature, minimum=0.0, strict_minimum=True)
    check_choice(fn, "form", form, ("official", "hinton"))
    check_choice(fn, "reduction", reduction, ("mean", "sum", "none"))
    teacher = part_logits.detach() if form == "hinton" else part_logits
    soft_targets = torch.softmax(teacher / temperature, dim=-1)
    per_sample = -(soft_targets * torch.log_softmax(master_logits / temperature, dim=-1)).sum(dim=-1)
    if form == "hinton":
        per_sample = per_sample * temperature ** 2
    if reduction == "mean":
        return per_sample.mean()
    if reduction == "sum":
        return per_sample.sum()
    return per_sample
