"""DoubleAttention against the paper's equations (Chen et al., A²-Nets, NeurIPS 2018).

Two independent references share no code with the module:

* a literal version with plain loops over positions and descriptors:
  a_j = W_φ x_j + b_φ, b_kj = w_θk·x_j + b_θk, v_kj = w_ρk·x_j + b_ρk;
  s_kj = exp(b_kj) / Σ_j' exp(b_kj')   (each attention map normalised over the positions),
  u_ki = exp(v_ki) / Σ_k' exp(v_k'i)   (each attention vector normalised over the descriptors),
  g_k = Σ_j s_kj a_j,  z_i = Σ_k u_ki g_k,  out_i = x_i + W_out z_i + b_out;
* the einsum formulation of the course's reference notes (MECHANISMS.md §9), on 1x1 convolutions
  with separate weights.
"""
from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from einops import einsum, rearrange
from torch.utils._python_dispatch import TorchDispatchMode

import tutorial_lib as tl
from tutorial_lib import DoubleAttention

GRIDS = {1: (7,), 2: (3, 5), 3: (2, 3, 4)}
ORDERS = ["literal", "folded"]


# --- the references -------------------------------------------------------------------------

def matrix(weight: torch.Tensor) -> torch.Tensor:
    return weight.reshape(weight.shape[0], weight.shape[1])


@torch.no_grad()
def literal_block(block: DoubleAttention, x: torch.Tensor) -> torch.Tensor:
    """out for every image and position, from the equations, with loops (small sizes only)."""
    m, n = block.c_m, block.c_n
    w, bias = matrix(block.embed.weight), block.embed.bias
    w_phi, w_theta, w_rho = w[:m], w[m:m + n], w[m + n:]
    b_phi, b_theta, b_rho = bias[:m], bias[m:m + n], bias[m + n:]
    outs = []
    for image in x:
        positions = list(itertools.product(*map(range, image.shape[1:])))
        xs = [image[(slice(None),) + p] for p in positions]
        a = [w_phi @ xj + b_phi for xj in xs]
        logits_b = [[float(w_theta[k] @ xj + b_theta[k]) for xj in xs] for k in range(n)]
        logits_v = [[float(w_rho[k] @ xj + b_rho[k]) for k in range(n)] for xj in xs]
        s = []
        for k in range(n):                                   # softmax over the positions j
            e = [math.exp(t) for t in logits_b[k]]
            s.append([ej / sum(e) for ej in e])
        g = [sum(s[k][j] * a[j] for j in range(len(xs))) for k in range(n)]
        width = image.shape[0] if block.reconstruct or block.residual else m
        out = image.new_empty(width, *image.shape[1:])
        for i, p in enumerate(positions):
            e = [math.exp(t) for t in logits_v[i]]           # softmax over the descriptors k
            u = [ek / sum(e) for ek in e]
            z = sum(u[k] * g[k] for k in range(n))
            branch = matrix(block.out.weight) @ z + block.out.bias if block.reconstruct else z
            out[(slice(None),) + p] = xs[i] + branch if block.residual else branch
        outs.append(out)
    return torch.stack(outs)


def einsum_block(block: DoubleAttention, x: torch.Tensor) -> torch.Tensor:
    """MECHANISMS.md §9: G = einsum(A, softmax(B, -1)); Z = einsum(G, softmax(V, 1)); X + W_out(Z)."""
    m, n = block.c_m, block.c_n
    w, bias = matrix(block.embed.weight), block.embed.bias
    flat = rearrange(x, "b c ... -> b c (...)")
    a = einsum(w[:m], flat, "m c, b c s -> b m s") + bias[:m, None]
    b = einsum(w[m:m + n], flat, "n c, b c s -> b n s") + bias[m:m + n, None]
    v = einsum(w[m + n:], flat, "n c, b c s -> b n s") + bias[m + n:, None]
    g = einsum(a, torch.softmax(b, dim=-1), "b m s, b n s -> b m n")
    z = einsum(g, torch.softmax(v, dim=1), "b m n, b n s -> b m s")
    if block.reconstruct:
        z = einsum(matrix(block.out.weight), z, "c m, b m s -> b c s") + block.out.bias[:, None]
    out = flat + z if block.residual else z
    return out.reshape(x.shape[0], -1, *x.shape[2:])


def randomise(block: DoubleAttention, seed: int = 0, scale: float = 0.5) -> DoubleAttention:
    """Every parameter random of order one (W_out too), so every path contributes."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)
    return block


def make_input(spatial_dims: int = 2, channels: int = 6, batch: int = 2, seed: int = 1,
               dtype=torch.float32, grid=None) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, channels, *(grid or GRIDS[spatial_dims]), generator=g, dtype=dtype)


# --- the equations --------------------------------------------------------------------------

@pytest.mark.parametrize("order", ORDERS + ["auto"])
@pytest.mark.parametrize("spatial_dims", [1, 2, 3])
def test_matches_the_literal_loops_and_the_einsum_formulation(order, spatial_dims):
    block = randomise(DoubleAttention(6, 3, 4, spatial_dims=spatial_dims, order=order)).double()
    x = make_input(spatial_dims, dtype=torch.float64)
    out = block(x)
    torch.testing.assert_close(out, literal_block(block, x))
    torch.testing.assert_close(out, einsum_block(block, x))


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("options", [dict(reconstruct=False, c_m=6), dict(residual=False),
                                     dict(reconstruct=False, residual=False),
                                     dict(c_m=1, c_n=1), dict(c_m=9, c_n=2), dict(c_m=2, c_n=9)])
def test_options_match_the_literal_loops(order, options):
    options = {"c_m": 3, "c_n": 4, **options}
    block = randomise(DoubleAttention(6, order=order, zero_init=False if options.get("reconstruct", True)
                                      else None, **options)).double()
    x = make_input(2, dtype=torch.float64, grid=(4, 3))
    torch.testing.assert_close(block(x), literal_block(block, x))


def test_the_two_orders_agree_in_float32_at_a_realistic_size():
    literal = randomise(DoubleAttention(64, 16, 16, order="literal"), scale=0.1)
    folded = DoubleAttention(64, 16, 16, order="folded")
    folded.load_state_dict(literal.state_dict())
    x = make_input(2, channels=64, grid=(14, 14))
    torch.testing.assert_close(folded(x), literal(x), atol=1e-5, rtol=1e-4)


def test_auto_picks_the_cheaper_order():
    assert DoubleAttention(256, 64, 64).order_for(56 * 56) == "folded"   # m = n: folded once N > c
    assert DoubleAttention(256, 64, 64).order_for(14 * 14) == "literal"
    narrow = DoubleAttention(16, 1, 16)                                      # n (c - m) >= c m
    assert narrow.order_for(100) == "literal"
    for block in (DoubleAttention(256, 64, 64), narrow, DoubleAttention(32, 8, 2, reconstruct=False,
                                                                          residual=False)):
        n_pos = 100
        cheaper = min(ORDERS, key=lambda o: block.multiply_adds(n_pos, o))
        assert block.order_for(n_pos) == cheaper


@pytest.mark.parametrize("c,m,n", [(256, 64, 64), (32, 8, 8), (64, 16, 8), (12, 5, 3)])
def test_folded_order_is_cheaper_exactly_when_the_closed_form_says(c, m, n):
    """literal - folded = 2 (N (cm + mn - cn) - cmn) multiply-adds: for m = n, folded once N > c."""
    block = DoubleAttention(c, m, n)
    for positions in range(1, 3 * c):
        folded_cheaper = positions * (c * m + m * n - c * n) > c * m * n
        saved = block.multiply_adds(positions, "literal") - block.multiply_adds(positions, "folded")
        assert (saved > 0) == folded_cheaper, positions
        assert block.order_for(positions) == ("folded" if folded_cheaper else "literal")
    if m == n:
        assert block.order_for(c) == "literal" and block.order_for(c + 1) == "folded"


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("reconstruct", [True, False])
def test_multiply_adds_equal_the_counted_flops(order, reconstruct):
    kwargs = dict(c_m=12, residual=False) if not reconstruct else {}
    block = DoubleAttention(12, **{"c_m": 5, "c_n": 3, **kwargs}, reconstruct=reconstruct, order=order)
    x = make_input(2, channels=12, grid=(6, 7))
    counted = tl.count_flops(block, x)
    assert counted == 2 * x.shape[0] * block.multiply_adds(42, order)


# --- the maps and the oracle facts of the notes ----------------------------------------------

@pytest.mark.parametrize("order", ORDERS)
def test_maps_are_normalised_over_the_right_axes(order):
    block = randomise(DoubleAttention(6, 3, 4, spatial_dims=3, order=order))
    x = make_input(3)
    _, maps = block(x, return_attention=True)
    s, u, g = maps["attention_maps"], maps["attention_vectors"], maps["descriptors"]
    assert s.shape == (2, 4, 2, 3, 4) and u.shape == (2, 4, 2, 3, 4) and g.shape == (2, 3, 4)
    torch.testing.assert_close(s.sum(dim=(2, 3, 4)), torch.ones(2, 4))      # each map over space
    torch.testing.assert_close(u.sum(dim=1), torch.ones(2, 2, 3, 4))        # each position over n
    assert (s > 0).all() and (u > 0).all()


@pytest.mark.parametrize("order", ORDERS)
def test_effective_n_by_n_matrix_is_row_stochastic_with_rank_at_most_n(order):
    """Z = A Wᵀ with W = softmax_n(V)ᵀ softmax_space(B): a non-local block's N x N matrix."""
    c, n = 8, 3
    block = randomise(DoubleAttention(c, c, n, reconstruct=False, residual=False, order=order)).double()
    x = make_input(2, channels=c, dtype=torch.float64, grid=(5, 6))
    z, maps = block(x, return_attention=True)
    s = rearrange(maps["attention_maps"], "b n h w -> b n (h w)")
    u = rearrange(maps["attention_vectors"], "b n h w -> b n (h w)")
    w = einsum(u, s, "b n i, b n j -> b i j")                                 # (B, N, N), here only
    assert w.shape == (2, 30, 30)
    torch.testing.assert_close(w.sum(dim=-1), torch.ones(2, 30, dtype=torch.float64))
    assert (w > 0).all()
    assert all(int(torch.linalg.matrix_rank(w[b])) <= n for b in range(2))
    a = F.conv2d(x, block.embed.weight[:c], block.embed.bias[:c])
    expected = einsum(rearrange(a, "b m h w -> b m (h w)"), w, "b m j, b i j -> b m i")
    torch.testing.assert_close(rearrange(z, "b m h w -> b m (h w)"), expected)


@pytest.mark.parametrize("order", ORDERS)
def test_a_constant_over_space_gives_z_equal_to_a(order):
    """Every z_i is a convex combination of the columns of A: if they are all equal, z_i = a."""
    c, m = 6, 6
    block = randomise(DoubleAttention(c, m, 3, reconstruct=False, residual=False, order=order))
    constant = torch.linspace(-1.0, 2.0, m)
    with torch.no_grad():
        block.embed.weight[:m].zero_()          # A = b_φ at every position
        block.embed.bias[:m].copy_(constant)
    z = block(make_input(2, channels=c, grid=(4, 5)))
    torch.testing.assert_close(z, constant[None, :, None, None].expand(2, m, 4, 5))


@pytest.mark.parametrize("order", ORDERS)
def test_one_descriptor_gives_a_spatially_constant_context(order):
    """n = 1: the softmax over one descriptor is 1; z_i = A softmax(b)ᵀ at every i (a GC block)."""
    block = randomise(DoubleAttention(6, 4, 1, reconstruct=False, residual=False, order=order))
    x = make_input(2, channels=6, grid=(4, 5))
    z, maps = block(x, return_attention=True)
    torch.testing.assert_close(z, z[:, :, :1, :1].expand_as(z))
    torch.testing.assert_close(maps["attention_vectors"], torch.ones(2, 1, 4, 5))
    # the global-context form: x_i + W_out Σ_j softmax_j(w_θᵀ x_j + b_θ) (W_φ x_j + b_φ)
    gc = randomise(DoubleAttention(6, 4, 1, order=order), seed=3)
    w, b = gc.embed.weight[:, :, 0, 0], gc.embed.bias
    weights = torch.softmax(einsum(w[4], x, "c, b c h w -> b h w").flatten(1) + b[4], dim=-1)
    context = einsum(x.flatten(2), weights, "b c s, b s -> b c")
    expected = x + (gc.out.weight[:, :, 0, 0] @ (w[:4] @ context.T + b[:4, None]) + gc.out.bias[:, None]).T[..., None, None]
    torch.testing.assert_close(gc(x), expected)
    # rho never matters: its gradient is zero
    gc(x).square().sum().backward()
    assert torch.count_nonzero(gc.embed.weight.grad[5]) == 0 and gc.embed.bias.grad[5] == 0


@pytest.mark.parametrize("order", ORDERS)
def test_theta_bias_cannot_change_the_output(order):
    """b_θ shifts a whole attention map, which a softmax over space cannot see."""
    block = randomise(DoubleAttention(6, 3, 4, order=order))
    x = make_input(2, channels=6, grid=(4, 5))
    before = block(x)
    with torch.no_grad():
        block.embed.bias[3:7].add_(torch.tensor([5.0, -3.0, 1.0, 10.0]))
    torch.testing.assert_close(block(x), before, atol=1e-5, rtol=1e-4)
    block(x).square().sum().backward()
    torch.testing.assert_close(block.embed.bias.grad[3:7], torch.zeros(4), atol=1e-5, rtol=0)
    assert torch.count_nonzero(block.embed.bias.grad[:3]) == 3       # b_φ and b_ρ do matter
    assert torch.count_nonzero(block.embed.bias.grad[7:]) == 4


# --- initialisation, parameters, batches, gradients ------------------------------------------

@pytest.mark.parametrize("spatial_dims", [1, 2, 3])
@pytest.mark.parametrize("order", ORDERS)
def test_identity_at_initialisation_and_w_out_learns_first(spatial_dims, order):
    torch.manual_seed(0)
    block = DoubleAttention(8, spatial_dims=spatial_dims, order=order)
    x = make_input(spatial_dims, channels=8)
    assert torch.equal(block(x), x)
    block(x).square().sum().backward()
    assert block.out.weight.grad.abs().sum() > 0
    assert block.embed.weight.grad.abs().sum() == 0                   # W_out = 0 blocks the path


def test_default_widths_and_initialisation():
    block = DoubleAttention(512)
    assert (block.c_m, block.c_n) == (128, 128)
    assert block.embed.weight.shape == (384, 512, 1, 1)
    assert torch.count_nonzero(block.out.weight) == 0 and torch.count_nonzero(block.out.bias) == 0
    bound = 1 / math.sqrt(512)                                          # PyTorch's default conv init
    assert block.embed.weight.abs().max() <= bound and block.embed.weight.std() > bound / 3
    assert DoubleAttention(2).c_m == 1 and DoubleAttention(2).c_n == 1
    assert not DoubleAttention(8, reconstruct=False, c_m=8).zero_init
    assert DoubleAttention(8, zero_init=False).out.weight.abs().sum() > 0
    x = make_input(2, channels=8)
    assert torch.equal(DoubleAttention(8, residual=False)(x), torch.zeros_like(x))   # the branch starts at 0
    assert DoubleAttention(8, residual=False, zero_init=False)(x).abs().sum() > 0


def test_parameter_count_closed_form():
    """2cm + 2cn + m + 2n + c: embed (m + 2n)·c + (m + 2n) biases; W_out m·c + c. All biased."""
    assert tl.count_parameters(DoubleAttention(512, 128, 128)) == 263_040
    assert tl.count_parameters(DoubleAttention(512)) == 263_040
    for c, m, n in [(8, 2, 3), (64, 16, 8), (256, 64, 64), (30, 7, 1)]:
        block = DoubleAttention(c, m, n)
        assert tl.count_parameters(block) == 2 * c * m + 2 * c * n + m + 2 * n + c
        assert sum(p.numel() for p in block.embed.parameters()) == (m + 2 * n) * (c + 1)
        assert sum(p.numel() for p in block.out.parameters()) == m * c + c
        assert block.embed.bias is not None and block.out.bias is not None
        bare = DoubleAttention(c, c, n, reconstruct=False)
        assert tl.count_parameters(bare) == c * c + 2 * c * n + c + 2 * n


@pytest.mark.parametrize("order", ORDERS)
def test_batch_independence(order):
    block = randomise(DoubleAttention(6, 3, 4, order=order))
    x = make_input(2, channels=6, batch=4, grid=(5, 4))
    together = block(x)
    for b in range(4):
        torch.testing.assert_close(together[b:b + 1], block(x[b:b + 1]))


def test_batch_independence_catches_the_implicit_softmax_dim():
    """The same check fails for a softmax without dim on (B, n, N) tensors (over the batch)."""
    block = randomise(DoubleAttention(6, 3, 4, reconstruct=False, residual=False))
    w, bias = matrix(block.embed.weight), block.embed.bias

    def batch_softmax_version(x):
        flat = x.flatten(2)
        a, b, v = (einsum(w[sl], flat, "o c, b c s -> b o s") + bias[sl, None]
                   for sl in (slice(0, 3), slice(3, 7), slice(7, 11)))
        g = torch.bmm(a, torch.softmax(b, dim=0).transpose(1, 2))      # what dim=None picks in 3-D
        return torch.bmm(g, torch.softmax(v, dim=0)).reshape(x.shape[0], 3, *x.shape[2:])

    x = make_input(2, channels=6, batch=3, grid=(4, 4))
    assert not torch.allclose(batch_softmax_version(x)[:1], batch_softmax_version(x[:1]))
    single = batch_softmax_version(x[:1])                               # batch 1: constant over space
    torch.testing.assert_close(single, single[:, :, :1, :1].expand_as(single))


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("spatial_dims", [1, 2, 3])
def test_gradcheck(order, spatial_dims):
    block = randomise(DoubleAttention(3, 2, 2, spatial_dims=spatial_dims, order=order), seed=5).double()
    grid = {1: (4,), 2: (2, 3), 3: (2, 2, 2)}[spatial_dims]
    x = make_input(spatial_dims, channels=3, batch=2, dtype=torch.float64, grid=grid).requires_grad_()
    assert torch.autograd.gradcheck(block, (x,))
    names = [name for name, _ in block.named_parameters()]
    assert torch.autograd.gradcheck(lambda *p: torch.func.functional_call(block, dict(zip(names, p)),
                                                                          (x.detach(),)),
                                    tuple(block.parameters()))


# --- memory: never an N x N tensor ------------------------------------------------------------

class ShapeRecorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.shapes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.shapes.append(tuple(t.shape))
        return out


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_no_tensor_with_two_position_axes_forward_and_backward(order, spatial_dims):
    grid = (9, 11) if spatial_dims == 2 else (3, 5, 7)
    positions = math.prod(grid)
    block = randomise(DoubleAttention(8, 4, 4, spatial_dims=spatial_dims, order=order))
    x = make_input(spatial_dims, channels=8, grid=grid).requires_grad_()
    with ShapeRecorder() as recorder:
        out, _ = block(x, return_attention=True)
        out.square().sum().backward()
    assert len(recorder.shapes) > 10
    assert max(s.count(positions) for s in recorder.shapes) == 1, "an N x N tensor was formed"
    with ShapeRecorder() as explicit:                                  # the recorder does see one
        torch.softmax(torch.randn(positions, positions), dim=-1)
    assert max(s.count(positions) for s in explicit.shapes) == 2


def test_peak_memory_far_below_one_n_by_n_matrix():
    """At 64x64 (N = 4096) one float32 N x N matrix is 64 MiB; the forward stays far below."""
    block = DoubleAttention(16, 4, 4).eval()
    x = torch.randn(1, 16, 64, 64)
    with torch.no_grad():
        block(x)
        rise = tl.peak_memory(block, x)
    if rise is None:
        pytest.skip("peak memory cannot be measured on this platform")
    assert rise < 4096 * 4096 * 4 / 8, tl.format_bytes(rise)


# --- dtypes, capture, odd sizes ---------------------------------------------------------------

@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("spatial_dims", [1, 2, 3])
def test_follows_the_device_of_its_parameters_and_input(order, spatial_dims):
    """On the meta device (shapes, no data) nothing is created on the CPU behind the input's back."""
    block = DoubleAttention(8, 4, 3, spatial_dims=spatial_dims, order=order).to("meta")
    x = torch.empty(2, 8, *GRIDS[spatial_dims], device="meta")
    out, maps = block(x, return_attention=True)
    assert out.device.type == "meta" and out.shape == x.shape
    assert all(t.device.type == "meta" for t in maps.values())


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_follows_the_input_dtype(dtype):
    block = randomise(DoubleAttention(8, 4, 4), scale=0.3)
    x = make_input(2, channels=8, grid=(6, 6))
    ref = block(x)
    out = block.to(dtype)(x.to(dtype))
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), ref, atol=0.1, rtol=0.05)


def test_capture_attention_collects_the_same_maps():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), randomise(DoubleAttention(8, 4, 2)))
    x = torch.randn(2, 3, 6, 6)
    with tl.capture_attention(net) as maps:
        out = net(x)
    _, direct = net[1](net[0](x), return_attention=True)
    assert set(maps) == {"1"} and set(maps["1"]) == {"attention_maps", "attention_vectors", "descriptors"}
    for key in direct:
        torch.testing.assert_close(maps["1"][key], direct[key])
    torch.testing.assert_close(out, net(x))
    assert not net[1].capturing


@pytest.mark.parametrize("grid", [(1, 1), (1, 7), (13, 2)])
def test_odd_sizes_and_batch_one(grid):
    block = randomise(DoubleAttention(5, 2, 3)).double()
    x = make_input(2, channels=5, batch=1, dtype=torch.float64, grid=grid)
    torch.testing.assert_close(block(x), literal_block(block, x))


# --- errors ---------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,error,match", [
    (dict(in_channels=0), ValueError, "in_channels >= 1"),
    (dict(in_channels=4.0), TypeError, "in_channels to be an integer"),
    (dict(in_channels=4, c_m=0), ValueError, "c_m >= 1"),
    (dict(in_channels=4, c_n=-2), ValueError, "c_n >= 1"),
    (dict(in_channels=4, c_n=2.5), TypeError, "c_n to be an integer"),
    (dict(in_channels=4, reconstruct="yes"), TypeError, "reconstruct to be True or False"),
    (dict(in_channels=4, residual=1), TypeError, "residual to be True or False"),
    (dict(in_channels=4, spatial_dims=4), ValueError, "spatial_dims <= 3"),
    (dict(in_channels=4, order="fast"), ValueError, "order to be one of"),
    (dict(in_channels=4, c_m=4, reconstruct=False, zero_init=True), ValueError, "there is no W_out"),
    (dict(in_channels=4, c_m=2, reconstruct=False), ValueError, "c_m == in_channels"),
])
def test_bad_hyper_parameters(kwargs, error, match):
    with pytest.raises(error, match=match):
        DoubleAttention(**kwargs)


@pytest.mark.parametrize("x,error,match", [
    ([[1.0]], TypeError, "torch.Tensor"),
    (torch.ones(1, 4, 4, 4, dtype=torch.int64), TypeError, "floating-point"),
    (torch.ones(4, 4, 4), ValueError, r"expected a 4-D input \(B, C, H, W\)"),
    (torch.ones(1, 3, 4, 4), ValueError, "built for 4 channels"),
    (torch.ones(0, 4, 4, 4), ValueError, "non-empty"),
])
def test_bad_inputs(x, error, match):
    with pytest.raises(error, match=match):
        DoubleAttention(4)(x)


def test_bad_inputs_other_dims():
    with pytest.raises(ValueError, match=r"5-D input \(B, C, T, H, W\)"):
        DoubleAttention(4, spatial_dims=3)(torch.ones(1, 4, 4, 4))
    with pytest.raises(ValueError, match=r"3-D input \(B, C, L\)"):
        DoubleAttention(4, spatial_dims=1)(torch.ones(1, 4, 4, 4))
    with pytest.raises(TypeError, match="return_attention to be True or False"):
        DoubleAttention(4)(torch.ones(1, 4, 4, 4), return_attention="maps")
    with pytest.raises(ValueError, match="order to be one of"):
        DoubleAttention(4).multiply_adds(10, "auto")


# --- the benchmark script runs ----------------------------------------------------------------

def test_benchmark_quick_mode_runs(capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_a2net.py"
    spec = importlib.util.spec_from_file_location("bench_a2net", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    threads = torch.get_num_threads()
    try:
        assert bench.main(["--quick"]) == 0
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert "6x6" in out and "10x10" in out and "no N x N tensor in forward + backward: met" in out


# --- the data set of notebook 07 ---------------------------------------------------------------

def test_beacon_lookup_is_deterministic_and_well_formed():
    d = tl.beacon_lookup(50, seed=3)
    again = tl.beacon_lookup(50, seed=3)
    assert torch.equal(d.images, again.images) and torch.equal(d.labels, again.labels)
    assert not torch.equal(d.images, tl.beacon_lookup(50, seed=4).images)
    kinds, size = 2, 8                                               # the defaults
    assert d.images.shape == (50, kinds + 2, size, size) and d.images.dtype == torch.float32
    assert d.labels.shape == (50, size, size) and d.masks.shape == (50, size, size)
    assert ((d.labels >= 0).flatten(1).sum(1) == 8).all()           # 8 probes per map
    assert (d.masks.flatten(1).sum(1) == kinds).all()                # one beacon per kind
    assert set(d.labels.unique().tolist()) == {-100, 0, 1}


def test_beacon_lookup_labels_are_the_bits_of_the_beacon_of_the_probes_kind():
    d = tl.beacon_lookup(40, kinds=3, size=7, probes=5, decoys=4, noise=0.0, seed=1)
    for i in range(len(d)):
        img, lab = d.images[i], d.labels[i]
        beacons = torch.nonzero(d.masks[i])
        bit_of_kind = {}
        for y, x in beacons.tolist():
            kind = int(img[:3, y, x].argmax())
            assert img[3, y, x] == 1.0 and img[:3, y, x].sum() == 1.0
            bit_of_kind[kind] = int(img[4, y, x] > 0)
        assert sorted(bit_of_kind) == [0, 1, 2]
        for y, x in torch.nonzero(lab >= 0).tolist():
            assert img[3, y, x] == 0.0 and img[4, y, x] == 0.0        # a probe carries no flag, no bit
            assert lab[y, x] == bit_of_kind[int(img[:3, y, x].argmax())]
        decoys = (img[:3].sum(0) == 1) & (img[3] == 0) & (lab < 0)
        assert int(decoys.sum()) == 4 and (img[4][decoys].abs() == 1).all()
    # no single position tells a probe its answer: probe pixels do not depend on the bits
    assert abs((d.labels == 1).sum().item() / (d.labels >= 0).sum().item() - 0.5) < 0.1


def test_beacon_lookup_rejects_bad_sizes():
    with pytest.raises(ValueError, match="kinds \\+ probes \\+ decoys <= size \\* size"):
        tl.beacon_lookup(5, size=3, kinds=2, probes=6, decoys=3)
    with pytest.raises(ValueError, match="noise >= 0"):
        tl.beacon_lookup(5, noise=-1.0)
    with pytest.raises(ValueError, match="beacon_lookup: n"):
        tl.beacon_lookup(0)


# --- exercises of notebook 07 ---------------------------------------------------------------

from tutorial_lib.exercises import passes  # noqa: E402


def test_exercise_07_1_masked_gather():
    def right(a, b, valid):
        scores = b.masked_fill(~valid[:, None, :], float("-inf"))
        return einsum(a, torch.softmax(scores, dim=-1), "b m s, b n s -> b m n")

    def unmasked(a, b, valid):
        return einsum(a, torch.softmax(b, dim=-1), "b m s, b n s -> b m n")

    def zeroed_not_renormalised(a, b, valid):
        weights = torch.softmax(b, dim=-1) * valid[:, None, :]
        return einsum(a, weights, "b m s, b n s -> b m n")

    def features_masked_only(a, b, valid):
        return einsum(a * valid[:, None, :], torch.softmax(b, dim=-1), "b m s, b n s -> b m n")

    assert passes("07.1", right)
    for wrong in (unmasked, zeroed_not_renormalised, features_masked_only):
        assert not passes("07.1", wrong), wrong.__name__


def test_exercise_07_2_tiling_prediction():
    assert passes("07.2", (1.0, 0.25))
    for wrong in ((0.25, 1.0), (1.0, 1.0), (4.0, 1.0), 1.0, (1.0,)):
        assert not passes("07.2", wrong)


def test_exercise_07_3_break_even():
    assert passes("07.3", lambda c, m, n: 2 * m * n // (m + n) + 1)
    assert not passes("07.3", lambda c, m, n: 2 * m * n / (m + n))                  # the bound, not the first N
    assert not passes("07.3", lambda c, m, n: 2 * m * n // (m + n))
    assert not passes("07.3", lambda c, m, n: m * n)                                # forgot the 2 and the m + n
    assert not passes("07.3", lambda c, m, n: (m + n) // 2 + 1)


def test_exercise_07_4_batch_copies_prediction():
    assert passes("07.4", 0.25)
    for wrong in (1.0, 0.5, 1 / 20):
        assert not passes("07.4", wrong)


def test_exercise_checkers_keep_their_secrets():
    from tutorial_lib.exercises import verdict

    ok, message = verdict("07.3", lambda c, m, n: 2 * m * n // (m + n))       # one short of the counted N
    assert not ok and "too low" in message and "9" not in message             # first case: c=16, m=n=8, N = 9
    ok, message = verdict("07.3", lambda c, m, n: m * n)
    assert not ok and "too high" in message and "9" not in message
    for exercise, wrong in (("07.2", (1.0, 1.0)), ("07.2", (4.0, 0.25)), ("07.4", 0.5), ("07.4", 0.05)):
        ok, message = verdict(exercise, wrong)
        assert not ok and ("too high" in message or "too low" in message)
        assert "0.25" not in message                                          # the measured value of both


# --- the full race of notebook 07 (benchmarks/a2_race.py) -------------------------------------

def _race_module():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "a2_race.py"
    spec = importlib.util.spec_from_file_location("a2_race", path)
    race = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(race)
    return race


def _notebook_networks():
    """GlobalContext and ProbeNet as notebook 07 defines them (its cell, executed here)."""
    import json
    from pathlib import Path

    from torch import nn

    nb = json.loads((Path(__file__).resolve().parents[1] / "notebooks" / "07_double_attention.ipynb").read_text())
    cells = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
    source = [s for s in cells if "class ProbeNet" in s]
    assert len(source) == 1
    namespace = {"nn": nn, "torch": torch, "rearrange": rearrange, "einsum": einsum, "tl": tl}
    exec(source[0], namespace)
    return namespace["GlobalContext"], namespace["ProbeNet"]


def test_the_race_trains_the_notebooks_networks():
    from torch import nn

    race = _race_module()
    nb_context, nb_probe = _notebook_networks()
    nb_blocks = {"A²": lambda c: tl.DoubleAttention(c, 8, 4), "global context": lambda c: nb_context(c, 11),
                 "no block": lambda c: nn.Identity()}
    images = tl.beacon_lookup(4, seed=1).images
    for arm, (block, readout) in race.ARMS.items():
        ours = race.build(arm, seed=3)
        torch.manual_seed(3)
        theirs = nb_probe(nb_blocks[block], readout)
        assert ours.state_dict().keys() == theirs.state_dict().keys(), arm
        assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), theirs.state_dict().values())), arm
        with torch.no_grad():
            for net in (ours, theirs):                       # a non-zero W_out / transform, so the block acts
                for p in net.block.parameters():
                    p.add_(0.1)
            assert torch.equal(ours(images), theirs(images)), arm


def test_the_race_quick_mode_runs(tmp_path, capsys):
    import json

    race = _race_module()
    threads = torch.get_num_threads()
    try:
        assert race.main(["--quick", "--out", str(tmp_path / "race.json")]) == 0
    finally:
        torch.set_num_threads(threads)
    result = json.loads((tmp_path / "race.json").read_text())
    assert set(result["runs"]) == set(race.ARMS) and result["epochs"] == 2
    assert all(len(r["val_curve"]) == 2 for runs in result["runs"].values() for r in runs)


def test_the_committed_race_results_are_complete():
    import json
    from pathlib import Path

    race = _race_module()
    result = json.loads((Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "a2_race.json").read_text())
    assert set(result["runs"]) == set(race.ARMS)
    assert result["epochs"] == race.EPOCHS and result["seeds"] == list(range(race.SEEDS)) and result["lr"] == race.LR
    for runs in result["runs"].values():
        assert [r["seed"] for r in runs] == result["seeds"]
        assert all(len(r["val_curve"]) == result["epochs"] for r in runs)
