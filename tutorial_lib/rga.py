"""RGA: relation-aware global attention, spatial (RGA-S), channel (RGA-C) or both (RGA-SC).

Paper: Zhizheng Zhang, Cuiling Lan, Wenjun Zeng, Xin Jin, Zhibo Chen, "Relation-Aware Global
Attention for Person Re-identification", CVPR 2020, arXiv:1904.02998. Official code:
microsoft/Relation-Aware-Global-Attention-Networks (reid/models/models_utils/rga_modules.py,
``RGA_Module``; read at commit cdc9965).

The method section, for the spatial branch on a feature map x of shape (B, C, H, W) whose
N = H·W positions are the nodes x_i ∈ R^C (raster order):

1. Pairwise relations: r_ij = θ(x_i)ᵀ φ(x_j), θ and φ a 1x1 conv (no bias) + BN + ReLU from C
   to C/8 channels. R ∈ R^{N x N}, not symmetric.
2. The relation vector of node i stacks its row and its column: r_i = [R(i, :), R(:, i)] ∈ R^{2N}.
3. The relation-aware feature: ỹ_i = [mean_c ψ(x_i), φ'(r_i)], where ψ is another
   1x1 conv + BN + ReLU (C -> C/8) averaged over its channels (one number), and φ' a 1x1 conv +
   BN + ReLU that embeds the 2N relations into N/8 numbers.
4. The gate: a_i = sigmoid(BN(W2 ReLU(BN(W1 ỹ_i)))), W1 reducing 1 + N/8 by 8, W2 to one
   number; x_i <- a_i · x_i.

The channel branch is the same with the C channels as nodes (each node is a channel's map of N
values): R ∈ R^{C x C}, relation vectors of length 2C, one gate per channel. RGA-SC applies the
spatial gate, then the channel gate to the spatially re-weighted map.

Ours, beyond the paper (the default, ``relation="factored"``): the 1x1 conv of step 3 is linear
in R, and R = ΘᵀΦ has rank at most C/8, so the relation embedding is computed without any
N x N tensor (see ``RGA``); ``relation="literal"`` builds R as the official code does.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from einops import einsum, pack, rearrange, reduce, unpack
from torch import nn

from .capture import AttentionModule
from .checks import check_bool, check_choice, check_input, check_int

__all__ = ["RGA", "RELATION_MODES"]

RELATION_MODES = ("factored", "literal")


def _embedding(in_channels: int, out_channels: int) -> nn.Sequential:
    """1x1 conv without bias, BatchNorm, ReLU: every embedding of the official module."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU())


def _head(in_channels: int, down_ratio: int) -> nn.Sequential:
    """The W head: conv, BN, ReLU, conv to one channel, BN(1); the sigmoid comes after."""
    hidden = in_channels // down_ratio
    return nn.Sequential(nn.Conv2d(in_channels, hidden, kernel_size=1, bias=False), nn.BatchNorm2d(hidden),
                         nn.ReLU(), nn.Conv2d(hidden, 1, kernel_size=1, bias=False), nn.BatchNorm2d(1))


def _embeddings(x: torch.Tensor, embeddings: Sequence[nn.Sequential], fuse: bool) -> list[torch.Tensor]:
    """The conv-BN-ReLU embeddings θ, φ, ψ of a branch, all of the same input.

    ``fuse``: one conv with their stacked weights. Each output channel of a conv is its own dot
    product, so stacking changes no value; the input is read once instead of three times, the
    backward pass produces one gradient for it instead of three (less memory in training), and
    small maps pay one kernel launch instead of three. Each part keeps its own BatchNorm.
    Otherwise (the official way) each embedding runs on its own.
    """
    if not fuse:
        return [e(x) for e in embeddings]
    weight = torch.cat([e[0].weight for e in embeddings], dim=0)           # (d1 + d2 + d3, c, 1, 1)
    parts = torch.split(F.conv2d(x, weight), [e[0].out_channels for e in embeddings], dim=1)
    return [e[2](e[1](part)) for e, part in zip(embeddings, parts)]


def _literal_relation_embedding(conv: nn.Conv2d, theta: torch.Tensor, phi: torch.Tensor) -> torch.Tensor:
    """The official relation embedding's conv, before its BN: (B, k, n) from θ, φ of shape (B, d, n).

    Builds R (B, n, n) with R[i, j] = θ_iᵀ φ_j, stacks R and Rᵀ into (B, 2n, n) — at node i,
    channel j holds R[i, j] and channel n + j holds R[j, i] — and applies the 1x1 conv over the 2n
    relation channels: O(n³) time, O(n²) memory. Output channel k at node i is
    Σ_j W_in[k, j] R[i, j] + Σ_j W_out[k, j] R[j, i]; ``_factored`` computes the same numbers.
    """
    r = einsum(theta, phi, "b d i, b d j -> b i j")                       # R[i, j] = θ_iᵀ φ_j
    stacked, _ = pack([rearrange(r, "b i j -> b j i"), r], "b * i")       # channel j at node i: R[i, j], then R[j, i]
    return rearrange(conv(rearrange(stacked, "b m i -> b m i 1")), "b k i 1 -> b k i")


def _factored(weight: torch.Tensor, theta: torch.Tensor, phi: torch.Tensor) -> torch.Tensor:
    """Σ_j W_in[k, j] R[i, j] + Σ_j W_out[k, j] R[j, i] = θ_iᵀ A[:, k] + φ_iᵀ B[:, k], no n x n tensor."""
    w_in, w_out = rearrange(weight, "k (two n) 1 1 -> two k n", two=2)   # views: rows half, columns half
    a = einsum(phi, w_in, "b d j, k j -> b d k")                           # A = Φ W_inᵀ, (d, k)
    b = einsum(theta, w_out, "b d j, k j -> b d k")                        # B = Θ W_outᵀ, (d, k)
    out = einsum(theta, a, "b d i, b d k -> b k i")                        # θ_iᵀ A[:, k]
    out += einsum(phi, b, "b d i, b d k -> b k i")                         # + φ_iᵀ B[:, k]
    return out


def _head_logit(head: nn.Sequential, feature: torch.Tensor, relations: torch.Tensor) -> torch.Tensor:
    """The W head on ỹ = [feature; relation embedding]: (B, 1, *grid) logits, before the sigmoid.

    The head's first 1x1 conv is split into its column for the feature and its columns for the
    relation embedding (W1 ỹ = w_f · feature + W_r · relations): the same numbers as the
    official ``head(cat([feature, relations]))`` without a copy of the (B, 1 + k, *grid)
    concatenation, which training would keep for the backward pass.
    """
    weight = head[0].weight                                                 # (hidden, 1 + k, 1, 1)
    hidden = F.conv2d(relations, weight[:, 1:]) + F.conv2d(feature, weight[:, :1])
    return head[1:](hidden)


class RGA(AttentionModule):
    r"""Relation-aware global attention (Zhang et al., CVPR 2020, arXiv:1904.02998).

    **Equation** (spatial branch; the channel branch swaps the roles of positions and
    channels). For the N = H·W positions of x (raster order), with θ, φ, ψ, φ' embeddings
    (1x1 conv without bias, BatchNorm, ReLU):

    .. math::
        r_{ij} = \theta(x_i)^\top \phi(x_j), \qquad
        \tilde y_i = \big[\operatorname{mean}_c \psi(x_i);\ \varphi'([r_{i,:};\, r_{:,i}])\big],
        \qquad x_i \leftarrow \sigma\big(\mathrm{BN}(W_2\, \mathrm{ReLU}(\mathrm{BN}(W_1 \tilde y_i)))\big)\, x_i .

    **Shapes.** Input and output (B, C, H, W) with C = ``channels`` and (H, W) =
    ``spatial_size``: the relation embedding has weights for each of the 2N relations of a
    node (and the channel branch's embeddings one for each of the N positions), so the module
    is built for one input size and refuses others. ``return_attention=True`` also returns
    ``{"spatial": (B, 1, H, W), "channel": (B, C, 1, 1)}`` (the branches in use), gates in
    (0, 1); the channel gate is computed on the spatially re-weighted map.

    **Defaults follow the official code** (microsoft/Relation-Aware-Global-Attention-Networks,
    ``RGA_Module``): ``cha_ratio = spa_ratio = down_ratio = 8``; the embedding widths are
    ``channels // cha_ratio`` (θ, φ, ψ of the spatial branch; φ' of the channel branch) and
    ``N // spa_ratio`` (φ' of the spatial branch; θ, φ, ψ of the channel branch); the heads
    reduce ``1 + width`` by ``down_ratio`` (floor). Every conv is 1x1 without bias; in the
    heads each of W1 and W2 is followed by BatchNorm (the paper's text, section 3.2, says so;
    its equation leaves them out), the last one over one channel, before the sigmoid.
    The relation vector is [row; column] of R in raster order — the official tensors
    ``Gs_in`` (channel j at position i holds R[i, j]) then ``Gs_out`` (R[j, i]). The channel
    branch is the official one: the map is viewed as (B, N, C, 1), so its embeddings are 1x1
    convs whose *input channels are the N positions* (position-specific weights) and its
    BatchNorms normalise over groups of positions. Parameter names equal the official ones
    (``theta_spatial.0.weight``, ``gg_channel.1.running_mean``, ``W_spatial.4.weight``, ...),
    so an official state_dict loads as it is. Initialisation is PyTorch's default (the
    official module is not re-initialised): convs Kaiming-uniform, BN γ = 1, β = 0.

    **Relation embedding** (ours, beyond the paper). The official code builds the B x N x N
    relation matrix, stacks it with its transpose into a B x 2N x H x W tensor and applies
    the 1x1 conv φ': O(N³) time and O(N²) memory. That conv is linear in R, and
    R = ΘᵀΦ has rank at most C/8, so for output channel k and node i

    .. math::
        \sum_j W^{in}_{kj} R_{ij} + \sum_j W^{out}_{kj} R_{ji}
        = \theta_i^\top \Big(\sum_j W^{in}_{kj}\phi_j\Big) + \phi_i^\top \Big(\sum_j W^{out}_{kj}\theta_j\Big),

    the same numbers in O(N²·C/8) without any N x N tensor (likewise C x C in the channel
    branch). ``relation="factored"`` (default) computes that; ``relation="literal"`` builds
    R as the official code does (for derivations, tests and benchmarks). The BatchNorm comes
    after the conv, so it sees the same values in both modes, in training and in eval mode.
    The default path makes two more rewrites that change no value: the three embeddings of a
    branch (same input) run as one conv with stacked weights, and the head's first conv is
    split into its column for the feature and its columns for the relation embedding instead
    of convolving their concatenation. The literal mode runs every layer as the official code.
    What the default still stores is the official architecture's own relation embedding:
    N/8 channels at each of N positions, N²/8 numbers per sample (see
    ``benchmarks/bench_rga.py`` for time and memory against the literal mode).

    Args:
        channels: C.
        spatial_size: (H, W) of the inputs the module will see.
        use_spatial, use_channel: the branches (both: RGA-SC; spatial only: RGA-S; channel
            only: RGA-C). At least one.
        cha_ratio, spa_ratio, down_ratio: the official reductions (8, 8, 8).
        relation: ``"factored"`` (default) or ``"literal"``.

    Parameters of the official ReID model's stage modules at a 256x128 input (RGA-SC):
    (256, 64x32) 2,673,172; (512, 32x16) 329,796; (1024, 16x8) 668,908; (2048, 16x8) 2,642,220.
    """

    def __init__(self, channels: int, spatial_size: Sequence[int], *, use_spatial: bool = True,
                 use_channel: bool = True, cha_ratio: int = 8, spa_ratio: int = 8, down_ratio: int = 8,
                 relation: str = "factored") -> None:
        super().__init__()
        name = type(self).__name__
        self.channels = check_int(name, "channels", channels, minimum=1)
        self.spatial_size = _check_spatial_size(name, spatial_size)
        self.use_spatial = check_bool(name, "use_spatial", use_spatial)
        self.use_channel = check_bool(name, "use_channel", use_channel)
        if not (use_spatial or use_channel):
            raise ValueError(f"{name}: expected at least one branch (use_spatial or use_channel), "
                             f"but got use_spatial=False and use_channel=False")
        self.cha_ratio = check_int(name, "cha_ratio", cha_ratio, minimum=1)
        self.spa_ratio = check_int(name, "spa_ratio", spa_ratio, minimum=1)
        self.down_ratio = check_int(name, "down_ratio", down_ratio, minimum=1)
        self.relation = check_choice(name, "relation", relation, RELATION_MODES)
        h, w = self.spatial_size
        self.positions = h * w
        self.inter_channel = self.channels // self.cha_ratio   # official names
        self.inter_spatial = self.positions // self.spa_ratio
        self._check_widths(name)

        c, n, dc, dn = self.channels, self.positions, self.inter_channel, self.inter_spatial
        # embeddings for the relations (theta, phi), the features (gx) and the relation vectors (gg)
        if use_spatial:
            self.theta_spatial = _embedding(c, dc)
            self.phi_spatial = _embedding(c, dc)
        if use_channel:
            self.theta_channel = _embedding(n, dn)
            self.phi_channel = _embedding(n, dn)
        if use_spatial:
            self.gx_spatial = _embedding(c, dc)
        if use_channel:
            self.gx_channel = _embedding(n, dn)
        if use_spatial:
            self.gg_spatial = _embedding(2 * n, dn)
        if use_channel:
            self.gg_channel = _embedding(2 * c, dc)
        # the heads that turn [feature; relation embedding] into one logit per node
        if use_spatial:
            self.W_spatial = _head(1 + dn, self.down_ratio)
        if use_channel:
            self.W_channel = _head(1 + dc, self.down_ratio)

    def _check_widths(self, name: str) -> None:
        h, w = self.spatial_size
        if self.inter_channel < 1:
            raise ValueError(f"{name}: expected channels >= cha_ratio so that the embedding width "
                             f"channels // cha_ratio is at least 1, but got channels={self.channels}, "
                             f"cha_ratio={self.cha_ratio}")
        if self.inter_spatial < 1:
            raise ValueError(f"{name}: expected H*W >= spa_ratio so that the embedding width "
                             f"H*W // spa_ratio is at least 1, but got {h}x{w} = {self.positions} "
                             f"positions and spa_ratio={self.spa_ratio}")
        heads = []
        if self.use_spatial:
            heads.append(("spatial", "H*W // spa_ratio", self.inter_spatial))
        if self.use_channel:
            heads.append(("channel", "channels // cha_ratio", self.inter_channel))
        for branch, what, width in heads:
            if (1 + width) // self.down_ratio < 1:
                raise ValueError(f"{name}: the {branch} head reduces 1 + {what} = {1 + width} values by "
                                 f"down_ratio={self.down_ratio} to (1 + {width}) // {self.down_ratio} = 0 "
                                 f"hidden channels; expected at least 1: use down_ratio <= {1 + width}")

    def extra_repr(self) -> str:
        h, w = self.spatial_size
        return (f"channels={self.channels}, spatial_size=({h}, {w}), use_spatial={self.use_spatial}, "
                f"use_channel={self.use_channel}, cha_ratio={self.cha_ratio}, spa_ratio={self.spa_ratio}, "
                f"down_ratio={self.down_ratio}, relation={self.relation!r}")

    # --- the module ----------------------------------------------------------------------

    def forward(self, x: torch.Tensor, return_attention: bool = False):
        """x re-weighted by the spatial gate, then by the channel gate (the branches in use)."""
        self._check(x, return_attention)
        maps = {}
        if self.use_spatial:
            maps["spatial"] = self._gate(x, "spatial")                                   # (B, 1, H, W)
            x = x * maps["spatial"]
        if self.use_channel:
            gate = self._gate(rearrange(x, "b c h w -> b (h w) c 1"), "channel")         # (B, 1, C, 1)
            maps["channel"] = rearrange(gate, "b 1 c 1 -> b c 1 1")
            x = x * maps["channel"]
        self._record(maps)
        return (x, maps) if return_attention else x

    def spatial_gate(self, x: torch.Tensor) -> torch.Tensor:
        """RGA-S's gate for x, (B, 1, H, W) in (0, 1): one weight per position (nodes: the N positions)."""
        self._check(x, False, branch="spatial")
        return self._gate(x, "spatial")

    def channel_gate(self, x: torch.Tensor) -> torch.Tensor:
        """RGA-C's gate for x, (B, C, 1, 1) in (0, 1): one weight per channel (nodes: the C channels).

        The official view: the map becomes (B, N, C, 1), so the N positions are the input
        channels of the branch's 1x1 convs and the C channels a C x 1 "image" of nodes. (In
        RGA-SC the channel gate is computed on the spatially re-weighted map.)
        """
        self._check(x, False, branch="channel")
        gate = self._gate(rearrange(x, "b c h w -> b (h w) c 1"), "channel")
        return rearrange(gate, "b 1 c 1 -> b c 1 1")

    def _gate(self, nodes: torch.Tensor, branch: str) -> torch.Tensor:
        """sigmoid(W ỹ) for every node of ``nodes`` (B, c_in, *grid): one node per grid cell."""
        theta_m, phi_m, gx_m, gg_m, head = (getattr(self, f"{part}_{branch}") for part in ("theta", "phi", "gx", "gg", "W"))
        literal = self.relation == "literal"
        theta, phi, gx = _embeddings(nodes, (theta_m, phi_m, gx_m), fuse=not literal)
        theta, grid = pack([theta], "b d *")                                      # nodes flattened: (B, d, n)
        phi, _ = pack([phi], "b d *")
        if literal:                                                               # the official operations
            relations = _literal_relation_embedding(gg_m[0], theta, phi)         # (B, k, n)
        else:                                                                     # ours: no n x n tensor
            relations = _factored(gg_m[0].weight, theta, phi)
        [relations] = unpack(relations, grid, "b k *")                           # back on the grid
        relations = gg_m[2](gg_m[1](relations))                                  # BN, ReLU
        feature = reduce(gx, "b d ... -> b 1 ...", "mean")                        # mean over the embedding
        if literal:
            return torch.sigmoid(head(torch.cat([feature, relations], dim=1)))
        return torch.sigmoid(_head_logit(head, feature, relations))

    # --- input checks ---------------------------------------------------------------------

    def _check(self, x: object, return_attention: object, branch: str | None = None) -> None:
        name = type(self).__name__
        if branch is not None and not getattr(self, f"use_{branch}"):
            raise ValueError(f"{name}: expected a module with a {branch} branch for {branch}_gate, but this one "
                             f"was built with use_{branch}=False")
        check_input(name, x, ndim=4, layout="(B, C, H, W)", channels=self.channels)
        check_bool(name, "return_attention", return_attention)
        h, w = self.spatial_size
        got_h, got_w = x.shape[2], x.shape[3]
        if (got_h, got_w) != (h, w):
            raise ValueError(
                f"{name} was built for {h}x{w} inputs (N = {self.positions}) but got {got_h}x{got_w} "
                f"(N = {got_h * got_w}): its relation embedding has weights for each of the N positions "
                f"in raster order, so it cannot take another size; build "
                f"{name}({self.channels}, spatial_size=({got_h}, {got_w})) for that size")
        if self.training:
            nodes = []
            if self.use_spatial:
                nodes.append(("spatial", "B*H*W", x.shape[0] * self.positions))
            if self.use_channel:
                nodes.append(("channel", "B*C", x.shape[0] * self.channels))
            for branch, what, count in nodes:
                if count < 2:
                    raise ValueError(f"{name}: batch norm in training mode needs more than one value per "
                                     f"channel, but the {branch} branch gets {what} = {count} (input shape "
                                     f"{tuple(x.shape)}); use eval mode or a larger batch")


def _check_spatial_size(name: str, spatial_size: object) -> tuple[int, int]:
    if isinstance(spatial_size, (str, bytes)) or not isinstance(spatial_size, Sequence):
        raise TypeError(f"{name}: expected spatial_size to be a pair (H, W) of the input's height and "
                        f"width, but got {type(spatial_size).__name__} {spatial_size!r}")
    if len(spatial_size) != 2:
        raise ValueError(f"{name}: expected spatial_size to be a pair (H, W), but got {len(spatial_size)} "
                         f"values {tuple(spatial_size)!r}")
    h = check_int(name, "spatial_size[0] (H)", spatial_size[0], minimum=1)
    w = check_int(name, "spatial_size[1] (W)", spatial_size[1], minimum=1)
    return h, w
