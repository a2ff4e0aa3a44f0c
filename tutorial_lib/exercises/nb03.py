"""Exercises of notebook 03 (non-local neural networks).

Every checker computes its reference itself: plain loops over the equations, the
multiply-adds counted on real blocks, the largest tensor an answer creates (watched op by op),
or the measured value of the experiment a prediction is about.
"""
from __future__ import annotations

import math

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ..cost import count_flops, format_bytes
from ..non_local import NonLocalBlock
from .core import exercise, expect_close, expect_prediction, expect_shape, random_input


# --- 03.1 ---------------------------------------------------------------------------------

def _dot_product_growth() -> float:
    """The factor by which the branch output z - x of a dot-product block grows when x doubles."""
    block = NonLocalBlock(8, pairwise="dot_product", batch_norm=False).eval()
    g = torch.Generator().manual_seed(311)
    with torch.no_grad():
        for name, p in block.named_parameters():
            p.copy_(torch.zeros_like(p) if name.endswith("bias") else torch.randn(p.shape, generator=g) * 0.5)
        x = random_input(2, 8, 6, 6, seed=312)
        small, large = block(x) - x, block(2 * x) - 2 * x
    return (large.norm() / small.norm()).item()


@exercise("03.1", "predict, then run: the dot-product block when the input doubles",
          hint="write one term of the branch output and count how many factors that grow with x meet "
               "in it; which parts of the dot-product form do not depend on x at all?")
def _check_dot_product_growth(prediction) -> None:
    expect_prediction(prediction, _dot_product_growth(), "factor by which z - x grows when x doubles "
                      "(dot product, no biases, no batch norm)", rel=0.02)


# --- 03.2 ---------------------------------------------------------------------------------

def _temporal_literal(theta: torch.Tensor, phi: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """y[b, :, t, h, w] = sum_s softmax_s(θ(t,h,w)·φ(s,h,w) / sqrt(d)) g[b, :, s, h, w], by loops."""
    b_, d, t_, h_, w_ = theta.shape
    y = torch.zeros(b_, g.shape[1], t_, h_, w_, dtype=theta.dtype)
    for b in range(b_):
        for h in range(h_):
            for w in range(w_):
                for t in range(t_):
                    f = [math.exp(float(theta[b, :, t, h, w] @ phi[b, :, s, h, w]) / math.sqrt(d))
                         for s in range(t_)]
                    total = sum(f)
                    y[b, :, t, h, w] = sum(fs / total * g[b, :, s, h, w] for s, fs in enumerate(f))
    return y


@exercise("03.2", "a variant: non-local along time only",
          hint="a position (t, h, w) may only look at the same pixel (h, w) in every frame: height and "
               "width behave like extra batch axes, time is the only axis the weights run over. The "
               "weights of each query sum to 1 over the frames; the scale is 1/sqrt(d)")
def _check_temporal(fn) -> None:
    B, d, e, T, H, W = 2, 3, 4, 5, 2, 3                       # all sizes different on purpose
    theta, phi = random_input(B, d, T, H, W, seed=321) * 1.5, random_input(B, d, T, H, W, seed=322) * 1.5
    g = random_input(B, e, T, H, W, seed=323)
    expect_close(fn(theta, phi, g), _temporal_literal(theta, phi, g),
                 "temporal_non_local(theta, phi, g) for theta, phi (2, 3, 5, 2, 3) and g (2, 4, 5, 2, 3)")


# --- 03.3 ---------------------------------------------------------------------------------

def _embedded_literal(x: torch.Tensor, w_theta: torch.Tensor, w_phi: torch.Tensor,
                      w_g: torch.Tensor) -> torch.Tensor:
    """y (B, d, H, W) of the embedded Gaussian with scale 1/sqrt(d), no biases, by loops over i, j."""
    b_, c, h_, w_ = x.shape
    d = w_theta.shape[0]
    y = torch.zeros(b_, w_g.shape[0], h_, w_, dtype=x.dtype)
    positions = [(r, s) for r in range(h_) for s in range(w_)]
    for b in range(b_):
        for (r, s) in positions:
            theta = w_theta @ x[b, :, r, s]
            f = [math.exp(float(theta @ (w_phi @ x[b, :, p, q])) / math.sqrt(d)) for p, q in positions]
            total = sum(f)
            y[b, :, r, s] = sum(fj / total * (w_g @ x[b, :, p, q]) for fj, (p, q) in zip(f, positions))
    return y


@exercise("03.3", "find the bugs: a non-local operation that looks right",
          hint="for each tensor, name what each axis means (batch, query, key, channel). Then check "
               "two things: the weights of one query, what do they sum to 1 over? And one value of "
               "the result: does it land at its own position and channel?")
def _check_fixed_operation(fn) -> None:
    x = random_input(2, 5, 3, 4, seed=331)
    w_theta, w_phi, w_g = (random_input(3, 5, seed=s) for s in (332, 333, 334))
    with torch.no_grad():
        got = fn(x, w_theta, w_phi, w_g)
        expected = _embedded_literal(x, w_theta, w_phi, w_g)
        if isinstance(got, torch.Tensor) and got.shape == expected.shape and not torch.allclose(got, expected, atol=1e-4):
            theta, phi, g = (torch.einsum("dc,bcn->bdn", w_, x.flatten(2)) for w_ in (w_theta, w_phi, w_g))
            scores = torch.einsum("bdn,bdm->bnm", theta, phi) / math.sqrt(w_theta.shape[0])
            g = g.transpose(1, 2)
            over_queries = torch.einsum("bnm,bmd->bdn", torch.softmax(scores, dim=1), g).reshape(expected.shape)
            if torch.allclose(got, over_queries, atol=1e-4):
                raise AssertionError("the values match weights normalised over the queries: for one query, "
                                     "its weights must sum to 1 over the keys")
            if torch.allclose(got.flatten().sort().values, expected.flatten().sort().values, atol=1e-4):
                raise AssertionError("the right numbers come out, but at the wrong places: positions and "
                                     "channels are mixed up when the result becomes a map")
    expect_close(got, expected, "non_local_y(x, w_theta, w_phi, w_g) for x of shape (2, 5, 3, 4)")


# --- 03.4 ---------------------------------------------------------------------------------

VIDEO_CONFIGS = ((8, 2, 4, 4), (16, 4, 7, 5), (32, 3, 6, 9), (64, 2, 14, 14))


@exercise("03.4", "count: multiply-adds of the default block on a video clip",
          hint="list every matrix product of the block; for each, at how many positions does it run "
               "(before or after the pooling?) and how long is each dot product? Check what the "
               "pooling of a clip does to each of its three axes, and to odd sizes. One multiply-add "
               "counts one")
def _check_video_macs(fn) -> None:
    for channels, t, h, w in VIDEO_CONFIGS:
        block = NonLocalBlock(channels, spatial_dims=3).eval()
        with torch.no_grad():
            counted = count_flops(block, torch.zeros(1, channels, t, h, w)) // 2  # torch counts 2 per multiply-add
        got = fn(channels, t, h, w)
        if isinstance(got, bool) or not isinstance(got, int):
            raise AssertionError(f"the count should be a whole number, but it is {type(got).__name__}")
        if got != counted:
            raise AssertionError(f"for C={channels}, a clip of {t}x{h}x{w}: your count is too "
                                 f"{'high' if got > counted else 'low'} (the checker counts the "
                                 f"multiply-adds of a real NonLocalBlock; batch norm, softmax and "
                                 f"pooling are not counted)")


# --- 03.5 ---------------------------------------------------------------------------------

class _LargestTensor(TorchDispatchMode):
    """Watches every operation and remembers the largest block of memory one of them returns."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.untyped_storage().nbytes())
        return out


def _concatenation_literal(theta: torch.Tensor, phi: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    b_, n_, _ = theta.shape
    m_ = phi.shape[1]
    out = torch.empty(b_, n_, m_)
    for b in range(b_):
        for i in range(n_):
            for j in range(m_):
                out[b, i, j] = max(0.0, float(w @ torch.cat([theta[b, i], phi[b, j]])))
    return out


@exercise("03.5", "concatenation scores without the (B, N, M, 2d) tensor",
          hint="w meets θ_i and φ_j through different halves of its weights: what does each half "
               "contribute, and on which index does that contribution depend? Nothing of size "
               "N·M·d is needed")
def _check_concatenation(fn) -> None:
    theta, phi = random_input(2, 6, 3, seed=351), random_input(2, 5, 3, seed=352)
    w = random_input(6, seed=353)
    expect_close(fn(theta, phi, w), _concatenation_literal(theta, phi, w),
                 "concatenation_scores(theta, phi, w) for theta (2, 6, 3), phi (2, 5, 3)")
    B, N, M, d = 2, 64, 48, 16
    theta, phi, w = random_input(B, N, d, seed=354), random_input(B, M, d, seed=355), random_input(2 * d, seed=356)
    watch = _LargestTensor()
    with torch.no_grad(), watch:
        got = fn(theta, phi, w)
    pairs, scores = B * N * M * 2 * d * 4, B * N * M * 4
    if watch.largest >= pairs // 4:
        raise AssertionError(f"at B={B}, N={N}, M={M}, d={d} your function creates a tensor of "
                             f"{format_bytes(watch.largest)}; the (B, N, M, 2d) tensor the exercise rules out "
                             f"takes {format_bytes(pairs)}, the scores themselves {format_bytes(scores)}")
    expect_shape(got, (B, N, M), f"concatenation_scores(theta, phi, w) at B={B}, N={N}, M={M}, d={d}")
    spot = [(b, i, j) for b in range(B) for i in (0, 17, N - 1) for j in (0, 29, M - 1)]
    expected = torch.stack([torch.relu(w @ torch.cat([theta[b, i], phi[b, j]])) for b, i, j in spot])
    expect_close(torch.stack([got[b, i, j] for b, i, j in spot]), expected,
                 f"nine scores of each image at B={B}, N={N}, M={M}, d={d}")
