"""CSRA: class-specific residual attention, a classifier head for multi-label recognition.

Paper: Ke Zhu, Jianxin Wu, "Residual Attention: A Simple but Effective Method for Multi-Label
Recognition", ICCV 2021, arXiv:2108.02456. Official code: Kevinz-code/CSRA
(``pipeline/csra.py``: ``CSRA`` and ``MHA``).

The method section, on the last feature map x of a backbone, (B, d, H, W), with N = H*W
positions x_1 .. x_N and one classifier vector m_i per class i (i = 1 .. K):

1. Per-position class scores: s_{i,k} = x_kᵀ m_i / ‖m_i‖ (a 1x1 convolution without bias;
   the official code divides by each class's weight norm; the features are NOT normalised).
2. Class-specific attention over positions, with a temperature T:
   w_{i,k} = softmax_k(T s_{i,k})  (a distribution over the N positions, one per class; the
   paper writes these weights s_k^i and the scores x_kᵀ m_i, the code calls them
   ``score_soft`` and ``score``).
3. The residual: the class-specific feature f^i = g + λ a^i, with g = (1/N) Σ_k x_k the
   global average and a^i = Σ_k w_{i,k} x_k the class-specific attended feature.
4. The logit: m_iᵀ f^i / ‖m_i‖ = mean_k s_{i,k} + λ Σ_k w_{i,k} s_{i,k}
   (base logit + λ attention logit), which is what the code computes: f^i itself is never
   built. T = ∞ turns the softmax into a one-hot on the best position: base + λ max_k s_{i,k}.
5. Multi-head: H heads with their own classifiers and temperatures; the logits are SUMMED.

Cost (the same values and gradients as the official order of work, tested):

* the normalisation is folded into the weight: each class vector is divided by its norm
  before the convolution (K x d numbers), instead of dividing the B x K x H x W output;
* ``MultiHeadCSRA`` stacks every head's classifier into one (heads*K, d) weight and runs ONE
  convolution for all heads, so the feature map is read once, not once per head, and the
  backward pass makes one large product instead of one per head;
* for narrow feature maps (fewer than ``MATMUL_BELOW_CHANNELS`` = 128 channels) that product is
  a batched matrix product instead of a 1x1 convolution (the same numbers; faster on CPU there).

``MultiHeadCSRA(..., fused=False)`` keeps the official order of work (one convolution per
head, its output divided by the norms, the max taken on the full map) as a literal reference.
"""
from __future__ import annotations

import math
import re
from typing import Iterable, Sequence

import torch
import torch.nn.functional as F
from einops import rearrange, reduce
from torch import nn

from .capture import AttentionModule
from .checks import check_bool, check_float, check_input, check_int

__all__ = ["CSRA", "MultiHeadCSRA", "TEMPERATURE_SETTINGS", "OFFICIAL_MAX_POOLING_T"]

OFFICIAL_MAX_POOLING_T = 99  # the official code reads T == 99 as "T = infinity": max pooling
INF = float("inf")
# Official ``MHA.temp_settings``: number of heads -> the heads' temperatures (99 written as inf).
TEMPERATURE_SETTINGS: dict[int, tuple[float, ...]] = {
    1: (1.0,),
    2: (1.0, INF),
    4: (1.0, 2.0, 4.0, INF),
    6: (1.0, 2.0, 3.0, 4.0, 5.0, INF),
    8: (1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, INF),
}


def _check_temperature(module: str, name: str, value: object) -> float:
    """A temperature T >= 0; inf and the official 99 mean max pooling (returned as inf)."""
    t = check_float(module, name, value, minimum=0.0)
    return INF if t == OFFICIAL_MAX_POOLING_T else t


def _check_lam(module: str, value: object) -> float:
    """λ, the weight of the attention term: a finite number >= 0."""
    lam = check_float(module, "lam", value, minimum=0.0)
    if not math.isfinite(lam):
        raise ValueError(f"{module}: expected a finite lam, but got {lam}")
    return lam


def _unit_rows(weight: torch.Tensor) -> torch.Tensor:
    """Each class's weight vector divided by its L2 norm over the input channels (dim 1)."""
    return weight / torch.linalg.vector_norm(weight, dim=1, keepdim=True)


# Below this many input channels the scores are a batched matrix product, from it on a 1x1
# convolution: the same numbers, but on CPU (torch 2.13) the convolution's backward pass was up to
# four times slower than the matrix product for narrow feature maps (d = 32 or 64) with two
# threads, and up to a third faster for wide ones (d >= 128). benchmarks/bench_csra.py times d = 2048.
MATMUL_BELOW_CHANNELS = 128


def _class_scores(x: torch.Tensor, unit: torch.Tensor) -> torch.Tensor:
    """Per-position scores (B, M, H*W) of x (B, d, H, W) with the (M, d, 1, 1) classifiers."""
    if x.shape[1] < MATMUL_BELOW_CHANNELS:
        return torch.matmul(rearrange(unit, "m d 1 1 -> m d"), rearrange(x, "b d h w -> b d (h w)"))
    return rearrange(F.conv2d(x, unit), "b m h w -> b m (h w)")


def _heads(t: torch.Tensor, index: list[int]) -> torch.Tensor:
    """Heads ``index`` of t along dim 1: a view when they are consecutive (the official sets)."""
    if index == list(range(index[0], index[-1] + 1)):
        return t[:, index[0]:index[-1] + 1]
    return t[:, torch.tensor(index, device=t.device)]


def _in_head_order(parts: list[torch.Tensor], finite: list[int], infinite: list[int]) -> torch.Tensor:
    """Concatenate the finite-T heads' and the infinite-T heads' results back in head order."""
    out = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
    order = finite + infinite
    if order == sorted(order):
        return out
    return out[:, torch.tensor(order, device=out.device).argsort()]


def _split(temperatures: Sequence[float]) -> tuple[list[int], list[int]]:
    """The heads with a finite temperature (softmax) and those with T = inf (max)."""
    finite = [i for i, t in enumerate(temperatures) if math.isfinite(t)]
    return finite, [i for i, t in enumerate(temperatures) if not math.isfinite(t)]


def _pool(score: torch.Tensor, temperatures: Sequence[float], lam: float, want_maps: bool):
    """Base + λ·attention logits of every head from the full per-position scores.

    ``score`` (B, n, K, P): head n, class K, position P. Returns the per-head logits (B, n, K)
    and, when asked, the attention weights (B, n, K, P) (a one-hot at the selected position
    for the heads with T = inf).
    """
    base = reduce(score, "b n k p -> b n k", "mean")
    finite, infinite = _split(temperatures)
    att, maps = [], []
    if finite:
        s = _heads(score, finite)
        if len(finite) == 1:
            t = temperatures[finite[0]]
        else:  # one temperature per head, broadcast over classes and positions
            t = rearrange(score.new_tensor([temperatures[i] for i in finite]), "n -> 1 n 1 1")
        w = torch.softmax(s * t, dim=-1)  # over the positions: one distribution per (head, class)
        att.append((s * w).sum(dim=-1))
        maps.append(w)
    if infinite:
        best, where = torch.max(_heads(score, infinite), dim=-1)  # as the official torch.max(score, dim=2)[0]
        att.append(best)
        if want_maps:
            maps.append(F.one_hot(where, score.shape[-1]).to(score.dtype))
    logits = base + lam * _in_head_order(att, finite, infinite)
    return logits, (_in_head_order(maps, finite, infinite) if want_maps else None)


def _csra(x: torch.Tensor, weight: torch.Tensor, temperatures: Sequence[float], lam: float, want_maps: bool):
    """Every head's logits (B, n, K) from x (B, d, H, W) and the stacked weight (n*K, d, 1, 1).

    One convolution with the normalised weight gives every head's per-position scores.
    Returns (logits per head, attention weights or None, scores (B, n, K, H*W)).
    """
    unit = _unit_rows(weight)  # the normalisation, folded into the (n*K, d) weight
    score = rearrange(_class_scores(x, unit), "b (n k) p -> b n k p", n=len(temperatures))
    logits, weights = _pool(score, temperatures, lam, want_maps)
    return logits, weights, score


class CSRA(AttentionModule):
    r"""Class-specific residual attention, one head (Zhu & Wu, ICCV 2021, arXiv:2108.02456).

    **Equation.** With :math:`s_{i,k} = x_k^\top m_i / \lVert m_i \rVert` the normalised score
    of class i at position k (N positions),

    .. math::
        \hat y_i = \frac{1}{N}\sum_k s_{i,k} + \lambda \sum_k \mathrm{softmax}_k(T s_{i,k})\, s_{i,k}
        = \frac{m_i^\top (g + \lambda a^i)}{\lVert m_i \rVert},

    the base logit of the average feature g plus λ times the attention logit of the
    class-specific feature :math:`a^i = \sum_k \mathrm{softmax}_k(T s_{i,k}) x_k`.
    ``temperature=float("inf")`` (or the official 99) replaces the attention term by
    :math:`\max_k s_{i,k}`; ``temperature=0`` makes it the mean, so the logit is (1 + λ)·mean.

    **Shapes.** Input (B, d, H, W), d = ``in_channels``; output (B, K) logits.
    ``return_attention=True`` also returns ``{"attention": (B, K, H, W), "score": (B, K, H, W)}``:
    the class-specific attention (each class's map sums to 1 over H, W; a one-hot at the first
    best position for T = inf) and the normalised per-position class scores s.

    **Defaults follow the official code** (Kevinz-code/CSRA, ``pipeline/csra.py``, ``CSRA``):
    T = 1 (the temperature of a one-head model), λ = 0.1 (VOC); the classifier ``head`` is a
    1x1 convolution without bias with PyTorch's default initialisation (official parameter
    name ``head.weight``, so an official ``CSRA`` state dict loads as it is); each class's
    weight vector is divided by its L2 norm; the features are NOT normalised. Parameters:
    K·d (VOC, d = 2048, K = 20: 40,960). ``MultiHeadCSRA`` with one head computes the same.
    """

    def __init__(self, in_channels: int, num_classes: int, temperature: float = 1.0, lam: float = 0.1) -> None:
        super().__init__()
        name = type(self).__name__
        self.in_channels = check_int(name, "in_channels", in_channels, minimum=1)
        self.num_classes = check_int(name, "num_classes", num_classes, minimum=1)
        self.temperature = _check_temperature(name, "temperature", temperature)
        self.lam = _check_lam(name, lam)
        self.head = nn.Conv2d(self.in_channels, self.num_classes, kernel_size=1, bias=False)

    def extra_repr(self) -> str:
        t = "inf" if math.isinf(self.temperature) else f"{self.temperature:g}"
        return f"in_channels={self.in_channels}, num_classes={self.num_classes}, temperature={t}, lam={self.lam}"

    def forward(self, x: torch.Tensor, return_attention: bool = False):
        """Logits (B, K); with ``return_attention`` also ``{"attention", "score"}`` maps (B, K, H, W)."""
        name = type(self).__name__
        check_input(name, x, ndim=4, layout="(B, d, H, W)", channels=self.in_channels)
        check_bool(name, "return_attention", return_attention)
        want_maps = return_attention or self.capturing
        head_logits, weights, score = _csra(x, self.head.weight, (self.temperature,), self.lam, want_maps)
        logits = rearrange(head_logits, "b 1 k -> b k")
        if not want_maps:
            return logits
        h, w = x.shape[-2:]
        maps = {"attention": rearrange(weights, "b 1 k (h w) -> b k h w", h=h, w=w),
                "score": rearrange(score, "b 1 k (h w) -> b k h w", h=h, w=w)}
        self._record(maps)
        return (logits, maps) if return_attention else logits


class MultiHeadCSRA(AttentionModule):
    r"""Multi-head class-specific residual attention (Zhu & Wu, ICCV 2021, arXiv:2108.02456).

    **Equation.** With per-position scores :math:`s^h_{i,k} = x_k^\top m^h_i / \lVert m^h_i \rVert`
    of head h, class i, position k (N positions),

    .. math::
        \hat y_i = \sum_{h=1}^{H} \Big( \frac{1}{N}\sum_k s^h_{i,k}
        + \lambda \sum_k \mathrm{softmax}_k(T_h\, s^h_{i,k})\, s^h_{i,k} \Big),

    where a head with :math:`T_h = \infty` uses :math:`\max_k s^h_{i,k}` for its attention
    term. Each head's logit is :math:`m_i^\top f^i / \lVert m_i \rVert` for the residual feature
    :math:`f^i = g + \lambda a^i` (g the average feature, a^i the class-specific attended one).

    **Shapes.** Input (B, d, H, W) with d = ``in_channels`` (the backbone's last feature map,
    no pooling before); output (B, K) logits (use them with a sigmoid / binary cross-entropy).
    ``return_attention=True`` also returns ``{"attention": (B, heads, K, H, W),
    "score": (B, heads, K, H, W)}``: the class-specific attention weights (each (head, class)
    map sums to 1 over H, W; a one-hot at the first best position for T = inf) and the
    normalised class scores s (a class activation map divided by ‖m_i‖).

    **Defaults follow the official code** (Kevinz-code/CSRA, ``pipeline/csra.py``, ``MHA``):

    * ``num_heads`` picks the official temperature set (``TEMPERATURE_SETTINGS``):
      1: [1]; 2: [1, ∞]; 4: [1, 2, 4, ∞]; 6: [1, 2, 3, 4, 5, ∞]; 8: [1, …, 7, ∞]. Other
      head counts are refused unless ``temperatures`` are given (then one head per
      temperature, and ``num_heads`` must equal their number). ∞ may be written
      ``float("inf")`` or, as in the official code, 99;
    * ``lam`` = λ = 0.1, shared by every head (README: VOC λ = 0.1 with 1 head; COCO λ = 0.5
      with 4 heads, 0.4 with 6 heads on a CutMix backbone; Wider-Attribute λ = 0.3);
    * every head has its own classifier, a 1x1 convolution **without bias**, initialised as
      PyTorch initialises ``nn.Conv2d(d, K, 1)`` (uniform in ±1/√d), and the head logits are
      **summed** (not averaged): the base term is counted once per head;
    * only the classifier weights are normalised (each class vector to unit L2 norm), the
      features are not: the scores are not cosines, they scale with the feature norm.

    Parameters: ``num_heads * K * d`` (COCO, 4 heads, d = 2048, K = 80: 655,360).

    **Cost.** One convolution computes every head's scores with the stacked weight
    ``weight`` (heads·K, d, 1, 1), normalised before the convolution. ``fused=False`` runs the official order of work instead (one convolution per head, its
    output divided by the norms); both give the same values and gradients (tested).
    ``head_weight(h)`` is head h's (K, d) classifier; ``load_official_state_dict`` reads the
    weights of an official ``MHA`` (keys ``multi_head.<h>.head.weight``).
    """

    def __init__(self, in_channels: int, num_classes: int, num_heads: int = 1, lam: float = 0.1, *,
                 temperatures: Iterable[float] | None = None, fused: bool = True) -> None:
        super().__init__()
        name = type(self).__name__
        self.in_channels = check_int(name, "in_channels", in_channels, minimum=1)
        self.num_classes = check_int(name, "num_classes", num_classes, minimum=1)
        num_heads = check_int(name, "num_heads", num_heads, minimum=1)
        self.lam = _check_lam(name, lam)
        self.fused = check_bool(name, "fused", fused)
        if temperatures is None:
            if num_heads not in TEMPERATURE_SETTINGS:
                valid = ", ".join(str(h) for h in TEMPERATURE_SETTINGS)
                raise ValueError(f"{name}: expected num_heads to be one of the official settings {valid} "
                                 f"(or explicit temperatures=[...]), but got num_heads={num_heads}")
            temps = TEMPERATURE_SETTINGS[num_heads]
        else:
            if isinstance(temperatures, (str, bytes)) or not isinstance(temperatures, Iterable):
                raise TypeError(f"{name}: expected temperatures to be a list of numbers, but got "
                                f"{type(temperatures).__name__} {temperatures!r}")
            temps = tuple(_check_temperature(name, f"temperatures[{i}]", t) for i, t in enumerate(temperatures))
            if len(temps) != num_heads:
                raise ValueError(f"{name}: expected one temperature per head (num_heads={num_heads}), "
                                 f"but got {len(temps)} temperatures {list(temperatures)}")
        self.num_heads = num_heads
        self.temperatures: tuple[float, ...] = temps
        self.weight = nn.Parameter(torch.empty(num_heads * self.num_classes, self.in_channels, 1, 1))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """PyTorch's ``nn.Conv2d`` initialisation for every head (uniform in ±1/√d)."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def extra_repr(self) -> str:
        temps = ", ".join("inf" if math.isinf(t) else f"{t:g}" for t in self.temperatures)
        return (f"in_channels={self.in_channels}, num_classes={self.num_classes}, num_heads={self.num_heads}, "
                f"lam={self.lam}, temperatures=[{temps}], fused={self.fused}")

    def head_weight(self, head: int) -> torch.Tensor:
        """Head ``head``'s classifier, (K, d) (a view of ``weight``)."""
        head = check_int(type(self).__name__, "head", head, minimum=0, maximum=self.num_heads - 1)
        k = self.num_classes
        return self.weight[head * k:(head + 1) * k, :, 0, 0]

    @torch.no_grad()
    def load_official_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Copy the classifiers of an official ``MHA`` (keys ``[prefix]multi_head.<h>.head.weight``).

        The checkpoint must hold exactly ``num_heads`` heads of shape (K, d, 1, 1): a model
        with another head count has other temperatures and is refused, not loaded in part.
        """
        name = type(self).__name__
        found = {}
        for key, value in state_dict.items():
            match = re.search(r"multi_head\.(\d+)\.head\.weight$", key)
            if match:
                found.setdefault(int(match.group(1)), []).append(value)
        if sorted(found) != list(range(self.num_heads)) or any(len(v) != 1 for v in found.values()):
            raise ValueError(f"{name}: expected the weights of {self.num_heads} heads "
                             f"(keys ending in multi_head.0.head.weight to multi_head.{self.num_heads - 1}.head.weight), "
                             f"but the state dict holds heads {sorted(found)}")
        for h in range(self.num_heads):
            w = found[h][0]
            if tuple(w.shape) != (self.num_classes, self.in_channels, 1, 1):
                raise ValueError(f"{name}: expected head {h}'s weight of shape "
                                 f"{(self.num_classes, self.in_channels, 1, 1)}, but got {tuple(w.shape)}")
            self.weight[h * self.num_classes:(h + 1) * self.num_classes].copy_(w)

    # --- the head -------------------------------------------------------------------------

    def forward(self, x: torch.Tensor, return_attention: bool = False):
        """Logits (B, K); with ``return_attention`` also the maps (see the class docstring)."""
        name = type(self).__name__
        check_input(name, x, ndim=4, layout="(B, d, H, W)", channels=self.in_channels)
        check_bool(name, "return_attention", return_attention)
        want_maps = return_attention or self.capturing
        if self.fused:
            head_logits, weights, score = _csra(x, self.weight, self.temperatures, self.lam, want_maps)
        else:
            score = self._official_scores(x)
            head_logits, weights = _pool(score, self.temperatures, self.lam, want_maps)
        logits = reduce(head_logits, "b n k -> b k", "sum")  # the heads' logits are summed
        if not want_maps:
            return logits
        h, w = x.shape[-2:]
        maps = {"attention": rearrange(weights, "b n k (h w) -> b n k h w", h=h, w=w),
                "score": rearrange(score, "b n k (h w) -> b n k h w", h=h, w=w)}
        self._record(maps)
        return (logits, maps) if return_attention else logits

    def _official_scores(self, x: torch.Tensor) -> torch.Tensor:
        """The official order of work: one convolution per head, its output divided by the norms.

        Returns the per-position normalised class scores of every head, (B, heads, K, H*W).
        """
        k = self.num_classes
        per_head = []
        for h in range(self.num_heads):
            w = self.weight[h * k:(h + 1) * k]
            norm = rearrange(torch.linalg.vector_norm(w, dim=1), "k 1 1 -> 1 k 1 1")
            per_head.append(rearrange(F.conv2d(x, w) / norm, "b k h w -> b k (h w)"))
        return rearrange(per_head, "n b k p -> b n k p")
