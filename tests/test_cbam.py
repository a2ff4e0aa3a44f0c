"""ChannelAttention, SpatialAttention and CBAM against the equations of Woo et al. (ECCV 2018)
and the behaviour of the official code (Jongchan/attention-module).

The references below are written from the equations with plain torch operations: the
7x7 convolution as a sum of shifted, weighted copies of the zero-padded maps, the
BatchNorm as its formula. They share no code with the modules.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import tutorial_lib as tl
from tutorial_lib.exercises import check, passes, verdict


def randomise(module: nn.Module, seed: int = 0, std: float = 0.5) -> nn.Module:
    """Random values for every parameter and for the BatchNorm's running statistics."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
        for name, buf in module.named_buffers():
            if name.endswith("running_mean"):
                buf.copy_(torch.randn(buf.shape, generator=g))
            elif name.endswith("running_var"):
                buf.copy_(torch.rand(buf.shape, generator=g) + 0.5)
    return module


def mlp_weights(ca: tl.ChannelAttention):
    first, last = ca.mlp[0], ca.mlp[2]
    zeros = (torch.zeros(first.out_features), torch.zeros(last.out_features))
    b0 = first.bias.detach() if first.bias is not None else zeros[0]
    b1 = last.bias.detach() if last.bias is not None else zeros[1]
    return first.weight.detach(), b0, last.weight.detach(), b1


def channel_reference(x, w0, b0, w1, b1):
    """M_c = sigmoid(MLP(avg) + MLP(max)), MLP(v) = W1 relu(W0 v + b0) + b1."""
    def mlp(v):
        return torch.relu(v @ w0.T + b0) @ w1.T + b1
    m = torch.sigmoid(mlp(x.mean(dim=(2, 3))) + mlp(x.amax(dim=(2, 3))))
    return x * m[:, :, None, None], m[:, :, None, None]


def conv_same(maps, weight, bias=None):
    """(B, 2, H, W) maps, (1, 2, k, k) weight -> (B, H, W): a sum of shifted copies."""
    b, n, h, w = maps.shape
    k = weight.shape[-1]
    p = k // 2
    padded = maps.new_zeros(b, n, h + 2 * p, w + 2 * p)
    padded[:, :, p:p + h, p:p + w] = maps
    out = maps.new_zeros(b, h, w) + (0.0 if bias is None else bias[0])
    for c in range(n):
        for dy in range(k):
            for dx in range(k):
                out = out + weight[0, c, dy, dx] * padded[:, c, dy:dy + h, dx:dx + w]
    return out


def spatial_reference(x, sa: tl.SpatialAttention, order="max_mean"):
    """M_s = sigmoid(BN(conv([max_c; mean_c]))) with BN in the module's current mode."""
    mx, mean = x.amax(dim=1), x.mean(dim=1)
    maps = torch.stack([mx, mean] if order == "max_mean" else [mean, mx], dim=1)
    bias = sa.conv.bias.detach() if sa.conv.bias is not None else None
    y = conv_same(maps, sa.conv.weight.detach(), bias)
    if isinstance(sa.bn, nn.BatchNorm2d):
        bn = sa.bn
        if bn.training:
            mu, var = y.mean(), y.var(unbiased=False)
        else:
            mu, var = bn.running_mean[0], bn.running_var[0]
        y = (y - mu) / torch.sqrt(var + bn.eps) * bn.weight.detach()[0] + bn.bias.detach()[0]
    m = torch.sigmoid(y)[:, None]
    return x * m, m


def cbam_reference(x, cbam: tl.CBAM):
    refined, mc = channel_reference(x, *mlp_weights(cbam.channel_gate))
    out, ms = spatial_reference(refined, cbam.spatial_gate, cbam.spatial_gate.pool_order)
    return out, mc, ms


# --- against the equations ------------------------------------------------------------------

@pytest.mark.parametrize("bias", [True, False])
def test_channel_attention_matches_the_equation(bias):
    ca = randomise(tl.ChannelAttention(12, reduction=4, bias=bias), seed=1)
    x = torch.randn(3, 12, 5, 7)
    out, maps = ca(x, return_attention=True)
    expected, m = channel_reference(x, *mlp_weights(ca))
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(maps["channel"], m)


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("order", ["max_mean", "mean_max"])
def test_spatial_attention_matches_the_equation(training, order):
    sa = randomise(tl.SpatialAttention(7, pool_order=order), seed=2).train(training)
    x = torch.randn(3, 5, 9, 8)
    expected, m = spatial_reference(x, sa, order)
    out, maps = sa(x, return_attention=True)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(maps["spatial"], m, rtol=1e-5, atol=1e-5)


def test_spatial_attention_paper_form_has_bias_and_no_batch_norm():
    sa = randomise(tl.SpatialAttention(5, batch_norm=False), seed=3)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in sa.modules())
    assert sa.conv.bias is not None
    x = torch.randn(2, 4, 6, 6)
    expected, _ = spatial_reference(x, sa)
    torch.testing.assert_close(sa(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kwargs", [{}, {"spatial_bn": False, "pool_order": "mean_max"},
                                    {"mlp_bias": False, "kernel_size": 3}])
def test_cbam_matches_channel_then_spatial(kwargs):
    cbam = randomise(tl.CBAM(16, reduction=4, **kwargs), seed=4).eval()
    x = torch.randn(2, 16, 7, 6)
    out, maps = cbam(x, return_attention=True)
    expected, mc, ms = cbam_reference(x, cbam)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(maps["channel"], mc)
    torch.testing.assert_close(maps["spatial"], ms, rtol=1e-5, atol=1e-5)


def test_pool_order_only_permutes_the_conv_weights():
    a = randomise(tl.SpatialAttention(7), seed=5).eval()
    b = tl.SpatialAttention(7, pool_order="mean_max").eval()
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 6, 8, 8)
    assert not torch.allclose(a(x), b(x))
    with torch.no_grad():
        b.conv.weight.copy_(a.conv.weight.flip(1))
    torch.testing.assert_close(b(x), a(x))


# --- closed forms, initialisation, known values ---------------------------------------------

def test_parameter_counts_closed_form():
    assert tl.count_parameters(tl.CBAM(256, 16, 7)) == 8_564
    assert tl.count_parameters(tl.CBAM(256, 16, 7, spatial_bn=False)) == 8_464 + 2 * 49 + 1
    for c, r, k in [(64, 16, 7), (100, 16, 3), (9, 2, 5)]:
        d = c // r
        assert tl.count_parameters(tl.CBAM(c, r, k)) == 2 * c * d + d + c + 2 * k * k + 2
        assert tl.count_parameters(tl.ChannelAttention(c, r)) == 2 * c * d + d + c
        assert tl.count_parameters(tl.SpatialAttention(k)) == 2 * k * k + 2


def test_official_initialisation():
    cbam = tl.CBAM(32, 8)
    assert torch.count_nonzero(cbam.channel_gate.mlp[0].bias) == 0
    assert torch.count_nonzero(cbam.channel_gate.mlp[2].bias) == 0
    bn = cbam.spatial_gate.bn
    assert isinstance(bn, nn.BatchNorm2d) and bn.momentum == 0.01 and bn.eps == 1e-5
    assert torch.count_nonzero(bn.weight) == 0 and torch.count_nonzero(bn.bias) == 0
    # the spatial gate starts at exactly 0.5: CBAM(F) = 0.5 * ChannelGate(F), in both modes
    x = torch.randn(3, 32, 6, 5)
    for training in (True, False):
        cbam.train(training)
        out, maps = cbam(x, return_attention=True)
        torch.testing.assert_close(maps["spatial"], torch.full((3, 1, 6, 5), 0.5))
        torch.testing.assert_close(out, 0.5 * cbam.channel_gate(x))


def test_spatial_conv_is_kaiming_normal_fan_out():
    # fan_out of a (1, 2, 7, 7) weight is 1 * 7 * 7 = 49: std sqrt(2 / 49) = 0.202
    # (fan_in would give sqrt(2 / 98) = 0.143; PyTorch's default uniform init about 0.058).
    torch.manual_seed(0)
    w = torch.cat([tl.SpatialAttention(7).conv.weight.flatten() for _ in range(300)])
    assert abs(w.std().item() / (2 / 49) ** 0.5 - 1) < 0.03
    assert abs(w.mean().item()) < 0.01


def test_all_zero_parameters_quarter_the_input_in_eval_mode():
    cbam = tl.CBAM(32, 8).eval()
    with torch.no_grad():
        for p in cbam.parameters():
            p.zero_()
    x = torch.randn(2, 32, 5, 7)
    torch.testing.assert_close(cbam(x), 0.25 * x)


def test_batch_norm_running_statistics_use_momentum_0_01():
    sa = randomise(tl.SpatialAttention(3), seed=6)
    with torch.no_grad():
        sa.bn.running_mean.zero_()
        sa.bn.running_var.fill_(1.0)
    x = torch.randn(4, 3, 5, 5)
    y = conv_same(torch.stack([x.amax(dim=1), x.mean(dim=1)], dim=1), sa.conv.weight.detach())
    sa.train()(x)
    torch.testing.assert_close(sa.bn.running_mean, 0.01 * y.mean().reshape(1))
    torch.testing.assert_close(sa.bn.running_var, 0.99 + 0.01 * y.var(unbiased=True).reshape(1))


# --- invariances and independence -----------------------------------------------------------

def test_channel_gate_ignores_a_permutation_of_positions():
    ca = randomise(tl.ChannelAttention(8, 2), seed=7)
    x = torch.randn(2, 8, 4, 5)
    perm = torch.randperm(20, generator=torch.Generator().manual_seed(1))
    shuffled = x.flatten(2)[:, :, perm].reshape(2, 8, 4, 5)
    _, a = ca(x, return_attention=True)
    _, b = ca(shuffled, return_attention=True)
    torch.testing.assert_close(a["channel"], b["channel"])


def test_spatial_gate_ignores_a_permutation_of_channels():
    sa = randomise(tl.SpatialAttention(7), seed=8).eval()
    x = torch.randn(2, 10, 6, 6)
    perm = torch.randperm(10, generator=torch.Generator().manual_seed(2))
    out, a = sa(x, return_attention=True)
    out_p, b = sa(x[:, perm], return_attention=True)
    torch.testing.assert_close(a["spatial"], b["spatial"])
    torch.testing.assert_close(out_p, out[:, perm])


def test_samples_are_independent_in_eval_mode():
    cbam = randomise(tl.CBAM(16, 4), seed=9).eval()
    x = torch.randn(4, 16, 6, 6)
    whole = cbam(x)
    for i in range(4):
        torch.testing.assert_close(cbam(x[i:i + 1]), whole[i:i + 1])
    # in training mode the BatchNorm of the spatial gate uses batch statistics (documented)
    cbam.train()
    assert not torch.allclose(cbam(x[:1]), cbam(x)[:1])


# --- gradients, sizes, dtypes, capture ------------------------------------------------------

@pytest.mark.parametrize("training", [False, True])
def test_gradcheck_float64(training):
    cbam = randomise(tl.CBAM(4, 2, kernel_size=3), seed=10).double().train(training)
    x = torch.randn(2, 4, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: cbam(t), (x,))


@pytest.mark.parametrize("shape", [(1, 8, 1, 1), (1, 8, 3, 7), (5, 8, 7, 2), (2, 8, 1, 9)])
def test_odd_sizes(shape):
    cbam = randomise(tl.CBAM(8, 4), seed=11).eval()
    x = torch.randn(*shape)
    out, maps = cbam(x, return_attention=True)
    expected, mc, ms = cbam_reference(x, cbam)
    assert maps["channel"].shape == (shape[0], 8, 1, 1)
    assert maps["spatial"].shape == (shape[0], 1, shape[2], shape[3])
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_follows_the_input_dtype(dtype):
    cbam = randomise(tl.CBAM(8, 2), seed=12).eval()
    x = torch.randn(2, 8, 5, 5)
    expected = cbam(x).double()
    out = cbam.to(dtype)(x.to(dtype))
    assert out.dtype == dtype
    tol = 5e-2 if dtype == torch.bfloat16 else 1e-6
    torch.testing.assert_close(out.double(), expected, rtol=tol, atol=tol)


def test_capture_attention_inside_a_network():
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), tl.CBAM(8, 2), nn.ReLU()).eval()
    x = torch.randn(2, 3, 6, 6)
    with tl.capture_attention(net) as maps:
        net(x)
    assert sorted(maps) == ["1", "1.channel_gate", "1.spatial_gate"]
    _, direct = net[1](net[0](x), return_attention=True)
    torch.testing.assert_close(maps["1"]["spatial"], direct["spatial"])
    torch.testing.assert_close(maps["1.spatial_gate"]["spatial"], direct["spatial"])
    torch.testing.assert_close(maps["1"]["channel"], direct["channel"])


# --- the fast backward pass against the literal path -----------------------------------------

VARIANTS = [{}, {"spatial_bn": False, "pool_order": "mean_max"}, {"mlp_bias": False, "kernel_size": 3}]


def twins(seed: int, **kwargs):
    """The same randomised CBAM twice: fast backward (default) and the literal autograd path."""
    fast = randomise(tl.CBAM(16, reduction=4, **kwargs), seed=seed)
    literal = tl.CBAM(16, reduction=4, fast_backward=False, **kwargs)
    literal.load_state_dict(fast.state_dict())
    return fast, literal


def run_with_grad(module, x, g, use_maps=False):
    xg = x.clone().requires_grad_()
    module.zero_grad(set_to_none=True)
    out, maps = module(xg, return_attention=True)
    loss = (out * g).sum()
    if use_maps:
        loss = loss + maps["channel"].square().sum() + (maps["spatial"] * g[:, :1]).sum()
    loss.backward()
    return out.detach(), maps, xg.grad, {n: p.grad for n, p in module.named_parameters()}


@pytest.mark.parametrize("kwargs", VARIANTS)
@pytest.mark.parametrize("training", [True, False])
def test_fast_path_values_are_identical_to_the_literal_path(kwargs, training):
    fast, literal = twins(20, **kwargs)
    x = torch.randn(3, 16, 7, 6)
    for grad_enabled in (True, False):
        fast.train(training), literal.train(training)
        with torch.set_grad_enabled(grad_enabled):
            a, ma = fast(x.clone().requires_grad_(grad_enabled), return_attention=True)
            b, mb = literal(x.clone().requires_grad_(grad_enabled), return_attention=True)
        assert torch.equal(a, b), "values must be identical, not merely close"
        assert torch.equal(ma["channel"], mb["channel"]) and torch.equal(ma["spatial"], mb["spatial"])
    if training:  # both updated the BatchNorm's running statistics the same way
        for name, buf in fast.named_buffers():
            torch.testing.assert_close(buf, dict(literal.named_buffers())[name])


@pytest.mark.parametrize("kwargs", VARIANTS)
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("use_maps", [False, True])
def test_fast_backward_equals_autograd_on_tie_free_inputs(kwargs, training, use_maps):
    fast, literal = twins(21, **kwargs)
    fast.train(training), literal.train(training)
    x, g = torch.randn(3, 16, 7, 6), torch.randn(3, 16, 7, 6)  # continuous values: no ties
    a = run_with_grad(fast, x, g, use_maps)
    b = run_with_grad(literal, x, g, use_maps)
    torch.testing.assert_close(a[2], b[2], rtol=1e-4, atol=1e-6)
    assert a[3].keys() == b[3].keys()
    for name in a[3]:
        torch.testing.assert_close(a[3][name], b[3][name], rtol=1e-4, atol=1e-6, msg=name)


def test_fast_backward_in_float64_matches_autograd_tightly():
    fast, literal = twins(22)
    fast.double(), literal.double()
    x, g = torch.randn(2, 16, 5, 5, dtype=torch.float64), torch.randn(2, 16, 5, 5, dtype=torch.float64)
    a, b = run_with_grad(fast, x, g), run_with_grad(literal, x, g)
    torch.testing.assert_close(a[2], b[2], rtol=1e-12, atol=1e-12)
    for name in a[3]:
        torch.testing.assert_close(a[3][name], b[3][name], rtol=1e-12, atol=1e-12)


def test_a_tied_maximum_sends_its_gradient_to_the_first_position():
    # two positions of channel 0 hold the same maximum, and two channels tie at pixel (1, 1)
    x = torch.randn(1, 4, 3, 3, dtype=torch.float64) * 0.1
    x[0, 0, 0, 1] = x[0, 0, 2, 2] = 5.0
    x[0, 1, 1, 1] = x[0, 3, 1, 1] = 7.0
    gates = {}
    for fast in (True, False):
        for name, module in (("channel", tl.ChannelAttention(4, 2, fast_backward=fast)),
                             ("spatial", tl.SpatialAttention(3, batch_norm=False, fast_backward=fast))):
            randomise(module, seed=23).double()
            xg = x.clone().requires_grad_()
            module(xg).sum().backward()
            gates[name, fast] = xg.grad[0]
    d = gates["channel", True] - gates["channel", False]
    # literal path: half of the max's gradient to each tied position; fast path: all to the first
    assert d[0, 0, 1] != 0 and torch.isclose(d[0, 0, 1], -d[0, 2, 2])
    d[0, 0, 1] = d[0, 2, 2] = 0
    torch.testing.assert_close(d, torch.zeros_like(d), atol=1e-12, rtol=0)
    d = gates["spatial", True] - gates["spatial", False]
    assert d[1, 1, 1] != 0 and torch.isclose(d[1, 1, 1], -d[3, 1, 1])  # channel 1 comes first
    d[1, 1, 1] = d[3, 1, 1] = 0
    torch.testing.assert_close(d, torch.zeros_like(d), atol=1e-12, rtol=0)


def test_fast_path_with_frozen_parts_and_inputs_without_gradient():
    fast, literal = twins(24)
    for m in (fast, literal):
        m.spatial_gate.requires_grad_(False)
    x, g = torch.randn(2, 16, 5, 4), torch.randn(2, 16, 5, 4)
    for m in (fast, literal):  # the input needs no gradient, the channel MLP does
        m.zero_grad(set_to_none=True)
        (m(x) * g).sum().backward()
    for (name, p), q in zip(fast.named_parameters(), literal.parameters()):
        if name.startswith("spatial_gate"):
            assert p.grad is None and q.grad is None
        else:
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6)


def test_fast_path_can_back_propagate_twice_and_refuses_double_backward():
    fast, literal = twins(25)
    x = torch.randn(2, 16, 4, 4, requires_grad=True)
    out = fast(x).square().sum()
    (first,) = torch.autograd.grad(out, x, retain_graph=True)
    (second,) = torch.autograd.grad(out, x)
    torch.testing.assert_close(first, second)
    with pytest.raises(RuntimeError):
        (g,) = torch.autograd.grad(fast(x).square().sum(), x, create_graph=True)
        g.sum().backward()
    # the literal path supports second derivatives
    small = tl.CBAM(4, 2, kernel_size=3, fast_backward=False).double()
    randomise(small, seed=26)
    t = torch.randn(2, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda v: small(v), (t,))


def test_fast_path_on_channels_last_input():
    fast, literal = twins(27)
    x = torch.randn(2, 16, 5, 6).to(memory_format=torch.channels_last)
    g = torch.randn(2, 16, 5, 6)
    a, b = run_with_grad(fast, x, g), run_with_grad(literal, x, g)
    assert torch.equal(a[0], b[0])
    torch.testing.assert_close(a[2], b[2], rtol=1e-4, atol=1e-6)
    for name in a[3]:
        torch.testing.assert_close(a[3][name], b[3][name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("part", ["channel", "spatial", "cbam"])
def test_fast_backward_when_only_a_map_receives_gradient(part, training):
    # the loss reads the returned map alone: the gate's output gets no gradient (None inside backward)
    make = {"channel": lambda **kw: tl.ChannelAttention(16, 4, **kw),
            "spatial": lambda **kw: tl.SpatialAttention(5, **kw),
            "cbam": lambda **kw: tl.CBAM(16, 4, kernel_size=5, **kw)}[part]
    fast = randomise(make(), seed=29).double().train(training)
    literal = make(fast_backward=False).double().train(training)
    literal.load_state_dict(fast.state_dict())
    x = torch.randn(3, 16, 5, 4, dtype=torch.float64)
    found = []
    for module in (fast, literal):
        xg = x.clone().requires_grad_()
        _, maps = module(xg, return_attention=True)
        key = "channel" if part == "channel" else "spatial"
        maps[key].pow(3).sum().backward()
        found.append([xg.grad] + [p.grad for p in module.parameters()])
    for a, b in zip(*found):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_gradients_follow_the_input_dtype(dtype):
    cbam = randomise(tl.CBAM(8, 2), seed=30).to(dtype)
    x = torch.randn(2, 8, 5, 5, dtype=dtype, requires_grad=True)
    cbam(x).square().sum().backward()
    assert x.grad.dtype == dtype
    assert all(p.grad.dtype == dtype for p in cbam.parameters())


def test_inplace_only_without_gradients():
    sa = randomise(tl.SpatialAttention(3), seed=28).eval()
    x = torch.randn(2, 4, 5, 5)
    expected = sa(x)
    y = x.clone()
    with torch.no_grad():
        out = sa(y, inplace=True)
    assert out.data_ptr() == y.data_ptr() and torch.equal(out, expected)
    z = x.clone().requires_grad_()
    out = sa(z, inplace=True)  # recording gradients: the input is left alone
    assert out.data_ptr() != z.data_ptr() and torch.equal(z.detach(), x)


def test_benchmark_script_runs_quick(capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_se_cbam.py"
    spec = importlib.util.spec_from_file_location("bench_se_cbam", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--quick", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "CBAM (r = 16, k = 7)" in out and "SqueezeExcitation" in out and "vs official" in out


# --- errors -----------------------------------------------------------------------------------

def test_bad_hyper_parameters():
    with pytest.raises(ValueError, match=r"CBAM: expected reduction <= channels \(8\)"):
        tl.CBAM(8, reduction=16)
    with pytest.raises(ValueError, match=r"ChannelAttention: expected reduction <= channels \(4\)"):
        tl.ChannelAttention(4)
    with pytest.raises(ValueError, match="CBAM: expected an odd kernel_size .* but got 6"):
        tl.CBAM(32, kernel_size=6)
    with pytest.raises(ValueError, match="SpatialAttention: expected an odd kernel_size .* but got 4"):
        tl.SpatialAttention(4)
    with pytest.raises(ValueError, match="SpatialAttention: expected kernel_size >= 1"):
        tl.SpatialAttention(0)
    with pytest.raises(ValueError, match="CBAM: expected pool_order to be one of 'max_mean', "
                                         "'mean_max', but got 'avg_max'"):
        tl.CBAM(32, pool_order="avg_max")
    with pytest.raises(TypeError, match="CBAM: expected spatial_bn to be True or False"):
        tl.CBAM(32, spatial_bn="yes")
    with pytest.raises(TypeError, match="CBAM: expected channels to be an integer"):
        tl.CBAM(32.0)


def test_bad_inputs():
    cbam = tl.CBAM(16, 4)
    with pytest.raises(ValueError, match=r"CBAM: expected a 4-D input \(B, C, H, W\), but got a 2-D"):
        cbam(torch.randn(2, 16))
    with pytest.raises(ValueError, match="CBAM: was built for 16 channels, but got an input with 8"):
        cbam(torch.randn(2, 8, 4, 4))
    with pytest.raises(TypeError, match="CBAM: expected a floating-point input"):
        cbam(torch.zeros(2, 16, 4, 4, dtype=torch.uint8))
    with pytest.raises(ValueError, match="ChannelAttention: was built for 16 channels"):
        tl.ChannelAttention(16, 4)(torch.randn(1, 15, 3, 3))
    with pytest.raises(ValueError, match=r"SpatialAttention: expected a 4-D input \(B, C, H, W\), "
                                         r"but got a 5-D"):
        tl.SpatialAttention()(torch.randn(1, 2, 3, 4, 5))
    with pytest.raises(ValueError, match="CBAM: expected a non-empty input"):
        cbam(torch.randn(0, 16, 4, 4))


# --- exercises of notebook 02 ------------------------------------------------------------------

def lse_gate_solution(x, mlp):
    flat = x.flatten(2)
    top = flat.amax(dim=2, keepdim=True)
    lse = (top + (flat - top).exp().sum(dim=2, keepdim=True).log())[:, :, 0]
    return torch.sigmoid(mlp(flat.mean(dim=2)) + mlp(lse))


def test_exercise_02_1_lse_channel_gate():
    assert passes("02.1", lse_gate_solution)
    assert passes("02.1", lambda x, mlp: torch.sigmoid(mlp(x.mean(dim=(2, 3)))
                                                      + mlp(torch.logsumexp(x.flatten(2), dim=2))))
    naive = lambda x, mlp: torch.sigmoid(mlp(x.mean(dim=(2, 3))) + mlp(x.exp().sum(dim=(2, 3)).log()))  # noqa: E731
    ok, line = verdict("02.1", naive)
    assert not ok and "not finite" in line          # overflows for activations around 100
    wrongs = [
        lambda x, mlp: torch.sigmoid(mlp(x.mean(dim=(2, 3))) + mlp(x.amax(dim=(2, 3)))),          # CBAM's max
        lambda x, mlp: torch.sigmoid(mlp(x.mean(dim=(2, 3))) + mlp(torch.logsumexp(x, dim=1).flatten(1)[:, :x.shape[1]])),
        lambda x, mlp: (torch.sigmoid(mlp(x.mean(dim=(2, 3))))
                        + torch.sigmoid(mlp(torch.logsumexp(x.flatten(2), dim=2)))) / 2,         # two sigmoids
        lambda x, mlp: torch.sigmoid(mlp(x.mean(dim=(2, 3)) + torch.logsumexp(x.flatten(2), dim=2))),
    ]
    for wrong in wrongs:
        assert not passes("02.1", wrong)


def test_exercise_02_2_find_the_bug():
    from tutorial_lib.exercises.nb02 import spatial_gate_buggy

    def fixed(x, conv_weight):
        pooled = torch.stack([x.amax(dim=1), x.mean(dim=1)], dim=1)
        return x * torch.sigmoid(F.conv2d(pooled, conv_weight, padding=conv_weight.shape[-1] // 2))

    assert passes("02.2", fixed)
    x, w = torch.randn(1, 4, 6, 5), torch.randn(1, 2, 5, 5)
    torch.testing.assert_close(spatial_gate_buggy(x, w), fixed(x, w))   # right on one image ...
    ok, line = verdict("02.2", spatial_gate_buggy)                      # ... wrong on a batch
    assert not ok and ("wrong values" in line or "raised" in line)
    assert not passes("02.2", lambda x, w: x * torch.sigmoid(F.conv2d(
        torch.stack([x.mean(dim=1), x.amax(dim=1)], dim=1), w, padding=2)))     # [mean, max]
    assert not passes("02.2", lambda x, w: torch.sigmoid(F.conv2d(
        torch.stack([x.amax(dim=1), x.mean(dim=1)], dim=1), w, padding=2)))     # the gate, not the output


def test_exercise_02_3_prediction():
    assert passes("02.3", 64 * 0.9 / (64 * 0.9 + 960 * 0.5))
    for wrong in (0.9, 1 / 16, 0.9 / (0.9 + 0.5), 0.9 / 16):
        ok, line = verdict("02.3", wrong)
        assert not ok and "too " in line and "0.107" not in line
    assert not passes("02.3", "0.107")


def test_exercise_02_4_window_formula():
    assert passes("02.4", lambda k: 18 + 4 * (k - 1))
    for wrong in (lambda k: k, lambda k: 13 + (k - 1), lambda k: 4 * k, lambda k: 18 + 4.0 * (k - 1),
                  lambda k: 10 + 4 * (k - 1)):
        ok, line = verdict("02.4", wrong)
        assert not ok and "Hint:" in line
        assert "18 + 4" not in line


def test_exercise_messages_and_hints_hold_no_solution():
    from tutorial_lib.exercises import list_exercises

    for ex in list_exercises("02."):
        assert "logsumexp" not in ex.hint and "dim=" not in ex.hint and "->" not in ex.hint
    for answer, ex_id in ((lambda x, mlp: torch.sigmoid(mlp(x.mean(dim=(2, 3)))), "02.1"),
                          (lambda k: k, "02.4")):
        _, line = verdict(ex_id, answer)
        assert "amax" not in line and "logsumexp" not in line and "4 * (k" not in line


@pytest.mark.parametrize("exercise_id", ["02.1", "02.2", "02.3", "02.4"])
def test_exercise_placeholders_are_not_done(exercise_id, capsys):
    check(exercise_id, ...)
    assert capsys.readouterr().out.startswith(f"… [{exercise_id}]")
