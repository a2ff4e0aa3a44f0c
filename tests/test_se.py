"""SqueezeExcitation against the paper's equations (Hu, Shen, Sun, CVPR 2018).

The reference versions below are written from the equations, with Python loops or plain
torch matrix products, never with the module's own code path (which uses 1x1 convolutions
and einops).
"""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import tutorial_lib as tl
from einops import rearrange, reduce

from tutorial_lib.exercises import check, list_exercises, passes, verdict


def randomise(module: nn.Module, seed: int = 0, std: float = 0.5) -> nn.Module:
    """Give every parameter (biases included) random values, so no term can hide."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return module


def weights(se: tl.SqueezeExcitation):
    """(W1 (d, c), b1 (d,), W2 (c, d), b2 (c,)) as plain tensors; zero biases if bias=False."""
    w1 = se.fc1.weight.detach()[:, :, 0, 0]
    w2 = se.fc2.weight.detach()[:, :, 0, 0]
    b1 = se.fc1.bias.detach() if se.fc1.bias is not None else torch.zeros(w1.shape[0])
    b2 = se.fc2.bias.detach() if se.fc2.bias is not None else torch.zeros(w2.shape[0])
    return w1, b1, w2, b2


def se_loops(x: torch.Tensor, w1, b1, w2, b2):
    """The three equations with Python loops over plain floats: output and gates."""
    xs, w1, b1, w2, b2 = (t.double().tolist() for t in (x, w1, b1, w2, b2))
    B, C, H, W = x.shape
    D = len(b1)
    out = [[[[0.0] * W for _ in range(H)] for _ in range(C)] for _ in range(B)]
    gates = [[0.0] * C for _ in range(B)]
    for b in range(B):
        z = [sum(xs[b][c][i][j] for i in range(H) for j in range(W)) / (H * W) for c in range(C)]
        hidden = [max(0.0, sum(w1[d][c] * z[c] for c in range(C)) + b1[d]) for d in range(D)]
        for c in range(C):
            s = 1.0 / (1.0 + math.exp(-(sum(w2[c][d] * hidden[d] for d in range(D)) + b2[c])))
            gates[b][c] = s
            for i in range(H):
                for j in range(W):
                    out[b][c][i][j] = s * xs[b][c][i][j]
    return torch.tensor(out, dtype=torch.float64), torch.tensor(gates, dtype=torch.float64)


def se_matrix(x: torch.Tensor, w1, b1, w2, b2):
    """The same equations with plain torch matrix products (for larger inputs)."""
    z = x.mean(dim=(2, 3))
    s = torch.sigmoid(torch.relu(z @ w1.T + b1) @ w2.T + b2)
    return x * s[:, :, None, None], s


# --- against the equations ------------------------------------------------------------------

@pytest.mark.parametrize("bias", [True, False])
def test_matches_loops_from_the_equations(bias):
    se = randomise(tl.SqueezeExcitation(8, reduction=2, bias=bias), seed=1).double()
    x = torch.randn(2, 8, 3, 5, dtype=torch.float64)
    out, maps = se(x, return_attention=True)
    expected, gates = se_loops(x, *weights(se))
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(maps["channel"], gates[:, :, None, None])


def test_matches_matrix_form_on_larger_input():
    se = randomise(tl.SqueezeExcitation(64, reduction=4), seed=2, std=0.2)
    x = torch.randn(3, 64, 9, 11)
    expected, _ = se_matrix(x, *weights(se))
    torch.testing.assert_close(se(x), expected, rtol=1e-5, atol=1e-6)


def test_equals_the_official_layer_sequence_with_1x1_convolutions():
    # The official Caffe model: global average pooling, 1x1 conv, ReLU, 1x1 conv, Sigmoid, scale.
    # The module applies the same 1x1 kernels as matrices; the numbers must not change.
    se = randomise(tl.SqueezeExcitation(32, 4), seed=9)
    x = torch.randn(3, 32, 5, 7)
    z = torch.nn.functional.adaptive_avg_pool2d(x, 1)
    s = torch.sigmoid(se.fc2(torch.relu(se.fc1(z))))
    torch.testing.assert_close(se(x), x * s)
    assert se.fc1.weight.shape == (8, 32, 1, 1) and se.fc2.weight.shape == (32, 8, 1, 1)


def test_gate_of_spatially_constant_channels_by_hand():
    # If every channel is constant, the squeeze is that constant: the gate can be
    # computed by hand from the equation.
    se = randomise(tl.SqueezeExcitation(4, reduction=2), seed=3).double()
    z = torch.tensor([[0.5, -1.0, 2.0, 0.0]], dtype=torch.float64)
    x = z[:, :, None, None].expand(1, 4, 6, 7).contiguous()
    w1, b1, w2, b2 = weights(se)
    hidden = torch.clamp(w1 @ z[0] + b1, min=0)
    s = 1 / (1 + torch.exp(-(w2 @ hidden + b2)))
    _, maps = se(x, return_attention=True)
    torch.testing.assert_close(maps["channel"][0, :, 0, 0], s)


# --- closed forms and known values ----------------------------------------------------------

def test_parameter_counts_closed_form():
    assert tl.count_parameters(tl.SqueezeExcitation(256, 16)) == 8_464
    assert tl.count_parameters(tl.SqueezeExcitation(256, 16, bias=False)) == 2 * 256 * 16
    for c, r in [(64, 16), (100, 16), (7, 3), (5, 5)]:
        d = c // r
        assert tl.count_parameters(tl.SqueezeExcitation(c, r)) == 2 * c * d + d + c


def test_se_resnet50_extra_parameters():
    # One SE per bottleneck: 3, 4, 6, 3 blocks with 256, 512, 1024, 2048 output channels.
    stages = [(3, 256), (4, 512), (6, 1024), (3, 2048)]
    with_bias = sum(n * tl.count_parameters(tl.SqueezeExcitation(c)) for n, c in stages)
    without = sum(n * tl.count_parameters(tl.SqueezeExcitation(c, bias=False)) for n, c in stages)
    assert with_bias == 2_530_992
    assert without == 2_514_944 == sum(2 * n * c * c // 16 for n, c in stages)


def test_hidden_width_is_floor_division():
    assert tl.SqueezeExcitation(100, 16).hidden_channels == 6
    assert tl.SqueezeExcitation(16, 16).hidden_channels == 1


def test_all_zero_parameters_halve_the_input():
    se = tl.SqueezeExcitation(32, 8)
    with torch.no_grad():
        for p in se.parameters():
            p.zero_()
    x = torch.randn(2, 32, 4, 6)
    out, maps = se(x, return_attention=True)
    torch.testing.assert_close(out, 0.5 * x)
    torch.testing.assert_close(maps["channel"], torch.full((2, 32, 1, 1), 0.5))


# --- invariances ----------------------------------------------------------------------------

def test_gate_ignores_a_permutation_of_positions():
    se = randomise(tl.SqueezeExcitation(16, 4), seed=4)
    x = torch.randn(2, 16, 5, 6)
    perm = torch.randperm(30, generator=torch.Generator().manual_seed(0))
    shuffled = x.flatten(2)[:, :, perm].reshape(2, 16, 5, 6)
    out, maps = se(x, return_attention=True)
    out_s, maps_s = se(shuffled, return_attention=True)
    torch.testing.assert_close(maps_s["channel"], maps["channel"])
    torch.testing.assert_close(out_s, out.flatten(2)[:, :, perm].reshape(2, 16, 5, 6))


def test_samples_are_independent():
    se = randomise(tl.SqueezeExcitation(16, 4), seed=5).eval()
    x = torch.randn(4, 16, 5, 5)
    whole = se(x)
    for i in range(4):
        torch.testing.assert_close(se(x[i:i + 1]), whole[i:i + 1])
    other = x.clone()
    other[1:] = torch.randn(3, 16, 5, 5)
    torch.testing.assert_close(se(other)[0], whole[0])


# --- gradients, sizes, dtypes -----------------------------------------------------------------

def test_gradcheck_float64():
    se = randomise(tl.SqueezeExcitation(6, 3), seed=6).double()
    x = torch.randn(2, 6, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: se(t), (x,))
    params = tuple(se.parameters())
    assert torch.autograd.gradcheck(lambda *p: torch.func.functional_call(
        se, dict(zip([n for n, _ in se.named_parameters()], p)), (x.detach(),)), params)


@pytest.mark.parametrize("shape", [(1, 8, 1, 1), (1, 8, 3, 7), (5, 8, 7, 2), (2, 8, 1, 9)])
def test_odd_sizes(shape):
    se = randomise(tl.SqueezeExcitation(8, 4), seed=7)
    x = torch.randn(*shape)
    out, maps = se(x, return_attention=True)
    expected, gates = se_matrix(x, *weights(se))
    assert out.shape == x.shape and maps["channel"].shape == (shape[0], 8, 1, 1)
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_follows_the_input_dtype(dtype):
    se = randomise(tl.SqueezeExcitation(8, 2), seed=8).to(dtype)
    x = torch.randn(2, 8, 4, 4).to(dtype)
    out, maps = se(x, return_attention=True)
    assert out.dtype == dtype and maps["channel"].dtype == dtype
    expected, _ = se_matrix(x.double(), *(w.double() for w in weights(se)))
    tol = 2e-2 if dtype == torch.bfloat16 else 1e-7
    torch.testing.assert_close(out.double(), expected, rtol=tol, atol=tol)


def test_capture_attention_inside_a_network():
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), tl.SqueezeExcitation(8, 2), nn.ReLU())
    x = torch.randn(2, 3, 5, 5)
    with tl.capture_attention(net) as maps:
        out = net(x)
    assert list(maps) == ["1"]
    _, direct = net[1](net[0](x), return_attention=True)
    torch.testing.assert_close(maps["1"]["channel"], direct["channel"])
    torch.testing.assert_close(out, net(x))
    assert not net[1].capturing


# --- errors -----------------------------------------------------------------------------------

def test_bad_hyper_parameters():
    with pytest.raises(ValueError, match=r"SqueezeExcitation: expected reduction <= channels \(8\)"):
        tl.SqueezeExcitation(8, reduction=16)
    with pytest.raises(ValueError, match="SqueezeExcitation: expected reduction >= 1, but got 0"):
        tl.SqueezeExcitation(8, reduction=0)
    with pytest.raises(ValueError, match="SqueezeExcitation: expected channels >= 1"):
        tl.SqueezeExcitation(0)
    with pytest.raises(TypeError, match="SqueezeExcitation: expected channels to be an integer"):
        tl.SqueezeExcitation(8.0)
    with pytest.raises(TypeError, match="SqueezeExcitation: expected bias to be True or False"):
        tl.SqueezeExcitation(8, 2, bias=1)


def test_bad_inputs():
    se = tl.SqueezeExcitation(8, 2)
    with pytest.raises(ValueError, match=r"SqueezeExcitation: expected a 4-D input \(B, C, H, W\), "
                                         r"but got a 3-D tensor"):
        se(torch.randn(8, 4, 4))
    with pytest.raises(ValueError, match="SqueezeExcitation: was built for 8 channels, but got an "
                                         "input with 6 channels"):
        se(torch.randn(1, 6, 4, 4))
    with pytest.raises(TypeError, match="SqueezeExcitation: expected a floating-point input"):
        se(torch.ones(1, 8, 4, 4, dtype=torch.int64))
    with pytest.raises(TypeError, match="SqueezeExcitation: expected the input to be a torch.Tensor"):
        se([[1.0]])
    with pytest.raises(ValueError, match="SqueezeExcitation: expected a non-empty input"):
        se(torch.randn(1, 8, 0, 4))


# --- exercises of notebook 01 ------------------------------------------------------------------

def se_video(x, w1, b1, w2, b2):
    z = reduce(x, "b c t h w -> b c", "mean")
    s = torch.sigmoid(torch.relu(z @ w1.T + b1) @ w2.T + b2)
    return x * rearrange(s, "b c -> b c 1 1 1")


def se_video_per_frame(x, w1, b1, w2, b2):      # a gate per frame: not what 01.2 asks
    z = reduce(x, "b c t h w -> b t c", "mean")
    s = torch.sigmoid(torch.relu(z @ w1.T + b1) @ w2.T + b2)
    return x * rearrange(s, "b t c -> b c t 1 1")


def se_forward_buggy(u, fc1, fc2):              # the code given in the notebook: squeeze over the batch too
    z = reduce(u, "b c h w -> c", "mean")
    s = torch.sigmoid(fc2(torch.relu(fc1(z))))
    return u * rearrange(s, "c -> 1 c 1 1")


def se_forward(u, fc1, fc2):
    z = reduce(u, "b c h w -> b c", "mean")
    s = torch.sigmoid(fc2(torch.relu(fc1(z))))
    return u * rearrange(s, "b c -> b c 1 1")


def test_exercise_01_1_prediction_is_compared_with_the_measured_factor():
    assert passes("01.1", 64 * 64)
    assert passes("01.1", 4096.0)
    for wrong in (64, 1, 4096 * 16, 2.0, "4096", True, (4096,)):
        assert not passes("01.1", wrong), wrong


def test_exercise_01_2_se_for_video():
    assert passes("01.2", se_video)
    assert not passes("01.2", se_video_per_frame)
    assert not passes("01.2", lambda x, w1, b1, w2, b2: se_video(x * x.shape[2], w1, b1, w2, b2) / x.shape[2])
    assert not passes("01.2", lambda x, w1, b1, w2, b2: x * rearrange(
        torch.sigmoid(torch.relu(reduce(x, "b c t h w -> b c", "sum") @ w1.T + b1) @ w2.T + b2), "b c -> b c 1 1 1"))
    assert not passes("01.2", lambda x, w1, b1, w2, b2: x * rearrange(
        torch.sigmoid(torch.relu(reduce(x, "b c t h w -> b c", "mean") @ w1.T) @ w2.T), "b c -> b c 1 1 1"))


def test_exercise_01_3_finds_the_batch_squeeze_bug():
    assert passes("01.3", se_forward)
    ok, line = verdict("01.3", se_forward_buggy)
    assert not ok and "other images share its batch" in line and "->" not in line
    assert not passes("01.3", lambda u, fc1, fc2: u * rearrange(
        torch.sigmoid(fc2(torch.relu(fc1(reduce(u, "b c h w -> b c", "sum"))))), "b c -> b c 1 1"))
    assert not passes("01.3", lambda u, fc1, fc2: u * rearrange(
        torch.softmax(fc2(torch.relu(fc1(reduce(u, "b c h w -> b c", "mean")))), dim=-1), "b c -> b c 1 1"))


def test_exercise_01_4_counts_paper_width_and_timm():
    paper, timm = 89_080, 90_112             # 2 x (580 + 2,184 + 8,464 + 33,312); hidden 8 instead of 4 at C = 64
    assert passes("01.4", (paper, timm))
    assert passes("01.4", [paper, timm])
    for wrong in ((paper, paper), (timm, timm), (paper - 1, timm), (2 * 2 * 64 * 4, timm),
                  (float(paper), timm), (paper,), paper):
        assert not passes("01.4", wrong), wrong
    ok, line = verdict("01.4", (paper + 10, timm))
    assert not ok and "too high" in line and str(paper) not in line and f"{paper:,}" not in line


def test_exercise_01_4_reference_widths_follow_timm_make_divisible():
    from tutorial_lib.exercises.nb01 import _timm_hidden
    # timm/layers/helpers.py make_divisible(C / 16, 8, round_limit=0.): nearest multiple of 8, at least 8
    assert [_timm_hidden(c) for c in (64, 96, 128, 160, 256, 512, 1024, 2048)] == [8, 8, 8, 8, 16, 32, 64, 128]


def test_exercise_hints_and_messages_hold_no_solution():
    for ex in list_exercises("01."):
        assert "->" not in ex.hint and "dim=" not in ex.hint and "reduce(" not in ex.hint, ex.id
    ok, line = verdict("01.2", se_video_per_frame)
    assert not ok and "wrong values" in line and "->" not in line


def test_check_prints_the_verdict_and_the_hint(capsys):
    check("01.3", se_forward_buggy)
    out = capsys.readouterr().out
    assert out.startswith("✗ [01.3]") and "Hint: run one image alone" in out
    check("01.3", se_forward)
    assert capsys.readouterr().out.startswith("✓ [01.3]")


# --- the benchmark script runs ------------------------------------------------------------------

def test_benchmark_quick_mode_runs(capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_se.py"
    spec = importlib.util.spec_from_file_location("bench_se", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    threads = torch.get_num_threads()
    try:
        assert bench.main(["--quick", "--repeats", "1"]) == 0
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert "ratio" in out and "4 x 16 x 4 x 4" in out
