"""The digit-scene data recipe: deterministic, disjoint splits, captions that state the scene."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("sklearn")

from diffusion_accel.assets.digits import (  # noqa: E402
    NO_OBJECT,
    RECIPE,
    caption_for,
    caption_vocabulary,
    heldout_combinations,
    load_digit_scans,
    make_split,
    split_scan_indices,
)


@pytest.fixture(scope="module")
def scans():
    return load_digit_scans()


def test_generation_is_deterministic(scans):
    first = make_split("heldout", 40, seed=0, scans=scans)
    second = make_split("heldout", 40, seed=0, scans=scans)
    assert np.array_equal(first.images, second.images)
    assert first.captions == second.captions
    other = make_split("heldout", 40, seed=0, scans=scans, sample_seed=1)
    assert other.captions != first.captions


def test_scan_split_is_disjoint_and_complete(scans):
    _, labels = scans
    train, heldout = split_scan_indices(labels)
    assert len(np.intersect1d(train, heldout)) == 0
    assert len(train) + len(heldout) == len(labels)
    assert set(labels[heldout]) == set(range(10))  # every digit is held out in part


def test_splits_use_disjoint_scans_and_train_avoids_heldout_combinations(scans):
    train = make_split("train", 400, seed=0, scans=scans)
    sample = make_split("train", 100, seed=0, scans=scans, sample_seed=7)
    heldout = make_split("heldout", 200, seed=0, scans=scans)
    used = lambda scenes: set(scenes.scans[scenes.scans != NO_OBJECT].tolist())  # noqa: E731
    assert used(train).isdisjoint(used(heldout))
    assert used(sample).isdisjoint(used(heldout))
    table = heldout_combinations()
    present = train.digits != NO_OBJECT
    assert not table[train.colours[present], train.digits[present], train.positions[present]].any()
    assert heldout.novel.any() and not train.novel.any()


def test_captions_state_the_scene(scans):
    scenes = make_split("train", 60, seed=0, scans=scans)
    words = set(caption_vocabulary())
    _, labels = scans
    for i, caption in enumerate(scenes.captions):
        assert caption == caption_for(
            scenes.digits[i], scenes.colours[i], scenes.sizes[i], scenes.positions[i], scenes.backgrounds[i]
        )
        assert set(caption.split()) <= words
        present = scenes.digits[i] != NO_OBJECT
        assert np.array_equal(labels[scenes.scans[i][present]], scenes.digits[i][present])
        assert caption.count(" in the ") == present.sum()
    assert scenes.images.shape == (60, 32, 32, 3) and scenes.images.dtype == np.uint8


def test_digit_is_drawn_in_its_colour_at_its_position(scans):
    scenes = make_split("train", 80, seed=0, scans=scans)
    for i in np.flatnonzero((scenes.digits != NO_OBJECT).sum(axis=1) == 1):
        row, col = RECIPE.positions[scenes.positions[i, 0]][1]
        strongest = np.unravel_index(np.argmax(scenes.alpha[i]), scenes.alpha[i].shape)
        assert abs(strongest[0] - row) <= 8 and abs(strongest[1] - col) <= 8
        colour = np.asarray(RECIPE.colours[scenes.colours[i, 0]][1])
        assert np.abs(scenes.images[i][strongest].astype(int) - colour).max() <= 40


def test_bad_split_and_count_raise(scans):
    with pytest.raises(ValueError, match="heldout"):
        make_split("test", 3, scans=scans)
    with pytest.raises(ValueError):
        make_split("train", -1, scans=scans)
