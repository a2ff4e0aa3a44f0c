"""The zoo of notebook 08: one backbone for every arm, the same starting weights, maps to score."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import tutorial_lib as tl
from tutorial_lib.zoo import ARMS, ZooNet, build, mass_on_object, object_cells, spatial_map

ROOT = Path(__file__).resolve().parents[1]


def test_every_arm_starts_from_the_same_backbone_and_linear_classifier():
    plain = build("plain", 4, seed=3)
    for arm in ARMS:
        net = build(arm, 4, seed=3)
        for a, b in zip(plain.features.state_dict().values(), net.features.state_dict().values()):
            assert torch.equal(a, b), arm
        if arm not in ("CSRA", "CSRA-max", "plain-avgmax"):
            assert torch.equal(plain.head[2].weight, net.head[2].weight), arm
    assert not torch.equal(build("plain", 4, seed=4).features[0].weight, plain.features[0].weight)


def test_plain_max_differs_from_plain_only_in_its_pooling():
    plain, plain_max = build("plain", 4, seed=0).eval(), build("plain-max", 4, seed=0).eval()
    assert tl.count_parameters(plain) == tl.count_parameters(plain_max)
    x = torch.rand(2, 3, 32, 32)
    features = plain.features(x)
    torch.testing.assert_close(plain_max(x), plain.head[2](features.amax(dim=(2, 3))))
    torch.testing.assert_close(plain(x), plain.head[2](features.mean(dim=(2, 3))))


def test_csra_max_is_csra_with_its_softmax_over_positions_replaced_by_the_maximum():
    soft, hard = build("CSRA", 4, seed=2).eval(), build("CSRA-max", 4, seed=2).eval()
    for a, b in zip(soft.state_dict().values(), hard.state_dict().values()):
        assert torch.equal(a, b)                                   # the same starting weights
    x = torch.rand(2, 3, 32, 32)
    features = hard.features(x)
    weight = hard.head.head.weight.flatten(1)                      # (K, C): one classifier row per class
    unit = weight / weight.norm(dim=1, keepdim=True)
    score = torch.einsum("kc,bchw->bkhw", unit, features).flatten(2)             # (B, K, positions)
    torch.testing.assert_close(hard(x), score.mean(-1) + 0.1 * score.amax(-1))
    maps = spatial_map(hard, x, torch.tensor([0, 3]))
    assert torch.equal(maps.flatten(1).sum(1), torch.ones(2)) and set(maps.unique().tolist()) == {0.0, 1.0}


def test_plain_avgmax_reads_the_average_and_the_maximum_side_by_side():
    net = build("plain-avgmax", 4, seed=0).eval()
    assert tl.count_parameters(net) == tl.count_parameters(build("plain", 4, seed=0)) + 32 * 4
    x = torch.rand(2, 3, 32, 32)
    features = net.features(x)
    pooled = torch.cat([features.mean(dim=(2, 3)), features.amax(dim=(2, 3))], dim=1)
    torch.testing.assert_close(net(x), net.head[2](pooled))


def test_the_rga_arms_have_the_branches_their_names_say():
    for arm, branches in {"RGA-S": (True, False), "RGA-C": (False, True), "RGA-SC": (True, True)}.items():
        block = build(arm, 4, seed=0, size=64).block
        assert (block.use_spatial, block.use_channel) == branches, arm
    # the channel branch's embeddings take the N = 16 x 16 positions as input channels
    block = build("RGA-C", 4, seed=0, size=64).block
    assert block.theta_channel[0].weight.shape[1] == 256


def test_rga_s_zero_is_rga_s_with_its_relations_held_at_zero_through_training():
    """The ablation: the same weights as RGA-S, but the embedded relations are 0 and stay 0."""
    full, zero = build("RGA-S", 4, seed=1, size=32), build("RGA-S-zero", 4, seed=1, size=32)
    differ = [k for k, v in full.state_dict().items() if not torch.equal(v, zero.state_dict()[k])]
    assert differ == ["block.gg_spatial.1.weight"]          # a BatchNorm's bias starts at 0 in both
    seen = []   # the embedded relations: the output of the relation embedding's last ReLU
    hook = zero.block.gg_spatial[2].register_forward_hook(lambda module, args, out: seen.append(out.detach()))
    data = tl.objects_on_clutter(40, size=32, seed=0)
    tl.fit(zero, data, epochs=2, batch_size=8, seed=0, progress=False, verbose=False)
    zero.eval()(data.images[:4])
    hook.remove()
    assert len(seen) == 2 * 5 + 1 and all(float(out.abs().max()) == 0.0 for out in seen)
    bn = zero.block.gg_spatial[1]
    assert float(bn.weight.abs().max()) == float(bn.bias.abs().max()) == 0.0   # frozen: the optimiser left them
    assert not bn.weight.requires_grad and not bn.bias.requires_grad
    # the rest of the gate trained: its head moved away from RGA-S's starting weights
    assert not torch.equal(zero.block.W_spatial[0].weight, full.block.W_spatial[0].weight)


@pytest.mark.parametrize("arm", ARMS)
def test_each_arm_classifies_and_hands_back_a_map_of_where_it_looks(arm):
    net = build(arm, 4, seed=0).eval()
    x = torch.rand(3, 3, 32, 32)
    assert net(x).shape == (3, 4)
    maps = spatial_map(net, x, torch.tensor([0, 1, 2]))
    if arm in ("SE", "RGA-C"):
        assert maps is None                     # a channel gate has no spatial map
    else:
        assert maps.dim() == 3 and maps.shape[0] == 3 and bool((maps >= 0).all())


def test_bad_arm_is_refused():
    with pytest.raises(ValueError, match="ZooNet: expected arm to be one of plain"):
        ZooNet("TASN", 4)


@pytest.mark.parametrize("size", [6, 30, 32.0, True])
def test_bad_image_size_is_refused(size):
    with pytest.raises(ValueError, match="ZooNet: expected size .* multiple of 4"):
        ZooNet("plain", 4, size)


@pytest.mark.parametrize("arm", ["RGA-SC", "non-local", "CSRA"])
def test_the_mechanism_is_built_for_the_image_size(arm):
    net = build(arm, 4, seed=0, size=48).eval()
    assert net(torch.rand(2, 3, 48, 48)).shape == (2, 4)
    side = 6 if arm == "non-local" else 12      # non-local: where it reads from, the 2x2-pooled key grid
    assert spatial_map(net, torch.rand(2, 3, 48, 48), torch.tensor([0, 1])).shape == (2, side, side)


def _mass_on_object_literal(maps, masks):
    """Loops: for every cell, look at each of its pixels; add the cell's value if one is on the object."""
    b, h, w = maps.shape
    ch, cw = masks.shape[1] // h, masks.shape[2] // w
    out = []
    for i in range(b):
        on = sum(float(maps[i, y, x]) for y in range(h) for x in range(w)
                 if any(bool(masks[i, y * ch + dy, x * cw + dx]) for dy in range(ch) for dx in range(cw)))
        out.append(on / float(maps[i].sum()))
    return torch.tensor(out, dtype=torch.float64)


def _tiles(n, side, tile, generator):
    masks = torch.zeros(n, side, side, dtype=torch.bool)
    for i in range(n):
        y, x = torch.randint(0, side - tile + 1, (2,), generator=generator).tolist()
        masks[i, y:y + tile, x:x + tile] = True
    return masks


def test_mass_on_object_matches_loops_over_cells_and_pixels():
    g = torch.Generator().manual_seed(0)
    maps = torch.rand(30, 4, 4, generator=g)
    masks = _tiles(30, 16, 5, g)
    got = mass_on_object(maps, masks)
    torch.testing.assert_close(got, _mass_on_object_literal(maps, masks))
    assert 0 < got.mean() < 1


def test_a_uniform_map_scores_the_share_of_cells_the_object_touches():
    g = torch.Generator().manual_seed(1)
    masks = _tiles(200, 64, 8, g)
    for grid in (16, 8):                        # the feature map's grid, and the non-local block's key grid
        uniform = mass_on_object(torch.ones(200, grid, grid), masks)
        touched = object_cells(masks, (grid, grid)).flatten(1).float().mean(1).double()
        torch.testing.assert_close(uniform, touched)
        all_on_object = object_cells(masks, (grid, grid)).double()
        torch.testing.assert_close(mass_on_object(all_on_object, masks), torch.ones(200, dtype=torch.float64))
    # a coarser grid has a higher chance level: a cell that touches the tile is a larger share
    assert mass_on_object(torch.ones(200, 8, 8), masks).mean() > mass_on_object(torch.ones(200, 16, 16), masks).mean()


def test_mass_on_object_refuses_maps_and_masks_that_do_not_fit():
    with pytest.raises(ValueError, match="mass_on_object: expected maps"):
        mass_on_object(torch.rand(2, 4, 4), torch.zeros(3, 16, 16, dtype=torch.bool))
    with pytest.raises(ValueError, match="do not split into the maps' 4x4 cells"):
        mass_on_object(torch.rand(2, 4, 4), torch.zeros(2, 18, 16, dtype=torch.bool))
    with pytest.raises(ValueError, match="non-negative"):
        mass_on_object(-torch.rand(2, 4, 4), torch.zeros(2, 16, 16, dtype=torch.bool))


def _benchmark():
    spec = importlib.util.spec_from_file_location("zoo_benchmark", ROOT / "benchmarks" / "zoo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_benchmarks_curve_is_the_training_loop_of_fit():
    """The benchmark trains step by step to score checkpoints; its first k epochs are tl.fit(epochs=k)."""
    bench = _benchmark()
    train, val = tl.objects_on_clutter(100, size=64, clutter=48, seed=3).split(80)
    run = bench.train_with_curve("CBAM", train, val, seed=2, epochs=2, checkpoints=(1, 2), channels_last=False)
    for epochs in (1, 2):
        net = build("CBAM", 4, 2, size=64)
        tl.fit(net, train, epochs=epochs, seed=2, progress=False, verbose=False)
        tl.recalibrate_batchnorm(net, train.subset(slice(0, bench.RECALIBRATE)))
        assert dict(run["curve"])[epochs] == tl.evaluate(net, val)["accuracy"]
    assert run["train_accuracy"] == tl.evaluate(net, train)["accuracy"]
    looks = run["looks"]
    assert looks["grid"] == [16, 16] and 0 < looks["uniform"] < looks["mass"] + 1


def test_the_zoo_script_runs_quickly(tmp_path):
    out = tmp_path / "zoo.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "zoo.py"), "--quick", "--arms", "plain", "non-local",
                    "RGA-C", "--thread-check", "plain", "--out", str(out)], check=True, capture_output=True, timeout=300)
    result = json.loads(out.read_text())
    assert result["data_seed"] == 0 and result["seeds"] == [0] and result["threads"] == 1
    assert result["runs"]["non-local"][0]["looks"]["grid"] == [8, 8]      # the pooled keys' grid
    assert result["runs"]["RGA-C"][0]["looks"] is None
    assert set(result["thread_check"]) == {"plain"}
    table = out.with_suffix(".md").read_text()
    assert "| non-local |" in table and "mass on object" in table


def test_the_zoo_scripts_workers_give_the_same_numbers(tmp_path):
    """Runs spread over two worker processes equal the same runs in one process, one thread each
    (and --seed-base moves the seeds)."""
    out = tmp_path / "zoo.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "zoo.py"), "--quick", "--arms", "plain", "CBAM",
                    "--seed-base", "3", "--thread-check", "--workers", "2", "--noise", "0.1", "--out", str(out)],
                   check=True, capture_output=True, timeout=300)
    result = json.loads(out.read_text())
    assert result["workers"] == 2 and result["noise"] == 0.1 and result["thread_check"] == {} and result["seeds"] == [3]
    bench = _benchmark()
    train, val = bench.data(True, 0.1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for arm in ("plain", "CBAM"):
            here = bench.train_with_curve(arm, train, val, 3, result["epochs"], tuple(result["checkpoints"]))
            assert result["runs"][arm] == [json.loads(json.dumps(here))]
    finally:
        torch.set_num_threads(threads)


from tutorial_lib.exercises import passes, verdict  # noqa: E402


def _chance_closed_form(size, tile, cell):
    offsets = range(size - tile + 1)
    per_axis = sum((x + tile - 1) // cell - x // cell + 1 for x in offsets) / len(offsets)
    return per_axis ** 2 / (size // cell) ** 2


def test_exercise_08_1_chance_level():
    assert passes("08.1", _chance_closed_form)
    assert not passes("08.1", lambda s, t, c: (t / s) ** 2)                           # the object's area share
    assert not passes("08.1", lambda s, t, c: (t // c) ** 2 / (s // c) ** 2)          # aligned tiles only
    assert not passes("08.1", lambda s, t, c: ((t + c - 1) // c + 1) ** 2 / (s // c) ** 2)   # always straddling
    # every placement in 0..size-1, not 0..size-tile (tiles that would leave the image)
    assert not passes("08.1", lambda s, t, c: _chance_closed_form(s + t - 1, t, c) * ((s + t - 1) // c) ** 2
                      / (s // c) ** 2)


def test_exercise_08_2_non_local_growth_prediction():
    from tutorial_lib.exercises.nb08 import _non_local_multiply_adds

    # the terms: theta and W on N positions, phi and g on N/4, attention 2 N (N/4) inner
    def predicted(n, c=32, inner=16):
        return n * c * inner * 2 + 2 * (n // 4) * c * inner + 2 * n * (n // 4) * inner

    assert _non_local_multiply_adds(64) == predicted(16 * 16)
    assert passes("08.2", predicted(32 * 32) / predicted(16 * 16))
    for wrong in (4.0, 16.0, 10.0, ..., "11", True):           # linear, quadratic, half and half, not done, not numbers
        assert not passes("08.2", wrong)
    ok, message = verdict("08.2", 4.0)
    assert not ok and "too low" in message and f"{predicted(1024) / predicted(256):.4g}" not in message


def test_exercise_08_1_says_too_high_or_too_low_and_keeps_the_value():
    ok, message = verdict("08.1", lambda s, t, c: (t / s) ** 2)
    assert not ok and "chance_level(size=64, tile=8, cell=4) is too low" in message
    expected = _chance_closed_form(64, 8, 4)
    for leak in (f"{expected:.3g}", f"{expected:.2g}", f"{expected - (8 / 64) ** 2:.3g}", "difference"):
        assert leak not in message
    ok, message = verdict("08.1", lambda s, t, c: 1.0)
    assert not ok and "too high" in message


def test_the_zoo_script_adds_arms_to_an_earlier_result(tmp_path):
    """--add-to trains only the missing arms: the same runs as one run of the script with all of them."""
    script = [sys.executable, str(ROOT / "benchmarks" / "zoo.py"), "--quick", "--thread-check"]
    both, first, added = tmp_path / "both.json", tmp_path / "first.json", tmp_path / "added.json"
    subprocess.run([*script, "--arms", "plain", "SE", "--out", str(both)], check=True, capture_output=True, timeout=300)
    subprocess.run([*script, "--arms", "SE", "--out", str(first)], check=True, capture_output=True, timeout=300)
    subprocess.run([*script, "--arms", "plain", "--add-to", str(first), "--out", str(added)], check=True,
                   capture_output=True, timeout=300)
    want, got = json.loads(both.read_text()), json.loads(added.read_text())
    assert got["arms"] == ["plain", "SE"] and got["runs"] == want["runs"] and set(got["costs"]) == {"plain", "SE"}
    other = subprocess.run([*script, "--arms", "plain", "--noise", "0.3", "--add-to", str(first), "--out",
                            str(tmp_path / "x.json")], capture_output=True, text=True, timeout=300)
    assert other.returncode != 0 and "--add-to: the earlier result was made with another recipe (noise" in other.stderr
