"""InteractionAwareAttention and its losses against literal versions of the paper's equations.

Du et al., "Interaction-aware Spatio-temporal Pyramid Attention Networks for Action
Classification", ECCV 2018, arXiv:1808.01106. The reference below is written from the
equations with plain Python loops over positions k, rows m, channels c and scales j, in
float64: adaptive pooling windows floor(r·S/n) .. ceil((r+1)·S/n) - 1, scores
Y_j[m][k] = Σ_c W_j[m][c] x_k[c] + b_j[m], the element-wise fusion, a softmax over k, rows
divided by their L2 norm, M = A X of the host map, position m of the output = row m of M in
raster order. It shares no code with the module.
"""
from __future__ import annotations

import math

import pytest
import torch
from einops import rearrange

import tutorial_lib as tl
from tutorial_lib import InteractionAwareAttention, l_attn, l_interactive

HOST = (3, 3)
PYRAMID_2D = [(4, (7, 6)), (5, (5, 5)), (6, HOST)]   # (channels, grid): odd windows on purpose


# --- the literal reference ------------------------------------------------------------------

def literal_pool(grid: list, out_h: int, out_w: int, kind: str) -> list:
    """grid[r][s] = list of C numbers -> the out_h x out_w adaptive average / max."""
    in_h, in_w = len(grid), len(grid[0])
    out = []
    for r in range(out_h):
        r0, r1 = (r * in_h) // out_h, -((-(r + 1) * in_h) // out_h)
        row = []
        for s in range(out_w):
            s0, s1 = (s * in_w) // out_w, -((-(s + 1) * in_w) // out_w)
            window = [grid[y][x] for y in range(r0, r1) for x in range(s0, s1)]
            channels = len(window[0])
            if kind == "avg":
                row.append([sum(v[c] for v in window) / len(window) for c in range(channels)])
            else:
                row.append([max(v[c] for v in window) for c in range(channels)])
        out.append(row)
    return out


def local_features(x: torch.Tensor, out_h: int, out_w: int, kind: str) -> list:
    """One sample's map (C, H, W) or (C, K, H, W) -> the list of P = K·h·w position vectors,
    frame after frame, each frame in raster order."""
    frames = x.unsqueeze(1) if x.dim() == 3 else x
    features = []
    for t in range(frames.shape[1]):
        grid = [[frames[:, t, y, xx].tolist() for xx in range(frames.shape[3])] for y in range(frames.shape[2])]
        if (len(grid), len(grid[0])) != (out_h, out_w):
            grid = literal_pool(grid, out_h, out_w, kind)
        features.extend(grid[y][xx] for y in range(out_h) for xx in range(out_w))
    return features


def literal_attention(layer: InteractionAwareAttention, maps: list[torch.Tensor]):
    """(out, A, a, scale softmaxes, host features) per sample, written from the equations."""
    h, w = layer.size
    samples = []
    for b in range(maps[0].shape[0]):
        features = [local_features(x[b], h, w, layer.downsample) for x in maps]
        n_pos = len(features[-1])
        score_maps = []
        for j, xs in enumerate(features):
            weight = layer.scores[j].weight.tolist()
            bias = layer.scores[j].bias.tolist() if layer.scores[j].bias is not None else None
            pos_bias = layer.position_bias[j].tolist() if layer.position_bias is not None else None
            y = []
            for m in range(layer.d):
                row = []
                for k in range(n_pos):
                    value = sum(weight[m][c] * xs[k][c] for c in range(len(xs[k])))
                    if bias is not None:
                        value += bias[m]
                    if pos_bias is not None:
                        value += pos_bias[m][k % (h * w)]        # the same for every frame
                    row.append(value)
                y.append(row)
            score_maps.append(y)

        def softmax(row):
            top = max(row)
            e = [math.exp(v - top) for v in row]
            return [v / sum(e) for v in e]

        fused = []
        for m in range(layer.d):
            row = []
            for k in range(n_pos):
                values = [y[m][k] for y in score_maps]
                row.append({"sum": sum(values), "mean": sum(values) / len(values), "max": max(values)}[layer.fusion])
            fused.append(row)
        a = [softmax(row) for row in fused]
        A = [[v / math.sqrt(sum(u * u for u in row)) for v in row] for row in a]
        host = features[-1]
        channels = len(host[0])
        M = [[sum(A[m][k] * host[k][c] for k in range(n_pos)) for c in range(channels)] for m in range(layer.d)]
        scales = [[softmax(row) for row in y] for y in score_maps]
        samples.append((M, A, a, scales, host))
    return samples


def literal_output(layer, maps) -> torch.Tensor:
    h, w = layer.size
    outs = []
    for M, *_ in literal_attention(layer, maps):
        channels = len(M[0])
        if layer.d == h * w:
            out = [[[M[r * w + s][c] for s in range(w)] for r in range(h)] for c in range(channels)]
        else:
            out = [[M[m][c] for m in range(layer.d)] for c in range(channels)]
        outs.append(out)
    out = torch.tensor(outs, dtype=torch.float64)
    return maps[-1] + out if layer.residual else out


def literal_l_interactive(A: list, X: list) -> float:
    """Eq. (6): -sum((A X Xᵀ Aᵀ) ∘ I) + sum of squares of ((A Aᵀ) ∘ (1 - I))."""
    d, n_pos, channels = len(A), len(X), len(X[0])
    xxt = [[sum(X[k][c] * X[q][c] for c in range(channels)) for q in range(n_pos)] for k in range(n_pos)]
    gram_x = [[sum(A[m][k] * xxt[k][q] * A[n][q] for k in range(n_pos) for q in range(n_pos)) for n in range(d)]
              for m in range(d)]
    gram_a = [[sum(A[m][k] * A[n][k] for k in range(n_pos)) for n in range(d)] for m in range(d)]
    identity = lambda m, n: 1.0 if m == n else 0.0  # noqa: E731
    first = sum(gram_x[m][n] * identity(m, n) for m in range(d) for n in range(d))
    second = sum((gram_a[m][n] * (1.0 - identity(m, n))) ** 2 for m in range(d) for n in range(d))
    return -first + second


def literal_l_attn(a: list, scales: list) -> float:
    """sqrt(Σ_j Σ_m Σ_k (1 - δ²)), δ = |a_mk - softmax(y^j)_mk|."""
    total = 0.0
    for s in scales:
        for m in range(len(a)):
            for k in range(len(a[0])):
                delta = abs(a[m][k] - s[m][k])
                total += 1.0 - delta ** 2
    return math.sqrt(total)


# --- helpers --------------------------------------------------------------------------------

def randomise(layer: InteractionAwareAttention, seed: int = 0, spread: float = 0.5) -> InteractionAwareAttention:
    """Every parameter random of order one (biases included, so that they can act)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * spread)
    return layer


def make_pyramid(spec=PYRAMID_2D, batch: int = 2, frames: int | None = None, seed: int = 1,
                 dtype=torch.float64) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    time = () if frames is None else (frames,)
    return [torch.randn(batch, c, *time, *grid, generator=g, dtype=dtype) for c, grid in spec]


def build(spec=PYRAMID_2D, seed: int = 0, **options) -> InteractionAwareAttention:
    layer = InteractionAwareAttention([c for c, _ in spec], spec[-1][1], **options).double()
    return randomise(layer, seed)


# --- the equations --------------------------------------------------------------------------

@pytest.mark.parametrize("bias", ["row", "position", "none"])
@pytest.mark.parametrize("downsample", ["avg", "max"])
@pytest.mark.parametrize("fusion", ["sum", "mean", "max"])
def test_matches_literal_equations(fusion, downsample, bias):
    layer = build(fusion=fusion, downsample=downsample, bias=bias)
    maps = make_pyramid()
    torch.testing.assert_close(layer(maps), literal_output(layer, maps))


@pytest.mark.parametrize("fusion,bias", [("sum", "row"), ("max", "position"), ("mean", "none")])
def test_spatio_temporal_matches_literal(fusion, bias):
    """K frames stacked along the position axis: one H x W map for the clip."""
    layer = build(spatial_dims=3, fusion=fusion, bias=bias)
    maps = make_pyramid(frames=2)
    out = layer(maps)
    assert out.shape == (2, 6, *HOST)
    torch.testing.assert_close(out, literal_output(layer, maps))


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_maps_match_literal(spatial_dims):
    layer = build(spatial_dims=spatial_dims, bias="position")
    frames = 2 if spatial_dims == 3 else None
    maps = make_pyramid(frames=frames)
    out, found = layer(maps, return_attention=True)
    grid = (2, *HOST) if spatial_dims == 3 else HOST
    assert found["attention"].shape == (2, 9, *grid) and found["softmax"].shape == (2, 9, *grid)
    assert found["scales"].shape == (2, 3, 9, *grid)
    flat = lambda t: rearrange(t, "... d k h w -> ... d (k h w)") if spatial_dims == 3 \
        else rearrange(t, "... d h w -> ... d (h w)")  # noqa: E731
    reference = literal_attention(layer, maps)
    torch.testing.assert_close(flat(found["attention"]), torch.tensor([r[1] for r in reference], dtype=torch.float64))
    torch.testing.assert_close(flat(found["softmax"]), torch.tensor([r[2] for r in reference], dtype=torch.float64))
    torch.testing.assert_close(flat(found["scales"]), torch.tensor([r[3] for r in reference], dtype=torch.float64))
    torch.testing.assert_close(out, layer(maps))


def test_other_d_gives_the_rows_unreshaped():
    layer = build(d=4)
    maps = make_pyramid()
    out = layer(maps)
    assert out.shape == (2, 6, 4)                          # (B, C_i, d)
    torch.testing.assert_close(out, literal_output(layer, maps))


def test_residual_adds_the_host_map():
    layer = build(residual=True)
    maps = make_pyramid()
    torch.testing.assert_close(layer(maps), literal_output(layer, maps))
    plain = build(residual=False)
    torch.testing.assert_close(layer(maps) - maps[-1], plain(maps))


def test_single_map_is_normalised_softmax_of_one_linear_map():
    """N = 1, a bare tensor: A = rows of softmax(W Xᵀ + b 1ᵀ) over positions, unit norm; M = A X."""
    layer = build(spec=[(5, (4, 4))])
    x = make_pyramid(spec=[(5, (4, 4))])[0]
    X = rearrange(x, "b c h w -> b (h w) c")
    linear = layer.scores[0]
    a = torch.softmax(torch.einsum("dc,bpc->bdp", linear.weight, X) + linear.bias[:, None], dim=-1)
    A = a / a.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(layer(x), rearrange(A @ X, "b (h w) c -> b c h w", h=4))


# --- the facts of the paper's layer ---------------------------------------------------------

@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("fusion", ["sum", "mean", "max"])
def test_rows_sum_to_one_then_have_unit_norm_and_size_is_kept(fusion, spatial_dims):
    layer = build(fusion=fusion, spatial_dims=spatial_dims)
    maps = make_pyramid(frames=3 if spatial_dims == 3 else None)
    out, found = layer(maps, return_attention=True)
    assert out.shape == (2, 6, *HOST)                      # d = H·W: the host map's size (one map per clip)
    positions = tuple(range(2, found["softmax"].dim()))
    torch.testing.assert_close(found["softmax"].sum(dim=positions), torch.ones(2, 9, dtype=torch.float64))
    torch.testing.assert_close(found["scales"].sum(dim=tuple(p + 1 for p in positions)),
                               torch.ones(2, 3, 9, dtype=torch.float64))
    norms = torch.linalg.vector_norm(found["attention"], dim=positions)
    torch.testing.assert_close(norms, torch.ones(2, 9, dtype=torch.float64))
    assert (found["attention"] > 0).all() and (found["attention"] <= 1).all()
    if spatial_dims == 2:
        assert out.shape == maps[-1].shape


@pytest.mark.parametrize("fusion", ["sum", "mean"])
def test_a_per_row_bias_changes_nothing_under_additive_fusion(fusion):
    """b_m shifts a whole row: softmax, output and both losses stay; its gradient is 0."""
    layer = build(fusion=fusion)
    maps = make_pyramid()
    out, found, losses = layer(maps, return_attention=True, return_losses=True)
    shifted = build(fusion=fusion)
    with torch.no_grad():
        for j, linear in enumerate(shifted.scores):
            linear.bias.add_(3.0 * (j + 1) * torch.randn(linear.bias.shape, dtype=torch.float64,
                                                         generator=torch.Generator().manual_seed(j)))
    out2, found2, losses2 = shifted(maps, return_attention=True, return_losses=True)
    torch.testing.assert_close(out2, out)
    for key in found:
        torch.testing.assert_close(found2[key], found[key])
    for key in losses:
        torch.testing.assert_close(losses2[key], losses[key])
    total = out2.square().sum() + losses2["interactive"] + losses2["attn"]
    total.backward()
    for linear in shifted.scores:
        torch.testing.assert_close(linear.bias.grad, torch.zeros_like(linear.bias), atol=1e-10, rtol=0)
        assert linear.weight.grad.abs().max() > 1e-6


def test_a_per_row_bias_can_change_the_max_fusion():
    """Under max, the relative bias of two scales decides which one wins an entry."""
    layer = build(fusion="max")
    maps = make_pyramid()
    _, before = layer(maps, return_attention=True)
    with torch.no_grad():
        layer.scores[0].bias.add_(2.0)                      # only the first scale's rows are lifted
    _, after = layer(maps, return_attention=True)
    assert not torch.allclose(after["attention"], before["attention"], atol=1e-4)
    torch.testing.assert_close(after["scales"], before["scales"])   # each scale's own softmax: unchanged


def test_a_per_position_bias_moves_the_softmax_under_sum():
    layer = build(bias="position")
    maps = make_pyramid()
    _, before = layer(maps, return_attention=True)
    with torch.no_grad():
        layer.position_bias[0, :, 4] += 3.0                 # every row: lift the centre position
    _, after = layer(maps, return_attention=True)
    assert (after["softmax"][..., 1, 1] > before["softmax"][..., 1, 1]).all()


def test_sum_fusion_is_one_linear_map_of_the_stacked_pyramid():
    """Σ_j W_j X_jᵀ + b_j = [W_1 … W_N] [X_1 … X_N]ᵀ + Σ_j b_j, with the maps pooled first."""
    layer = build()
    maps = make_pyramid()
    _, found = layer(maps, return_attention=True)
    pooled = [torch.nn.functional.adaptive_avg_pool2d(x, HOST) for x in maps]
    stacked = rearrange(torch.cat(pooled, dim=1), "b c h w -> b (h w) c")
    weight = torch.cat([linear.weight for linear in layer.scores], dim=1)
    bias = sum(linear.bias for linear in layer.scores)
    a = torch.softmax(torch.einsum("dc,bpc->bdp", weight, stacked) + bias[:, None], dim=-1)
    torch.testing.assert_close(rearrange(found["softmax"], "b d h w -> b d (h w)"), a)


def test_the_layer_ignores_where_features_are():
    """Row bias: M = Σ_k A_mk x_k is a sum over positions, so shuffling the positions (all maps
    alike) leaves the output unchanged: the output's layout comes from the row index m alone."""
    spec = [(4, HOST), (6, HOST)]
    layer = build(spec=spec)
    maps = make_pyramid(spec=spec)
    perm = torch.randperm(9, generator=torch.Generator().manual_seed(3))

    def shuffle(t):
        return rearrange(rearrange(t, "b c h w -> b c (h w)")[:, :, perm], "b c (h w) -> b c h w", h=3)

    torch.testing.assert_close(layer([shuffle(x) for x in maps]), layer(maps))
    positional = build(spec=spec, bias="position")         # a per-position bias sees the layout
    assert not torch.allclose(positional([shuffle(x) for x in maps]), positional(maps), atol=1e-4)


@pytest.mark.parametrize("bias", ["row", "position"])
def test_clip_order_of_frames_does_not_matter_and_one_frame_is_the_image_layer(bias):
    layer = build(spatial_dims=3, bias=bias)
    maps = make_pyramid(frames=3)
    reversed_frames = [x.flip(dims=(2,)) for x in maps]
    torch.testing.assert_close(layer(reversed_frames), layer(maps))
    image_layer = build(bias=bias)
    image_layer.load_state_dict(layer.state_dict())
    one_frame = [x[:, :, :1] for x in maps]
    torch.testing.assert_close(layer(one_frame), image_layer([x[:, :, 0] for x in maps]))


def test_only_the_host_features_are_weighted():
    """The earlier maps only score: M is a combination of the host map's own features, so a
    zero host map gives a zero output whatever the earlier maps hold."""
    layer = build()
    maps = make_pyramid()
    out = layer(maps[:-1] + [torch.zeros_like(maps[-1])])
    assert torch.equal(out, torch.zeros_like(out))


def test_batch_items_are_independent():
    layer = build(fusion="max", bias="position")
    maps = make_pyramid(batch=3)
    together = layer(maps)
    for b in range(3):
        torch.testing.assert_close(together[b:b + 1], layer([x[b:b + 1] for x in maps]))


def test_parameter_count_closed_form():
    for channels, size, d in [((64, 128, 256), (7, 7), None), ((32,), (4, 5), 6), ((8, 16), (3, 3), None)]:
        d_ = d or size[0] * size[1]
        weights = sum(d_ * c for c in channels)
        n = len(channels)
        assert tl.count_parameters(InteractionAwareAttention(channels, size, d=d)) == weights + n * d_
        assert tl.count_parameters(InteractionAwareAttention(channels, size, d=d, bias="none")) == weights
        assert tl.count_parameters(InteractionAwareAttention(channels, size, d=d, bias="position")) == \
            weights + n * d_ * size[0] * size[1]


def test_initialisation_and_defaults():
    torch.manual_seed(0)
    layer = InteractionAwareAttention([64, 128], 7)
    assert layer.size == (7, 7) and layer.d == 49 and layer.num_scales == 2
    assert (layer.fusion, layer.downsample, layer.bias, layer.residual) == ("sum", "avg", "row", False)
    for linear, c in zip(layer.scores, (64, 128)):
        assert linear.weight.abs().max() <= c ** -0.5 and torch.count_nonzero(linear.bias) == 0
    assert "fusion='sum'" in repr(layer)


# --- the losses -----------------------------------------------------------------------------

@pytest.mark.parametrize("diversity_scales", ["all", "lower"])
@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_module_losses_match_literal(spatial_dims, diversity_scales):
    layer = build(spatial_dims=spatial_dims, fusion="max", diversity_scales=diversity_scales)
    maps = make_pyramid(frames=2 if spatial_dims == 3 else None)
    out, losses = layer(maps, return_losses=True)
    torch.testing.assert_close(out, layer(maps))
    reference = literal_attention(layer, maps)
    interactive = [literal_l_interactive(A, X) for _, A, _, _, X in reference]
    compared = (lambda s: s) if diversity_scales == "all" else (lambda s: s[:-1])
    attn = [literal_l_attn(a, compared(scales)) for _, _, a, scales, _ in reference]
    torch.testing.assert_close(losses["interactive"], torch.tensor(sum(interactive) / 2, dtype=torch.float64))
    torch.testing.assert_close(losses["attn"], torch.tensor(sum(attn) / 2, dtype=torch.float64))


def test_loss_functions_match_literal_and_reductions():
    g = torch.Generator().manual_seed(7)
    A = torch.rand(3, 4, 6, generator=g, dtype=torch.float64)        # any A, not only unit rows
    X = torch.randn(3, 6, 5, generator=g, dtype=torch.float64)
    a = torch.softmax(torch.randn(3, 4, 6, generator=g, dtype=torch.float64), dim=-1)
    scales = torch.softmax(torch.randn(3, 2, 4, 6, generator=g, dtype=torch.float64), dim=-1)
    inter = torch.tensor([literal_l_interactive(A[b].tolist(), X[b].tolist()) for b in range(3)], dtype=torch.float64)
    attn = torch.tensor([literal_l_attn(a[b].tolist(), scales[b].tolist()) for b in range(3)], dtype=torch.float64)
    torch.testing.assert_close(l_interactive(A, X, reduction="none"), inter)
    torch.testing.assert_close(l_interactive(A, X), inter.mean())
    torch.testing.assert_close(l_interactive(A, X, reduction="sum"), inter.sum())
    torch.testing.assert_close(l_attn(a, scales, reduction="none"), attn)
    torch.testing.assert_close(l_attn(a, scales), attn.mean())
    torch.testing.assert_close(l_attn(a, list(scales.unbind(dim=1)), reduction="sum"), attn.sum())


def test_pca_reading_of_the_interaction_loss():
    """With orthonormal rows the penalty is 0 and -tr(A X Xᵀ Aᵀ) is smallest for the top-d
    eigenvectors of X Xᵀ, where it equals minus the sum of the d largest eigenvalues."""
    g = torch.Generator().manual_seed(11)
    X = torch.randn(1, 8, 5, generator=g, dtype=torch.float64) @ torch.diag(torch.tensor(
        [4.0, 3.0, 2.0, 1.0, 0.5], dtype=torch.float64))   # positions 8, channels 5
    gram = X[0] @ X[0].T                                                # X Xᵀ: interactions of positions
    values, vectors = torch.linalg.eigh(gram)                           # ascending
    d = 3
    top = rearrange(vectors[:, -d:], "p d -> 1 d p")
    torch.testing.assert_close(l_interactive(top, X), -values[-d:].sum())
    for seed in range(5):                                               # any other orthonormal rows: larger
        q, _ = torch.linalg.qr(torch.randn(8, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
        other = rearrange(q, "p d -> 1 d p")
        assert l_interactive(other, X) > l_interactive(top, X) - 1e-9
    # non-orthogonal rows pay the penalty: two equal rows of unit norm add 2 · 1²
    twin = rearrange(torch.stack([vectors[:, -1], vectors[:, -1]]), "d p -> 1 d p")
    torch.testing.assert_close(l_interactive(twin, X), -2 * values[-1] + 2.0)
    # the variance term grows as s² with the features: unbounded if X can grow
    torch.testing.assert_close(l_interactive(top, 3 * X), 9 * l_interactive(top, X))


def test_scale_diversity_is_largest_when_every_scale_agrees():
    g = torch.Generator().manual_seed(5)
    a = torch.softmax(torch.randn(2, 4, 6, generator=g, dtype=torch.float64), dim=-1)
    same = torch.stack([a, a, a], dim=1)
    torch.testing.assert_close(l_attn(a, same, reduction="none"), torch.full((2,), math.sqrt(3 * 4 * 6),
                                                                              dtype=torch.float64))
    different = torch.softmax(torch.randn(2, 3, 4, 6, generator=g, dtype=torch.float64), dim=-1)
    assert (l_attn(a, different, reduction="none") < math.sqrt(3 * 4 * 6)).all()


def test_losses_come_back_in_order():
    layer = build()
    maps = make_pyramid()
    out = layer(maps)
    o1, losses = layer(maps, return_losses=True)
    o2, found, losses2 = layer(maps, return_attention=True, return_losses=True)
    torch.testing.assert_close(o1, out)
    torch.testing.assert_close(o2, out)
    assert set(losses) == {"interactive", "attn"} and losses["interactive"].dim() == 0
    torch.testing.assert_close(losses2["attn"], losses["attn"])
    torch.testing.assert_close(losses["interactive"], l_interactive(
        rearrange(found["attention"], "b d h w -> b d (h w)"), rearrange(maps[-1], "b c h w -> b (h w) c")))
    torch.testing.assert_close(losses["attn"], l_attn(rearrange(found["softmax"], "b d h w -> b d (h w)"),
                                                      rearrange(found["scales"], "b n d h w -> b n d (h w)")))


# --- gradients ------------------------------------------------------------------------------

@pytest.mark.parametrize("fusion,downsample,spatial_dims", [("sum", "avg", 2), ("max", "max", 2), ("mean", "avg", 3)])
def test_gradcheck(fusion, downsample, spatial_dims):
    spec = [(2, (4, 3)), (3, (2, 2))]
    layer = build(spec=spec, seed=5, fusion=fusion, downsample=downsample, spatial_dims=spatial_dims,
                  bias="position")
    maps = [x.requires_grad_() for x in make_pyramid(spec=spec, batch=1, frames=2 if spatial_dims == 3 else None)]

    def everything(*xs):
        out, losses = layer(list(xs), return_losses=True)
        return out, losses["interactive"], losses["attn"]

    assert torch.autograd.gradcheck(everything, tuple(maps))


def test_gradcheck_of_the_loss_functions():
    g = torch.Generator().manual_seed(2)
    A = torch.rand(2, 3, 4, generator=g, dtype=torch.float64).requires_grad_()
    X = torch.randn(2, 4, 3, generator=g, dtype=torch.float64).requires_grad_()
    a = torch.softmax(torch.randn(2, 3, 4, generator=g, dtype=torch.float64), dim=-1).requires_grad_()
    s = torch.softmax(torch.randn(2, 2, 3, 4, generator=g, dtype=torch.float64), dim=-1).requires_grad_()
    assert torch.autograd.gradcheck(lambda A_, X_: l_interactive(A_, X_, reduction="none"), (A, X))
    assert torch.autograd.gradcheck(lambda a_, s_: l_attn(a_, s_, reduction="none"), (a, s))


# --- dtypes, devices, capture ---------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_follows_the_dtype(dtype):
    reference = build()
    maps = make_pyramid()
    layer = build().to(dtype)
    out, found, losses = layer([x.to(dtype) for x in maps], return_attention=True, return_losses=True)
    assert out.dtype == dtype and found["attention"].dtype == dtype and losses["attn"].dtype == dtype
    tol = {torch.float32: 1e-5, torch.bfloat16: 5e-2, torch.float16: 1e-2}[dtype]
    torch.testing.assert_close(out.double(), reference(maps), atol=tol * 10, rtol=tol)


def test_autocast_and_dtype_mismatch():
    layer = InteractionAwareAttention([4, 6], HOST)
    maps = make_pyramid(spec=[(4, (6, 6)), (6, HOST)], dtype=torch.float32)
    with pytest.raises(TypeError, match="expected maps of the layer's dtype"):
        layer([x.double() for x in maps])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer([x.bfloat16() for x in maps])
    assert out.shape == (2, 6, *HOST) and out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), layer(maps), atol=0.1, rtol=0.05)


def test_follows_the_device():
    devices = ["meta"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        layer = InteractionAwareAttention([4, 6], HOST, bias="position").to(device)
        maps = [x.to(device) for x in make_pyramid(spec=[(4, (6, 6)), (6, HOST)], dtype=torch.float32)]
        out, found, losses = layer(maps, return_attention=True, return_losses=True)
        assert out.device.type == device and found["scales"].device.type == device
        assert losses["interactive"].device.type == device


def test_capture_attention_collects_the_maps():
    layer = build()
    net = torch.nn.ModuleDict({"attend": layer})
    maps = make_pyramid()
    with tl.capture_attention(net) as captured:
        net["attend"](maps)
    _, found = layer(maps, return_attention=True)
    assert set(captured["attend"]) == {"attention", "softmax", "scales"}
    torch.testing.assert_close(captured["attend"]["attention"], found["attention"])


def test_exported_from_the_package():
    assert tl.InteractionAwareAttention is InteractionAwareAttention
    assert tl.l_interactive is l_interactive and tl.l_attn is l_attn
    for name in ("InteractionAwareAttention", "l_interactive", "l_attn"):
        assert name in tl.__all__ and name in tl.__doc__


# --- errors ---------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,error,match", [
    (dict(channels=[], size=3), ValueError, "at least one map"),
    (dict(channels=[4, 0], size=3), ValueError, r"channels\[1\] >= 1"),
    (dict(channels=[4.0], size=3), TypeError, "to be an integer"),
    (dict(channels=4, size=(3, 3, 3)), ValueError, r"size to be \(H, W\)"),
    (dict(channels=4, size=0), ValueError, "size >= 1"),
    (dict(channels=4, size=3, d=0), ValueError, "d >= 1"),
    (dict(channels=4, size=3, fusion="concat"), ValueError, "fusion to be one of 'sum', 'mean', 'max'"),
    (dict(channels=4, size=3, downsample="bilinear"), ValueError, "downsample to be one of"),
    (dict(channels=4, size=3, bias="column"), ValueError, "bias to be one of"),
    (dict(channels=4, size=3, spatial_dims=1), ValueError, "spatial_dims >= 2"),
    (dict(channels=4, size=3, residual=1), TypeError, "residual to be True or False"),
    (dict(channels=4, size=3, residual=True, spatial_dims=3), ValueError, "residual=False for clips"),
    (dict(channels=4, size=3, residual=True, d=4), ValueError, "a residual needs an output of the host map's size"),
    (dict(channels=4, size=3, diversity_scales="lower"), ValueError, "at least 2 maps"),
])
def test_bad_construction(kwargs, error, match):
    with pytest.raises(error, match=match):
        InteractionAwareAttention(**kwargs)


def test_bad_inputs():
    layer = InteractionAwareAttention([4, 6], HOST)
    good = make_pyramid(spec=[(4, (6, 6)), (6, HOST)], dtype=torch.float32)
    cases = [
        ({"a": 1}, TypeError, "expected a list or tuple of 2 feature maps"),
        (good[-1], ValueError, r"was built for a pyramid of 2 map\(s\).*but got 1"),
        ([good[0], "x"], TypeError, "map 1 to be a torch.Tensor"),
        ([good[0], good[1].long()], TypeError, "floating-point map 1"),
        ([good[0], good[1][0]], ValueError, r"expected a 4-D map 1 \(B, C, H, W\)"),
        ([good[0][:, :3], good[1]], ValueError, "was built for 4 channels, but got an map 0 with 3"),
        ([good[0][:1], good[1]], ValueError, "to have batch 2.*map 0 has 1"),
        ([good[0], torch.randn(2, 6, 4, 4)], ValueError, r"was built for 3x3 host maps.*last map is 4x4"),
        ([good[0][..., :2, :], good[1]], ValueError, "at least the host grid 3x3.*map 0 is 2x6"),
        ([good[0].to("meta"), good[1]], ValueError, "expected maps on the layer's device"),
    ]
    for maps, error, match in cases:
        with pytest.raises(error, match=match):
            layer(maps)
    with pytest.raises(TypeError, match="return_losses to be True or False"):
        layer(good, return_losses="yes")
    clip = InteractionAwareAttention([4, 6], HOST, spatial_dims=3)
    with pytest.raises(ValueError, match="3 frames.*map 0 has 2"):
        clip([torch.randn(2, 4, 2, 6, 6), torch.randn(2, 6, 3, *HOST)])


def test_bad_loss_inputs():
    A, X = torch.rand(2, 3, 4), torch.randn(2, 4, 5)
    with pytest.raises(ValueError, match=r"l_interactive: expected attention \(B, d, P\) and features \(B, P, C\) "
                                         r"with the same B and P, but got \(2, 3, 4\) and \(2, 5, 5\)"):
        l_interactive(A, torch.randn(2, 5, 5))
    with pytest.raises(ValueError, match=r"l_interactive: expected a 3-D attention"):
        l_interactive(A[0], X)
    with pytest.raises(ValueError, match="l_interactive: expected reduction to be one of"):
        l_interactive(A, X, reduction="max")
    with pytest.raises(ValueError, match=r"l_attn: expected scales \(B, N, d, P\) matching attention"):
        l_attn(A, torch.rand(2, 2, 3, 5))
    with pytest.raises(ValueError, match="l_attn: expected every scale's softmax to have one shape"):
        l_attn(A, [torch.rand(2, 3, 4), torch.rand(2, 3, 5)])
    with pytest.raises(ValueError, match="l_attn: expected at least one scale"):
        l_attn(A, [])
    with pytest.raises(TypeError, match="l_attn: expected the attention to be a torch.Tensor"):
        l_attn([[0.5]], torch.rand(2, 2, 3, 4))


def test_pooling_windows_are_the_literal_ones():
    """The course's default down-sampling: windows floor(r·S/n) .. ceil((r+1)·S/n) - 1."""
    x = torch.randn(1, 2, 7, 5, dtype=torch.float64)
    pools = {"avg": torch.nn.functional.adaptive_avg_pool2d, "max": torch.nn.functional.adaptive_max_pool2d}
    for kind, pool in pools.items():
        grid = [[x[0, :, y, xx].tolist() for xx in range(5)] for y in range(7)]
        expected = torch.tensor(literal_pool(grid, 3, 3, kind), dtype=torch.float64)
        torch.testing.assert_close(rearrange(pool(x, (3, 3))[0], "c h w -> h w c"), expected)
