"""The zoo of notebook 08: one backbone for every arm, the same starting weights, maps to score."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tutorial_lib.zoo import ARMS, ZooNet, build, spatial_map

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


def test_the_zoo_script_runs_quickly(tmp_path):
    out = tmp_path / "zoo.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "zoo.py"), "--quick", "--arms", "plain", "CBAM",
                    "CSRA", "--out", str(out)], check=True, capture_output=True, timeout=300)
    table = out.with_suffix(".md").read_text()
    assert "| CBAM |" in table and "random map (control)" in table
