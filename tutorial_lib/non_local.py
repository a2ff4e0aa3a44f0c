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
from einops import einsum, pack, rearrange, unpack
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
CONV_INIT_STD = 0.01  # official NONLOCAL.CONV_INIT_STD


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
    2 (images), (B, C, T, H, W) for 3 (video clips); the output has the input's shape.
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
      (released models were trained with it). ``scale=1.0`` gives the paper's Eq. 2-3. The
      dot-product and concatenation forms have no scale in either (only None or 1.0 is
      accepted there);
    * W_z is followed by batch norm whose weight γ **and** bias β start at 0, so the block is
      exactly the identity at initialisation (train and eval mode). ``batch_norm=False``
      drops the BN and zero-initialises W_z instead (also the identity at initialisation);
    * every convolution weight (θ, φ, g, W_z, and w_f of the concatenation form) is drawn
      from N(0, 0.01²), every bias is 0 (official ``CONV_INIT_STD=0.01``, ``NO_BIAS=0``).
      BN uses eps 1e-5 and PyTorch momentum 0.1 (Caffe2 momentum 0.9).

    Parameters with the defaults: 2C² + 4.5C (θ, φ, g, W_z with biases; BN γ, β); C = 1024
    gives 2,101,760. The Gaussian form has no θ, φ; the concatenation form adds the
    2 · ``inner_channels`` weights of w_f.

    **Cost.** The softmax forms call ``F.scaled_dot_product_attention`` on contiguous 4-D
    (B, 1, N, d) tensors of equal widths (the Gaussian zero-pads the narrower of x and g,
    which changes no value): the layout PyTorch's fused kernels need to run without storing
    the N x N̂ affinity (measured on CPU: 3-D, oddly strided or unequal-width inputs fall back
    to a path that stores it; on GPU the kernel chosen also depends on width and dtype).
    The dot-product form is linear in the affinity, so it sums in whichever order is
    cheaper, (θᵀφ) g or θᵀ(φ g), both exact. The concatenation form stores one N x N̂
    matrix (never the N x N̂ x 2d concatenation). Asking for the map (``return_attention=True``
    or an active ``capture_attention``) computes the explicit weights and aggregates with them.
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
        z = x + self.bn(self.out(y))  # the block: residual branch W_z, BN, then + x
        return (z, maps) if return_attention else z

    def _non_local_operation(self, x: torch.Tensor, want_map: bool):
        """y = (1 / C(x)) sum_j f(x_i, x_j) g(x_j) as a (B, inner, *grid) map (and the weights).

        A method of its own so that its intermediate tensors are freed before W_z runs.
        """
        x_hat = self.pool(x)  # sub-sampled input of the phi and g paths
        # positions flattened: (B, c, *grid) -> (B, 1, N, c), one "head", contiguous
        if self.pairwise == "gaussian":
            q, query_shape = _positions(x)
            k, key_shape = _positions(x_hat)
        else:
            q, query_shape = _positions(self.theta(x))
            k, key_shape = _positions(self.phi(x_hat))
        v, _ = _positions(self.g(x_hat))
        del x_hat

        maps = {}
        if want_map:
            weights = self._weights(q, k)  # (B, 1, N, N̂): f(x_i, x_j) / C(x)
            y = einsum(weights, v, "b h n m, b h m c -> b h n c")
            maps["attention"] = unpack(rearrange(weights, "b 1 n m -> b n m"), key_shape, "b n *")[0]
        else:
            y = self._aggregate(q, k, v)
        del q, k, v
        # back to (B, inner, *grid), in the standard layout (the 1x1 conv then keeps x's layout)
        return unpack(rearrange(y, "b 1 n c -> b c n").contiguous(), query_shape, "b c *")[0], maps

    # --- y = (1 / C(x)) sum_j f(x_i, x_j) g(x_j), without the N x N̂ matrix where possible ---

    def _aggregate(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if self.pairwise in SOFTMAX_FORMS:
            return _softmax_attention(q, k, v, self.affinity_scale)
        if self.pairwise == "dot_product":
            n, m, d, e = q.shape[-2], k.shape[-2], q.shape[-1], v.shape[-1]
            if (n + m) * d * e < n * m * (d + e):  # theta^T (phi g) is cheaper: no N x N̂ matrix
                kv = einsum(k, v, "b h m d, b h m e -> b h d e")
                return einsum(q, kv, "b h n d, b h d e -> b h n e") / m
            return einsum(self._weights(q, k), v, "b h n m, b h m e -> b h n e")
        # concatenation: ReLU does not factorise, one N x N̂ matrix is needed
        return einsum(self._weights(q, k), v, "b h n m, b h m e -> b h n e")

    def _weights(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """The explicit normalised pairwise weights f(x_i, x_j) / C(x), shape (B, 1, N, N̂)."""
        m = k.shape[-2]
        if self.pairwise == "concatenation":
            # w_f^T [theta_i; phi_j] = w_theta^T theta_i + w_phi^T phi_j: a sum of a column and a row
            w_theta, w_phi = rearrange(self.concat_project.weight, "1 (two d) -> two d", two=2)
            a = einsum(q, w_theta, "b h n d, d -> b h n")
            c = einsum(k, w_phi, "b h m d, d -> b h m")
            return F.relu(rearrange(a, "b h n -> b h n 1") + rearrange(c, "b h m -> b h 1 m")) / m
        affinity = einsum(q, k, "b h n d, b h m d -> b h n m")
        if self.pairwise in SOFTMAX_FORMS:
            return torch.softmax(affinity * self.affinity_scale, dim=-1)
        return affinity / m  # dot product

    # --- input checks ---------------------------------------------------------------------

    def _check(self, x: object, return_attention: object) -> None:
        name = type(self).__name__
        nd = self.spatial_dims
        check_input(name, x, ndim=nd + 2, layout=LAYOUTS[nd], channels=self.channels)
        check_bool(name, "return_attention", return_attention)
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


def _positions(t: torch.Tensor) -> tuple[torch.Tensor, list[torch.Size]]:
    """(B, c, *grid) -> contiguous (B, 1, N, c) with N = prod(grid), and the grid to undo it."""
    flat, grid = pack([t], "b c *")
    return rearrange(flat, "b c n -> b 1 n c").contiguous(), grid


def _softmax_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """softmax(scale · q kᵀ, over keys) v without storing the affinity.

    PyTorch's fused kernels need q, k and v of one width; a zero-padded feature adds exactly
    0 to every dot product and a zero-padded value column gives an output column of 0 that is
    cut off, so padding changes no value.
    """
    d, e = q.shape[-1], v.shape[-1]
    if d < e:
        q, k = F.pad(q, (0, e - d)), F.pad(k, (0, e - d))
    elif e < d:
        v = F.pad(v, (0, d - e))
    y = F.scaled_dot_product_attention(q, k, v, scale=scale)
    return y[..., :e] if e < d else y
