"""Double attention (A²-Net): gather a few global descriptors, distribute them to every position.

Paper: Yunpeng Chen, Yannis Kalantidis, Jianshu Li, Shuicheng Yan, Jiashi Feng,
"A²-Nets: Double Attention Networks", NeurIPS 2018, arXiv:1810.11579. No official code has
been released; the paper is the reference (public re-implementations and their differences:
notebook ``07_double_attention.ipynb``).

The method section, on a feature map X with c channels and N = h·w positions (N = d·h·w for
a video clip of d frames), positions flattened into columns (c x N):

1. Three 1x1 convolutions (stored here as one convolution with m + 2n output channels):
   A = φ(X) (m x N, the features to gather), B = θ(X) (n x N, n attention maps),
   V = ρ(X) (n x N, one attention vector per position).
2. Gather (second-order attention pooling): every attention map is normalised by a softmax
   over the N positions, and the n global descriptors are weighted sums of the columns of A:
   G = A softmax_space(B)ᵀ                                        (m x n)
   g_k = Σ_j softmax(b_k)_j a_j, the weights summing to 1 (a weighted sum, not a mean).
3. Distribute: at every position i a softmax over the n descriptors picks a mixture of them:
   z_i = G softmax_n(v_i),  Z = G softmax_n(V)                      (m x N)
4. Block: a 1x1 convolution W_out maps m back to c channels and the input is added:
   out = X + W_out Z.

Cost: the products are taken in this order (gather first), so no N x N matrix is ever formed;
the other order, A (softmax_n(V)ᵀ softmax_space(B))ᵀ, builds an N x N matrix like a non-local
block. Beyond the paper, W_φ and W_out can act on the n descriptors instead of the N positions
(the softmax weights sum to 1, so the biases pass through unchanged); ``DoubleAttention``
chooses the cheaper order, and ``order="literal"`` keeps the paper's.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange, unpack
from torch import nn

from .capture import AttentionModule
from .checks import check_bool, check_choice, check_input, check_int

__all__ = ["DoubleAttention", "ORDERS"]

ORDERS = ("auto", "literal", "folded")
LAYOUTS = {1: "(B, C, L)", 2: "(B, C, H, W)", 3: "(B, C, T, H, W)"}
CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
CONV_FN = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


class DoubleAttention(AttentionModule):
    r"""Double attention block (Chen et al., "A²-Nets: Double Attention Networks", NeurIPS 2018,
    arXiv:1810.11579).

    **Equation.** With X as c x N (positions in raster order) and three 1x1 convolutions
    A = W_φ X + b_φ (m x N), B = W_θ X + b_θ (n x N), V = W_ρ X + b_ρ (n x N):

    .. math::
        G = A\,\mathrm{softmax}_{\text{space}}(B)^\top, \qquad
        Z = G\,\mathrm{softmax}_{n}(V), \qquad
        \text{out} = X + W_{out} Z + b_{out}.

    ``softmax_space`` normalises each of the n attention maps over the N positions (each row of
    B); ``softmax_n`` normalises each position's attention vector over the n descriptors (each
    column of V). G holds n global descriptors of width m, each a weighted **sum** of the
    columns of A whose weights sum to 1.

    **Shapes.** Input and output (B, C, L) for ``spatial_dims=1``, (B, C, H, W) for 2 (images),
    (B, C, T, H, W) for 3 (video clips: the softmax over space runs over all T·H·W positions, as
    the paper's d·h·w). ``return_attention=True`` also returns a dict:
    ``"attention_maps"`` (B, n, *grid), softmax over the grid of each map (sums to 1 per map);
    ``"attention_vectors"`` (B, n, *grid), softmax over the n descriptors at each position
    (sums to 1 per position); ``"descriptors"`` (B, m, n), the gathered G.

    **Defaults.** No official code exists, so every default below is the paper's form or, where
    the paper's own setting could not be checked (its experiments section: m, n, the insertion
    points, the initialisation), the course's choice, said so:

    * ``c_m = c_n = in_channels // 4`` (at least 1): the course's choice. The paper reduces m and
      n below c; its exact values could not be checked. ``DoubleAttention(512)`` then has
      m = n = 128, the sizes of the widely copied re-implementations' example.
    * ``reconstruct=True``: the output 1x1 convolution W_out (m -> c), and ``residual=True``:
      the input is added (the paper's block, out = X + W_out Z). ``reconstruct=False`` drops
      W_out (then m must equal c when ``residual=True``); ``residual=False`` returns the branch
      alone, as the public re-implementations do.
    * ``zero_init`` (default: True when there is a W_out): W_out's weight and bias start at 0, so
      the block is exactly the identity at initialisation and can be dropped into a trained
      network without changing it (the course's choice, as the zero-initialised batch norm of a
      non-local block; whether and how the paper initialises W_out could not be checked). Its
      gradient is not 0, so training moves it at the first step; φ, θ, ρ follow from the second. With
      ``residual=False`` the branch then starts at exactly 0 (the identity once the caller adds
      the input itself); pass ``zero_init=False`` for a branch that starts non-zero.
    * the three input convolutions are one convolution ``embed`` with m + 2n output channels
      (rows [0, m) are φ, [m, m + n) θ, [m + n, m + 2n) ρ), PyTorch's default initialisation
      (the same distribution as three separate default convolutions). Every convolution has a
      bias, as in the public re-implementations. Parameters: ``2cm + 2cn + m + 2n + c``
      (c = 512, m = n = 128: 263,040); without W_out ``cm + 2cn + m + 2n``.
      b_θ adds the same number to a whole attention map, which a softmax over space cannot see:
      it never changes the output and receives a zero gradient (it is kept for the count).

    **Cost.** ``order="auto"`` (default) computes the same block in the cheaper of two orders,
    both without any N x N matrix (``multiply_adds`` counts them):

    * ``"literal"``: the paper's order, A (m x N), G = A Sᵀ, Z = G softmax_n(V) (m x N), W_out Z:
      N (c(m + 2n) + 2mn + mc) multiply-adds per image;
    * ``"folded"``: W_φ and W_out act on the n descriptors instead of the N positions:
      P = X Sᵀ (c x n), G = W_φ P + b_φ, H = W_out G + b_out (c x n), out = X + H softmax_n(V).
      Exact because each row of S and each column of softmax_n(V) sums to 1, so the biases pass
      through; neither A nor Z (m x N each) is formed. 4cnN + 2cmn multiply-adds: cheaper than
      the paper's order when N (cm + mn - cn) > cmn, so for m = n once N > c (at c = 256, from
      17x17 maps on); when cm + mn <= cn, never.
    """

    def __init__(self, in_channels: int, c_m: int | None = None, c_n: int | None = None, *,
                 reconstruct: bool = True, residual: bool = True, zero_init: bool | None = None,
                 spatial_dims: int = 2, order: str = "auto") -> None:
        super().__init__()
        name = type(self).__name__
        in_channels = check_int(name, "in_channels", in_channels, minimum=1)
        c_m = check_int(name, "c_m", max(1, in_channels // 4) if c_m is None else c_m, minimum=1)
        c_n = check_int(name, "c_n", max(1, in_channels // 4) if c_n is None else c_n, minimum=1)
        reconstruct = check_bool(name, "reconstruct", reconstruct)
        residual = check_bool(name, "residual", residual)
        if zero_init is None:
            zero_init = reconstruct
        zero_init = check_bool(name, "zero_init", zero_init)
        spatial_dims = check_int(name, "spatial_dims", spatial_dims, minimum=1, maximum=3)
        order = check_choice(name, "order", order, ORDERS)
        if zero_init and not reconstruct:
            raise ValueError(f"{name}: zero_init=True zeroes the output convolution W_out, so expected "
                             f"reconstruct=True, but got reconstruct=False (there is no W_out)")
        if residual and not reconstruct and c_m != in_channels:
            raise ValueError(f"{name}: without the output convolution (reconstruct=False) the residual "
                             f"X + Z needs c_m == in_channels ({in_channels}), but got c_m={c_m}")
        self.in_channels, self.c_m, self.c_n = in_channels, c_m, c_n
        self.reconstruct, self.residual, self.zero_init = reconstruct, residual, zero_init
        self.spatial_dims, self.order = spatial_dims, order
        conv = CONV[spatial_dims]
        # phi, theta, rho as ONE 1x1 convolution: rows [0, m) phi, [m, m + n) theta, [m + n, m + 2n) rho
        self.embed = conv(in_channels, c_m + 2 * c_n, kernel_size=1)
        # W_out: m -> c
        self.out = conv(c_m, in_channels, kernel_size=1) if reconstruct else None
        if zero_init:
            nn.init.zeros_(self.out.weight)
            nn.init.zeros_(self.out.bias)

    def extra_repr(self) -> str:
        return (f"in_channels={self.in_channels}, c_m={self.c_m}, c_n={self.c_n}, "
                f"reconstruct={self.reconstruct}, residual={self.residual}, zero_init={self.zero_init}, "
                f"spatial_dims={self.spatial_dims}, order={self.order!r}")

    # --- cost of the two orders (multiply-adds per image, N positions) ---------------------

    def multiply_adds(self, positions: int, order: str | None = None) -> int:
        """Multiply-adds of one forward pass on one input with ``positions`` positions.

        Counts the matrix products (1x1 convolutions included), not the softmaxes or additions.
        ``order`` is "literal" or "folded" (default: the order the module uses at that size).
        """
        c, m, n, big_n = self.in_channels, self.c_m, self.c_n, positions
        order = self.order_for(big_n) if order is None else check_choice(
            type(self).__name__, "order", order, ORDERS[1:])
        out_width = c if self.reconstruct else m
        if order == "literal":
            total = big_n * c * (m + 2 * n) + 2 * big_n * m * n
            return total + (big_n * m * c if self.reconstruct else 0)
        total = big_n * c * 2 * n + big_n * c * n + m * c * n + big_n * out_width * n
        return total + (c * m * n if self.reconstruct else 0)

    def order_for(self, positions: int) -> str:
        """The order used for ``positions`` positions: the one asked for, or the cheaper one."""
        if self.order != "auto":
            return self.order
        folded = self.multiply_adds(positions, "folded")
        return "folded" if folded < self.multiply_adds(positions, "literal") else "literal"

    # --- the block -------------------------------------------------------------------------

    def forward(self, x: torch.Tensor, return_attention: bool = False):
        """out = X + W_out G softmax_n(V); with ``return_attention`` also the maps (see the class)."""
        name = type(self).__name__
        nd = self.spatial_dims
        check_input(name, x, ndim=nd + 2, layout=LAYOUTS[nd], channels=self.in_channels)
        check_bool(name, "return_attention", return_attention)
        grid = [x.shape[2:]]
        flat = rearrange(x, "b c ... -> b c (...)")                      # (B, c, N), a view
        m, n = self.c_m, self.c_n
        conv = CONV_FN[nd]
        weight, bias = self.embed.weight, self.embed.bias                # rows: φ (m), θ (n), ρ (n)
        if self.order_for(flat.shape[-1]) == "literal":
            embedded = rearrange(conv(x, weight, bias), "b o ... -> b o (...)")
            a, b_maps, v = embedded.split([m, n, n], dim=1)              # A, B, V: (B, ., N)
            s = torch.softmax(b_maps, dim=-1)                            # over space: rows sum to 1
            vs = torch.softmax(v, dim=1)                                 # over the n descriptors
            g = torch.bmm(a, rearrange(s, "b n p -> b p n"))             # gather: G = A Sᵀ, weighted sums
            z = torch.bmm(g, vs)                                         # distribute: Z = G softmax_n(V)
            if self.reconstruct:
                z = rearrange(conv(unpack(z, grid, "b m *")[0], self.out.weight, self.out.bias),
                              "b c ... -> b c (...)")
            out = flat + z if self.residual else z
        else:
            embedded = rearrange(conv(x, weight[m:], bias[m:]), "b o ... -> b o (...)")
            b_maps, v = embedded.split([n, n], dim=1)                    # B, V only: A is never formed
            s = torch.softmax(b_maps, dim=-1)
            vs = torch.softmax(v, dim=1)
            pooled = torch.bmm(flat, rearrange(s, "b n p -> b p n"))     # X Sᵀ: n pooled inputs
            g = _linear(_matrix(weight[:m]), bias[:m], pooled)           # W_φ (X Sᵀ) + b_φ = A Sᵀ
            h = _linear(_matrix(self.out.weight), self.out.bias, g) if self.reconstruct else g
            # out = X + H softmax_n(V) in one batched multiply-add (or the branch alone): Z is never formed
            out = torch.baddbmm(flat, h, vs) if self.residual else torch.bmm(h, vs)
        out = unpack(out, grid, "b c *")[0]
        if not (return_attention or self.capturing):
            return out
        maps = {"attention_maps": unpack(s, grid, "b n *")[0],
                "attention_vectors": unpack(vs, grid, "b n *")[0],
                "descriptors": g}
        self._record(maps)
        return (out, maps) if return_attention else out


def _matrix(weight: torch.Tensor) -> torch.Tensor:
    """The (out, in) matrix of a 1x1(x1) convolution's weight (out, in, 1, ...)."""
    return rearrange(weight, "o c ... -> o (c ...)")


def _linear(weight: torch.Tensor, bias: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """weight (o, c) applied to every column of t (B, c, n), plus bias (o,): W_φ or W_out on descriptors."""
    return torch.matmul(weight, t) + rearrange(bias, "o -> o 1")
