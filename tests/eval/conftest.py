"""Fixtures of the evaluation tests: a tiny random CLIP, a saved tiny pipeline, image sets."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from eval_helpers import save_tiny_clip, save_tiny_pipeline, tiny_clip


@pytest.fixture(scope="session")
def clip():
    from diffusion_accel.eval.metrics import Clip

    return Clip(*tiny_clip(), name="tiny")


@pytest.fixture(scope="session")
def clip_dir(tmp_path_factory):
    return save_tiny_clip(str(tmp_path_factory.mktemp("tiny-clip")))


@pytest.fixture(scope="session")
def pipeline_dir(tmp_path_factory):
    return save_tiny_pipeline(str(tmp_path_factory.mktemp("tiny-pixart")))


def scenes(n: int, seed: int = 0, size: int = 32) -> np.ndarray:
    """``n`` structured uint8 images (N, size, size, 3): coloured rectangles on plain backgrounds."""
    rng = np.random.default_rng(seed)
    out = np.zeros((n, size, size, 3), dtype=np.uint8)
    for img in out:
        img[:] = rng.integers(0, 256, 3)
        for _ in range(2):
            y, x = rng.integers(0, size - 8, 2)
            h, w = rng.integers(4, 12, 2)
            img[y : y + h, x : x + w] = rng.integers(0, 256, 3)
    return out


@pytest.fixture
def make_scenes():
    return scenes
