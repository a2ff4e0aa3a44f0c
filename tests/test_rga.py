"""RGA against literal versions of the paper's equations and of the official forward pass.

Two independent references, neither sharing code with the module:

* ``literal_rga``: plain loops over nodes, written from the equations (Zhang et al., CVPR 2020,
  Sec. 3): for every node i the relation vector [R(i, :), R(:, i)] is assembled entry by entry,
  and every embedding is a loop over output channels of a dot product followed by the
  eval-mode batch norm formula and ReLU;
* ``OfficialTranscription``: the official ``RGA_Module.forward`` (microsoft/Relation-Aware-
  Global-Attention-Networks, reid/models/models_utils/rga_modules.py) operation by operation —
  ``view``, ``permute``, ``matmul``, ``cat`` — with the official parameter names, so our
  state_dict loads into it with ``strict=True``. It runs in training mode too.
"""
from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import tutorial_lib as tl
from tutorial_lib import RGA
from tutorial_lib.exercises import passes, verdict

ROOT = Path(__file__).resolve().parents[1]
BRANCHES = {"SC": dict(), "S": dict(use_channel=False), "C": dict(use_spatial=False)}
SMALL = dict(cha_ratio=2, spa_ratio=2, down_ratio=2)   # non-trivial widths on tiny maps


# --- the references ---------------------------------------------------------------------------

def _bn(value: torch.Tensor, bn: nn.BatchNorm2d, k: int) -> torch.Tensor:
    """Eval-mode batch norm of one number in channel k."""
    return (value - bn.running_mean[k]) / torch.sqrt(bn.running_var[k] + bn.eps) * bn.weight[k] + bn.bias[k]


def _embed(seq: nn.Sequential, vector: torch.Tensor) -> torch.Tensor:
    """conv 1x1 (a matrix) + BN + ReLU on one node's vector, one output channel at a time."""
    weight, bn = seq[0].weight[:, :, 0, 0], seq[1]
    return torch.stack([torch.relu(_bn(torch.dot(weight[k], vector), bn, k)) for k in range(weight.shape[0])])


def _gate_logit(head: nn.Sequential, y: torch.Tensor) -> torch.Tensor:
    """W head on one node: conv, BN, ReLU, conv to one number, BN(1)."""
    hidden = _embed(head[:3], y)
    return _bn(torch.dot(head[3].weight[0, :, 0, 0], hidden), head[4], 0)


def _node_gates(module_prefix: str, module: RGA, nodes: list[torch.Tensor]) -> torch.Tensor:
    """The gate of every node, from the list of node vectors (positions or channels)."""
    theta_seq = getattr(module, f"theta_{module_prefix}")
    phi_seq = getattr(module, f"phi_{module_prefix}")
    gx_seq = getattr(module, f"gx_{module_prefix}")
    gg_seq = getattr(module, f"gg_{module_prefix}")
    head = getattr(module, f"W_{module_prefix}")
    n = len(nodes)
    theta = [_embed(theta_seq, v) for v in nodes]
    phi = [_embed(phi_seq, v) for v in nodes]
    relation = [[torch.dot(theta[i], phi[j]) for j in range(n)] for i in range(n)]   # r_ij = θ_iᵀ φ_j
    gates = []
    for i in range(n):
        row = [relation[i][j] for j in range(n)]          # R(i, :): how i relates to every j
        column = [relation[j][i] for j in range(n)]       # R(:, i): how every j relates to i
        r_i = torch.stack(row + column)                   # the relation vector, length 2n
        feature = _embed(gx_seq, nodes[i]).mean()         # mean over the embedded channels
        y_i = torch.cat([feature.reshape(1), _embed(gg_seq, r_i)])
        gates.append(torch.sigmoid(_gate_logit(head, y_i)))
    return torch.stack(gates)


def literal_rga(module: RGA, x: torch.Tensor) -> torch.Tensor:
    """RGA-S / RGA-C / RGA-SC from the equations, plain loops over nodes (eval mode only)."""
    assert not module.training
    out = []
    for sample in x:                                       # (C, H, W)
        c, h, w = sample.shape
        if module.use_spatial:                             # nodes: positions in raster order
            positions = [sample[:, r, s] for r in range(h) for s in range(w)]
            gates = _node_gates("spatial", module, positions)
            sample = torch.stack([positions[p] * gates[p] for p in range(h * w)], dim=1).reshape(c, h, w)
        if module.use_channel:                             # nodes: channels, each its map in raster order
            channels = [sample[k].reshape(-1) for k in range(c)]
            gates = _node_gates("channel", module, channels)
            sample = torch.stack([sample[k] * gates[k] for k in range(c)])
        out.append(sample)
    return torch.stack(out)


def _official_embedding(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 1, 1, 0, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class OfficialTranscription(nn.Module):
    """The official RGA_Module, transcribed for this test: same layers, names and tensor operations."""

    def __init__(self, in_channel, in_spatial, use_spatial=True, use_channel=True, cha_ratio=8,
                 spa_ratio=8, down_ratio=8):
        super().__init__()
        self.use_spatial, self.use_channel = use_spatial, use_channel
        self.inter_channel, self.inter_spatial = in_channel // cha_ratio, in_spatial // spa_ratio
        ic, isp = self.inter_channel, self.inter_spatial
        for branch, on, cin, width, gg_in, gg_out, head_in in (
                ("spatial", use_spatial, in_channel, ic, 2 * in_spatial, isp, 1 + isp),
                ("channel", use_channel, in_spatial, isp, 2 * in_channel, ic, 1 + ic)):
            if not on:
                continue
            setattr(self, f"theta_{branch}", _official_embedding(cin, width))
            setattr(self, f"phi_{branch}", _official_embedding(cin, width))
            setattr(self, f"gx_{branch}", _official_embedding(cin, width))
            setattr(self, f"gg_{branch}", _official_embedding(gg_in, gg_out))
            hidden = head_in // down_ratio
            setattr(self, f"W_{branch}", nn.Sequential(
                nn.Conv2d(head_in, hidden, 1, 1, 0, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(),
                nn.Conv2d(hidden, 1, 1, 1, 0, bias=False), nn.BatchNorm2d(1)))

    def forward(self, x):
        b, c, h, w = x.size()
        if self.use_spatial:
            theta = self.theta_spatial(x).view(b, self.inter_channel, -1).permute(0, 2, 1)
            phi = self.phi_spatial(x).view(b, self.inter_channel, -1)
            gs = torch.matmul(theta, phi)                                  # (b, N, N)
            joint = torch.cat((gs.permute(0, 2, 1).view(b, h * w, h, w), gs.view(b, h * w, h, w)), 1)
            joint = self.gg_spatial(joint)
            g = torch.mean(self.gx_spatial(x), dim=1, keepdim=True)
            x = torch.sigmoid(self.W_spatial(torch.cat((g, joint), 1)).expand_as(x)) * x
        if self.use_channel:
            xc = x.view(b, c, -1).permute(0, 2, 1).unsqueeze(-1)            # (b, N, C, 1)
            theta = self.theta_channel(xc).squeeze(-1).permute(0, 2, 1)
            phi = self.phi_channel(xc).squeeze(-1)
            gc = torch.matmul(theta, phi)                                  # (b, C, C)
            joint = torch.cat((gc.permute(0, 2, 1).unsqueeze(-1), gc.unsqueeze(-1)), 1)
            joint = self.gg_channel(joint)
            g = torch.mean(self.gx_channel(xc), dim=1, keepdim=True)
            x = torch.sigmoid(self.W_channel(torch.cat((g, joint), 1)).transpose(1, 2)) * x
        return x


def randomise(module: nn.Module, seed: int = 0, scale: float = 0.5) -> nn.Module:
    """Every parameter and BN statistic random and of order one, so that no gate is trivial."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g, dtype=m.running_mean.dtype) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g, dtype=m.running_var.dtype) + 0.5)
    return module.eval()


def make_input(c: int, h: int, w: int, batch: int = 2, seed: int = 1, dtype=torch.float64) -> torch.Tensor:
    return torch.randn(batch, c, h, w, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def official_twin(module: RGA) -> OfficialTranscription:
    h, w = module.spatial_size
    twin = OfficialTranscription(module.channels, h * w, module.use_spatial, module.use_channel,
                                 module.cha_ratio, module.spa_ratio, module.down_ratio)
    twin = twin.to(next(module.parameters()).dtype)
    twin.load_state_dict(module.state_dict(), strict=True)  # the parameter names map one to one
    return twin.train(module.training)


# --- the equations ----------------------------------------------------------------------------

@pytest.mark.parametrize("relation", ["factored", "literal"])
@pytest.mark.parametrize("branch", list(BRANCHES))
@pytest.mark.parametrize("c,h,w", [(8, 3, 5), (6, 1, 7), (4, 4, 4)])
def test_matches_literal_equations(branch, relation, c, h, w):
    module = randomise(RGA(c, (h, w), relation=relation, **BRANCHES[branch], **SMALL)).double()
    x = make_input(c, h, w)
    torch.testing.assert_close(module(x), literal_rga(module, x))


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("relation", ["factored", "literal"])
@pytest.mark.parametrize("branch", list(BRANCHES))
def test_matches_official_transcription(branch, relation, mode):
    for c, h, w, ratios in ((16, 6, 5, dict(cha_ratio=4, spa_ratio=3, down_ratio=3)), (8, 3, 3, SMALL)):
        module = randomise(RGA(c, (h, w), relation=relation, **BRANCHES[branch], **ratios)).double()
        module.train(mode == "train")
        twin = official_twin(module)
        x = make_input(c, h, w, batch=3)
        torch.testing.assert_close(module(x), twin(x))
        if mode == "train":  # the running statistics moved the same way
            theirs = dict(twin.named_buffers())
            for name, ours in module.named_buffers():
                torch.testing.assert_close(ours, theirs[name], msg=name)


def test_official_state_dict_names_and_order_of_layers():
    module = RGA(64, (4, 4), **SMALL)
    names = set(module.state_dict())
    for key in ("theta_spatial.0.weight", "phi_spatial.1.running_mean", "gx_spatial.1.num_batches_tracked",
                "gg_spatial.0.weight", "W_spatial.3.weight", "W_spatial.4.bias", "theta_channel.0.weight",
                "gx_channel.1.weight", "gg_channel.1.running_var", "W_channel.4.weight"):
        assert key in names, key
    assert module.gg_spatial[0].weight.shape == (8, 32, 1, 1)      # N // spa_ratio from 2N relations
    assert module.gg_channel[0].weight.shape == (32, 128, 1, 1)    # C // cha_ratio from 2C relations
    assert module.theta_channel[0].weight.shape == (8, 16, 1, 1)   # the N positions are input channels


# --- the exact low-rank identity (ours) -------------------------------------------------------

@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("branch", list(BRANCHES))
@pytest.mark.parametrize("c,h,w,ratios", [
    (8, 3, 5, SMALL), (16, 7, 9, dict(cha_ratio=4, spa_ratio=4, down_ratio=2)),
    (32, 8, 8, dict(down_ratio=4)), (24, 1, 16, dict(spa_ratio=4, down_ratio=2)), (64, 14, 14, dict(down_ratio=4))])
def test_factored_equals_literal_in_float64(branch, mode, c, h, w, ratios):
    """Same weights, same input: the two relation modes agree to float64 rounding, values and gradients."""
    factored = randomise(RGA(c, (h, w), **BRANCHES[branch], **ratios), seed=c + h).double()
    literal = RGA(c, (h, w), relation="literal", **BRANCHES[branch], **ratios).double()
    literal.load_state_dict(factored.state_dict())
    factored.train(mode == "train")
    literal.train(mode == "train")
    x = make_input(c, h, w, batch=3, seed=h * w).requires_grad_()
    out_f, maps_f = factored(x, return_attention=True)
    out_l, maps_l = literal(x, return_attention=True)
    torch.testing.assert_close(out_f, out_l, rtol=1e-12, atol=1e-12)
    for key in maps_f:
        torch.testing.assert_close(maps_f[key], maps_l[key], rtol=1e-12, atol=1e-12)
    weights = torch.randn(out_f.shape, dtype=out_f.dtype, generator=torch.Generator().manual_seed(2))
    grads_f = torch.autograd.grad((out_f * weights).sum(), [x, *factored.parameters()])
    grads_l = torch.autograd.grad((out_l * weights).sum(), [x, *literal.parameters()])
    for a, b in zip(grads_f, grads_l):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


def test_factored_relation_embedding_before_batch_norm():
    """The conv output itself (what the BatchNorm sees) is the same in both modes."""
    module = randomise(RGA(16, (5, 6), **SMALL)).double()
    x = make_input(16, 5, 6)
    theta = module.theta_spatial(x).flatten(2)
    phi = module.phi_spatial(x).flatten(2)
    relations = torch.einsum("bdi,bdj->bij", theta, phi)
    n = 30
    joint = torch.cat([relations.transpose(1, 2), relations], dim=1)   # channel j at node i: R[i,j], then R[j,i]
    literal = torch.einsum("km,bmi->bki", module.gg_spatial[0].weight[:, :, 0, 0], joint)
    w_in, w_out = module.gg_spatial[0].weight[:, :n, 0, 0], module.gg_spatial[0].weight[:, n:, 0, 0]
    factored = (torch.einsum("bdi,bdj,kj->bki", theta, phi, w_in)
                + torch.einsum("bdi,bdj,kj->bki", phi, theta, w_out))
    torch.testing.assert_close(factored, literal, rtol=1e-12, atol=1e-12)
    assert torch.linalg.matrix_rank(relations[0]).item() <= module.inter_channel


def test_factored_never_builds_an_n_by_n_tensor():
    """At N = 64 x 64 = 4,096 positions one float32 N x N matrix is 64 MiB: the literal mode needs
    several of them, the default stays far below one (few relation channels, so the weights are small)."""
    module = RGA(16, (64, 64), use_channel=False, cha_ratio=2, spa_ratio=64, down_ratio=4).eval()
    literal = RGA(16, (64, 64), use_channel=False, cha_ratio=2, spa_ratio=64, down_ratio=4,
                  relation="literal").eval()
    literal.load_state_dict(module.state_dict())
    x = torch.randn(1, 16, 64, 64)
    one_matrix = 4096 * 4096 * 4
    with torch.no_grad():
        module(x), literal(x)  # warm-up
        used = tl.peak_memory(module, x)
        used_literal = tl.peak_memory(literal, x)
    if used is None or used_literal is None:
        pytest.skip("peak memory cannot be measured on this platform")
    assert used < one_matrix / 8, tl.format_bytes(used)
    assert used_literal > 2 * one_matrix, tl.format_bytes(used_literal)


def test_shapes_the_literal_mode_builds_are_the_official_ones():
    """In literal mode the relation tensor stacked for the conv has 2N channels over the H x W grid."""
    seen = {}

    def record(conv, inputs, output):
        seen["in"] = tuple(inputs[0].shape)
    module = RGA(8, (3, 4), relation="literal", use_channel=False, **SMALL).eval()
    module.gg_spatial[0].register_forward_hook(record)
    module(torch.randn(2, 8, 3, 4))
    assert seen["in"][:2] == (2, 24) and math.prod(seen["in"][2:]) == 12
    seen.clear()
    module.relation = "factored"
    module(torch.randn(2, 8, 3, 4))
    assert not seen   # the conv over 2N channels is never called: its weight is used directly


# --- oracle facts -----------------------------------------------------------------------------

@pytest.mark.parametrize("stage,expected", [((256, 64, 32), 2_673_172), ((512, 32, 16), 329_796),
                                            ((1024, 16, 8), 668_908), ((2048, 16, 8), 2_642_220)])
def test_official_parameter_counts_reid_stages(stage, expected):
    c, h, w = stage
    assert tl.count_parameters(RGA(c, (h, w))) == expected


def test_official_parameter_counts_single_branches_and_total():
    assert tl.count_parameters(RGA(256, (64, 32), use_channel=False)) == 1_082_178
    assert tl.count_parameters(RGA(256, (64, 32), use_spatial=False)) == 1_590_994
    stages = [(256, 64, 32), (512, 32, 16), (1024, 16, 8), (2048, 16, 8)]
    assert sum(tl.count_parameters(RGA(c, (h, w))) for c, h, w in stages) == 6_314_096


@pytest.mark.parametrize("c,h,w", [(256, 64, 32), (64, 8, 8), (128, 7, 9), (1024, 16, 8)])
def test_parameter_count_closed_form(c, h, w):
    n = h * w
    dc, dn = c // 8, n // 8

    def embedding(cin, cout):
        return cin * cout + 2 * cout

    def head(cin):
        hidden = cin // 8
        return embedding(cin, hidden) + hidden + 2
    spatial = 3 * embedding(c, dc) + embedding(2 * n, dn) + head(1 + dn)
    channel = 3 * embedding(n, dn) + embedding(2 * c, dc) + head(1 + dc)
    assert tl.count_parameters(RGA(c, (h, w), use_channel=False)) == spatial
    assert tl.count_parameters(RGA(c, (h, w), use_spatial=False)) == channel
    assert tl.count_parameters(RGA(c, (h, w))) == spatial + channel


@pytest.mark.parametrize("branch,factor", [("SC", 0.25), ("S", 0.5), ("C", 0.5)])
@pytest.mark.parametrize("relation", ["factored", "literal"])
def test_zeroed_final_batch_norm_gives_constant_gates(branch, factor, relation):
    """γ = β = 0 in the last BN(1) of each head, eval mode: every gate is sigmoid(0) = 0.5."""
    module = randomise(RGA(16, (4, 6), relation=relation, **BRANCHES[branch], **SMALL))
    with torch.no_grad():
        for head in ("W_spatial", "W_channel"):
            if hasattr(module, head):
                getattr(module, head)[4].weight.zero_()
                getattr(module, head)[4].bias.zero_()
    x = make_input(16, 4, 6, dtype=torch.float32)
    torch.testing.assert_close(module(x), factor * x)


def test_default_initialisation_is_pytorch_default():
    """The official module is not re-initialised: BN γ = 1, β = 0, convs Kaiming-uniform(a=√5)."""
    torch.manual_seed(0)
    module = RGA(64, (8, 8))
    for name, m in module.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0), name
        if isinstance(m, nn.Conv2d):
            assert m.bias is None, name
            bound = 1 / math.sqrt(m.in_channels)        # kaiming_uniform_(a=√5) on a 1x1 conv
            assert m.weight.abs().max() <= bound, name
            if m.weight.numel() >= 64:                  # enough draws to come close to the bound
                assert m.weight.abs().max() > 0.9 * bound, name


def test_not_equivariant_to_spatial_permutations():
    """Moving content to other positions changes the gates, not only their places.

    The relation embedding weighs relation j with its own weight W[k, j]: after a permutation
    the same relations meet other weights. A control proves that this is the reason: with every
    W[k, :] constant over the positions (each half), the embedding only sums the relations, and
    the spatial gate becomes equivariant.
    """
    module = randomise(RGA(8, (4, 5), use_channel=False, **SMALL))
    x = make_input(8, 4, 5, dtype=torch.float32)
    perm = torch.randperm(20, generator=torch.Generator().manual_seed(3))

    def shuffle(t):
        return t.flatten(2)[:, :, perm].reshape(t.shape)
    assert not torch.allclose(module(shuffle(x)), shuffle(module(x)), atol=1e-3)
    with torch.no_grad():
        weight = module.gg_spatial[0].weight            # (k, 2N, 1, 1)
        rows, cols = weight[:, :20].mean(dim=1, keepdim=True), weight[:, 20:].mean(dim=1, keepdim=True)
        weight[:, :20], weight[:, 20:] = rows.expand(-1, 20, -1, -1), cols.expand(-1, 20, -1, -1)
    torch.testing.assert_close(module(shuffle(x)), shuffle(module(x)))


def test_shared_embeddings_give_symmetric_relations():
    """θ = φ makes R symmetric: both halves of every relation vector are equal (MECHANISMS 5.4)."""
    module = randomise(RGA(8, (3, 4), use_channel=False, **SMALL)).double()
    module.phi_spatial.load_state_dict(module.theta_spatial.state_dict())
    x = make_input(8, 3, 4)
    theta = module.theta_spatial(x).flatten(2)
    relations = torch.einsum("bdi,bdj->bij", theta, module.phi_spatial(x).flatten(2))
    torch.testing.assert_close(relations, relations.transpose(1, 2))
    with torch.no_grad():  # then only the sum of the two halves of the conv weight matters
        w = module.gg_spatial[0].weight
        before = module(x)
        w[:, :12], w[:, 12:] = w[:, :12] + w[:, 12:], torch.zeros_like(w[:, 12:])
    torch.testing.assert_close(module(x), before)


# --- batches, gradients, dtypes, maps ---------------------------------------------------------

@pytest.mark.parametrize("relation", ["factored", "literal"])
@pytest.mark.parametrize("branch", list(BRANCHES))
def test_batch_independence_in_eval_mode(branch, relation):
    module = randomise(RGA(8, (3, 5), relation=relation, **BRANCHES[branch], **SMALL))
    x = make_input(8, 3, 5, batch=4, dtype=torch.float32)
    together = module(x)
    for b in range(4):
        torch.testing.assert_close(together[b:b + 1], module(x[b:b + 1]))


def test_training_mode_mixes_the_batch():
    """In training mode the BatchNorms use batch statistics, so a sample's output depends on the others."""
    module = randomise(RGA(8, (3, 5), **SMALL)).train()
    x = make_input(8, 3, 5, batch=4, dtype=torch.float32)
    assert not torch.allclose(module(x)[:2], module(x[:2]))


@pytest.mark.parametrize("mode", ["eval", "train"])
@pytest.mark.parametrize("relation", ["factored", "literal"])
@pytest.mark.parametrize("branch", list(BRANCHES))
def test_gradcheck(branch, relation, mode):
    module = randomise(RGA(4, (2, 3), relation=relation, **BRANCHES[branch], **SMALL), seed=5).double()
    module.train(mode == "train")
    x = make_input(4, 2, 3, batch=2).requires_grad_()
    assert torch.autograd.gradcheck(module, (x,))
    names = [n for n, _ in module.named_parameters()]
    assert torch.autograd.gradcheck(lambda *p: torch.func.functional_call(
        module, dict(zip(names, p)), (x.detach(),)), tuple(module.parameters()))


def test_training_step_reaches_every_parameter():
    module = randomise(RGA(8, (4, 4), **SMALL)).train()
    module(make_input(8, 4, 4, dtype=torch.float32)).square().sum().backward()
    for name, p in module.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("branch", list(BRANCHES))
def test_attention_maps(branch):
    module = randomise(RGA(8, (3, 5), **BRANCHES[branch], **SMALL))
    x = make_input(8, 3, 5, dtype=torch.float32)
    out, maps = module(x, return_attention=True)
    expected = {"SC": {"spatial", "channel"}, "S": {"spatial"}, "C": {"channel"}}[branch]
    assert set(maps) == expected
    gated = x
    if "spatial" in maps:
        assert maps["spatial"].shape == (2, 1, 3, 5)
        gated = gated * maps["spatial"]
    if "channel" in maps:
        assert maps["channel"].shape == (2, 8, 1, 1)
        gated = gated * maps["channel"]
    for m in maps.values():
        assert ((m > 0) & (m < 1)).all()
    torch.testing.assert_close(out, gated)
    torch.testing.assert_close(out, module(x))


def test_channel_gate_sees_the_spatially_gated_map():
    module = randomise(RGA(8, (3, 5), **SMALL))
    x = make_input(8, 3, 5, dtype=torch.float32)
    _, maps = module(x, return_attention=True)
    torch.testing.assert_close(maps["channel"], module.channel_gate(x * maps["spatial"]))
    assert not torch.allclose(maps["channel"], module.channel_gate(x))


def test_capture_attention():
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), randomise(RGA(8, (4, 4), **SMALL))).eval()
    x = torch.randn(2, 3, 4, 4)
    with tl.capture_attention(net) as maps:
        net(x)
    _, direct = net[1](net[0](x), return_attention=True)
    assert set(maps) == {"1"}
    for key in ("spatial", "channel"):
        torch.testing.assert_close(maps["1"][key], direct[key])
    assert not net[1].capturing


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_follows_the_input_dtype(dtype):
    module = randomise(RGA(16, (4, 4), **SMALL))
    x = make_input(16, 4, 4, dtype=torch.float32)
    reference = module(x)
    low = randomise(RGA(16, (4, 4), **SMALL)).to(dtype)
    out = low(x.to(dtype))
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), reference, atol=0.05, rtol=0.05)


def test_float32_modes_agree_closely():
    module = RGA(64, (14, 14)).eval()
    x = torch.randn(2, 64, 14, 14)
    literal = RGA(64, (14, 14), relation="literal").eval()
    literal.load_state_dict(module.state_dict())
    torch.testing.assert_close(module(x), literal(x), rtol=1e-4, atol=1e-5)


# --- errors -----------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,error,match", [
    (dict(channels=0, spatial_size=(4, 4)), ValueError, "channels >= 1"),
    (dict(channels=8.0, spatial_size=(4, 4)), TypeError, "channels to be an integer"),
    (dict(channels=8, spatial_size=16), TypeError, r"spatial_size to be a pair \(H, W\)"),
    (dict(channels=8, spatial_size="16x8"), TypeError, r"spatial_size to be a pair"),
    (dict(channels=8, spatial_size=(4, 4, 4)), ValueError, "got 3 values"),
    (dict(channels=8, spatial_size=(0, 4)), ValueError, r"spatial_size\[0\] \(H\) >= 1"),
    (dict(channels=8, spatial_size=(4, 2.5)), TypeError, r"spatial_size\[1\] \(W\) to be an integer"),
    (dict(channels=8, spatial_size=(4, 4), use_spatial=False, use_channel=False), ValueError,
     "at least one branch"),
    (dict(channels=8, spatial_size=(4, 4), use_spatial=1), TypeError, "use_spatial to be True or False"),
    (dict(channels=8, spatial_size=(4, 4), cha_ratio=0), ValueError, "cha_ratio >= 1"),
    (dict(channels=8, spatial_size=(4, 4), down_ratio=2.0), TypeError, "down_ratio to be an integer"),
    (dict(channels=8, spatial_size=(4, 4), relation="fast"), ValueError, "relation to be one of"),
    (dict(channels=4, spatial_size=(8, 8)), ValueError, "channels >= cha_ratio"),
    (dict(channels=64, spatial_size=(2, 3)), ValueError, "H\\*W >= spa_ratio"),
    (dict(channels=64, spatial_size=(4, 4)), ValueError, r"spatial head reduces 1 \+ H\*W // spa_ratio = 3"),
    (dict(channels=32, spatial_size=(8, 8)), ValueError, r"channel head .* use down_ratio <= 5"),
])
def test_bad_hyper_parameters(kwargs, error, match):
    with pytest.raises(error, match=match):
        RGA(**kwargs)


@pytest.mark.parametrize("x,error,match", [
    ([[1.0]], TypeError, "torch.Tensor"),
    (torch.ones(1, 8, 4, 4, dtype=torch.int64), TypeError, "floating-point"),
    (torch.ones(8, 4, 4), ValueError, r"expected a 4-D input \(B, C, H, W\)"),
    (torch.ones(1, 6, 4, 4), ValueError, "built for 8 channels"),
    (torch.ones(0, 8, 4, 4), ValueError, "non-empty"),
])
def test_bad_inputs(x, error, match):
    with pytest.raises(error, match=match):
        RGA(8, (4, 4), **SMALL).eval()(x)


def test_wrong_input_size_says_what_to_build():
    module = RGA(64, (16, 8)).eval()
    with pytest.raises(ValueError) as err:
        module(torch.ones(1, 64, 14, 14))
    message = str(err.value)
    assert "RGA was built for 16x8 inputs (N = 128) but got 14x14" in message
    assert "build RGA(64, spatial_size=(14, 14)) for that size" in message
    with pytest.raises(ValueError, match="built for 16x8 inputs .* but got 8x16"):   # same N, other layout
        module(torch.ones(1, 64, 8, 16))


def test_bad_modes():
    with pytest.raises(ValueError, match="batch norm in training mode .* spatial branch gets B\\*H\\*W = 1"):
        RGA(8, (1, 1), cha_ratio=2, spa_ratio=1, down_ratio=1, use_channel=False).train()(torch.ones(1, 8, 1, 1))
    with pytest.raises(ValueError, match="channel branch gets B\\*C = 1"):
        RGA(1, (2, 2), cha_ratio=1, spa_ratio=1, down_ratio=1, use_spatial=False).train()(torch.ones(1, 1, 2, 2))
    RGA(8, (1, 1), cha_ratio=2, spa_ratio=1, down_ratio=1, use_channel=False).eval()(torch.ones(1, 8, 1, 1))
    with pytest.raises(TypeError, match="return_attention to be True or False"):
        RGA(8, (4, 4), **SMALL)(torch.ones(2, 8, 4, 4), return_attention="maps")


def test_extra_repr():
    text = repr(RGA(64, (16, 8), use_channel=False, relation="literal"))
    assert "spatial_size=(16, 8)" in text and "relation='literal'" in text and "use_channel=False" in text


# --- the data set of notebook 04 ---------------------------------------------------------------

def test_odd_one_out_ground_truth():
    data = tl.odd_one_out(60, seed=3)
    assert data.images.shape == (60, 3, 32, 32) and data.images.dtype == torch.float32
    assert data.images.min() >= 0 and data.images.max() <= 1
    assert data.class_names == ("plus", "cross", "ring", "triangle")
    assert (data.masks.flatten(1).sum(1) == 64).all()                       # one 8x8 odd tile
    assert (data.object_masks.flatten(1).sum(1) == 4 * 64).all()            # four tiles, no overlap
    assert not (data.masks & ~data.object_masks).any()                      # the odd tile is one of them
    assert set(data.labels.tolist()) == {0, 1, 2, 3}


def test_odd_one_out_the_odd_tile_carries_the_label_glyph():
    """Read the glyphs back from the pixels: one tile differs from the others, and it is the label."""
    from tutorial_lib.data import GLYPHS
    data = tl.odd_one_out(40, seed=4, noise=0.0, clutter=0)
    glyphs = torch.stack([torch.from_numpy(GLYPHS[k]) for k in data.class_names])     # (4, 6, 6)
    for i in range(40):
        tiles = []
        for mask in _tiles(data.object_masks[i]):
            y, x = mask
            patch = data.images[i, :, y + 1:y + 7, x + 1:x + 7]
            ink = (patch - data.images[i, :, y, x][:, None, None]).abs().sum(0) > 1e-6   # differs from border
            tiles.append(((y, x), int(torch.nonzero((glyphs == ink).all(-1).all(-1))[0])))
        kinds = [k for _, k in tiles]
        odd = [(place, k) for place, k in tiles if kinds.count(k) == 1]
        assert len(odd) == 1 and odd[0][1] == int(data.labels[i])
        y, x = odd[0][0]
        assert data.masks[i, y:y + 8, x:x + 8].all()


def _tiles(object_mask: torch.Tensor) -> list[tuple[int, int]]:
    """Top-left corners of the 8x8 tiles in a mask (scan in raster order)."""
    remaining, corners = object_mask.clone(), []
    while remaining.any():
        y, x = (int(v) for v in torch.nonzero(remaining)[0])
        corners.append((y, x))
        remaining[y:y + 8, x:x + 8] = False
    return corners


def test_odd_one_out_is_seeded_and_subsets_keep_object_masks():
    a, b = tl.odd_one_out(20, seed=7), tl.odd_one_out(20, seed=7)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images, tl.odd_one_out(20, seed=8).images)
    train, val = a.split(15)
    assert torch.equal(val.object_masks, a.object_masks[15:]) and torch.equal(val.masks, a.masks[15:])
    picked = a.subset(torch.tensor([3, 1]))
    assert torch.equal(picked.object_masks, a.object_masks[[3, 1]])
    assert torch.equal(tl.odd_one_out(5, seed=1, noise=0.0).masks, tl.odd_one_out(5, seed=1, noise=0.1).masks)


@pytest.mark.parametrize("kwargs,match", [(dict(n=0), "n: expected an integer >= 1"),
                                          (dict(objects=2), "objects: expected an integer >= 3"),
                                          (dict(size=16, objects=5), "room for 5 non-overlapping"),
                                          (dict(noise=-0.1), "noise >= 0")])
def test_odd_one_out_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tl.odd_one_out(**kwargs)


# --- the benchmark script runs ----------------------------------------------------------------

def test_benchmark_quick_mode_runs(capsys):
    spec = importlib.util.spec_from_file_location("bench_rga", ROOT / "benchmarks" / "bench_rga.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--quick", "--keep-allocator"]) == 0   # no allocator change inside pytest
    out = capsys.readouterr().out
    assert "ratio" in out and "factored" in out


def test_race_quick_mode_runs(capsys, tmp_path):
    spec = importlib.util.spec_from_file_location("rga_race", ROOT / "benchmarks" / "rga_race.py")
    race = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(race)
    threads = torch.get_num_threads()
    out = tmp_path / "race.json"
    assert race.main(["--quick", "--seed-bases", "0", "--out", str(out)]) == 0
    assert torch.get_num_threads() == threads                              # the thread count is restored
    result = json.loads(out.read_text())
    first = result["races"]["0"]
    assert set(first["curves"]) == set(race.ARMS) and first["seeds"] == [0]
    assert set(first["gates"]) == {arm for arm in race.ARMS if arm not in ("plain", "MLP")}
    head = race.ARMS["RGA-S"](0)                                           # the stored weights load into the head
    state = head.state_dict()
    state.update({k: torch.tensor(v).reshape(state[k].shape) for k, v in first["RGA-S weights, first seed"].items()})
    head.load_state_dict(state)


def test_race_arms_share_their_starting_weights():
    spec = importlib.util.spec_from_file_location("rga_race", ROOT / "benchmarks" / "rga_race.py")
    race = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(race)
    heads = {arm: make(3) for arm, make in race.ARMS.items()}
    for arm, head in heads.items():
        twin = heads["MLP" if "MLP" in arm else "plain"]
        assert all(torch.equal(a, b) for a, b in zip(head.read_out.state_dict().values(), twin.read_out.state_dict().values()))
    gate = heads["RGA-S"].gate.state_dict()
    for arm in ("RGA-S, relations zeroed", "RGA-S + MLP"):
        other = heads[arm].gate.state_dict()
        assert all(torch.equal(v, other[k]) for k, v in gate.items() if not k.startswith("gg_spatial.1.") or arm == "RGA-S + MLP")
    zeroed = heads["RGA-S, relations zeroed"].gate
    x = torch.randn(4, 32, 8, 8)
    zeroed.train()(x)
    with torch.no_grad():
        assert torch.count_nonzero(zeroed.gg_spatial[1](torch.randn(4, 16, 8, 8))) == 0    # φ′'s output: always 0
    assert not zeroed.gg_spatial[1].weight.requires_grad


# --- exercises of notebook 04 -----------------------------------------------------------------

def test_exercise_04_1_prediction():
    right = 2 * (2 * 2048) * 2048 * 4 / 2 ** 20             # B x 2C relation channels x C nodes x 4 bytes
    assert passes("04.1", right)
    assert passes("04.1", right * 1.01)
    assert not passes("04.1", 2 * 2048 * 2048 * 4 / 2 ** 20)         # one half only (the C x C matrix)
    assert not passes("04.1", (2 * 2048) * 2048 * 4 / 2 ** 20)       # batch forgotten
    assert not passes("04.1", 2 * (2 * 128) * 128 * 4 / 2 ** 20)     # the spatial branch's tensor
    assert not passes("04.1", "64 MiB")
    assert not passes("04.1", ...)


def test_exercise_04_1_messages_never_show_the_measured_value():
    for wrong in (1.0, 1000.0):
        message = verdict("04.1", wrong)[1]
        assert "too low" in message or "too high" in message
        assert "64" not in message.replace("B=2, C=2048", "")


def _rga_parameters(c, h, w):
    n = h * w
    dc, dn = c // 8, n // 8

    def embedding(cin, cout):
        return cin * cout + 2 * cout

    def head(cin):
        return embedding(cin, cin // 8) + cin // 8 + 2
    return (3 * embedding(c, dc) + embedding(2 * n, dn) + head(1 + dn)
            + 3 * embedding(n, dn) + embedding(2 * c, dc) + head(1 + dc))


def test_exercise_04_2_parameters():
    assert passes("04.2", _rga_parameters)
    assert passes("04.2", lambda c, h, w: float(_rga_parameters(c, h, w)))
    assert not passes("04.2", lambda c, h, w: _rga_parameters(c, h, w) - 2)             # a BN(1) forgotten
    assert not passes("04.2", lambda c, h, w: 2 * (3 * (c * (c // 8) + 2 * (c // 8))))  # channel branch as spatial

    def without_floors(c, h, w):  # widths as exact fractions
        n = h * w
        return int(3 * (c * c / 8 + c / 4) + (2 * n * n / 8 + n / 4) + 3 * (n * n / 8 + n / 4) + (2 * c * c / 8 + c / 4)
                   + (1 + n / 8) ** 2 / 8 + (1 + c / 8) ** 2 / 8)
    assert not passes("04.2", without_floors)
    assert not passes("04.2", ...)


def test_exercise_04_2_refuses_counting_a_built_module():
    import tutorial_lib.rga
    copied_from_the_notebook = lambda c, h, w: tl.count_parameters(tl.RGA(c, (h, w)))  # noqa: E731
    for answer in (copied_from_the_notebook,
                   lambda c, h, w: tl.count_parameters(tutorial_lib.rga.RGA(c, (h, w))),
                   lambda c, h, w: tl.count_parameters(RGA(c, (h, w)))):                 # imported name
        ok, message = verdict("04.2", answer)
        assert not ok and "closed form" in message

    def swallowing(c, h, w):          # catches the refusal and falls back on a wrong number
        try:
            return tl.count_parameters(tl.RGA(c, (h, w)))
        except AssertionError:
            return _rga_parameters(c, h, w)
    ok, message = verdict("04.2", swallowing)
    assert not ok and "closed form" in message
    assert passes("04.2", _rga_parameters)                                   # the class is restored afterwards
    assert tl.count_parameters(tl.RGA(256, (64, 32), use_channel=False)) == 1_082_178


def test_exercise_04_2_messages_never_show_the_count():
    message = verdict("04.2", lambda c, h, w: _rga_parameters(c, h, w) + 1)[1]
    assert "too many" in message
    assert f"{_rga_parameters(256, 64, 32):,}" not in message and str(_rga_parameters(256, 64, 32)) not in message


def test_exercise_04_3_transposed_weights():
    from einops import rearrange

    def right(weight, h, w):
        return rearrange(weight, "k (two h w) 1 1 -> k (two w h) 1 1", two=2, h=h)
    assert passes("04.3", right)

    def like_section_6(weight, h, w):                     # a permutation of the nodes, as in section 6
        moved = rearrange(torch.arange(h * w), "(h w) -> (w h)", h=h)
        w_in, w_out = rearrange(weight, "k (two j) 1 1 -> two k j", two=2)
        return rearrange([w_in[:, moved], w_out[:, moved]], "two k j -> k (two j) 1 1")
    assert passes("04.3", like_section_6)

    wrongs = {
        "unchanged": (lambda wt, h, w: wt, "unchanged"),
        "inverse": (lambda wt, h, w: rearrange(wt, "k (two w h) 1 1 -> k (two h w) 1 1", two=2, h=h), "wrong way"),
        "first half only": (lambda wt, h, w: torch.cat([rearrange(wt[:, :h * w], "k (h w) 1 1 -> k (w h) 1 1", h=h),
                                                        wt[:, h * w:]], dim=1), "first half"),
        "halves swapped": (lambda wt, h, w: right(wt, h, w).roll(h * w, dims=1), "changed places"),
        "2N as one grid": (lambda wt, h, w: rearrange(wt, "k (h w) 1 1 -> k (w h) 1 1", h=2 * h), "differ"),
        "shape": (lambda wt, h, w: wt[..., 0], "shape"),
    }
    for name, (answer, words) in wrongs.items():
        ok, message = verdict("04.3", answer)
        assert not ok and words in message, name
        assert "rearrange" not in message and "(w h)" not in message, name      # no solution line
    assert not passes("04.3", ...)


def test_exercise_04_4_oddness():
    def right(x):
        unit = F.normalize(x, dim=1)
        sim = torch.einsum("bchw,bcij->bhwij", unit, unit)
        return -sim.mean(dim=(3, 4))
    assert passes("04.4", right)
    ok, message = verdict("04.4", lambda x: right(x) * -1)                                          # sign
    assert not ok and "sign" in message
    ok, message = verdict("04.4", lambda x: -torch.einsum("bchw,bcij->bhwij", x, x).mean(dim=(3, 4)))  # not normalised
    assert not ok and "longer" in message
    assert not passes("04.4", lambda x: -torch.einsum("bchw,bcij->bhwij", F.normalize(x, dim=(2, 3)),
                                                       F.normalize(x, dim=(2, 3))).mean(dim=(3, 4)))  # wrong axis
    n_minus_one = lambda x: right(x) * x[0, 0].numel() / (x[0, 0].numel() - 1)  # noqa: E731  divided by N - 1
    assert not passes("04.4", n_minus_one)
    assert not passes("04.4", lambda x: right(x)[:, :, :-1])                                        # shape
    assert not passes("04.4", ...)


def test_gate_methods_check_their_input_and_branch():
    module = randomise(RGA(8, (3, 5), **SMALL))
    x = make_input(8, 3, 5, dtype=torch.float32)
    torch.testing.assert_close(module.spatial_gate(x), module(x, return_attention=True)[1]["spatial"])
    with pytest.raises(ValueError, match="built for 3x5 inputs"):
        module.spatial_gate(torch.ones(1, 8, 5, 3))
    with pytest.raises(ValueError, match="built for 3x5 inputs"):
        module.channel_gate(torch.ones(1, 8, 5, 3))
    with pytest.raises(ValueError, match="no spatial branch|with a spatial branch"):
        RGA(8, (3, 5), use_spatial=False, **SMALL).spatial_gate(x)
    with pytest.raises(ValueError, match="with a channel branch"):
        RGA(8, (3, 5), use_channel=False, **SMALL).channel_gate(x)
