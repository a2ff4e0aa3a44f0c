"""The synthetic data sets are deterministic for a seed, and their ground truth matches the images."""
import numpy as np
import pytest
import torch

import tutorial_lib as tl
from tutorial_lib.data import GLYPHS, TILE


def test_objects_on_clutter_is_deterministic_for_a_seed():
    a, b = tl.objects_on_clutter(40, seed=3), tl.objects_on_clutter(40, seed=3)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels) and torch.equal(a.masks, b.masks)
    c = tl.objects_on_clutter(40, seed=4)
    assert not torch.equal(a.images, c.images)


def test_objects_on_clutter_shapes_ranges_and_balance():
    d = tl.objects_on_clutter(400, seed=0)
    assert d.images.shape == (400, 3, 32, 32) and d.images.dtype == torch.float32
    assert d.masks.shape == (400, 32, 32) and d.masks.dtype == torch.bool
    assert d.images.min() >= 0 and d.images.max() <= 1
    assert d.class_names == ("plus", "cross", "ring", "triangle")
    counts = torch.bincount(d.labels, minlength=4)
    assert counts.min() > 70  # roughly balanced: 100 expected per class
    assert len(d) == 400 and d[5][1] == d.labels[5]


def _tile(d, i):
    ys, xs = torch.nonzero(d.masks[i], as_tuple=True)
    y0, x0 = ys.min().item(), xs.min().item()
    return d.images[i, :, y0:y0 + TILE, x0:x0 + TILE], (ys.max() - y0 + 1, xs.max() - x0 + 1)


def test_objects_on_clutter_masks_match_the_images():
    """Without pixel noise, the masked 8x8 region holds exactly two colours: the tile's, and
    the glyph's in the pattern of the sample's class."""
    d = tl.objects_on_clutter(60, noise=0.0, seed=1)
    assert (d.masks.flatten(1).sum(1) == TILE * TILE).all()
    for i in range(len(d)):
        patch, extent = _tile(d, i)
        assert tuple(int(e) for e in extent) == (TILE, TILE)  # one solid square
        tile_colour = patch[:, 0, 0]
        is_tile = (patch == tile_colour[:, None, None]).all(0)
        assert is_tile[0].all() and is_tile[-1].all() and is_tile[:, 0].all() and is_tile[:, -1].all()
        glyph = ~is_tile[1:-1, 1:-1]
        expected = torch.from_numpy(GLYPHS[d.class_names[d.labels[i]]])
        assert torch.equal(glyph, expected), f"sample {i}: glyph does not match its label"
        ink = patch[:, 1:-1, 1:-1][:, glyph]
        assert (ink == ink[:, :1]).all()  # a single ink colour


def test_objects_on_clutter_noise_changes_no_layout():
    clean, noisy = tl.objects_on_clutter(30, noise=0.0, seed=2), tl.objects_on_clutter(30, noise=0.05, seed=2)
    assert torch.equal(clean.labels, noisy.labels) and torch.equal(clean.masks, noisy.masks)
    diff = (clean.images - noisy.images).abs()
    assert 0 < diff.mean() < 0.06


def test_channel_signal_is_deterministic_and_its_channel_masks_match():
    a, b = tl.channel_signal(200, seed=5), tl.channel_signal(200, seed=5)
    assert torch.equal(a.images, b.images) and torch.equal(a.channel_masks, b.channel_masks)
    assert a.images.shape == (200, 16, 16, 16)
    assert (a.channel_masks.sum(1) == 3).all()
    # informative channels carry the mean offset: their means are near 1, the others near 0
    means = a.images.mean(dim=(2, 3))
    assert means[a.channel_masks].mean() > 0.8 and means[~a.channel_masks].abs().mean() < 0.2
    # the informative set changes from image to image
    assert len({tuple(row.nonzero().flatten().tolist()) for row in a.channel_masks}) > 50


def test_channel_signal_orientation_follows_the_label_only_in_informative_channels():
    d = tl.channel_signal(300, noise=0.0, amplitude=0.0, seed=6)
    # vertical grating: constant along each column => the row-to-row variation is ~0
    along_rows = (d.images[:, :, 1:, :] - d.images[:, :, :-1, :]).abs().mean(dim=(2, 3))
    vertical = along_rows < 1e-6
    informative_vertical = vertical[d.channel_masks].view(300, 3)
    assert torch.equal(informative_vertical, (d.labels == 1)[:, None].expand(300, 3))
    other = vertical[~d.channel_masks]
    assert 0.35 < other.float().mean() < 0.65  # distractors: random orientation


def test_split_and_subset():
    d = tl.objects_on_clutter(50, seed=0)
    train, val = d.split(40)
    assert len(train) == 40 and len(val) == 10
    assert torch.equal(val.masks, d.masks[40:])
    with pytest.raises(ValueError, match="expected 0 < n_train < 50"):
        d.split(50)


def test_bad_arguments_are_rejected_clearly():
    with pytest.raises(ValueError, match="objects_on_clutter: n: expected an integer >= 1"):
        tl.objects_on_clutter(0)
    with pytest.raises(ValueError, match="expected informative < channels"):
        tl.channel_signal(10, channels=4, informative=4)


def test_sample_image_is_offline_and_square():
    img = tl.sample_image(size=48)
    assert img.shape == (3, 48, 48) and 0 <= img.min() and img.max() <= 1
    full = tl.sample_image(size=None)
    assert full.shape == (3, 600, 512)


def test_handmade_features_respond_to_what_their_names_say():
    img = torch.zeros(3, 16, 16)
    img[:, :, 8:] = 1.0                              # one vertical edge
    f = tl.handmade_features(img)
    assert f.shape == (8, 16, 16) and (f >= 0).all()
    energy = dict(zip(tl.FEATURE_NAMES, f.sum(dim=(1, 2)).tolist()))
    assert energy["edge |"] > 10 * max(energy["edge -"], 1e-6)
    diag = torch.zeros(3, 16, 16)
    for i in range(16):
        diag[:, i, 15 - i] = 1.0                     # a '/' line
    energy = dict(zip(tl.FEATURE_NAMES, tl.handmade_features(diag).sum(dim=(1, 2)).tolist()))
    assert energy["edge /"] > 5 * energy["edge \\"]
    with pytest.raises(ValueError, match="expected an RGB image"):
        tl.handmade_features(torch.zeros(2, 8, 8))


def test_attention_on_mask_scores():
    masks = torch.zeros(2, 8, 8, dtype=torch.bool)
    masks[:, :4, :4] = True
    uniform = torch.ones(2, 8, 8)
    np.testing.assert_allclose(tl.attention_on_mask(uniform, masks).numpy(), [0.25, 0.25], rtol=1e-6)
    np.testing.assert_allclose(tl.attention_on_mask(masks.float()[:, None], masks).numpy(), [1.0, 1.0])
    coarse = torch.tensor([[1.0, 0.0], [0.0, 0.0]]).expand(2, 2, 2)   # lower resolution map
    assert (tl.attention_on_mask(coarse, masks) > 0.7).all()
    with pytest.raises(ValueError, match="non-negative"):
        tl.attention_on_mask(-uniform, masks)
    with pytest.raises(ValueError, match="same B"):
        tl.attention_on_mask(uniform[:1], masks)
