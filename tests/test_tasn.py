"""TASN (Zheng et al., CVPR 2019): trilinear attention, the two sampling maps, the attention
sampler and the part/master distillation against literal versions and the official code's facts.

The references below are plain Python loops over the equations and over the official code's
steps (researchmm/tasn: ``trilinear_att``, ``Structure_Att``, ``Detail_Att`` in
``tasn-mxnet/example/tasn/model.py``; the ``AttSampler`` operator in ``att_sampler-inl.h`` and
its CUDA kernel), with the decisions the module documents (cumulative sum from 0, search from
j = 1). They share no code with ``tutorial_lib.tasn``.
"""
from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import tutorial_lib as tl
from tutorial_lib import AttentionSampler, TrilinearAttention, detail_map, distillation_loss, structure_map
from tutorial_lib.exercises import passes

ROOT = Path(__file__).resolve().parents[1]


def rand(*shape, seed=0, dtype=torch.float64):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def bump(size: int, y: float, x: float, width: float, batch: int = 1, dtype=torch.float64) -> torch.Tensor:
    """A Gaussian bump (B, size, size) centred at (y, x)."""
    yy, xx = torch.meshgrid(torch.arange(size, dtype=dtype), torch.arange(size, dtype=dtype), indexing="ij")
    g = torch.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * width ** 2))
    return g.expand(batch, -1, -1).clone()


# --- literal references ---------------------------------------------------------------------

def literal_trilinear(x: torch.Tensor, scale: float = 7.0) -> torch.Tensor:
    """M_in = sum_j R_ij X_jn, R_ij = softmax_j(sum_n F_in X_jn), F_in = softmax_n(scale X_in)."""
    b_, c_, h, w = x.shape
    out = torch.zeros(b_, c_, h * w, dtype=torch.float64)
    for b in range(b_):
        X = x[b].reshape(c_, h * w).tolist()
        F_ = []
        for i in range(c_):
            e = [math.exp(scale * v) for v in X[i]]
            F_.append([v / sum(e) for v in e])
        for i in range(c_):
            r = [sum(F_[i][n] * X[j][n] for n in range(h * w)) for j in range(c_)]
            e = [math.exp(v) for v in r]
            R = [v / sum(e) for v in e]
            for n in range(h * w):
                out[b, i, n] = sum(R[j] * X[j][n] for j in range(c_))
    return out.reshape(b_, c_, h, w)


def literal_resize(a: list[list[float]], size: int) -> list[list[float]]:
    """MXNet BilinearResize2D (corners to corners), loops over output pixels."""
    h, w = len(a), len(a[0])
    rh = (h - 1) / (size - 1) if size > 1 else 0.0
    rw = (w - 1) / (size - 1) if size > 1 else 0.0
    out = []
    for y2 in range(size):
        h1r = rh * y2
        h1 = min(int(h1r), h - 1)
        h1p = 1 if h1 < h - 1 else 0
        l1 = h1r - h1
        row = []
        for x2 in range(size):
            w1r = rw * x2
            w1 = min(int(w1r), w - 1)
            w1p = 1 if w1 < w - 1 else 0
            m1 = w1r - w1
            row.append((1 - l1) * ((1 - m1) * a[h1][w1] + m1 * a[h1][w1 + w1p])
                       + l1 * ((1 - m1) * a[h1 + h1p][w1] + m1 * a[h1 + h1p][w1 + w1p]))
        out.append(row)
    return out


def literal_density(row: list[float], col: list[float], out: int, dense: float, iters: int):
    """The capped-density loop of AttSampler, element by element (att = len(row))."""
    att = len(row)
    mx = [v / sum(row) * out for v in row]
    my = [v / sum(col) * out for v in col]
    threshold = dense * out / att            # scale * dense * in / att with scale = out / in, in = att
    for j in range(iters):
        t = min(max(mx), max(my))
        if j == 0:
            t = min(threshold, t)
        mx = [min(v, t) for v in mx]
        my = [min(v, t) for v in my]
        dx, dy = (out - sum(mx)) / att, (out - sum(my)) / att
        mx = [v + dx for v in mx]
        my = [v + dy for v in my]
    return mx, my


def literal_coordinates(m: list[float], out: int) -> list[float]:
    """Cumulative sum from 0, then the official while loop with j starting at 1."""
    att = len(m)
    c = [0.0] * att
    for i in range(att - 1):
        c[i + 1] = c[i] + m[i + 1]
    step = c[att - 1] / out
    coords, i, j = [], 0, 1
    while i < out:
        if c[j] >= i * step:
            coords.append((j + (i * step - c[j]) / (c[j] - c[j - 1])) * 2.0 / (att - 1) - 1.0)
            i += 1
        else:
            j += 1
    return coords


def literal_bilinear(image: list, gx: float, gy: float) -> list[float]:
    """The official CUDA kernel for one output pixel: corners convention, zero outside."""
    channels, ih, iw = len(image), len(image[0]), len(image[0][0])
    y = (gy + 1) * (ih - 1) / 2
    x = (gx + 1) * (iw - 1) / 2
    y0, x0 = math.floor(y), math.floor(x)
    wy, wx = 1 - (y - y0), 1 - (x - x0)
    values = []
    for c in range(channels):
        def at(yy, xx):
            return image[c][yy][xx] if 0 <= yy < ih and 0 <= xx < iw else 0.0
        values.append(at(y0, x0) * wy * wx + at(y0, x0 + 1) * wy * (1 - wx)
                      + at(y0 + 1, x0) * (1 - wy) * wx + at(y0 + 1, x0 + 1) * (1 - wy) * (1 - wx))
    return values


def literal_sampler(images: torch.Tensor, attention: torch.Tensor, out: int, dense: float = 4.0, iters: int = 5):
    """(output (B, C, out, out), rows (B, out), cols (B, out)) by loops over pixels."""
    b_, c_, size, _ = images.shape
    result = torch.zeros(b_, c_, out, out, dtype=torch.float64)
    all_rows, all_cols = [], []
    for b in range(b_):
        a = literal_resize(attention[b].tolist(), size)
        row = [max(a[y]) for y in range(size)]
        col = [max(a[y][x] for y in range(size)) for x in range(size)]
        mx, my = literal_density(row, col, out, dense, iters)
        rows, cols = literal_coordinates(mx, out), literal_coordinates(my, out)
        image = images[b].tolist()
        for i in range(out):
            for j in range(out):
                result[b, :, i, j] = torch.tensor(literal_bilinear(image, cols[j], rows[i]), dtype=torch.float64)
        all_rows.append(rows)
        all_cols.append(cols)
    return result, torch.tensor(all_rows, dtype=torch.float64), torch.tensor(all_cols, dtype=torch.float64)


# --- trilinear attention --------------------------------------------------------------------

@pytest.mark.parametrize("scale", [7.0, 2.0, 1.0])
def test_trilinear_matches_literal_loops(scale):
    x = rand(2, 5, 3, 4, seed=1) * 0.8
    got = TrilinearAttention(softmax_scale=scale)(x)
    torch.testing.assert_close(got, literal_trilinear(x, scale))


def test_trilinear_relation_rows_sum_to_one_and_no_parameters():
    att = TrilinearAttention()
    x = rand(3, 6, 4, 4, seed=2)
    m, maps = att(x, return_attention=True)
    assert maps["relation"].shape == (3, 6, 6)
    torch.testing.assert_close(maps["relation"].sum(dim=-1), torch.ones(3, 6, dtype=torch.float64))
    assert (maps["relation"] > 0).all()
    assert tl.count_parameters(att) == 0 and list(att.parameters()) == []


def test_trilinear_maps_are_convex_combinations_of_channels():
    x = rand(2, 8, 5, 5, seed=3) * 3
    m = TrilinearAttention()(x)
    assert (m >= 0).all()                                     # X >= 0  =>  M >= 0
    lo, hi = x.amin(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)
    assert (m >= lo - 1e-12).all() and (m <= hi + 1e-12).all()


def test_trilinear_identical_channels_give_the_input():
    one = rand(2, 1, 6, 7, seed=4)
    x = one.expand(-1, 5, -1, -1).clone()
    torch.testing.assert_close(TrilinearAttention()(x), x)


def test_trilinear_zero_channels_give_identical_maps():
    x = rand(2, 6, 5, 5, seed=5)
    x[:, [1, 3, 4]] = 0.0
    m = TrilinearAttention()(x)
    torch.testing.assert_close(m[:, 3], m[:, 1])
    torch.testing.assert_close(m[:, 4], m[:, 1])
    assert not torch.allclose(m[:, 0], m[:, 1])


def test_trilinear_official_order_differs_from_other_orders():
    """Spatial softmax first, then the softmax over channels j of each row, as the official code."""
    x = rand(1, 4, 3, 3, seed=6)
    X = x.reshape(1, 4, 9)
    official = TrilinearAttention()(x).reshape(1, 4, 9)
    columns = torch.softmax(torch.softmax(7 * X, dim=-1) @ X.transpose(1, 2), dim=1) @ X   # softmax over i
    unscaled = torch.softmax(torch.softmax(X, dim=-1) @ X.transpose(1, 2), dim=-1) @ X
    for other in (columns, unscaled):
        assert not torch.allclose(official, other)


def test_trilinear_blocks_the_gradient_by_default():
    x = rand(1, 3, 4, 4, seed=7).requires_grad_()
    assert not TrilinearAttention()(x).requires_grad          # official BlockGrad
    assert TrilinearAttention(detach=False)(x).requires_grad


def test_trilinear_gradcheck_without_block():
    x = rand(1, 3, 2, 3, seed=8).requires_grad_()
    assert torch.autograd.gradcheck(TrilinearAttention(detach=False), (x,))


def test_trilinear_batch_independence_and_dtypes():
    att = TrilinearAttention()
    x = rand(3, 8, 5, 6, seed=9, dtype=torch.float32)
    together = att(x)
    for b in range(3):
        torch.testing.assert_close(together[b:b + 1], att(x[b:b + 1]))
    low = att(x.to(torch.bfloat16))
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), together, atol=0.05, rtol=0.05)


def test_trilinear_capture():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), TrilinearAttention())
    x = torch.randn(2, 3, 5, 5, generator=torch.Generator().manual_seed(0))
    with tl.capture_attention(net) as maps:
        net(x)
    _, direct = net[2](net[1](net[0](x)), return_attention=True)
    torch.testing.assert_close(maps["2"]["relation"], direct["relation"])


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(softmax_scale=0.0), ValueError, "softmax_scale > 0"),
    (dict(softmax_scale="7"), TypeError, "softmax_scale to be a number"),
    (dict(detach=1), TypeError, "detach to be True or False"),
])
def test_trilinear_bad_hyper_parameters(kwargs, error, match):
    with pytest.raises(error, match=match):
        TrilinearAttention(**kwargs)


@pytest.mark.parametrize("x,error,match", [
    ([[1.0]], TypeError, "torch.Tensor"),
    (torch.ones(1, 4, 3, 3, dtype=torch.int64), TypeError, "floating-point"),
    (torch.ones(4, 3, 3), ValueError, r"4-D input \(B, C, H, W\)"),
    (torch.ones(0, 4, 3, 3), ValueError, "non-empty"),
])
def test_trilinear_bad_inputs(x, error, match):
    with pytest.raises(error, match=match):
        TrilinearAttention()(x)


# --- the two sampling maps ------------------------------------------------------------------

def test_structure_map_is_the_squared_resized_sum_without_duplicates():
    maps = rand(2, 5, 4, 4, seed=10)
    plain = maps.sum(dim=1)
    torch.testing.assert_close(structure_map(maps, square=False), plain)
    up = F.interpolate(plain[:, None], size=(9, 9), mode="bilinear", align_corners=True)[:, 0]
    torch.testing.assert_close(structure_map(maps, 9), up * up)      # resized, then squared
    torch.testing.assert_close(structure_map(maps, 9)[:, 0, 0], plain[:, 0, 0] ** 2)   # corners stay


def test_duplicated_maps_count_once():
    maps = rand(1, 6, 3, 3, seed=11)
    maps[0, 4] = maps[0, 1]                       # channel 4 duplicates channel 1
    maps[0, 5] = maps[0, 1]                       # channel 5 too
    distinct = maps[0, [0, 1, 2, 3]].sum(dim=0)
    torch.testing.assert_close(structure_map(maps, square=False)[0], distinct)
    keep = tl.tasn.distinct_channels(maps.sum(dim=(2, 3)))
    assert keep.tolist() == [[True, True, True, True, False, False]]


def official_structure_mask(sums: np.ndarray) -> np.ndarray:
    """Structure_Att's mask, literally: first occurrences in sorted order, applied in channel order."""
    idx = np.argsort(sums)
    a_sorted = sums[idx]
    return np.concatenate(([1], a_sorted[1:] != a_sorted[:-1])).astype(np.float64)


def test_official_sorted_order_mask_is_the_bug_of_issue_3():
    maps = rand(1, 5, 3, 3, seed=12)
    maps[0, 0] = maps[0, 3] = 2 + maps[0, 3]       # a duplicated map, the largest: sorted last
    sums = maps.sum(dim=(2, 3))[0].numpy()
    bug_mask = torch.from_numpy(official_structure_mask(sums))
    buggy = torch.einsum("c,chw->hw", bug_mask, maps[0])
    ours = structure_map(maps, square=False)[0]
    assert not torch.allclose(buggy, ours)        # the mask lands on the wrong channels:
    torch.testing.assert_close(buggy, maps[0, [0, 1, 2, 3]].sum(dim=0))   # channel 4 dropped, the copy kept
    # the intended behaviour: every distinct map once
    torch.testing.assert_close(ours, maps[0, [0, 1, 2, 4]].sum(dim=0))
    # with no duplicates the bug is invisible: the mask is all ones
    assert official_structure_mask(np.array([3.0, 1.0, 2.0])).tolist() == [1.0, 1.0, 1.0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rounding_level_differences_count_as_duplicates_but_real_ones_do_not(dtype):
    eps = torch.finfo(dtype).eps
    sums = torch.tensor([[1.0, 1.0 + 2 * eps, 2.0, 2.0 * (1 + 100 * eps), 0.0, 0.0]], dtype=dtype)
    keep = tl.tasn.distinct_channels(sums)
    assert keep.tolist() == [[True, False, True, True, True, False]]


@pytest.mark.parametrize("seed,channels,batch", [(7, 17, 1), (8, 17, 1), (15, 257, 8)])
def test_copies_with_last_bit_differences_count_once(seed, channels, batch):
    """All-zero channels give copies of one map; the matrix products may leave them a unit in the
    last place apart (seen with these float64 inputs), and they still count once."""
    g = torch.Generator().manual_seed(seed)
    x = torch.relu(torch.randn(batch, channels, 14, 14, generator=g, dtype=torch.float64))
    dead = torch.randperm(channels, generator=g)[: max(2, channels // 5)]
    x[:, dead] = 0.0
    keep = tl.tasn.distinct_channels(TrilinearAttention()(x).sum(dim=(2, 3)))
    assert (keep[:, dead].sum(dim=-1) == 1).all()


def test_distinct_maps_of_512_channels_are_not_merged():
    """512 attention maps are mixtures of the same channels, so their sums crowd together; only
    copies may be merged (the official code compares sums exactly). A tolerance of 1e-5 would
    drop about a hundred distinct maps here."""
    x = torch.relu(torch.randn(2, 512, 28, 28, generator=torch.Generator().manual_seed(0)))
    x[:, :50] = 0.0                                           # 50 dead channels: one map, 50 copies
    sums = TrilinearAttention()(x).sum(dim=(2, 3))
    keep = tl.tasn.distinct_channels(sums)
    exact = torch.tensor([[value not in row[:c] for c, value in enumerate(row)] for row in sums.tolist()])
    assert (keep[:, :50].sum(dim=-1) == 1).all()
    assert ((exact.sum(dim=-1) - keep.sum(dim=-1)) <= 5).all(), (keep.sum(dim=-1), exact.sum(dim=-1))
    assert ((exact.sum(dim=-1) - tl.tasn.distinct_channels(sums, rtol=1e-5).sum(dim=-1)) > 50).all()


def test_bfloat16_maps_are_told_apart_in_float32():
    """Two distinct bfloat16 maps whose sums (64 and 64.0078) round to one bfloat16 value."""
    maps = torch.ones(1, 3, 8, 8, dtype=torch.bfloat16)
    maps[0, 1, 0, 0] = 1.0078125                              # 1 + 2^-7, exact in bfloat16
    maps[0, 2] = maps[0, 0]                                   # a real copy
    assert maps[0, 0].sum() == maps[0, 1].sum()               # a bfloat16 sum cannot tell them apart
    plain = structure_map(maps, square=False)
    assert plain.dtype == torch.bfloat16
    torch.testing.assert_close(plain[0], maps[0, 0] + maps[0, 1])


def test_detail_map_training_draws_one_distinct_channel():
    maps = rand(1, 5, 4, 4, seed=13)
    maps[0, 3] = maps[0, 0]
    maps[0, 4] = maps[0, 0]                       # three copies of one map: drawn as one
    g = torch.Generator().manual_seed(0)
    counts = torch.zeros(5)
    for _ in range(900):
        d = detail_map(maps, training=True, generator=g)[0]
        hits = [c for c in range(5) if torch.equal(d, maps[0, c])]
        counts[hits[0]] += 1
    assert counts[3] == 0 and counts[4] == 0       # the first copy stands for all three
    assert ((counts[:3] - 300).abs() < 60).all(), counts   # uniform over the 3 distinct maps


def test_detail_map_is_reproducible_and_eval_is_the_plain_sum():
    maps = rand(4, 6, 5, 5, seed=14)
    maps[:, 2] = maps[:, 1]
    a = detail_map(maps, 7, training=True, generator=torch.Generator().manual_seed(3))
    b = detail_map(maps, 7, training=True, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.shape == (4, 7, 7)
    test = detail_map(maps, training=False)
    torch.testing.assert_close(test, maps.sum(dim=1))   # no de-duplication, no square at test


def test_maps_are_detached():
    maps = rand(1, 3, 4, 4, seed=15).requires_grad_()
    assert not structure_map(maps, 8).requires_grad
    assert not detail_map(maps, 8, training=True).requires_grad


@pytest.mark.parametrize("call,error,match", [
    (lambda: structure_map(torch.ones(3, 4, 4)), ValueError, "4-D attention maps"),
    (lambda: structure_map(torch.ones(1, 3, 4, 4, dtype=torch.int64)), TypeError, "floating-point"),
    (lambda: structure_map(torch.ones(1, 3, 4, 4), square=1), TypeError, "square to be True or False"),
    (lambda: structure_map(torch.ones(1, 3, 4, 4), size=0), ValueError, "size >= 1"),
    (lambda: detail_map(torch.ones(1, 3, 4, 4), training="yes"), TypeError, "training to be True or False"),
    (lambda: detail_map(torch.ones(1, 3, 4, 4)), TypeError, "training"),
])
def test_sampling_map_bad_inputs(call, error, match):
    with pytest.raises(error, match=match):
        call()


# --- the sampler ----------------------------------------------------------------------------

@pytest.mark.parametrize("size,out,map_size", [(512, 224, 28), (40, 16, 40), (33, 10, 5), (20, 20, 1)])
def test_uniform_map_gives_the_linear_grid(size, out, map_size):
    sampler = AttentionSampler(out)
    rows, cols = sampler.coordinates(torch.full((2, map_size, map_size), 0.3, dtype=torch.float64), size)
    linear = 2 * torch.arange(out, dtype=torch.float64) / out - 1          # an ordinary down-scaling
    torch.testing.assert_close(rows, linear.expand(2, -1))
    torch.testing.assert_close(cols, linear.expand(2, -1))


def test_all_zero_map_counts_as_uniform():
    rows, cols = AttentionSampler(8).coordinates(torch.zeros(1, 5, 5), 16)
    torch.testing.assert_close(rows[0], 2 * torch.arange(8.0) / 8 - 1)


@pytest.mark.parametrize("size,out,map_size,seed", [(20, 9, 7, 0), (12, 12, 12, 1), (16, 7, 23, 2), (18, 8, 4, 3)])
def test_sampler_matches_the_literal_loops(size, out, map_size, seed):
    images = rand(2, 2, size, size, seed=seed)
    attention = rand(2, map_size, map_size, seed=seed + 10) ** 3
    attention[1] = bump(map_size, map_size * 0.3, map_size * 0.6, max(map_size / 6, 0.7))[0]
    expected, rows, cols = literal_sampler(images, attention, out)
    sampler = AttentionSampler(out)
    got, grid = sampler(images, attention, return_grid=True)
    y, x = sampler.coordinates(attention, size)
    torch.testing.assert_close(y, rows)
    torch.testing.assert_close(x, cols)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(grid[..., 0], x[:, None, :].expand(-1, out, -1))
    torch.testing.assert_close(grid[..., 1], y[:, :, None].expand(-1, -1, out))


@pytest.mark.parametrize("map_size,size", [(28, 512), (7, 64), (5, 33), (40, 17), (2, 9)])
def test_fast_marginals_equal_the_full_resize(map_size, size):
    attention = rand(3, map_size, map_size, seed=map_size) ** 2
    fast = AttentionSampler(8).marginals(attention, size)
    full = AttentionSampler(8, full_resize=True).marginals(attention, size)
    for a, b in zip(fast, full):
        torch.testing.assert_close(a, b, atol=1e-13, rtol=1e-12)


def test_density_cap_holds():
    size, out, dense = 256, 64, 4.0
    uniform = out / size
    sampler = AttentionSampler(out, dense=dense)
    spike = torch.zeros(1, size, size, dtype=torch.float64)
    spike[0, 100, 40] = 1.0                                   # all the mass on one pixel
    smooth = bump(28, 10.0, 17.0, 2.0)                        # a blob on a 28 x 28 map
    noise = rand(4, 28, 28, seed=16) ** 6
    for attention in (spike, smooth, noise):
        m_rows, m_cols = sampler.density(attention, size)
        torch.testing.assert_close(m_rows.sum(dim=-1), torch.full((len(attention),), float(out), dtype=torch.float64))
        magnification = torch.stack([m_rows, m_cols]).amax(dim=-1) / uniform
        assert (magnification < dense + 1).all(), magnification       # the bound of the docstring
    for attention in (spike, smooth):                                  # a strong peak reaches the cap
        magnification = sampler.density(attention, size)[0].amax() / uniform
        assert magnification >= dense - 1e-9
    # the grid agrees: the closest output samples are about 1/(dense+1) of the uniform spacing apart
    rows, _ = sampler.coordinates(smooth, size)
    spacing = rows.diff(dim=-1).amin() * (size - 1) / 2
    assert (size - 1) / out / (dense + 1) <= spacing < (size - 1) / out / (dense - 1)


def test_a_stripe_is_not_magnified_because_both_axes_share_the_cap():
    """A band across the whole width: the columns are flat, so the shared cap t is the uniform
    density, and the rows, though peaked, are held near uniform too (official behaviour)."""
    size, out = 64, 16
    stripe = torch.zeros(1, size, size, dtype=torch.float64)
    stripe[0, 20:24, :] = 1.0
    m_rows, m_cols = AttentionSampler(out).density(stripe, size)
    assert m_rows.amax() / (out / size) < 1.01
    torch.testing.assert_close(m_cols, torch.full_like(m_cols, out / size))


def test_grid_is_separable_and_rows_ignore_the_order_of_columns():
    size, out = 30, 12
    attention = rand(2, 10, 10, seed=17) ** 4
    sampler = AttentionSampler(out)
    grid = sampler.grid(attention, size)
    assert torch.equal(grid[..., 0], grid[:, :1, :, 0].expand(-1, out, -1))   # x depends on the column only
    assert torch.equal(grid[..., 1], grid[:, :, :1, 1].expand(-1, -1, out))   # y depends on the row only
    # permuting the map's columns changes the column profile's order, not its values: the rows
    # (which see the columns only through the shared cap) are unchanged
    full = F.interpolate(attention[:, None], size=(size, size), mode="bilinear", align_corners=True)[:, 0]
    permuted = full[:, :, torch.randperm(size, generator=torch.Generator().manual_seed(0))]
    rows_a, _ = sampler.coordinates(full, size)
    rows_b, cols_b = sampler.coordinates(permuted, size)
    torch.testing.assert_close(rows_a, rows_b)


def test_transpose_symmetry():
    images = rand(2, 3, 24, 24, seed=18)
    attention = rand(2, 6, 6, seed=19) ** 3
    sampler = AttentionSampler(10)
    rows, cols = sampler.coordinates(attention, 24)
    rows_t, cols_t = sampler.coordinates(attention.transpose(1, 2), 24)
    torch.testing.assert_close(rows_t, cols)
    torch.testing.assert_close(cols_t, rows)
    torch.testing.assert_close(sampler(images.transpose(2, 3), attention.transpose(1, 2)),
                               sampler(images, attention).transpose(2, 3))


def test_constant_image_stays_constant():
    images = torch.full((3, 2, 50, 50), 0.7)
    attention = torch.cat([bump(50, 5.0, 44.0, 2.0, dtype=torch.float32),
                           torch.rand(2, 50, 50, generator=torch.Generator().manual_seed(1)) ** 8])
    out = AttentionSampler(20)(images, attention)
    torch.testing.assert_close(out, torch.full_like(out, 0.7))


def test_gradient_reaches_the_image_only():
    images = rand(2, 3, 16, 16, seed=20).requires_grad_()
    attention = (rand(2, 4, 4, seed=21) ** 2).requires_grad_()
    AttentionSampler(8)(images, attention).square().sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    assert attention.grad is None
    single = images[:1, :1].detach().requires_grad_()
    assert torch.autograd.gradcheck(lambda im: AttentionSampler(5)(im, attention[:1].detach()), (single,))


def test_sampler_batch_independence_and_dtypes():
    images = rand(3, 3, 32, 32, seed=22, dtype=torch.float32)
    attention = rand(3, 8, 8, seed=23, dtype=torch.float32) ** 3
    sampler = AttentionSampler(12)
    together = sampler(images, attention)
    for b in range(3):
        torch.testing.assert_close(together[b:b + 1], sampler(images[b:b + 1], attention[b:b + 1]))
    out64 = sampler(images.double(), attention.double())
    assert out64.dtype == torch.float64
    torch.testing.assert_close(out64.float(), together, atol=1e-5, rtol=1e-4)
    half_map = sampler(images, attention.to(torch.bfloat16))          # a low-precision map is fine
    assert half_map.dtype == torch.float32


def test_mxnet_cumulative_start_shifts_the_grid():
    """MXNet's c(0) = 1 (and its read of c(-1) for sample 0): for i >= 1 its uniform grid is ours
    shifted towards 0 by (S / out)(1 - i / out) pixels."""
    size, out = 64, 16
    m = [out / size] * size
    c = [1.0] * size                                   # MXNet: the cumulative buffer starts at 1
    for k in range(size - 1):
        c[k + 1] = c[k] + m[k + 1]
    step = c[-1] / out
    mx_pixels = []
    for i in range(1, out):
        j = next(j for j in range(1, size) if c[j] >= i * step)
        mx_pixels.append(j + (i * step - c[j]) / (c[j] - c[j - 1]))
    ours = [i * (size - 1) / out for i in range(1, out)]
    shift = [o - x for o, x in zip(ours, mx_pixels)]
    expected = [size / out * (1 - i / out) for i in range(1, out)]
    assert max(abs(s - e) for s, e in zip(shift, expected)) < 1e-9


def test_capture_records_grid_and_densities():
    sampler = AttentionSampler(6)
    images, attention = rand(1, 1, 12, 12, seed=24), rand(1, 3, 3, seed=25)
    with tl.capture_attention(sampler) as maps:
        _, grid = sampler(images, attention, return_grid=True)
    assert set(maps[""]) == {"grid", "row_density", "col_density"}
    torch.testing.assert_close(maps[""]["grid"], grid)
    torch.testing.assert_close(maps[""]["row_density"], sampler.density(attention, 12)[0])


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(out_size=0), ValueError, "out_size >= 1"),
    (dict(out_size=8.0), TypeError, "out_size to be an integer"),
    (dict(out_size=8, dense=0.5), ValueError, "dense >= 1"),
    (dict(out_size=8, dense="4"), TypeError, "dense to be a number"),
    (dict(out_size=8, iters=0), ValueError, "iters >= 1"),
    (dict(out_size=8, allow_upsampling="no"), TypeError, "allow_upsampling to be True or False"),
])
def test_sampler_bad_hyper_parameters(kwargs, error, match):
    with pytest.raises(error, match=match):
        AttentionSampler(**kwargs)


@pytest.mark.parametrize("images,attention,error,match", [
    (torch.ones(3, 8, 8), torch.ones(1, 4, 4), ValueError, r"4-D images \(B, C, S, S\)"),
    (torch.ones(1, 3, 8, 8, dtype=torch.uint8), torch.ones(1, 4, 4), TypeError, "floating-point images"),
    (torch.ones(1, 3, 8, 10), torch.ones(1, 4, 4), ValueError, "square images"),
    (torch.ones(1, 3, 4, 4), torch.ones(1, 4, 4), ValueError, "out_size=6 is larger than the 4x4 input"),
    (torch.ones(2, 3, 8, 8), torch.ones(3, 4, 4), ValueError, "one attention map per image"),
    (torch.ones(1, 3, 8, 8), torch.ones(1, 4, 2), ValueError, "square attention map"),
    (torch.ones(1, 3, 8, 8), torch.ones(1, 1, 4, 4), ValueError, r"3-D attention map \(B, h, w\)"),
    (torch.ones(1, 3, 8, 8), -torch.ones(1, 4, 4), ValueError, "non-negative attention map"),
    (torch.ones(1, 3, 8, 8), torch.full((1, 4, 4), float("nan")), ValueError, "finite attention map"),
    (torch.ones(1, 3, 8, 8), torch.ones(1, 4, 4, dtype=torch.int64), TypeError, "floating-point attention map"),
    (torch.ones(1, 3, 8, 8), [[1.0]], TypeError, "torch.Tensor"),
])
def test_sampler_bad_inputs(images, attention, error, match):
    with pytest.raises(error, match=match):
        AttentionSampler(6)(images, attention)


def test_upsampling_when_allowed():
    out = AttentionSampler(12, allow_upsampling=True)(rand(1, 1, 8, 8, seed=26), rand(1, 8, 8, seed=27))
    assert out.shape == (1, 1, 12, 12)


# --- distillation ---------------------------------------------------------------------------

def test_distillation_value_by_hand():
    master = torch.tensor([[2.0, -1.0, 0.5], [0.0, 3.0, 1.0]], dtype=torch.float64)
    part = torch.tensor([[1.0, 0.0, -2.0], [4.0, 1.0, 1.0]], dtype=torch.float64)
    T = 10.0
    losses = []
    for zm, zp in zip(master.tolist(), part.tolist()):
        p = [math.exp(v / T) for v in zp]
        p = [v / sum(p) for v in p]
        q = [math.exp(v / T) for v in zm]
        log_q = [math.log(v / sum(q)) for v in q]
        losses.append(-sum(a * b for a, b in zip(p, log_q)))
    assert distillation_loss(master, part).item() == pytest.approx(sum(losses) / 2, rel=1e-12)
    assert distillation_loss(master, part, reduction="sum").item() == pytest.approx(sum(losses), rel=1e-12)
    torch.testing.assert_close(distillation_loss(master, part, reduction="none"),
                               torch.tensor(losses, dtype=torch.float64))
    hinton = distillation_loss(master, part, form="hinton").item()
    assert hinton == pytest.approx(T * T * sum(losses) / 2, rel=1e-12)


def test_distillation_sum_is_the_symbol_and_mean_is_what_the_official_training_applies():
    """The official symbol sums per-sample losses (make_loss, SoftmaxOutput heads with weight 0.5);
    MXNet's Module divides every gradient by the batch size (rescale_grad = 1 / B). The gradient it
    trains with is that of mean-reduced terms: reduction="mean" keeps the official relative weight."""
    B = 6
    labels = torch.tensor([0, 1, 2, 3, 1, 0])
    master0, part0 = rand(B, 4, seed=34) * 3, rand(B, 4, seed=35) * 3

    def grads(reduction, rescale):
        master, part = master0.clone().requires_grad_(), part0.clone().requires_grad_()
        loss = (0.5 * F.cross_entropy(part, labels, reduction=reduction)
                + 0.5 * F.cross_entropy(master, labels, reduction=reduction)
                + distillation_loss(master, part, reduction=reduction))
        return [g * rescale for g in torch.autograd.grad(loss, [master, part])]

    official = grads("sum", 1.0 / B)                     # the symbol's gradient, rescaled by the optimiser
    for a, b in zip(official, grads("mean", 1.0)):
        torch.testing.assert_close(a, b)
    assert distillation_loss(master0, part0, reduction="sum").item() == pytest.approx(
        B * distillation_loss(master0, part0).item(), rel=1e-12)


def test_distillation_equals_cross_entropy_with_soft_targets():
    master, part = rand(5, 7, seed=28) * 4, rand(5, 7, seed=29) * 4
    expected = F.cross_entropy(master / 3.0, torch.softmax(part / 3.0, dim=-1))
    torch.testing.assert_close(distillation_loss(master, part, temperature=3.0), expected)


def test_official_form_sends_gradient_to_the_part_net_and_hinton_does_not():
    master = (rand(4, 5, seed=30) * 3).requires_grad_()
    part = (rand(4, 5, seed=31) * 3).requires_grad_()
    distillation_loss(master, part).backward()
    assert part.grad is not None and part.grad.abs().sum() > 0          # no stop-gradient (official)
    master.grad = part.grad = None
    distillation_loss(master, part, form="hinton").backward()
    assert part.grad is None and master.grad.abs().sum() > 0


@pytest.mark.parametrize("form", ["official", "hinton"])
def test_distillation_gradcheck(form):
    master = (rand(3, 4, seed=32) * 2).requires_grad_()
    part = (rand(3, 4, seed=33) * 2).requires_grad_()
    if form == "official":
        assert torch.autograd.gradcheck(lambda m, p: distillation_loss(m, p, temperature=2.0), (master, part))
    else:
        assert torch.autograd.gradcheck(lambda m: distillation_loss(m, part, form="hinton"), (master,))


@pytest.mark.parametrize("args,kwargs,error,match", [
    ((torch.ones(2, 3), torch.ones(2, 4)), {}, ValueError, "one shape"),
    ((torch.ones(3), torch.ones(3)), {}, ValueError, r"2-D master logits \(B, K\)"),
    ((torch.ones(2, 3), torch.ones(2, 3, dtype=torch.int64)), {}, TypeError, "floating-point part logits"),
    ((torch.ones(2, 3), torch.ones(2, 3)), dict(temperature=0), ValueError, "temperature > 0"),
    ((torch.ones(2, 3), torch.ones(2, 3)), dict(form="kl"), ValueError, "form to be one of"),
    ((torch.ones(2, 3), torch.ones(2, 3)), dict(reduction="max"), ValueError, "reduction to be one of"),
])
def test_distillation_bad_inputs(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        distillation_loss(*args, **kwargs)


# --- the benchmark runs ---------------------------------------------------------------------

def test_benchmark_quick_runs(capsys):
    spec = importlib.util.spec_from_file_location("bench_tasn", ROOT / "benchmarks" / "bench_tasn.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--quick"]) == 0
    out = capsys.readouterr().out
    assert "grid / sampling" in out and "equal" in out


def _race_module():
    spec = importlib.util.spec_from_file_location("tasn_race", ROOT / "benchmarks" / "tasn_race.py")
    race = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(race)
    return race


def test_race_quick_runs_and_writes_every_arm(tmp_path):
    race = _race_module()
    out = tmp_path / "race.json"
    assert race.main(["--quick", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["seeds"] == [0]
    for arm, values in record["curves"].items():
        length = {"uniform": 2 * race.ATT_EPOCHS, "block means": 2 * race.ATT_EPOCHS}.get(
            arm, 2 if arm in race.JOINT_ARMS else race.ATT_EPOCHS)
        assert len(values) == 1 and len(values[0]) == length, arm
    assert record["master alone reproduces tl.fit's curve"] == [True]      # the joint loop, part head off


def test_committed_race_is_complete():
    record = json.loads((ROOT / "benchmarks" / "results" / "tasn_race.json").read_text())
    race = _race_module()
    assert len(record["seeds"]) >= 5 and record["torch"]
    assert record["recipe"]["attention_epochs"] == race.ATT_EPOCHS and record["recipe"]["lr"] == race.LR
    n = len(record["seeds"])
    for arm, values in record["curves"].items():
        length = {"uniform": record["baseline_epochs"], "block means": record["baseline_epochs"]}.get(
            arm, record["joint_epochs"] if arm in race.JOINT_ARMS else record["epochs"])
        assert len(values) == n and all(len(v) == length for v in values), arm
    assert all(record["master alone reproduces tl.fit's curve"])


# --- the fine-grained data set ---------------------------------------------------------------

def test_fine_grained_details_is_deterministic_and_shaped():
    a, b = tl.fine_grained_details(60, seed=3), tl.fine_grained_details(60, seed=3)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels) and torch.equal(a.masks, b.masks)
    assert not torch.equal(a.images, tl.fine_grained_details(60, seed=4).images)
    assert a.images.shape == (60, 3, 64, 64) and a.images.dtype == torch.float32
    assert a.masks.shape == (60, 64, 64) and a.masks.dtype == torch.bool
    assert a.images.min() >= 0 and a.images.max() <= 1
    assert a.class_names == ("plus", "cross", "ring", "triangle")
    assert (a.masks.sum(dim=(1, 2)) == 14 * 14).all()            # the 14x14 patch of a mark=2 glyph
    counts = torch.bincount(tl.fine_grained_details(400, seed=0).labels, minlength=4)
    assert counts.min() > 70


def test_fine_grained_mark_is_the_glyph_of_the_label():
    d = tl.fine_grained_details(40, size=48, mark=1, noise=0.0, seed=1)
    for i in range(40):
        ys, xs = torch.nonzero(d.masks[i], as_tuple=True)
        assert ys.max() - ys.min() == 7 and xs.max() - xs.min() == 7          # 8x8 patch for mark=1
        patch = d.images[i][:, ys.min():ys.max() + 1, xs.min():xs.max() + 1]
        background = patch[:, 0, 0]                                            # the border: head colour
        ink = (patch - background[:, None, None]).abs().sum(0) > 1e-6
        glyph = torch.from_numpy(tl.data.GLYPHS[d.class_names[d.labels[i]]])
        assert torch.equal(ink[1:7, 1:7], glyph) and not ink[0].any() and not ink[:, 0].any()


def test_fine_grained_mark_scales_and_bad_arguments():
    d = tl.fine_grained_details(10, mark=3, size=80, noise=0.0, seed=2)
    assert (d.masks.sum(dim=(1, 2)) == 20 * 20).all()
    with pytest.raises(ValueError, match="size"):
        tl.fine_grained_details(10, size=30)
    with pytest.raises(ValueError, match="mark"):
        tl.fine_grained_details(10, mark=0)
    with pytest.raises(ValueError, match="noise >= 0"):
        tl.fine_grained_details(10, noise=-1.0)


# --- exercises of notebook 06 ----------------------------------------------------------------

def test_exercise_06_1_prediction():
    assert passes("06.1", 1.0)
    assert passes("06.1", 1.05)
    assert not passes("06.1", 5.0)          # dense + 1: forgets that the columns share the cap
    assert not passes("06.1", 4.0)
    assert not passes("06.1", "1")


def test_exercise_06_2_magnification():
    def right(grid, size):
        y = (grid[:, :, 0, 1] + 1) * (size - 1) / 2
        return (size - 1) / grid.shape[1] / (y[:, 1:] - y[:, :-1])

    def columns_instead(grid, size):
        x = (grid[:, 0, :, 0] + 1) * (size - 1) / 2
        return (size - 1) / grid.shape[1] / (x[:, 1:] - x[:, :-1])

    def spacing_not_magnification(grid, size):
        y = (grid[:, :, 0, 1] + 1) * (size - 1) / 2
        return (y[:, 1:] - y[:, :-1]) / ((size - 1) / grid.shape[1])

    def normalised_span_forgotten(grid, size):
        y = grid[:, :, 0, 1] * (size - 1)
        return (size - 1) / grid.shape[1] / (y[:, 1:] - y[:, :-1])

    assert passes("06.2", right)
    for wrong in (columns_instead, spacing_not_magnification, normalised_span_forgotten):
        assert not passes("06.2", wrong)


def test_exercise_06_3_other_order():
    from tutorial_lib.exercises import verdict
    from tutorial_lib.exercises.nb06 import GRAM_FIRST_SHAPES
    assert passes("06.3", lambda c, h, w: 2 * c * (h * w) ** 2)
    assert passes("06.3", lambda c, h, w: float(2 * c * (h * w) ** 2))
    assert not passes("06.3", lambda c, h, w: 2 * c * c * h * w)          # the order section 8 counts
    assert not passes("06.3", lambda c, h, w: c * (h * w) ** 2)           # one product only
    assert not passes("06.3", lambda c, h, w: 4 * c * (h * w) ** 2)       # FLOPs, not multiply-adds
    assert not passes("06.3", lambda c, h, w: c * h * w * (c + h * w))    # one product of each order
    assert not passes("06.3", lambda c, h, w: "many")
    assert not passes("06.3", 2)
    # the checker keeps its secret: a wrong formula hears "too high" or "too low", never the count
    for wrong, side in ((lambda c, h, w: 2 * c * c * h * w, "too low"), (lambda c, h, w: 10 ** 12, "too high")):
        ok, line = verdict("06.3", wrong)
        assert not ok and side in line
        for c, h, w in GRAM_FIRST_SHAPES:
            count = 2 * c * (h * w) ** 2
            assert str(count) not in line and f"{count:,}" not in line


def test_exercise_06_3_checker_counts_the_other_order():
    from tutorial_lib.exercises.nb06 import _gram_first
    x = rand(2, 5, 3, 4, seed=40)
    X = x.flatten(2)
    torch.testing.assert_close(_gram_first(x), (X @ X.transpose(1, 2)) @ X)     # the same product, reassociated
    assert tl.count_flops(_gram_first, torch.zeros(1, 5, 3, 4)) == 2 * 2 * 5 * 12 ** 2


def test_exercise_06_4_detail_probabilities():
    def right(maps):
        sums = maps.sum(dim=(2, 3))
        equal = sums[:, :, None] == sums[:, None, :]
        earlier = torch.ones(sums.shape[1], sums.shape[1], dtype=torch.bool).tril(diagonal=-1)
        first = ~(equal & earlier).any(dim=-1)
        return first.float() / first.float().sum(dim=-1, keepdim=True)

    def sorted_order(maps):                           # the official Structure_Att mask (issue #3)
        sums = maps.sum(dim=(2, 3))
        ordered, _ = torch.sort(sums, dim=-1)
        mask = torch.cat([torch.ones_like(ordered[:, :1]), (ordered[:, 1:] != ordered[:, :-1]).float()], dim=1)
        return mask / mask.sum(dim=-1, keepdim=True)

    def ignores_duplicates(maps):
        return torch.full(maps.shape[:2], 1.0 / maps.shape[1])

    assert passes("06.4", right)
    assert not passes("06.4", sorted_order)
    assert not passes("06.4", ignores_duplicates)


def test_exercise_checkers_report_not_done():
    from tutorial_lib.exercises import verdict
    for exercise_id in ("06.1", "06.2", "06.3", "06.4"):
        ok, line = verdict(exercise_id, ...)
        assert not ok and "not done yet" in line
