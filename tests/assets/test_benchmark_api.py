"""Public API of the bundled benchmark assets (no scikit-learn needed)."""

from __future__ import annotations

import os

import numpy as np
import pytest

import diffusion_accel.assets as assets
from diffusion_accel.assets.digits import NO_OBJECT, caption_for


@pytest.mark.parametrize("function", [assets.benchmark_prompts, assets.benchmark_images, assets.benchmark_attributes])
def test_bad_split_names_the_valid_ones(function):
    with pytest.raises(ValueError, match="'train', 'heldout'"):
        function("validation")


def test_directories_hold_the_saved_models():
    assert os.path.isfile(os.path.join(assets.benchmark_model_dir(), "model_index.json"))
    clip_files = os.listdir(assets.benchmark_clip_dir())
    assert "config.json" in clip_files and "tokenizer.json" in clip_files
    assert {"processor_config.json", "preprocessor_config.json"} & set(clip_files)
    assert os.path.isfile(assets.model_card_path())


@pytest.mark.parametrize("split", assets.BENCHMARK_SPLITS)
def test_images_captions_and_attributes_agree(split):
    images, captions = assets.benchmark_images(split)
    attrs = assets.benchmark_attributes(split)
    assert images.dtype == np.uint8 and images.ndim == 4 and images.shape[1:] == (32, 32, 3)
    assert len(captions) == len(images) >= 64 and captions == assets.benchmark_prompts(split)
    for i in range(0, len(images), 7):
        expected = caption_for(attrs["digits"][i], attrs["colours"][i], attrs["sizes"][i], attrs["positions"][i],
                               attrs["backgrounds"][i])
        assert captions[i] == expected
    first_colour = attrs["colour_names"][attrs["colours"][0, 0]]
    assert first_colour in captions[0]


def test_heldout_and_train_sample_use_different_scans():
    with np.load(os.path.join(os.path.dirname(assets.__file__), "benchmark_data.npz")) as data:
        heldout, train = data["heldout_scans"], data["train_scans"]
    assert set(heldout[heldout != NO_OBJECT].tolist()).isdisjoint(train[train != NO_OBJECT].tolist())


def test_missing_asset_error_says_how_to_rebuild(monkeypatch, tmp_path):
    monkeypatch.setattr(assets, "_HERE", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="train_benchmark_model.py"):
        assets.benchmark_model_dir()
