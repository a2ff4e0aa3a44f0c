"""The zoo of notebook 08: one backbone for every arm, the same starting weights, maps to score."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tutorial_lib.zoo import ARMS, ZooNet, build, peak_on_object, spatial_map

ROOT = Path(__file__).resolve().parents[1]


def test_every_arm_starts_from_the_same_backbone_and_plain_head():
    plain = build("plain", 4, seed=3)
    for arm in ARMS:
        net = build(arm, 4, seed=3)
        for a, b in zip(plain.features.state_dict().values(), net.features.state_dict().values()):
            assert torch.equal(a, b), arm
        if arm != "CSRA":
            assert torch.equal(plain.head[2].weight, net.head[2].weight), arm
    assert not torch.equal(build("plain", 4, seed=4).features[0].weight, plain.features[0].weight)


@pytest.mark.parametrize("arm", ARMS)
def test_each_arm_classifies_and_hands_back_a_map_of_where_it_looks(arm):
    net = build(arm, 4, seed=0).eval()
    x = torch.rand(3, 3, 32, 32)
    assert net(x).shape == (3, 4)
    maps = spatial_map(net, x, torch.tensor([0, 1, 2]))
    if arm == "SE":
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


@pytest.mark.parametrize("arm", ["RGA", "non-local", "CSRA"])
def test_the_mechanism_is_built_for_the_image_size(arm):
    net = build(arm, 4, seed=0, size=48).eval()
    assert net(torch.rand(2, 3, 48, 48)).shape == (2, 4)
    side = 6 if arm == "non-local" else 12      # non-local: where it reads from, the 2x2-pooled key grid
    assert spatial_map(net, torch.rand(2, 3, 48, 48), torch.tensor([0, 1])).shape == (2, side, side)


def _peak_on_object_literal(maps, masks):
    """Loops: find the largest value, then look at every pixel of its cell."""
    b, h, w = maps.shape
    ch, cw = masks.shape[1] // h, masks.shape[2] // w
    out = []
    for i in range(b):
        best = max(((float(maps[i, y, x]), y, x) for y in range(h) for x in range(w)))
        _, y, x = best
        out.append(float(any(bool(masks[i, y * ch + dy, x * cw + dx]) for dy in range(ch) for dx in range(cw))))
    return torch.tensor(out, dtype=torch.float64)


def test_peak_on_object_matches_loops_over_cells_and_pixels():
    g = torch.Generator().manual_seed(0)
    maps = torch.rand(50, 4, 4, generator=g)
    masks = torch.zeros(50, 16, 16, dtype=torch.bool)
    for i in range(50):
        y, x = torch.randint(0, 12, (2,), generator=g).tolist()
        masks[i, y:y + 5, x:x + 5] = True
    got = peak_on_object(maps, masks)
    torch.testing.assert_close(got.double(), _peak_on_object_literal(maps, masks))
    assert 0 < got.mean() < 1


def test_a_flat_map_scores_the_chance_level_not_the_first_cell():
    masks = torch.zeros(4000, 8, 8, dtype=torch.bool)
    masks[:, 4:, :] = True                      # the object covers the lower half; the first cell is outside
    rate = peak_on_object(torch.full((4000, 4, 4), 0.5), masks).mean().item()
    assert abs(rate - 0.5) < 0.05


def test_peak_on_object_refuses_maps_and_masks_that_do_not_fit():
    with pytest.raises(ValueError, match="peak_on_object: expected maps"):
        peak_on_object(torch.rand(2, 4, 4), torch.zeros(3, 16, 16, dtype=torch.bool))
    with pytest.raises(ValueError, match="do not split into the maps' 4x4 cells"):
        peak_on_object(torch.rand(2, 4, 4), torch.zeros(2, 18, 16, dtype=torch.bool))


def test_the_zoo_script_runs_quickly(tmp_path):
    out = tmp_path / "zoo.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "zoo.py"), "--quick", "--arms", "plain", "CBAM",
                    "CSRA", "--out", str(out)], check=True, capture_output=True, timeout=300)
    table = out.with_suffix(".md").read_text()
    assert "| CBAM |" in table and "random map (control)" in table


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
