"""CSRA and MultiHeadCSRA against the equations of Zhu & Wu (ICCV 2021) and the official code
(Kevinz-code/CSRA, pipeline/csra.py); the multi-label data set of notebook 05; mean average
precision.

The references are written from the paper's equations with plain Python loops over positions
and classes: the class-specific feature f^i = g + λ a^i is built explicitly and projected on
m_i / ‖m_i‖ (the modules never build f^i). They share no code with the modules.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

import tutorial_lib as tl
from tutorial_lib.csra import TEMPERATURE_SETTINGS
from tutorial_lib.exercises import passes, verdict
from tutorial_lib.metrics import average_precision

ROOT = Path(__file__).resolve().parents[1]
INF = float("inf")


def randomised(module, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module


def literal_head(x, m, temperature, lam):
    """One head, from the paper: logits (B, K) = m_iᵀ (g + λ a^i) / ‖m_i‖, with loops."""
    b_size, d, h, w = x.shape
    k_size = m.shape[0]
    out = torch.zeros(b_size, k_size, dtype=x.dtype)
    for b in range(b_size):
        feats = [x[b, :, i, j] for i in range(h) for j in range(w)]  # positions in raster order
        g = sum(feats) / len(feats)
        for i in range(k_size):
            norm = math.sqrt(sum(float(v) ** 2 for v in m[i]))
            scores = [float(f @ m[i]) / norm for f in feats]
            if math.isinf(temperature):
                best = max(range(len(feats)), key=lambda p: scores[p])
                a = feats[best]
            else:
                top = max(scores)
                e = [math.exp(temperature * (s - top)) for s in scores]
                a = sum(ei / sum(e) * f for ei, f in zip(e, feats))
            f_i = g + lam * a
            out[b, i] = float(f_i @ m[i]) / norm
    return out


def literal_maps(x, m, temperature):
    """Attention weights (B, K, H, W) and normalised scores (B, K, H, W), with loops."""
    b_size, d, h, w = x.shape
    att = torch.zeros(b_size, m.shape[0], h, w, dtype=x.dtype)
    score = torch.zeros_like(att)
    for b in range(b_size):
        for i in range(m.shape[0]):
            norm = m[i].norm()
            for p in range(h):
                for q in range(w):
                    score[b, i, p, q] = x[b, :, p, q] @ m[i] / norm
            if math.isinf(temperature):
                flat = score[b, i].flatten()
                att[b, i].view(-1)[int(flat.argmax())] = 1.0
            else:
                e = torch.exp(temperature * (score[b, i] - score[b, i].max()))
                att[b, i] = e / e.sum()
    return att, score


def snippet(x, fc_weight, lam):
    """The paper's Figure-1 four lines (also External-Attention-pytorch ResidualAttention)."""
    y_raw = F.conv2d(x, fc_weight).flatten(2)
    return torch.mean(y_raw, dim=2) + lam * torch.max(y_raw, dim=2)[0]


def x64(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# --- against the equations ------------------------------------------------------------------

@pytest.mark.parametrize("temperature", [0.0, 0.5, 1.0, 3.0, INF, 99])
@pytest.mark.parametrize("lam", [0.1, 0.5])
def test_csra_matches_the_literal_equations(temperature, lam):
    csra = randomised(tl.CSRA(6, 4, temperature=temperature, lam=lam).double(), seed=1)
    x = x64(2, 6, 3, 4, seed=2)
    expected = literal_head(x, csra.head.weight[:, :, 0, 0].detach(), csra.temperature, lam)
    torch.testing.assert_close(csra(x), expected)


@pytest.mark.parametrize("num_heads", sorted(TEMPERATURE_SETTINGS))
def test_multi_head_is_the_sum_of_heads_with_the_official_temperatures(num_heads):
    official = {1: [1], 2: [1, 99], 4: [1, 2, 4, 99], 6: [1, 2, 3, 4, 5, 99], 8: [1, 2, 3, 4, 5, 6, 7, 99]}
    mha = randomised(tl.MultiHeadCSRA(5, 3, num_heads=num_heads, lam=0.4).double(), seed=3)
    assert mha.temperatures == tuple(INF if t == 99 else float(t) for t in official[num_heads])
    x = x64(2, 5, 3, 3, seed=4)
    expected = sum(literal_head(x, mha.head_weight(h).detach(), t, 0.4) for h, t in enumerate(mha.temperatures))
    torch.testing.assert_close(mha(x), expected)


@pytest.mark.parametrize("temperatures", [[1], [1, INF], [1, 2, 4, 99], [INF, 3.0, INF, 0.5], [99], [0.0, 2.0]])
def test_fused_and_official_order_of_work_agree_in_values_and_gradients(temperatures):
    n = len(temperatures)
    fused = randomised(tl.MultiHeadCSRA(7, 4, n, lam=0.3, temperatures=temperatures).double(), seed=5)
    literal = tl.MultiHeadCSRA(7, 4, n, lam=0.3, temperatures=temperatures, fused=False).double()
    literal.load_state_dict(fused.state_dict())
    x = x64(3, 7, 4, 5, seed=6).requires_grad_()
    y1, y2 = fused(x), literal(x)
    torch.testing.assert_close(y1, y2)
    g = x64(*y1.shape, seed=7)
    torch.testing.assert_close(torch.autograd.grad(y1, (x, fused.weight), g),
                               torch.autograd.grad(y2, (x, literal.weight), g))
    _, m1 = fused(x, return_attention=True)
    _, m2 = literal(x, return_attention=True)
    for key in ("attention", "score"):
        torch.testing.assert_close(m1[key], m2[key])


def test_matrix_product_and_convolution_paths_agree(monkeypatch):
    import tutorial_lib.csra as csra_module

    mha = randomised(tl.MultiHeadCSRA(6, 3, 4).double(), seed=29)
    x = x64(2, 6, 3, 5, seed=30).requires_grad_()
    results = []
    for threshold in (0, 10 ** 9):  # always the convolution, always the matrix product
        monkeypatch.setattr(csra_module, "MATMUL_BELOW_CHANNELS", threshold)
        y = mha(x)
        results.append((y, *torch.autograd.grad(y.sum(), (x, mha.weight))))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b)


def test_one_head_multi_head_equals_csra():
    csra = randomised(tl.CSRA(6, 3, temperature=2.0, lam=0.2).double(), seed=8)
    mha = tl.MultiHeadCSRA(6, 3, 1, lam=0.2, temperatures=[2.0]).double()
    with torch.no_grad():
        mha.weight.copy_(csra.head.weight)
    x = x64(2, 6, 4, 4, seed=9)
    torch.testing.assert_close(mha(x), csra(x))


@pytest.mark.parametrize("temperature", [1.0, 4.0, INF])
def test_maps_are_the_class_specific_softmax_and_the_normalised_scores(temperature):
    csra = randomised(tl.CSRA(5, 3, temperature=temperature).double(), seed=10)
    x = x64(2, 5, 3, 4, seed=11)
    _, maps = csra(x, return_attention=True)
    att, score = literal_maps(x, csra.head.weight[:, :, 0, 0].detach(), csra.temperature)
    torch.testing.assert_close(maps["attention"], att)
    torch.testing.assert_close(maps["score"], score)
    torch.testing.assert_close(maps["attention"].sum(dim=(2, 3)), torch.ones(2, 3, dtype=torch.float64))
    mha = tl.MultiHeadCSRA(5, 3, 2).double()
    _, maps = mha(x, return_attention=True)
    assert maps["attention"].shape == (2, 2, 3, 3, 4) and maps["score"].shape == (2, 2, 3, 3, 4)


def test_capture_attention_collects_the_same_maps():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), tl.CSRA(8, 4), )
    x = torch.randn(2, 3, 5, 5)
    with tl.capture_attention(net) as maps:
        logits = net(x)
    direct_logits, direct = net[1](net[0](x), return_attention=True)
    torch.testing.assert_close(logits, direct_logits)
    assert set(maps) == {"1"} and maps["1"]["attention"].shape == (2, 4, 5, 5)
    torch.testing.assert_close(maps["1"]["attention"], direct["attention"])
    mha = tl.MultiHeadCSRA(8, 4, 4)
    with tl.capture_attention(mha) as maps:
        mha(torch.randn(2, 8, 3, 3))
    assert maps[""]["attention"].shape == (2, 4, 4, 3, 3)


def test_official_state_dicts_load():
    mha = tl.MultiHeadCSRA(6, 3, 4, lam=0.5).double()
    g = torch.Generator().manual_seed(12)
    official = {f"classifier.multi_head.{h}.head.weight": torch.randn(3, 6, 1, 1, generator=g, dtype=torch.float64)
                for h in range(4)}
    mha.load_official_state_dict(official)
    x = x64(2, 6, 3, 3, seed=13)
    expected = sum(literal_head(x, official[f"classifier.multi_head.{h}.head.weight"][:, :, 0, 0], t, 0.5)
                   for h, t in enumerate((1, 2, 4, INF)))
    torch.testing.assert_close(mha(x), expected)
    csra = tl.CSRA(6, 3).double()
    csra.load_state_dict({"head.weight": official["classifier.multi_head.0.head.weight"]})  # the official key
    torch.testing.assert_close(csra(x), literal_head(x, official["classifier.multi_head.0.head.weight"][:, :, 0, 0],
                                                      1.0, 0.1))
    with pytest.raises(ValueError, match=r"weights of 4 heads .* holds heads \[0, 1, 2\]"):
        mha.load_official_state_dict({k: v for k, v in official.items() if not k.endswith("3.head.weight")})
    with pytest.raises(ValueError, match=r"weights of 2 heads .* holds heads \[0, 1, 2, 3\]"):
        tl.MultiHeadCSRA(6, 3, 2).load_official_state_dict(official)  # a 4-head checkpoint is not cut to 2
    with pytest.raises(ValueError, match="shape"):
        tl.MultiHeadCSRA(6, 2, 4).load_official_state_dict(official)


# --- oracle facts ---------------------------------------------------------------------------

def test_temperature_zero_and_to_zero_give_one_plus_lambda_times_the_mean():
    x = x64(3, 6, 4, 4, seed=14)
    for t in (0.0, 1e-9):
        csra = randomised(tl.CSRA(6, 5, temperature=t, lam=0.3).double(), seed=15)
        unit = csra.head.weight / csra.head.weight.norm(dim=1, keepdim=True)
        mean_score = F.conv2d(x, unit).mean(dim=(2, 3))
        torch.testing.assert_close(csra(x), 1.3 * mean_score)


def test_infinite_temperature_is_max_pooling_and_large_finite_t_approaches_it():
    x = x64(3, 6, 4, 5, seed=16)
    ref = randomised(tl.CSRA(6, 5, temperature=INF, lam=0.2).double(), seed=17)
    unit = ref.head.weight / ref.head.weight.norm(dim=1, keepdim=True)
    score = F.conv2d(x, unit).flatten(2)
    expected = score.mean(dim=2) + 0.2 * score.amax(dim=2)
    torch.testing.assert_close(ref(x), expected)
    for t in (99, 1e4):
        other = tl.CSRA(6, 5, temperature=t, lam=0.2).double()
        other.load_state_dict(ref.state_dict())
        torch.testing.assert_close(other(x), expected, rtol=1e-6, atol=1e-6)
    assert tl.CSRA(6, 5, temperature=99).temperature == INF
    assert tl.CSRA(6, 5, temperature=98).temperature == 98.0  # only 99 is the official sentinel


def test_attention_logit_is_non_decreasing_in_t_and_between_mean_and_max():
    x = x64(4, 8, 5, 5, seed=18) * 2
    base = randomised(tl.CSRA(8, 6, temperature=1.0, lam=1.0).double(), seed=19)
    unit = base.head.weight / base.head.weight.norm(dim=1, keepdim=True)
    score = F.conv2d(x, unit).flatten(2)
    mean, mx = score.mean(dim=2), score.amax(dim=2)
    previous = None
    for t in (0.0, 0.1, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 100.0, INF):
        csra = tl.CSRA(8, 6, temperature=t, lam=1.0).double()
        csra.load_state_dict(base.state_dict())
        att = csra(x) - mean  # λ = 1: logit = mean + attention logit
        assert bool((att >= mean - 1e-12).all()) and bool((att <= mx + 1e-12).all()), t
        if previous is not None:
            assert bool((att >= previous - 1e-12).all()), t
        previous = att
    assert bool((previous - mean > 1e-3).any())  # not trivially flat


def test_lambda_zero_is_a_unit_norm_linear_classifier_on_the_mean_feature():
    x = x64(3, 7, 4, 6, seed=20)
    for t in (1.0, INF):
        csra = randomised(tl.CSRA(7, 5, temperature=t, lam=0.0).double(), seed=21)
        m = csra.head.weight[:, :, 0, 0]
        torch.testing.assert_close(csra(x), F.linear(x.mean(dim=(2, 3)), m / m.norm(dim=1, keepdim=True)))


def test_the_four_line_snippet_is_the_weight_norm_times_csra_at_infinite_temperature():
    x = x64(3, 6, 4, 4, seed=22)
    csra = randomised(tl.CSRA(6, 5, temperature=INF, lam=0.2).double(), seed=23)
    w = csra.head.weight.detach()
    norms = w.flatten(1).norm(dim=1)
    torch.testing.assert_close(snippet(x, w, 0.2), norms * csra(x))
    assert not torch.allclose(snippet(x, w, 0.2), csra(x))  # without the norms they differ


def test_scores_scale_with_the_features_but_not_with_the_classifier():
    x = x64(2, 6, 3, 3, seed=24)
    csra = randomised(tl.CSRA(6, 4).double(), seed=25)
    y = csra(x)
    with torch.no_grad():
        csra.head.weight.mul_(torch.tensor([3.0, 0.5, 7.0, 1.0], dtype=torch.float64).view(4, 1, 1, 1))
    torch.testing.assert_close(csra(x), y)  # the classifier is normalised per class
    tl_inf = randomised(tl.CSRA(6, 4, temperature=INF).double(), seed=26)
    torch.testing.assert_close(tl_inf(2 * x), 2 * tl_inf(x))  # the features are not (T = inf: degree 1)


def test_parameter_counts():
    assert tl.count_parameters(tl.MultiHeadCSRA(2048, 80, num_heads=4)) == 655_360
    assert tl.count_parameters(tl.CSRA(2048, 20)) == 40_960
    assert tl.count_parameters(tl.MultiHeadCSRA(2048, 20)) == 40_960
    for d, k, h in [(16, 3, 2), (512, 14, 6), (9, 1, 8)]:
        assert tl.count_parameters(tl.MultiHeadCSRA(d, k, h)) == h * k * d
    csra = tl.CSRA(32, 4)
    assert csra.head.bias is None


def test_default_initialisation_is_pytorchs_conv_default():
    torch.manual_seed(0)
    w = tl.MultiHeadCSRA(256, 40, 4).weight.detach()
    bound = 1 / math.sqrt(256)
    assert float(w.abs().max()) <= bound
    assert abs(float(w.std()) / (bound / math.sqrt(3)) - 1) < 0.02  # uniform(-b, b) has std b/√3


# --- independence, gradients, devices ---------------------------------------------------------

@pytest.mark.parametrize("module", [tl.CSRA(6, 4), tl.CSRA(6, 4, temperature=INF), tl.MultiHeadCSRA(6, 4, 4)],
                         ids=["T1", "Tinf", "H4"])
def test_batch_independence(module):
    x = torch.randn(5, 6, 3, 4)
    together = module(x)
    alone = torch.cat([module(x[i:i + 1]) for i in range(5)])
    torch.testing.assert_close(together, alone)


@pytest.mark.parametrize("build", [lambda: tl.CSRA(4, 3), lambda: tl.CSRA(4, 3, temperature=INF),
                                   lambda: tl.MultiHeadCSRA(4, 3, 4, lam=0.5),
                                   lambda: tl.MultiHeadCSRA(4, 3, 2, fused=False)], ids=["T1", "Tinf", "H4", "literal"])
def test_gradcheck(build):
    module = randomised(build().double(), seed=27)
    x = x64(2, 4, 3, 3, seed=28).requires_grad_()
    assert torch.autograd.gradcheck(module, (x,))
    params = dict(module.named_parameters())
    assert torch.autograd.gradcheck(lambda *p: torch.func.functional_call(module, dict(zip(params, p)), (x,)),
                                    tuple(params.values()))


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_follows_the_input_dtype(dtype):
    for module in (tl.CSRA(6, 3), tl.MultiHeadCSRA(6, 3, 4)):
        module = module.to(dtype)
        y, maps = module(torch.randn(2, 6, 3, 3, dtype=dtype), return_attention=True)
        assert y.dtype == dtype and maps["attention"].dtype == dtype


def test_any_spatial_size_and_batch_one():
    for hw in [(1, 1), (1, 7), (6, 2)]:
        y, maps = tl.MultiHeadCSRA(5, 2, 4)(torch.randn(1, 5, *hw), return_attention=True)
        assert y.shape == (1, 2) and maps["attention"].shape == (1, 4, 2, *hw)


def test_training_step_reaches_every_head():
    mha = tl.MultiHeadCSRA(6, 3, 4)
    F.binary_cross_entropy_with_logits(mha(torch.randn(4, 6, 3, 3)), torch.ones(4, 3)).backward()
    for h in range(4):
        assert mha.weight.grad[h * 3:(h + 1) * 3].abs().sum() > 0


# --- errors ---------------------------------------------------------------------------------

@pytest.mark.parametrize("build,error,match", [
    (lambda: tl.MultiHeadCSRA(8, 4, num_heads=3), ValueError, r"official settings 1, 2, 4, 6, 8"),
    (lambda: tl.MultiHeadCSRA(8, 4, num_heads=0), ValueError, "num_heads >= 1"),
    (lambda: tl.MultiHeadCSRA(8, 4, num_heads=2, temperatures=[1.0]), ValueError, "one temperature per head"),
    (lambda: tl.MultiHeadCSRA(8, 4, num_heads=1, temperatures="1"), TypeError, "list of numbers"),
    (lambda: tl.MultiHeadCSRA(8, 4, num_heads=2, temperatures=[1.0, -2.0]), ValueError, r"temperatures\[1\] >= 0"),
    (lambda: tl.MultiHeadCSRA(8, 4, fused="yes"), TypeError, "fused to be True or False"),
    (lambda: tl.CSRA(8, 4, temperature=-1.0), ValueError, "temperature >= 0"),
    (lambda: tl.CSRA(8, 4, temperature=float("nan")), ValueError, "temperature to be a number"),
    (lambda: tl.CSRA(8, 4, temperature="inf"), TypeError, "temperature to be a number"),
    (lambda: tl.CSRA(8, 4, lam=-0.1), ValueError, "lam >= 0"),
    (lambda: tl.CSRA(8, 4, lam=INF), ValueError, "finite lam"),
    (lambda: tl.CSRA(0, 4), ValueError, "in_channels >= 1"),
    (lambda: tl.CSRA(8, 4.0), TypeError, "num_classes to be an integer"),
])
def test_bad_hyper_parameters(build, error, match):
    with pytest.raises(error, match=match):
        build()


def test_explicit_temperatures_allow_other_head_counts():
    mha = tl.MultiHeadCSRA(8, 4, num_heads=3, temperatures=[1, 3, INF])
    assert mha.temperatures == (1.0, 3.0, INF) and mha(torch.randn(2, 8, 3, 3)).shape == (2, 4)


@pytest.mark.parametrize("x,error,match", [
    ([[1.0]], TypeError, "torch.Tensor"),
    (torch.ones(2, 8, 3, 3, dtype=torch.int64), TypeError, "floating-point"),
    (torch.ones(2, 8, 9), ValueError, r"expected a 4-D input \(B, d, H, W\)"),
    (torch.ones(2, 7, 3, 3), ValueError, "built for 8 channels"),
    (torch.ones(0, 8, 3, 3), ValueError, "non-empty"),
])
@pytest.mark.parametrize("cls", ["CSRA", "MultiHeadCSRA"])
def test_bad_inputs(cls, x, error, match):
    with pytest.raises(error, match=f"{cls}: .*{match}"):
        getattr(tl, cls)(8, 4)(x)


def test_return_attention_must_be_a_bool():
    with pytest.raises(TypeError, match="return_attention to be True or False"):
        tl.CSRA(8, 4)(torch.ones(1, 8, 2, 2), return_attention="maps")


# --- the multi-label data set of notebook 05 ------------------------------------------------

def test_multilabel_set_targets_masks_and_placement():
    data = tl.objects_on_clutter_multilabel(300, seed=3)
    assert data.images.shape == (300, 3, 32, 32) and data.images.dtype == torch.float32
    assert float(data.images.min()) >= 0.0 and float(data.images.max()) <= 1.0
    assert data.targets.shape == (300, 4) and data.masks.shape == (300, 4, 32, 32)
    counts = data.targets.sum(dim=1)
    assert set(counts.tolist()) == {1.0, 2.0, 3.0}
    area = data.masks.flatten(2).sum(dim=2)
    torch.testing.assert_close(area, (data.targets * 64).long())          # one 8x8 tile per present class
    assert int(data.masks.sum(dim=1).max()) == 1                          # tiles never overlap
    assert data.class_names == tuple(tl.data.GLYPHS)
    again = tl.objects_on_clutter_multilabel(300, seed=3)
    assert torch.equal(again.images, data.images) and torch.equal(again.masks, data.masks)
    other = tl.objects_on_clutter_multilabel(300, seed=4)
    assert not torch.equal(other.images, data.images)


def test_multilabel_set_shows_the_glyph_of_each_label_on_its_tile():
    data = tl.objects_on_clutter_multilabel(40, seed=5, noise=0.0)
    for i in range(40):
        for c in torch.nonzero(data.targets[i]).flatten().tolist():
            ys, xs = torch.nonzero(data.masks[i, c], as_tuple=True)
            tile = data.images[i, :, int(ys.min()):int(ys.max()) + 1, int(xs.min()):int(xs.max()) + 1]
            inner = tile[:, 1:-1, 1:-1]
            background = tile[:, 0, 0]
            ink = (inner - background[:, None, None]).abs().sum(dim=0) > 1e-6
            assert torch.equal(ink, torch.from_numpy(tl.data.GLYPHS[data.class_names[c]]))


def test_single_label_variant_and_its_view():
    data = tl.objects_on_clutter_multilabel(100, objects=1, seed=6)
    assert bool((data.targets.sum(dim=1) == 1).all())
    single = data.as_single_label()
    assert isinstance(single, tl.LabelledImages)
    assert torch.equal(single.labels, data.targets.argmax(dim=1)) and single.labels.dtype == torch.int64
    assert single.masks.shape == (100, 32, 32) and bool((single.masks.flatten(1).sum(1) == 64).all())
    with pytest.raises(ValueError, match="exactly one object per image"):
        tl.objects_on_clutter_multilabel(20, seed=0).as_single_label()
    train, val = data.split(80)
    assert len(train) == 80 and len(val) == 20 and val.masks.shape == (20, 4, 32, 32)
    image, target = data[3]
    assert image.shape == (3, 32, 32) and target.shape == (4,)


@pytest.mark.parametrize("kwargs,match", [
    (dict(n=0), "n: expected an integer >= 1"),
    (dict(objects=(0, 2)), "objects"),
    (dict(objects=(2, 5)), "objects"),
    (dict(objects=(3, 2)), "objects"),
    (dict(objects="two"), "objects"),
    (dict(noise=-1.0), "noise >= 0"),
    (dict(size=16, objects=(1, 4)), "do not fit"),
])
def test_multilabel_set_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tl.objects_on_clutter_multilabel(**{"n": 10, **kwargs})


def test_multilabel_set_trains_with_fit_and_mean_average_precision(capsys):
    data = tl.objects_on_clutter_multilabel(64, seed=7)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=4, padding=1), torch.nn.ReLU(), tl.CSRA(8, 4))
    history = tl.fit(net, data, val=data, epochs=1, batch_size=32, seed=0, progress=False,
                     loss=F.binary_cross_entropy_with_logits, metric=tl.mean_average_precision, metric_name="mAP")
    assert "val mAP" in capsys.readouterr().out and 0.0 <= history.final_val <= 1.0


# --- mean average precision -----------------------------------------------------------------

def literal_average_precision(scores, targets):
    """Per class: the mean over positives of (positives scoring >= it) / (images scoring >= it)."""
    n, k = scores.shape
    out = []
    for c in range(k):
        precisions = []
        for i in range(n):
            if targets[i, c] == 1:
                at_least = [j for j in range(n) if scores[j, c] >= scores[i, c]]
                hits = sum(1 for j in at_least if targets[j, c] == 1)
                precisions.append(hits / len(at_least))
        out.append(sum(precisions) / len(precisions) if precisions else float("nan"))
    return torch.tensor(out, dtype=torch.float64)


def ranked_average_precision(scores, targets):
    """Per class, no ties: walk down the ranking and average the precision at every positive."""
    out = []
    for c in range(scores.shape[1]):
        order = sorted(range(scores.shape[0]), key=lambda i: -float(scores[i, c]))
        hits, total = 0, 0.0
        for rank, i in enumerate(order, start=1):
            if targets[i, c] == 1:
                hits += 1
                total += hits / rank
        out.append(total / hits)
    return torch.tensor(out, dtype=torch.float64)


def test_average_precision_against_literal_computations():
    g = torch.Generator().manual_seed(30)
    scores = torch.randn(60, 5, generator=g)
    targets = (torch.rand(60, 5, generator=g) < 0.3).float()
    targets[0] = 1.0  # every class has a positive
    torch.testing.assert_close(average_precision(scores, targets), ranked_average_precision(scores, targets))
    torch.testing.assert_close(average_precision(scores, targets), literal_average_precision(scores, targets))
    tied = torch.randint(0, 4, (50, 3), generator=g).float()  # many ties
    t2 = (torch.rand(50, 3, generator=g) < 0.4).float()
    t2[0] = 1.0
    torch.testing.assert_close(average_precision(tied, t2), literal_average_precision(tied, t2))
    assert tl.mean_average_precision(tied, t2) == pytest.approx(literal_average_precision(tied, t2).mean().item())


def test_average_precision_hand_made_cases():
    t = torch.tensor([[1.0], [0.0], [1.0], [0.0]])
    assert tl.mean_average_precision(torch.tensor([[4.0], [3.0], [2.0], [1.0]]), t) == pytest.approx((1 + 2 / 3) / 2)
    assert tl.mean_average_precision(torch.tensor([[4.0], [1.0], [3.0], [2.0]]), t) == 1.0
    assert tl.mean_average_precision(torch.tensor([[1.0], [4.0], [2.0], [3.0]]), t) == pytest.approx((1 / 3 + 2 / 4) / 2)
    # all scores tied: every positive gets the precision of the whole list, the prevalence
    assert tl.mean_average_precision(torch.zeros(4, 1), t) == pytest.approx(0.5)
    # ties are order-free: permuting the images changes nothing
    s = torch.tensor([[2.0], [2.0], [1.0], [2.0]])
    perm = torch.tensor([3, 1, 0, 2])
    assert tl.mean_average_precision(s, t) == tl.mean_average_precision(s[perm], t[perm])
    assert tl.mean_average_precision(s, t) == pytest.approx((1 / 3 + 2 / 4) / 2)  # block {0, 1, 3}, then all
    # 1-D input is one class; bool targets work
    assert tl.mean_average_precision(torch.tensor([4.0, 3.0, 2.0, 1.0]), torch.tensor([True, False, True, False])) \
        == pytest.approx((1 + 2 / 3) / 2)


def test_classes_without_positives_are_left_out():
    scores = torch.tensor([[0.9, 0.1, 0.3], [0.2, 0.8, 0.4], [0.4, 0.3, 0.9]])
    targets = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 0]])
    ap = average_precision(scores, targets)
    assert math.isnan(ap[2].item()) and ap[0].item() == 1.0 and ap[1].item() == 1.0
    assert tl.mean_average_precision(scores, targets) == 1.0
    with pytest.raises(ValueError, match="at least one class with a positive"):
        tl.mean_average_precision(scores, torch.zeros(3, 3))


@pytest.mark.parametrize("scores,targets,error,match", [
    ([[1.0]], torch.ones(1, 1), TypeError, "torch.Tensor"),
    (torch.ones(3, 2), torch.ones(3, 3), ValueError, "same shape"),
    (torch.ones(3, 2), torch.full((3, 2), 2.0), ValueError, "0 and 1"),
    (torch.tensor([[float("nan")], [1.0]]), torch.ones(2, 1), ValueError, "finite"),
    (torch.ones(0, 2), torch.ones(0, 2), ValueError, "at least one image"),
])
def test_mean_average_precision_bad_inputs(scores, targets, error, match):
    with pytest.raises(error, match=match):
        tl.mean_average_precision(scores, targets)


# --- the benchmark script --------------------------------------------------------------------

def test_benchmark_quick_mode_runs():
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_csra.py"), "--quick"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "ratio = fused / loop" in result.stdout


def _race_module():
    import importlib.util
    spec = importlib.util.spec_from_file_location("csra_race", ROOT / "benchmarks" / "csra_race.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_race_quick_mode_runs(tmp_path):
    out = tmp_path / "race.json"
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "csra_race.py"), "--quick", "--out", str(out)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    race = json.loads(out.read_text())
    assert race["seeds"] == [0, 1] and race["budget"]["epochs"] == 3
    assert all(len(c) == 3 for task in race["curves"].values() for curves in task.values() for c in curves)


def test_race_trains_as_tl_fit_does():
    race = _race_module()
    g = torch.Generator().manual_seed(0)
    feats, targets = torch.rand(120, 32, 8, 8, generator=g), (torch.rand(120, 4, generator=g) > 0.5).float()
    for arm in ("GAP + linear", "CSRA 4 heads, T 1,2,4,inf"):
        _, curve = race.train_head(race.ARMS[arm], feats, targets, 80, 3, 2)
        torch.manual_seed(3)
        history = tl.fit(race.ARMS[arm](), TensorDataset(feats[:80], targets[:80]),
                         val=TensorDataset(feats[80:], targets[80:]), epochs=2, lr=race.LR, batch_size=race.BATCH,
                         seed=3, progress=False, verbose=False, loss=F.binary_cross_entropy_with_logits,
                         metric=tl.mean_average_precision)
        assert curve == pytest.approx(history.val_metric, abs=1e-6), arm


def test_committed_race_results_hold_every_arm_seed_and_epoch():
    race = json.loads((ROOT / "benchmarks" / "results" / "csra_race.json").read_text())
    arms = list(_race_module().ARMS)
    assert set(race["recipe"]) >= {"data", "pretrain", "backbone", "heads", "training", "seed"}
    assert race["torch"] and race["budget"]["threads"] == 1 and len(race["seeds"]) == 5
    epochs = race["budget"]["epochs"]
    for task in ("multi", "single"):
        assert list(race["curves"][task]) == arms
        for curves in race["curves"][task].values():
            assert len(curves) == 5 and all(len(c) == epochs and all(0 < v <= 1 for v in c) for c in curves)
        assert all(len(v) == 5 for v in race["training_free"][task].values())
        assert all(len(c) == 5 for c in race["earlier_task"]["curves"][task].values())


# --- exercises of notebook 05 ---------------------------------------------------------------

def _four_head_logit(side=8, cells=4, score=3.0, lam=0.5, temperatures=(1, 2, 4, INF), base_per_head=True):
    n = side * side
    base = cells * score / n
    att = [score if math.isinf(t) else score * cells * math.exp(t * score) / (cells * math.exp(t * score) + n - cells)
           for t in temperatures]
    return (len(temperatures) if base_per_head else 1) * base + lam * sum(att)


def test_exercise_05_1_prediction():
    assert passes("05.1", _four_head_logit())
    assert passes("05.1", round(_four_head_logit(), 2))
    assert not passes("05.1", _four_head_logit() / 4)                      # heads averaged, not summed
    assert not passes("05.1", _four_head_logit(base_per_head=False))        # the base counted once
    assert not passes("05.1", _four_head_logit(temperatures=(INF,) * 4))    # every head at max pooling
    assert not passes("05.1", _four_head_logit(temperatures=(1,)))          # one head
    ok, line = verdict("05.1", ...)
    assert not ok and "not done yet" in line
    ok, line = verdict("05.1", _four_head_logit() / 4)
    assert not ok and "too low" in line and f"{_four_head_logit():.3g}" not in line


def _masked(x, valid, m, temperature, lam, mean_over="valid", padded_score=None, max_over="valid"):
    s = torch.einsum("bdp,kd->bkp", x.flatten(2), m / m.norm(dim=1, keepdim=True))
    keep = valid.flatten(1)[:, None, :]
    base = (s * keep).sum(-1) / keep.sum(-1) if mean_over == "valid" else s.mean(-1)
    if padded_score is not None:                                   # padding given a score instead of no weight
        s = torch.where(keep, s, torch.full_like(s, padded_score))
        hidden = s
    else:
        hidden = s.masked_fill(~keep, -INF)
    if math.isinf(temperature):
        att = (hidden if max_over == "valid" else s.masked_fill(~keep, 0.0)).amax(-1)
    else:
        att = (s * torch.softmax(temperature * hidden, dim=-1)).sum(-1)
    return base + lam * att


def test_exercise_05_2_masked():
    assert passes("05.2", _masked)
    assert not passes("05.2", lambda *a: _masked(*a, mean_over="all"))       # padding dilutes the mean
    assert not passes("05.2", lambda *a: _masked(*a, padded_score=0.0))       # a zero score is not zero weight
    assert not passes("05.2", lambda *a: _masked(*a, max_over="all"))         # the max sees the padding
    assert not passes("05.2", lambda x, v, m, t, lam: _masked(x, torch.ones_like(v), m, t, lam))  # mask ignored
    ok, line = verdict("05.2", lambda *a: _masked(*a, max_over="all"))
    assert not ok and "T=inf" in line and "negative" in line


def _port(x, weight, temperature, lam, norm_dim=1, features=False):
    positions = x.flatten(2).transpose(1, 2)                        # (b, p, d)
    if features:
        positions = positions / positions.norm(dim=2, keepdim=True)
        w = weight
    else:
        w = weight / weight.norm(dim=norm_dim, keepdim=True) if norm_dim is not None else weight
    s = positions @ w.T                                             # (b, p, k)
    att = (s * torch.softmax(temperature * s, dim=1)).sum(dim=1)
    return s.mean(dim=1) + lam * att


def test_exercise_05_3_find_the_bug():
    assert passes("05.3", _port)
    assert not passes("05.3", lambda *a: _port(*a, norm_dim=0))               # the bug: norm over the classes
    assert not passes("05.3", lambda *a: _port(*a, norm_dim=None))            # the normalisation removed
    assert not passes("05.3", lambda *a: _port(*a, features=True))            # the features normalised instead


def test_exercise_05_4_temperature_formula():
    def right(n, peak, share):
        return math.log(share * (n - 1) / (1 - share)) / peak

    assert passes("05.4", right)
    assert not passes("05.4", lambda n, peak, share: math.log(share * n / (1 - share)) / peak)   # the peak not among n
    assert not passes("05.4", lambda n, peak, share: math.log(n - 1) / peak)                     # the share ignored
    assert not passes("05.4", lambda n, peak, share: right(n, peak, share) * peak ** 2)          # the scale inverted
    ok, line = verdict("05.4", lambda n, peak, share: math.log(share * n / (1 - share)) / peak)
    assert not ok and "too high" in line and f"{right(49, 2.0, 0.5):.4g}" not in line
    ok, line = verdict("05.4", lambda n, peak, share: "1.9")
    assert not ok and "should be a number" in line


def test_exercise_05_hints_and_messages_hold_no_code():
    from tutorial_lib.exercises import list_exercises
    for ex in list_exercises("05."):
        assert "->" not in ex.hint and "dim=" not in ex.hint and "99" not in ex.hint, ex.hint
        assert "masked_fill" not in ex.hint and "math." not in ex.hint and "norm(" not in ex.hint, ex.hint
    ok, line = verdict("05.3", lambda *a: _port(*a, norm_dim=0))
    assert not ok and "dim" not in line and "norm(" not in line, line
