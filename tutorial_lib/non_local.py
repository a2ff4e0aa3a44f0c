"""Non-local block: every position aggregates features from every other position.

Paper: X. Wang, R. Girshick, A. Gupta, K. He, "Non-local Neural Networks", CVPR 2018,
arXiv:1711.07971. Official code (Caffe2): facebookresearch/video-nonlocal-net.

The file follows the paper's method section: the generic non-local operation (Eq. 1), the four
pairwise functions with their normalisations (Sec. 3.2), the residual block with its
zero-initialised batch norm (Eq. 6), and the sub-sampling trick (Sec. 3.3). The last part is
about cost: the softmax forms run on ``torch.nn.functional.scaled_dot_product_attention``, so
the N x N affinity matrix is never stored unless the caller asks to see it.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import einsum, rearrange
from torch import nn

from .capture import AttentionModule
from .checks import check_bool, check_choice, check_float, check_input, check_int

__all__ = ["NonLocalBlock", "PAIRWISE_FUNCTIONS"]

PAIRWISE_FUNCTIONS = ("gaussian", "embedded_gaussian", "dot_product", "concatenation")
SOFTMAX_FORMS = ("gaussian", "embedded_gaussian")  # normalised by C(x) = sum_j f, i.e. a softmax
LAYOUTS = {1: "(B, C, L)", 2: "(B, C, H, W)", 3: "(B, C, T, H, W)"}
POOL_KERNELS = {1: (2,), 2: (2, 2), 3: (1, 2, 2)}  # video: time is not pooled (official code)
CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
POOL = {1: nn.MaxPool1d, 2: nn.MaxPool2d, 3: nn.MaxPool3d}
BATCH_NORM = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
CONV_FUNCTIONS = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
CONV_INIT_STD = 0.01  # official NONLOCAL.CONV_INIT_STD
# Below this many query-key pairs per image, a pass that needs gradients builds the weights
# explicitly (faster there, measured in benchmarks/bench_non_local.py); above, the fused kernel.
EXPLICIT_MAX_PAIRS = 800 * 800


class NonLocalBlock(AttentionModule):
    r"""Non-local block (Wang et al., "Non-local Neural Networks", CVPR 2018, arXiv:1711.07971).

    **Equation.** With positions i, j running over all N = L, H*W or T*H*W locations,

    .. math::
        y_i = \frac{1}{\mathcal{C}(x)} \sum_j f(x_i, x_j)\, g(x_j), \qquad
        z_i = x_i + \mathrm{BN}(W_z\, y_i),

    where g, θ, φ and W_z are 1x1(x1) convolutions (θ, φ, g: C -> ``inner_channels``;
    W_z: ``inner_channels`` -> C). ``pairwise`` chooses f and its normalisation C(x):

    =========================  ======================================  ========================
    ``pairwise``               f(x_i, x_j)                             C(x)
    =========================  ======================================  ========================
    ``"gaussian"``             exp(s · x_iᵀ x_j)   (no θ, φ)           Σ_j f (softmax over j)
    ``"embedded_gaussian"``    exp(s · θ(x_i)ᵀ φ(x_j))   (default)     Σ_j f (softmax over j)
    ``"dot_product"``          θ(x_i)ᵀ φ(x_j)                          N̂, the number of j
    ``"concatenation"``        ReLU(w_fᵀ [θ(x_i); φ(x_j)])             N̂, the number of j
    =========================  ======================================  ========================

    The embedded Gaussian is softmax self-attention: y = softmax(s · θᵀφ, over j) g.

    **Shapes.** Input and output (B, C, L) for ``spatial_dims=1`` (sequences), (B, C, H, W) for
    2 (images), (B, C, T, H, W) for 3 (video clips); the output has the input's shape. The input
    has the block's dtype and device (any floating dtype under ``torch.autocast``).
    ``return_attention=True`` also returns ``{"attention": (B, N, *key_shape)}``: row i holds
    the weights f(x_i, x_j) / C(x) that position i (queries in raster order) gives to every
    key position j, laid out on the key grid (the sub-sampled grid when ``sub_sample``), so
    ``maps["attention"][b, i]`` is an image of where position i looks. y equals that weight
    matrix times g exactly. For the softmax forms each row sums to 1.

    **Defaults follow the official code** (facebookresearch/video-nonlocal-net):

    * ``inner_channels = C // 2`` (at least 1);
    * ``sub_sample=True``: the φ and g paths see a max-pooled input x̂ (kernel = stride = 2 on
      L; 2x2 on H, W; 1x2x2 on T, H, W, time not pooled), **pooled before their 1x1 conv**
      as in the official code (some re-implementations convolve first; max-pooling does not
      commute with a convolution, so the two differ). θ keeps every position, so the output
      has N positions while the sums run over N̂ ≈ N/4 keys: 4x less pairwise work. Odd sizes
      are floored, as by the official pooling;
    * ``scale=None``: the softmax forms multiply θᵀφ by 1/√d, d the width of the vectors
      compared (``inner_channels``; C for the Gaussian), the official ``USE_SCALE=True``
      (released models were trained with it). The official code has no Gaussian form: its
      1/√C is this course's extension, by analogy. ``scale=1.0`` gives the paper's Eq. 2-3. The
      dot-product and concatenation forms have no scale in either (only None or 1.0 is
      accepted there);
    * W_z is followed by batch norm whose weight γ **and** bias β start at 0, so the block is
      exactly the identity at initialisation (train and eval mode). ``batch_norm=False``
      drops the BN and zero-initialises W_z instead (also the identity at initialisation);
    * every convolution weight (θ, φ, g, W_z, and w_f of the concatenation form) is drawn
      from N(0, 0.01²), every bias is 0 (official ``CONV_INIT_STD=0.01``, ``NO_BIAS=0``).
      BN uses eps 1e-5 and PyTorch momentum 0.1 (Caffe2 momentum 0.9).

    Parameters with the defaults and an even C: 2C² + 4.5C (θ, φ, g, W_z with biases; BN γ,
    β); C = 1024 gives 2,101,760 (in general 4Cd + 3d + 3C with d = ``inner_channels``). The Gaussian form has no θ, φ; the concatenation form adds the
    2 · ``inner_channels`` weights of w_f.

    **Cost.** Two exact routes, chosen by speed (``benchmarks/bench_non_local.py``):

    * *fused*: the softmax forms, without gradients or on maps with more than
      ``EXPLICIT_MAX_PAIRS`` query-key pairs, call ``F.scaled_dot_product_attention`` on
      (B, 1, N, d) rows whose feature axis is contiguous, of equal widths (the Gaussian
      zero-pads the narrower of x and g, which changes no value): the layout PyTorch's fused
      kernels need to run without storing the N x N̂ affinity (measured on CPU: 3-D or
      transposed inputs fall back to a path that stores it);
    * *explicit*: the N x N̂ weights are built when the map is asked for
      (``return_attention=True`` or an active ``capture_attention``), for the dot-product and
      concatenation forms, and for the softmax forms with gradients on small maps, where the
      explicit product and its backward are faster than the fused kernel's on CPU. θ, φ, g
      then stay in the convolutions' layout and are read transposed by the matrix products,
      so that no gradient is copied into another layout.

    In both, 1x1 convolutions that read the same input run as one convolution (weights
    stacked; the parameters stay separate modules, with the state_dict keys of separate
    convolutions), W_z reads y in the layout the products leave it in, and the scale is applied
    inside the matrix product. The forward reads the weights of θ, φ, g and W_z without calling
    those modules, so forward hooks registered on them never run (hooks on the block, its
    pooling and its batch norm do). The dot-product form
    sums in whichever order is cheaper, (θᵀφ) g or θᵀ(φ g). The concatenation form stores one
    N x N̂ matrix, never the N x N̂ x 2d concatenation.
    """

    def __init__(self, channels: int, inner_channels: int | None = None, *,
                 pairwise: str = "embedded_gaussian", spatial_dims: int = 2, sub_sample: bool = True,
                 scale: float | None = None, batch_norm: bool = True) -> None:
        super().__init__()
        name = type(self).__name__
        channels = check_int(name, "channels", channels, minimum=1)
        if inner_channels is None:
            inner_channels = max(1, channels // 2)
        inner_channels = check_int(name, "inner_channels", inner_channels, minimum=1)
        pairwise = check_choice(name, "pairwise", pairwise, PAIRWISE_FUNCTIONS)
        spatial_dims = check_int(name, "spatial_dims", spatial_dims, minimum=1, maximum=3)
        sub_sample = check_bool(name, "sub_sample", sub_sample)
        batch_norm = check_bool(name, "batch_norm", batch_norm)
        if scale is not None:
            scale = check_float(name, "scale", scale, minimum=0.0, strict_minimum=True)
            if not math.isfinite(scale):
                raise ValueError(f"{name}: expected a finite scale > 0, but got scale={scale}")
            if pairwise not in SOFTMAX_FORMS and scale != 1.0:
                raise ValueError(f"{name}: expected scale=None (or 1.0) for pairwise={pairwise!r}, "
                                 f"whose normalisation is a division by the number of key positions, "
                                 f"but got scale={scale}")
        self.channels, self.inner_channels = channels, inner_channels
        self.pairwise, self.spatial_dims = pairwise, spatial_dims
        self.sub_sample, self.batch_norm = sub_sample, batch_norm
        self.scale = scale
        conv = CONV[spatial_dims]

        # theta, phi: the embeddings compared by f (the Gaussian compares x itself)
        if pairwise != "gaussian":
            self.theta = conv(channels, inner_channels, kernel_size=1)
            self.phi = conv(channels, inner_channels, kernel_size=1)
        # w_f of the concatenation form: a linear map of [theta_i; phi_j] to one number
        if pairwise == "concatenation":
            self.concat_project = nn.Linear(2 * inner_channels, 1, bias=False)
        # g: the features that are aggregated
        self.g = conv(channels, inner_channels, kernel_size=1)
        # sub-sampling of the phi and g paths (pool first, then the 1x1 conv)
        kernel = POOL_KERNELS[spatial_dims]
        self.pool = POOL[spatial_dims](kernel_size=kernel, stride=kernel) if sub_sample else nn.Identity()
        # W_z and the zero-initialised BN of the residual branch
        self.out = conv(inner_channels, channels, kernel_size=1)
        self.bn = BATCH_NORM[spatial_dims](channels) if batch_norm else nn.Identity()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Official initialisation: weights ~ N(0, 0.01²), biases 0; BN γ = β = 0."""
        for m in self.modules():
            if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
                nn.init.normal_(m.weight, mean=0.0, std=CONV_INIT_STD)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        if self.batch_norm:
            nn.init.zeros_(self.bn.weight)
            nn.init.zeros_(self.bn.bias)
        else:
            nn.init.zeros_(self.out.weight)
            nn.init.zeros_(self.out.bias)

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, inner_channels={self.inner_channels}, "
                f"pairwise={self.pairwise!r}, spatial_dims={self.spatial_dims}, "
                f"sub_sample={self.sub_sample}, scale={self.scale}, batch_norm={self.batch_norm}")

    @property
    def affinity_scale(self) -> float:
        """The factor s that multiplies θᵀφ (or xᵀx) before the softmax; 1 for the other forms."""
        if self.scale is not None:
            return self.scale
        if self.pairwise == "gaussian":
            return self.channels ** -0.5
        if self.pairwise == "embedded_gaussian":
            return self.inner_channels ** -0.5
        return 1.0

    # --- the block ------------------------------------------------------------------------

    def forward(self, x: torch.Tensor, return_attention: bool = False):
        """z = x + BN(W_z y); with ``return_attention`` also ``{"attention": (B, N, *key_shape)}``."""
        self._check(x, return_attention)
        want_map = return_attention or self.capturing
        y, maps = self._non_local_operation(x, want_map)
        if want_map:
            self._record(maps)
        z = x + self.bn(_conv1x1_from_rows(self.out, y).view(x.shape))  # W_z, BN, then + x
        return (z, maps) if return_attention else z

    def _non_local_operation(self, x: torch.Tensor, want_map: bool):
        """y = (1 / C(x)) sum_j f(x_i, x_j) g(x_j) as rows (B, N, inner) (and the weights).

        A method of its own so that its intermediate tensors are freed before W_z runs.
        Two exact routes, chosen by what is faster (benchmarks/bench_non_local.py):

        * explicit: the N x N̂ weights are built (the map was asked for; the dot-product and
          concatenation forms; or a softmax form with gradients on a small map, where the
          explicit product and its backward beat the fused kernel). θ, φ, g stay in the
          convolutions' (B, width, positions) layout, read transposed by the matrix products,
          so that no gradient has to be copied into another layout;
        * fused: a softmax form on a large map, or without gradients: θ, φ, g are written as
          rows (B, positions, width), the layout of ``F.scaled_dot_product_attention``, which
          never stores the N x N̂ matrix.

        Either way, 1x1 convolutions that read the same input run as one (their weights
        stacked): θ, φ, g on x without sub-sampling; φ, g on x̂ with it.
        """
        x_hat = self.pool(x)  # sub-sampled input of the phi and g paths (x itself without sub-sampling)
        key_shape = x_hat.shape[2:]
        n, m = x[0, 0].numel(), x_hat[0, 0].numel()
        explicit = (want_map or self.pairwise not in SOFTMAX_FORMS
                    or (torch.is_grad_enabled() and n * m <= EXPLICIT_MAX_PAIRS))
        q, k, v = self._embed(x, x_hat, rows=not explicit)
        del x_hat
        maps = {}
        if not explicit:
            return _softmax_attention(q, k, v, self.affinity_scale), maps
        v_rows = rearrange(v, "b e m -> b m e")  # a view
        d, e = q.shape[1], v.shape[1]
        if not want_map and self.pairwise == "dot_product" and (n + m) * d * e < n * m * (d + e):
            # the dot product is linear in the weights: θᵀ(φ gᵀ) / N̂ needs no N x N̂ matrix
            return torch.bmm(rearrange(q, "b d n -> b n d"), torch.bmm(k, v_rows)) / m, maps
        weights = self._weights(q, k)  # (B, N, N̂): f(x_i, x_j) / C(x)
        if want_map:
            maps["attention"] = weights.view(*weights.shape[:2], *key_shape)
        return torch.bmm(weights, v_rows), maps

    def _embed(self, x: torch.Tensor, x_hat: torch.Tensor, rows: bool):
        """θ(x), φ(x̂), g(x̂) (x, x̂ themselves for the Gaussian's θ, φ), as (B, width, positions)
        or, with ``rows``, as (B, positions, width)."""
        to_rows = lambda t: rearrange(t.flatten(2), "b c n -> b n c")  # noqa: E731  (a view)
        if self.pairwise == "gaussian":
            embeddings = [(x, None), (x_hat, None), (x_hat, [self.g])]
        elif self.sub_sample:
            embeddings = [(x, [self.theta]), (x_hat, [self.phi, self.g])]
        else:
            embeddings = [(x, [self.theta, self.phi, self.g])]
        out = []
        for source, convs in embeddings:
            if convs is None:
                out.append(to_rows(source) if rows else source.flatten(2))
            elif rows:
                out.extend(_conv1x1_to_rows(convs, source).split(self.inner_channels, dim=-1))
            else:
                out.extend(_conv1x1(convs, source, self.spatial_dims).flatten(2).split(self.inner_channels, dim=1))
        return out

    # --- the explicit weights f(x_i, x_j) / C(x) -------------------------------------------

    def _weights(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """The normalised pairwise weights f(x_i, x_j) / C(x), shape (B, N, N̂), from θ (B, d, N)
        and φ (B, d, N̂) (x and x̂ for the Gaussian)."""
        m = k.shape[-1]
        if self.pairwise == "concatenation":
            # w_f^T [theta_i; phi_j] = w_theta^T theta_i + w_phi^T phi_j: a sum of a column and a row
            w_theta, w_phi = rearrange(self.concat_project.weight, "1 (two d) -> two d", two=2)
            a = einsum(q, w_theta, "b d n, d -> b n")
            c = einsum(k, w_phi, "b d m, d -> b m")
            return F.relu(rearrange(a, "b n -> b n 1") + rearrange(c, "b m -> b 1 m")) / m
        # θ_iᵀ φ_j for every pair, times the scale s (or 1 / N̂) inside the product: no extra pass
        factor = self.affinity_scale if self.pairwise in SOFTMAX_FORMS else 1.0 / m
        rows = rearrange(q, "b d n -> b n d")
        if factor == 1.0:
            affinity = torch.bmm(rows, k)
        else:
            affinity = torch.baddbmm(k.new_zeros(()).expand(k.shape[0], rows.shape[1], m), rows, k,
                                     beta=0.0, alpha=factor)
        if self.pairwise in SOFTMAX_FORMS:
            return torch.softmax(affinity, dim=-1)
        return affinity  # dot product: θ_iᵀ φ_j / N̂

    # --- input checks ---------------------------------------------------------------------

    def _check(self, x: object, return_attention: object) -> None:
        name = type(self).__name__
        nd = self.spatial_dims
        check_input(name, x, ndim=nd + 2, layout=LAYOUTS[nd], channels=self.channels)
        check_bool(name, "return_attention", return_attention)
        weight = self.g.weight
        if x.device != weight.device:
            raise ValueError(f"{name}: expected an input on the block's device ({weight.device}), but got "
                             f"one on {x.device}; move the block or the input with .to()")
        if x.dtype != weight.dtype and not _autocast_enabled(x.device.type):
            raise TypeError(f"{name}: expected an input of the block's dtype ({weight.dtype}), but got "
                            f"{x.dtype}; convert the block or the input with .to(), or run under torch.autocast")
        if self.sub_sample:
            grid = tuple(x.shape[2:])
            if any(size < k for size, k in zip(grid, POOL_KERNELS[nd])):
                pooled = {1: "L", 2: "H and W", 3: "H and W (not T)"}[nd]
                raise ValueError(f"{name}: sub-sampling halves {pooled}, so expected each of them "
                                 f">= 2, but got a grid of {'x'.join(map(str, grid))}; use "
                                 f"sub_sample=False for such small inputs")
        if self.batch_norm and self.training and x.shape[0] * math.prod(x.shape[2:]) < 2:
            raise ValueError(f"{name}: batch norm in training mode needs more than one value per "
                             f"channel, but got batch 1 with a single position (shape "
                             f"{tuple(x.shape)}); use eval mode or a larger input")


def _autocast_enabled(device_type: str) -> bool:
    """Whether torch.autocast is active for this device type (it casts inputs and weights itself)."""
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4 takes no device type
        return torch.is_autocast_enabled() or torch.is_autocast_cpu_enabled()


def _conv1x1(convs: list[nn.Module], x: torch.Tensor, spatial_dims: int) -> torch.Tensor:
    """1x1 convolutions of the same input x, side by side: one convolution, weights stacked.

    The modules' weights are read, the modules are not called (as on every other route), so
    that hooks on them behave the same whichever route runs: they never fire.
    """
    if len(convs) == 1:
        return CONV_FUNCTIONS[spatial_dims](x, convs[0].weight, convs[0].bias)
    return CONV_FUNCTIONS[spatial_dims](x, torch.cat([c.weight for c in convs]), torch.cat([c.bias for c in convs]))


def _conv1x1_to_rows(convs: list[nn.Module], x: torch.Tensor) -> torch.Tensor:
    """1x1 convolutions of x (B, C, *grid), side by side, as rows: (B, N, sum of out widths).

    One batched product W x + b whose result is laid out with positions as rows: the layout
    the attention reads, so no copy follows. Several convolutions of the same input share
    the pass over x (their weights stacked).
    """
    weight = torch.cat([rearrange(c.weight, "o i ... -> o (i ...)") for c in convs])  # (out, C)
    bias = torch.cat([c.bias for c in convs])
    rows = rearrange(x.flatten(2), "b c n -> b n c")  # a view: bmm reads it transposed
    return torch.baddbmm(bias, rows, rearrange(weight, "o c -> c o").expand(x.shape[0], -1, -1))


def _conv1x1_from_rows(conv: nn.Module, y: torch.Tensor) -> torch.Tensor:
    """The 1x1 convolution W_z applied to rows y (B, N, inner): (B, C, N), the standard layout."""
    weight = rearrange(conv.weight, "o i ... -> o (i ...)")  # (C, inner)
    return torch.baddbmm(rearrange(conv.bias, "o -> o 1"), weight.expand(y.shape[0], -1, -1),
                         rearrange(y, "b n i -> b i n"))


def _softmax_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """softmax(scale · q kᵀ, over keys) v for rows (B, N, d), without storing the affinity.

    PyTorch's fused kernels need q, k and v of one width; a zero-padded feature adds exactly
    0 to every dot product and a zero-padded value column gives an output column of 0 that is
    cut off, so padding changes no value.
    """
    d, e = q.shape[-1], v.shape[-1]
    if d < e:
        q, k = F.pad(q, (0, e - d)), F.pad(k, (0, e - d))
    elif e < d:
        v = F.pad(v, (0, d - e))
    # one head; the fused kernels read rows whose features are adjacent in memory (a view with
    # another stride, like the Gaussian's transposed x, sends them to a path storing the matrix)
    q, k, v = (rearrange(t if t.stride(-1) == 1 else t.contiguous(), "b n d -> b 1 n d") for t in (q, k, v))
    y = rearrange(F.scaled_dot_product_attention(q, k, v, scale=scale), "b 1 n d -> b n d")
    return y[..., :e] if e < d else y
