"""NonLocalBlock against literal versions of the paper's equations (Wang et al., CVPR 2018).

The reference below is written from the equations with plain loops over positions i and j:
y_i = (1 / C(x)) sum_j f(x_i, x_j) g(x_j), z_i = x_i + BN(W_z y_i), with the four pairwise
functions of Sec. 3.2 and the official sub-sampling (2x2 max-pool of the input of phi and g,
then the 1x1 conv). It shares no code with the module.
"""
from __future__ import annotations

import copy
import importlib.util
import itertools
import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange, reduce

import tutorial_lib as tl
from tutorial_lib import NonLocalBlock
from tutorial_lib.exercises import passes, verdict

ROOT = Path(__file__).resolve().parents[1]

PAIRWISE = ["gaussian", "embedded_gaussian", "dot_product", "concatenation"]
GRIDS = {1: (7,), 2: (4, 5), 3: (2, 4, 5)}  # odd sizes on purpose: pooling floors them


# --- the literal reference ------------------------------------------------------------------

def literal_pool(x: torch.Tensor) -> torch.Tensor:
    """Max over non-overlapping windows of 2 on L / H, W (not T), odd remainders dropped."""
    nd = x.dim() - 2
    grid = list(x.shape[2:])
    pooled_axes = list(range(nd)) if nd < 3 else [1, 2]
    crop = [slice(None), slice(None)] + [slice(0, (s // 2) * 2) if a in pooled_axes else slice(None)
                                         for a, s in enumerate(grid)]
    x = x[tuple(crop)]
    if nd == 1:
        return reduce(x, "b c (l two) -> b c l", "max", two=2)
    if nd == 2:
        return reduce(x, "b c (h two) (w too) -> b c h w", "max", two=2, too=2)
    return reduce(x, "b c t (h two) (w too) -> b c t h w", "max", two=2, too=2)


def vectors(x: torch.Tensor) -> list[torch.Tensor]:
    """The feature vectors of one image (C, *grid) in raster order."""
    return [x[(slice(None),) + idx] for idx in itertools.product(*map(range, x.shape[1:]))]


def conv1x1(conv: torch.nn.Module, v: torch.Tensor) -> torch.Tensor:
    w = conv.weight.reshape(conv.weight.shape[0], conv.weight.shape[1])
    return w @ v + conv.bias


@torch.no_grad()
def literal_non_local(block: NonLocalBlock, x: torch.Tensor):
    """(z, weights) for an eval-mode block, computed position by position.

    weights[b][i][j] = f(x_i, x_j) / C(x).
    """
    pairwise = block.pairwise
    x_hat = literal_pool(x) if block.sub_sample else x
    zs, all_weights = [], []
    for b in range(x.shape[0]):
        xs, xhs = vectors(x[b]), vectors(x_hat[b])
        if pairwise == "gaussian":
            thetas, phis = xs, xhs
            default_scale = 1 / math.sqrt(x.shape[1])
        else:
            thetas = [conv1x1(block.theta, v) for v in xs]
            phis = [conv1x1(block.phi, v) for v in xhs]
            default_scale = 1 / math.sqrt(block.inner_channels)
        scale = block.scale if block.scale is not None else default_scale
        gs = [conv1x1(block.g, v) for v in xhs]
        n_keys = len(xhs)
        rows, out = [], []
        for i in range(len(xs)):
            if pairwise in ("gaussian", "embedded_gaussian"):
                f = [math.exp(scale * float(thetas[i] @ phis[j])) for j in range(n_keys)]
                norm = sum(f)
            elif pairwise == "dot_product":
                f = [float(thetas[i] @ phis[j]) for j in range(n_keys)]
                norm = n_keys
            else:
                w = block.concat_project.weight[0]
                f = [max(0.0, float(w @ torch.cat([thetas[i], phis[j]]))) for j in range(n_keys)]
                norm = n_keys
            weights = [fj / norm for fj in f]
            y = sum(wj * gj for wj, gj in zip(weights, gs))
            wz = conv1x1(block.out, y)
            if block.batch_norm:
                bn = block.bn
                wz = bn.weight * (wz - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) + bn.bias
            out.append(xs[i] + wz)
            rows.append(weights)
        zs.append(torch.stack(out, dim=1).reshape(x.shape[1:]))
        all_weights.append(torch.tensor(rows, dtype=x.dtype))
    return torch.stack(zs), torch.stack(all_weights)


def randomise(block: NonLocalBlock, seed: int = 0) -> NonLocalBlock:
    """Give every parameter and BN statistic a random value of order one (and go to eval mode)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.5)
        if block.batch_norm:
            block.bn.running_mean.copy_(torch.randn(block.channels, generator=g) * 0.1)
            block.bn.running_var.copy_(torch.rand(block.channels, generator=g) + 0.5)
    return block.eval()


def make_input(spatial_dims: int, channels: int = 4, batch: int = 2, seed: int = 1,
               dtype=torch.float32, grid=None) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, channels, *(grid or GRIDS[spatial_dims]), generator=g, dtype=dtype)


# --- the equations --------------------------------------------------------------------------

@pytest.mark.parametrize("spatial_dims", [1, 2, 3])
@pytest.mark.parametrize("pairwise", PAIRWISE)
def test_matches_literal_equations(pairwise, spatial_dims):
    block = randomise(NonLocalBlock(4, pairwise=pairwise, spatial_dims=spatial_dims)).double()
    x = make_input(spatial_dims, dtype=torch.float64)
    z_ref, w_ref = literal_non_local(block, x)
    torch.testing.assert_close(block(x), z_ref)
    z, maps = block(x, return_attention=True)
    torch.testing.assert_close(z, z_ref)
    torch.testing.assert_close(rearrange(maps["attention"], "b n ... -> b n (...)"), w_ref)


OPTIONS = [dict(sub_sample=False), dict(inner_channels=3), dict(inner_channels=1),
           dict(batch_norm=False), dict(scale=1.0), dict(scale=0.37)]


@pytest.mark.parametrize("pairwise,options", [
    (p, o) for p in PAIRWISE for o in OPTIONS
    if o.get("scale", 1.0) == 1.0 or p in ("gaussian", "embedded_gaussian")])  # no scale otherwise
def test_matches_literal_with_options(pairwise, options):
    block = randomise(NonLocalBlock(6, pairwise=pairwise, **options)).double()
    x = make_input(2, channels=6, dtype=torch.float64, grid=(5, 4))
    torch.testing.assert_close(block(x), literal_non_local(block, x)[0])


def test_default_scale_is_official_and_scale_one_is_the_paper():
    block = NonLocalBlock(8)
    assert block.affinity_scale == pytest.approx(4 ** -0.5)             # 1 / sqrt(inner = C/2)
    assert NonLocalBlock(8, pairwise="gaussian").affinity_scale == pytest.approx(8 ** -0.5)
    assert NonLocalBlock(8, scale=1.0).affinity_scale == 1.0
    assert NonLocalBlock(8, pairwise="dot_product").affinity_scale == 1.0


def test_softmax_rows_sum_to_one_and_map_layout():
    block = randomise(NonLocalBlock(4, spatial_dims=3))
    x = make_input(3, grid=(3, 4, 6))
    _, maps = block(x, return_attention=True)
    att = maps["attention"]
    assert att.shape == (2, 3 * 4 * 6, 3, 2, 3)   # queries in raster order, keys on the pooled grid
    torch.testing.assert_close(att.sum(dim=(2, 3, 4)), torch.ones(2, 72))
    assert (att > 0).all()


@pytest.mark.parametrize("pairwise", PAIRWISE)
def test_attention_path_and_lean_path_agree(pairwise):
    block = randomise(NonLocalBlock(8, pairwise=pairwise))
    x = make_input(2, channels=8, grid=(10, 9))
    z, _ = block(x, return_attention=True)
    torch.testing.assert_close(block(x), z, atol=1e-5, rtol=1e-4)


# --- the official details -------------------------------------------------------------------

def test_pool_then_conv_is_not_conv_then_pool():
    """The literal reference pools before the conv (official); the other order gives other numbers."""
    block = randomise(NonLocalBlock(4, pairwise="dot_product")).double()
    x = make_input(2, dtype=torch.float64, grid=(6, 6))
    phi_pool_first = block.phi(literal_pool(x))
    phi_conv_first = literal_pool(block.phi(x))
    assert not torch.allclose(phi_pool_first, phi_conv_first)
    torch.testing.assert_close(block(x), literal_non_local(block, x)[0])


@pytest.mark.parametrize("scale", [None, 1.0])
def test_embedded_gaussian_is_sdpa(scale):
    """Official block == SDPA with its default scale 1/sqrt(C/2) on pooled keys; paper == scale 1."""
    block = randomise(NonLocalBlock(8, scale=scale)).double()
    x = make_input(2, channels=8, dtype=torch.float64, grid=(6, 8))
    theta = F.conv2d(x, block.theta.weight, block.theta.bias)
    x_hat = F.max_pool2d(x, 2)
    phi = F.conv2d(x_hat, block.phi.weight, block.phi.bias)
    g = F.conv2d(x_hat, block.g.weight, block.g.bias)
    q, k, v = (rearrange(t, "b c h w -> b (h w) c") for t in (theta, phi, g))
    y = F.scaled_dot_product_attention(q, k, v) if scale is None else \
        F.scaled_dot_product_attention(q, k, v, scale=1.0)
    y = rearrange(y, "b (h w) c -> b c h w", h=6)
    bn = block.bn
    z = x + F.batch_norm(F.conv2d(y, block.out.weight, block.out.bias), bn.running_mean,
                         bn.running_var, bn.weight, bn.bias, eps=bn.eps)
    torch.testing.assert_close(block(x), z)
    # the mmdetection #1447 bug (dividing by the scale) is something else
    y_bug = F.scaled_dot_product_attention(q, k, v, scale=math.sqrt(4))
    assert not torch.allclose(y_bug, F.scaled_dot_product_attention(q, k, v))


@pytest.mark.parametrize("pairwise", ["dot_product", "concatenation"])
def test_constant_affinity_gives_mean_over_key_positions(pairwise):
    """With f = 1 for every pair, y_i is the mean of g over the N̂ (pooled) key positions."""
    block = NonLocalBlock(4, inner_channels=2, pairwise=pairwise).eval()
    with torch.no_grad():
        for conv in (block.theta, block.phi):  # theta_i = phi_j = (1, 0) at every position
            conv.weight.zero_()
            conv.bias.copy_(torch.tensor([1.0, 0.0]))
        if pairwise == "concatenation":          # w_f^T [theta; phi] = 0.5 + 0.5
            block.concat_project.weight.copy_(torch.tensor([[0.5, 0.0, 0.5, 0.0]]))
        block.bn.weight.fill_(1.0)               # BN(v) = v / sqrt(1 + eps) in eval mode
    x = make_input(2, grid=(6, 4))
    _, maps = block(x, return_attention=True)
    n_keys = 3 * 2
    torch.testing.assert_close(maps["attention"], torch.full((2, 24, 3, 2), 1 / n_keys))
    g_mean = reduce(block.g(F.max_pool2d(x, 2)), "b c h w -> b c 1 1", "mean")
    expected = x + block.bn(block.out(g_mean.expand(-1, -1, 6, 4)))
    torch.testing.assert_close(block(x), expected)


def test_dot_product_both_summation_orders():
    """(θᵀφ) g and θᵀ(φ g) are chosen by cost; both must match the literal equation."""
    for channels, grid in [(4, (8, 8)), (64, (2, 3))]:   # many positions / wide features
        block = randomise(NonLocalBlock(channels, pairwise="dot_product", sub_sample=False)).double()
        x = make_input(2, channels=channels, dtype=torch.float64, grid=grid)
        torch.testing.assert_close(block(x), literal_non_local(block, x)[0])


def test_dot_product_is_cubic_in_x_without_biases():
    """y = (1/N̂) Σ_j θ_iᵀφ_j g_j: doubling x (no biases) multiplies y by 8."""
    block = randomise(NonLocalBlock(4, pairwise="dot_product", batch_norm=False)).double()
    with torch.no_grad():
        for conv in (block.theta, block.phi, block.g, block.out):
            conv.bias.zero_()
    x = make_input(2, dtype=torch.float64, grid=(4, 6))
    torch.testing.assert_close(block(2 * x) - 2 * x, 8 * (block(x) - x))


@pytest.mark.parametrize("spatial_dims", [1, 2, 3])
@pytest.mark.parametrize("pairwise", PAIRWISE)
@pytest.mark.parametrize("batch_norm", [True, False])
def test_identity_at_initialisation(pairwise, spatial_dims, batch_norm):
    torch.manual_seed(0)
    block = NonLocalBlock(6, pairwise=pairwise, spatial_dims=spatial_dims, batch_norm=batch_norm)
    x = make_input(spatial_dims, channels=6)
    assert torch.equal(block.train()(x), x)
    assert torch.equal(block.eval()(x), x)


def test_official_initialisation():
    torch.manual_seed(0)
    block = NonLocalBlock(256)
    for conv in (block.theta, block.phi, block.g, block.out):
        assert abs(conv.weight.std().item() - 0.01) < 0.001
        assert torch.count_nonzero(conv.bias) == 0
    assert torch.count_nonzero(block.bn.weight) == 0 and torch.count_nonzero(block.bn.bias) == 0
    video = NonLocalBlock(8, spatial_dims=3)
    assert video.pool.kernel_size == (1, 2, 2) and video.pool.stride == (1, 2, 2)


@pytest.mark.parametrize("spatial_dims", [1, 2])
@pytest.mark.parametrize("pairwise", PAIRWISE)
def test_permuting_positions_permutes_output_without_sub_sampling(pairwise, spatial_dims):
    block = randomise(NonLocalBlock(4, pairwise=pairwise, spatial_dims=spatial_dims, sub_sample=False))
    x = make_input(spatial_dims, grid=(4, 6) if spatial_dims == 2 else (9,))
    perm = torch.randperm(x[0, 0].numel(), generator=torch.Generator().manual_seed(3))

    def shuffle(t):
        flat = t.flatten(2)[:, :, perm]
        return flat.reshape(t.shape)

    torch.testing.assert_close(block(shuffle(x)), shuffle(block(x)))


def test_sub_sampling_breaks_permutation_equivariance():
    block = randomise(NonLocalBlock(4))
    x = make_input(2, grid=(4, 6))
    perm = torch.randperm(24, generator=torch.Generator().manual_seed(3))
    shuffle = lambda t: t.flatten(2)[:, :, perm].reshape(t.shape)  # noqa: E731
    assert not torch.allclose(block(shuffle(x)), shuffle(block(x)), atol=1e-4)


# --- parameters, batches, gradients ---------------------------------------------------------

def test_parameter_count_closed_form():
    assert tl.count_parameters(NonLocalBlock(1024, 512)) == 2_101_760
    assert tl.count_parameters(NonLocalBlock(512)) == 526_592
    for c in (2, 8, 64, 100):
        d = c // 2
        assert tl.count_parameters(NonLocalBlock(c)) == 2 * c * c + 9 * c // 2
        assert tl.count_parameters(NonLocalBlock(c, pairwise="gaussian")) == 2 * c * d + d + 3 * c
        concatenation = NonLocalBlock(c, pairwise="concatenation")
        assert tl.count_parameters(concatenation) == 2 * c * c + 9 * c // 2 + 2 * d
        assert tl.count_parameters(NonLocalBlock(c, batch_norm=False)) == 2 * c * c + 5 * c // 2
    for c, d in [(7, 3), (9, 5), (5, 8)]:                     # odd C, any inner width
        assert tl.count_parameters(NonLocalBlock(c, d)) == 4 * c * d + 3 * d + 3 * c
    assert NonLocalBlock(1).inner_channels == 1


@pytest.mark.parametrize("pairwise", PAIRWISE)
def test_batch_independence_in_eval_mode(pairwise):
    block = randomise(NonLocalBlock(4, pairwise=pairwise))
    x = make_input(2, batch=3, grid=(6, 5))
    together = block(x)
    for b in range(3):
        torch.testing.assert_close(together[b:b + 1], block(x[b:b + 1]))


@pytest.mark.parametrize("spatial_dims", [1, 2, 3])
@pytest.mark.parametrize("pairwise", PAIRWISE)
def test_gradcheck(pairwise, spatial_dims):
    block = randomise(NonLocalBlock(2, pairwise=pairwise, spatial_dims=spatial_dims), seed=5).double()
    grid = {1: (4,), 2: (2, 4), 3: (2, 2, 2)}[spatial_dims]
    x = make_input(spatial_dims, channels=2, batch=1, dtype=torch.float64, grid=grid).requires_grad_()
    assert torch.autograd.gradcheck(block, (x,))
    params = tuple(block.parameters())
    assert torch.autograd.gradcheck(lambda *p: torch.func.functional_call(
        block, dict(zip([n for n, _ in block.named_parameters()], p)), (x.detach(),)), params)


def test_gradcheck_of_the_other_routes(monkeypatch):
    """The tiny inputs above take the explicit route (and the dot product its reordered sum);
    here gradcheck runs the fused kernel of both softmax forms and the dot product's N x N̂ matrix."""
    x = make_input(2, channels=2, batch=1, dtype=torch.float64, grid=(2, 4)).requires_grad_()
    dot = randomise(NonLocalBlock(2, pairwise="dot_product"), seed=5).double()
    assert torch.autograd.gradcheck(lambda t: dot(t, return_attention=True)[0], (x,))
    monkeypatch.setattr("tutorial_lib.non_local.EXPLICIT_MAX_PAIRS", 0)
    calls = _record_fused_calls(monkeypatch)
    for pairwise in ("embedded_gaussian", "gaussian"):
        block = randomise(NonLocalBlock(2, inner_channels=3, pairwise=pairwise), seed=5).double()
        assert torch.autograd.gradcheck(block, (x,))
    assert calls


@pytest.mark.parametrize("pairwise", PAIRWISE)
def test_training_step_reaches_every_parameter(pairwise):
    block = randomise(NonLocalBlock(4, pairwise=pairwise)).train()
    block(make_input(2, grid=(4, 4))).square().sum().backward()
    for name, p in block.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


# --- odd sizes, dtypes, capture -------------------------------------------------------------

@pytest.mark.parametrize("grid,options", [((1, 1), dict(sub_sample=False)), ((2, 2), {}),
                                          ((3, 7), {}), ((7, 2), {}), ((1, 5), dict(sub_sample=False))])
def test_odd_sizes_and_batch_one(grid, options):
    block = randomise(NonLocalBlock(4, **options)).double()
    x = make_input(2, batch=1, dtype=torch.float64, grid=grid)
    z = block(x)
    assert z.shape == x.shape
    torch.testing.assert_close(z, literal_non_local(block, x)[0])


def test_video_time_is_not_pooled():
    block = randomise(NonLocalBlock(4, spatial_dims=3)).double()
    x = make_input(3, batch=1, dtype=torch.float64, grid=(1, 3, 5))  # T = 1 is fine
    z, maps = block(x, return_attention=True)
    assert maps["attention"].shape == (1, 15, 1, 1, 2)
    torch.testing.assert_close(z, literal_non_local(block, x)[0])


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_follows_the_input_dtype(dtype):
    block = randomise(NonLocalBlock(8)).to(dtype)
    x = make_input(2, channels=8, grid=(6, 6)).to(dtype)
    z = block(x)
    assert z.dtype == dtype
    ref = randomise(NonLocalBlock(8))(x.float())
    torch.testing.assert_close(z.float(), ref, atol=0.1, rtol=0.05)


def test_capture_attention_collects_the_same_maps():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), randomise(NonLocalBlock(4))).eval()
    x = torch.randn(2, 3, 6, 6)
    with tl.capture_attention(net) as maps:
        z = net(x)
    _, direct = net[1](net[0](x), return_attention=True)
    assert set(maps) == {"1"}
    torch.testing.assert_close(maps["1"]["attention"], direct["attention"])
    torch.testing.assert_close(z, net(x), atol=1e-5, rtol=1e-4)
    assert not net[1].capturing


# --- memory: the lean path does not build the N x N affinity --------------------------------

@pytest.mark.parametrize("pairwise", ["embedded_gaussian", "gaussian", "dot_product"])
def test_lean_path_does_not_store_the_affinity(pairwise):
    """At N = 4096 positions a float32 N x N matrix is 64 MiB; the lean forward stays far below."""
    block = NonLocalBlock(16, pairwise=pairwise, sub_sample=False).eval()
    x = torch.randn(1, 16, 64, 64)
    affinity_bytes = 4096 * 4096 * 4
    with torch.no_grad():
        block(x)  # warm-up
        lean = tl.peak_memory(block, x)
        if lean is None:
            pytest.skip("peak memory cannot be measured on this platform")
        explicit = tl.peak_memory(lambda t: block(t, return_attention=True), x)
    assert lean < affinity_bytes / 8, tl.format_bytes(lean)
    assert explicit > affinity_bytes, tl.format_bytes(explicit)


# --- errors ---------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,error,match", [
    (dict(channels=0), ValueError, "channels >= 1"),
    (dict(channels=4.0), TypeError, "channels to be an integer"),
    (dict(channels=4, inner_channels=0), ValueError, "inner_channels >= 1"),
    (dict(channels=4, pairwise="softmax"), ValueError, "pairwise to be one of"),
    (dict(channels=4, spatial_dims=4), ValueError, "spatial_dims <= 3"),
    (dict(channels=4, sub_sample="yes"), TypeError, "sub_sample to be True or False"),
    (dict(channels=4, batch_norm=1), TypeError, "batch_norm to be True or False"),
    (dict(channels=4, scale=0.0), ValueError, "scale > 0"),
    (dict(channels=4, scale=float("inf")), ValueError, "expected a finite scale > 0, but got scale=inf"),
    (dict(channels=4, scale="paper"), TypeError, "scale to be a number"),
    (dict(channels=4, pairwise="dot_product", scale=0.5), ValueError, "scale=None"),
])
def test_bad_hyper_parameters(kwargs, error, match):
    with pytest.raises(error, match=match):
        NonLocalBlock(**kwargs)


@pytest.mark.parametrize("x,error,match", [
    ([[1.0]], TypeError, "torch.Tensor"),
    (torch.ones(1, 4, 4, 4, dtype=torch.int64), TypeError, "floating-point"),
    (torch.ones(4, 4, 4), ValueError, r"expected a 4-D input \(B, C, H, W\)"),
    (torch.ones(1, 3, 4, 4), ValueError, "built for 4 channels"),
    (torch.ones(0, 4, 4, 4), ValueError, "non-empty"),
    (torch.ones(1, 4, 1, 6), ValueError, "sub-sampling halves H and W"),
])
def test_bad_inputs(x, error, match):
    with pytest.raises(error, match=match):
        NonLocalBlock(4).eval()(x)


def test_bad_inputs_other_dims_and_modes():
    with pytest.raises(ValueError, match=r"3-D input \(B, C, L\)"):
        NonLocalBlock(4, spatial_dims=1)(torch.ones(1, 4, 4, 4))
    with pytest.raises(ValueError, match=r"5-D input \(B, C, T, H, W\)"):
        NonLocalBlock(4, spatial_dims=3)(torch.ones(1, 4, 4, 4))
    with pytest.raises(ValueError, match="halves L"):
        NonLocalBlock(4, spatial_dims=1)(torch.ones(1, 4, 1))
    with pytest.raises(ValueError, match="batch norm in training mode"):
        NonLocalBlock(4, sub_sample=False).train()(torch.ones(1, 4, 1, 1))
    with pytest.raises(TypeError, match="return_attention to be True or False"):
        NonLocalBlock(4)(torch.ones(1, 4, 4, 4), return_attention="maps")


def test_input_dtype_and_device_must_match_the_block():
    """Both routes name the block and both dtypes (the fused one would otherwise fail inside a
    batched product that the caller never wrote); torch.autocast may cast on its own."""
    block = NonLocalBlock(4).eval()
    x64 = torch.ones(1, 4, 4, 4, dtype=torch.float64)
    message = r"NonLocalBlock: expected an input of the block's dtype \(torch.float32\), but got torch.float64"
    with pytest.raises(TypeError, match=message):
        block(x64)
    with torch.no_grad(), pytest.raises(TypeError, match=message):
        block(x64)
    with pytest.raises(ValueError, match=r"expected an input on the block's device \(cpu\), but got one on meta"):
        block(torch.ones(1, 4, 4, 4, device="meta"))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert block(x64.bfloat16()).shape == (1, 4, 4, 4)


# --- the two exact routes: explicit weights and the fused kernel -----------------------------

def _record_fused_calls(monkeypatch) -> list:
    calls = []
    real = F.scaled_dot_product_attention
    monkeypatch.setattr("tutorial_lib.non_local.F.scaled_dot_product_attention",
                        lambda *a, **k: calls.append(a[0].shape) or real(*a, **k))
    return calls


@pytest.mark.parametrize("spatial_dims", [1, 2, 3])
@pytest.mark.parametrize("pairwise,options", [
    ("embedded_gaussian", {}), ("embedded_gaussian", dict(inner_channels=5, batch_norm=False)),
    ("gaussian", {}), ("gaussian", dict(inner_channels=9)), ("gaussian", dict(sub_sample=False, scale=0.3))])
def test_fused_route_without_gradients_matches_literal(monkeypatch, pairwise, options, spatial_dims):
    """Without gradients (inference) the softmax forms run on the fused kernel: its values match
    the loops for sequences, images and clips of odd sizes, and when the Gaussian's x is narrower
    (inner_channels=9 > C) or wider than g, so that one side is zero-padded."""
    calls = _record_fused_calls(monkeypatch)
    block = randomise(NonLocalBlock(6, pairwise=pairwise, spatial_dims=spatial_dims, **options)).double()
    x = make_input(spatial_dims, channels=6, dtype=torch.float64)
    with torch.no_grad():
        z = block(x)
    assert len(calls) == 1
    torch.testing.assert_close(z, literal_non_local(block, x)[0])

@pytest.mark.parametrize("pairwise", ["embedded_gaussian", "gaussian"])
@pytest.mark.parametrize("options", [{}, dict(sub_sample=False), dict(scale=1.0), dict(inner_channels=3),
                                     dict(inner_channels=9), dict(spatial_dims=1), dict(spatial_dims=3)])
def test_explicit_and_fused_routes_agree_on_values_and_gradients(monkeypatch, pairwise, options):
    """With gradients, small maps build the weights explicitly and large ones use the fused kernel;
    forcing each route on the same block gives the literal values and the same gradients."""
    base = randomise(NonLocalBlock(6, pairwise=pairwise, **options)).double().train()
    spatial_dims = options.get("spatial_dims", 2)
    x0 = make_input(spatial_dims, channels=6, dtype=torch.float64, grid=(6, 5) if spatial_dims == 2 else None)
    expected = literal_non_local(base.eval(), x0)[0]
    results = []
    for limit in (0, 10 ** 9):                      # 0: always fused; 10**9: always explicit
        monkeypatch.setattr("tutorial_lib.non_local.EXPLICIT_MAX_PAIRS", limit)
        block = copy.deepcopy(base).eval()
        x = x0.clone().requires_grad_()
        z = block(x)
        torch.testing.assert_close(z, expected)
        (z * torch.linspace(-1, 1, z.numel(), dtype=z.dtype).view_as(z)).sum().backward()
        results.append([x.grad] + [p.grad for p in block.parameters()])
    for fused, explicit in zip(*results):
        torch.testing.assert_close(fused, explicit)


def test_default_route_choice_follows_gradients_and_size(monkeypatch):
    """The fused kernel runs without gradients and on large maps; the explicit product with
    gradients on small maps. Observed through the calls, not assumed."""
    calls = []
    real = F.scaled_dot_product_attention
    monkeypatch.setattr("tutorial_lib.non_local.F.scaled_dot_product_attention",
                        lambda *a, **k: calls.append(a[0].shape[-2]) or real(*a, **k))
    block = NonLocalBlock(4, sub_sample=False)
    small, large = make_input(2, grid=(8, 8)), make_input(2, grid=(30, 30))   # 64^2 and 900^2 pairs
    with torch.no_grad():
        block(small)
    block(small).sum().backward()
    block(large.requires_grad_()).sum().backward()
    assert calls == [64, 900]


def test_fused_one_by_one_convolutions_keep_separate_parameters():
    """θ, φ, g run as one convolution, but stay three modules with their own parameters."""
    block = NonLocalBlock(8, sub_sample=False)
    assert {"theta.weight", "phi.weight", "g.weight", "out.weight"} <= set(block.state_dict())
    block = randomise(block).train()
    block(make_input(2, channels=8, grid=(4, 4))).square().sum().backward()
    grads = [block.theta.weight.grad, block.phi.weight.grad, block.g.weight.grad]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)
    assert not torch.allclose(grads[0], grads[1])


def test_hooks_on_the_fused_convolutions_never_fire_on_any_route():
    """The forward reads θ, φ, g and W_z's weights without calling them (documented): a hook on
    them must not fire on one route and not on another; hooks on the block still do."""
    for pairwise in PAIRWISE:
        block = NonLocalBlock(8, pairwise=pairwise).eval()
        fired = []
        for name, module in block.named_children():
            module.register_forward_hook(lambda m, i, o, name=name: fired.append(name))
        block.register_forward_hook(lambda m, i, o: fired.append("block"))
        x = make_input(2, channels=8, grid=(6, 6))
        block(x)
        block(x, return_attention=True)
        with torch.no_grad():
            block(x)
        assert sorted(set(fired)) == ["block", "bn", "pool"], (pairwise, fired)


# --- the benchmark script runs ----------------------------------------------------------------

def test_benchmark_quick_runs_and_checks_equal_weights(capsys):
    spec = importlib.util.spec_from_file_location("bench_non_local", ROOT / "benchmarks" / "bench_non_local.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--quick"]) == 0
    out = capsys.readouterr().out
    assert "AlexHex7" in out and "6x6" in out and "10x10" in out and "largest time ratio, forward+backward" in out
    block = randomise(NonLocalBlock(6, sub_sample=False, scale=1.0))
    peer = bench.AlexHex7EmbeddedGaussian(block).eval()
    x = make_input(2, channels=6, grid=(5, 4))
    torch.testing.assert_close(peer(x), block(x))
    with pytest.raises(ValueError, match="without sub-sampling"):
        bench.AlexHex7EmbeddedGaussian(NonLocalBlock(6))


# --- the data set of notebook 03 ------------------------------------------------------------

@pytest.mark.parametrize("size", [16, 24])
def test_matching_tiles_layout_and_labels(size):
    match = tl.matching_tiles(60, question="match", size=size, seed=3)
    absent = tl.matching_tiles(60, question="absent", size=size, seed=3)
    assert torch.equal(match.images, absent.images)             # one layout, two questions
    assert match.images.shape == (60, 3, size, size) and match.images.dtype == torch.float32
    assert 0 <= match.images.min() and match.images.max() <= 1
    assert match.masks.sum(dim=(1, 2)).eq(64).all() and match.other_masks.sum(dim=(1, 2)).eq(128).all()
    assert not (match.masks & match.other_masks).any() and not match.masks[:, :8, :8].any()
    glyphs = match.tile_glyphs
    assert torch.equal(match.labels, glyphs[:, 0])
    for row, gone in zip(glyphs.tolist(), absent.labels.tolist()):
        assert len(set(row)) == 3 and gone not in row            # three different glyphs, the fourth absent
    palette = torch.tensor(list(tl.data.PALETTE.values()))
    for i in range(60):                                          # exactly one tile has the corner's colour
        corner = match.images[i, :, 3, 3]                        # inside the flat corner tile, no glyph
        colour = palette[(palette - corner).abs().sum(1).argmin()]
        tiles = [match.masks[i]] + [m for m in _tile_masks(match.other_masks[i])]
        same = [((match.images[i][:, t].mean(1) - colour).abs().max() < 0.25).item()
                for t in (_border(m) for m in tiles)]
        assert same == [True, False, False], i


def _tile_masks(mask):
    """The two 8x8 tiles of a two-tile mask, split by their top-left corners."""
    ys, xs = torch.nonzero(mask, as_tuple=True)
    corners = sorted({(int(y) // 8 * 8, int(x) // 8 * 8) for y, x in zip(ys, xs)})
    out = []
    for y, x in corners:
        m = torch.zeros_like(mask)
        m[y:y + 8, x:x + 8] = True
        out.append(m)
    return out


def _border(mask):
    """The one-pixel frame of an 8x8 tile: tile colour, never glyph ink."""
    inner = torch.zeros_like(mask)
    ys, xs = torch.nonzero(mask, as_tuple=True)
    inner[ys.min() + 1:ys.max(), xs.min() + 1:xs.max()] = True
    return mask & ~inner


def test_matching_tiles_is_seeded_and_subsets_keep_every_field():
    a, b = tl.matching_tiles(20, seed=5), tl.matching_tiles(20, seed=5)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images, tl.matching_tiles(20, seed=6).images)
    train, val = a.split(15)
    assert isinstance(val, tl.TileMatching) and len(val) == 5
    assert torch.equal(val.other_masks, a.other_masks[15:]) and torch.equal(val.tile_glyphs, a.tile_glyphs[15:])


@pytest.mark.parametrize("kwargs,match", [(dict(question="which"), "question to be one of"),
                                          (dict(size=12), "expected an integer >= 16"),
                                          (dict(noise=-1.0), "noise >= 0"), (dict(n=0), "expected an integer >= 1")])
def test_matching_tiles_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tl.matching_tiles(**{"n": 4, **kwargs})


# --- exercises of notebook 03 ---------------------------------------------------------------

def test_exercise_03_1_prediction_is_measured_by_the_checker():
    assert passes("03.1", 8) and passes("03.1", 8.05)
    for wrong in (2, 4, 1, 16, "8", None):
        assert not passes("03.1", wrong)
    assert not passes("03.1", ...)


def _temporal_solution(theta, phi, g):
    q, k = (rearrange(t, "b d t h w -> b h w t d") for t in (theta, phi))
    w = torch.softmax(torch.einsum("bhwtd,bhwsd->bhwts", q, k) / math.sqrt(q.shape[-1]), dim=-1)
    y = torch.einsum("bhwts,bhwse->bhwte", w, rearrange(g, "b e t h w -> b h w t e"))
    return rearrange(y, "b h w t e -> b e t h w")


def test_exercise_03_2_temporal_non_local():
    assert passes("03.2", _temporal_solution)

    def full_space_time(theta, phi, g):          # attends over every position, not along time only
        b, d, t, h, w = theta.shape
        q, k = (rearrange(x, "b d t h w -> b (t h w) d") for x in (theta, phi))
        v = rearrange(g, "b e t h w -> b (t h w) e")
        y = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(d), dim=-1) @ v
        return rearrange(y, "b (t h w) e -> b e t h w", t=t, h=h)

    def over_queries(theta, phi, g):
        q, k = (rearrange(t, "b d t h w -> b h w t d") for t in (theta, phi))
        w = torch.softmax(torch.einsum("bhwtd,bhwsd->bhwts", q, k) / math.sqrt(q.shape[-1]), dim=-2)
        return rearrange(torch.einsum("bhwts,bhwse->bhwte", w, rearrange(g, "b e t h w -> b h w t e")),
                         "b h w t e -> b e t h w")

    def no_scale(theta, phi, g):
        return _temporal_solution(theta * math.sqrt(theta.shape[1]), phi, g)

    for wrong in (full_space_time, over_queries, no_scale, lambda t, p, g: g):
        assert not passes("03.2", wrong)
    assert not passes("03.2", ...)


def _operation(x, w_theta, w_phi, w_g, softmax_dim=-1, scramble=False):
    xs = rearrange(x, "b c h w -> b (h w) c")
    theta, phi, g = (xs @ w.T for w in (w_theta, w_phi, w_g))
    weights = torch.softmax(theta @ phi.transpose(1, 2) / math.sqrt(theta.shape[-1]), dim=softmax_dim)
    y = weights @ g
    if scramble:
        return y.reshape(x.shape[0], -1, x.shape[2], x.shape[3])
    return rearrange(y, "b (h w) d -> b d h w", h=x.shape[2])


def test_exercise_03_3_find_the_bugs():
    assert passes("03.3", _operation)
    both = lambda *a: _operation(*a, softmax_dim=1, scramble=True)  # noqa: E731  (the given version)
    assert not passes("03.3", both)
    ok, line = verdict("03.3", lambda *a: _operation(*a, softmax_dim=1))
    assert not ok and "over the keys" in line
    ok, line = verdict("03.3", lambda *a: _operation(*a, scramble=True))
    assert not ok and "wrong places" in line
    assert "dim=" not in line and "rearrange" not in line
    assert not passes("03.3", ...)


def _video_macs(c, t, h, w):
    d, n, m = c // 2, t * h * w, t * (h // 2) * (w // 2)
    return c * d * n + 2 * c * d * m + d * c * n + 2 * n * m * d


def test_exercise_03_4_counts_multiply_adds():
    assert passes("03.4", _video_macs)
    wrongs = [lambda c, t, h, w: 2 * _video_macs(c, t, h, w),                  # FLOPs, not multiply-adds
              lambda c, t, h, w: _video_macs(c, 1, t * h, w) if t > 1 else 0,   # pools time too
              lambda c, t, h, w: _video_macs(c, t, h + h % 2, w + w % 2),      # rounds up
              lambda c, t, h, w: 4 * c * (c // 2) * t * h * w + 2 * (t * h * w) ** 2 * (c // 2),  # no pooling
              lambda c, t, h, w: float(_video_macs(c, t, h, w))]
    for wrong in wrongs:
        assert not passes("03.4", wrong)
    assert not passes("03.4", ...)


def test_exercise_03_5_enforces_no_four_d_tensor():
    def right(theta, phi, w):
        d = theta.shape[-1]
        return torch.relu((theta @ w[:d])[:, :, None] + (phi @ w[d:])[:, None, :])
    assert passes("03.5", right)

    def literal(theta, phi, w):                  # right values, but builds (B, N, M, 2d)
        m, n = phi.shape[1], theta.shape[1]
        pairs = torch.cat([theta[:, :, None].expand(-1, -1, m, -1), phi[:, None].expand(-1, n, -1, -1)], dim=-1)
        return torch.relu(pairs @ w)
    ok, line = verdict("03.5", literal)
    assert not ok and "creates a tensor of" in line

    def broadcast_sum(theta, phi, w):             # (B, N, M, d) is as bad
        d = theta.shape[-1]
        return torch.relu((theta[:, :, None] * w[:d] + phi[:, None] * w[d:]).sum(-1))
    assert not passes("03.5", broadcast_sum)

    def relu_each(theta, phi, w):
        d = theta.shape[-1]
        return torch.relu(theta @ w[:d])[:, :, None] + torch.relu(phi @ w[d:])[:, None, :]
    assert not passes("03.5", relu_each)

    def swapped(theta, phi, w):
        d = theta.shape[-1]
        return torch.relu((theta @ w[d:])[:, :, None] + (phi @ w[:d])[:, None, :])
    assert not passes("03.5", swapped)
    assert not passes("03.5", ...)


def test_exercise_hints_and_messages_hold_no_code():
    from tutorial_lib.exercises import list_exercises
    for ex in list_exercises("03."):
        assert not re.search(r"dim\s*=|->|rearrange|einsum|softmax\(|\.sum\(", ex.hint), ex.id
