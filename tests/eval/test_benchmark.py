"""Metrics on the bundled benchmark model and CLIP (skipped until the assets are built)."""

import itertools

import numpy as np
import pytest

from diffusion_accel.eval import metrics as M
from diffusion_accel.eval.prompts import load_prompts


def _asset(name):
    from diffusion_accel import assets

    try:
        return getattr(assets, name)()
    except FileNotFoundError as exc:
        pytest.skip(f"bundled benchmark asset not built: {exc}")


@pytest.fixture(scope="module")
def bundled_clip():
    _asset("benchmark_clip_dir")
    return M.load_clip("benchmark")


@pytest.fixture(scope="module")
def heldout():
    from diffusion_accel.assets import benchmark_images

    try:
        images, captions = benchmark_images("heldout")
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    return images, captions


def test_benchmark_prompts_are_the_heldout_captions(heldout):
    assert [p.text for p in load_prompts("benchmark")] == heldout[1]
    assert len(load_prompts("benchmark:train", num=5, seed=0)) == 5


def _derangement(n, seed=0):
    rng = np.random.default_rng(seed)
    while True:
        perm = rng.permutation(n)
        if not np.any(perm == np.arange(n)):
            return perm


def test_clip_score_of_matching_captions_beats_shuffled_on_real_images(bundled_clip, heldout):
    images, captions = heldout[0][:32], heldout[1][:32]
    shuffled = [captions[i] for i in _derangement(len(captions))]
    # Measured: about 95 vs 2.
    assert M.clip_score(images, captions, bundled_clip) > M.clip_score(images, shuffled, bundled_clip) + 20.0


@pytest.mark.slow
def test_clip_score_of_matching_captions_beats_shuffled_on_generated_images(bundled_clip, heldout, tmp_path):
    from diffusion_accel.assets import BENCHMARK_GENERATION_KWARGS
    from diffusion_accel.eval.generate import generate_images, load_arrays, make_items
    from diffusion_accel.eval.sweep import load_pipeline

    _asset("benchmark_model_dir")
    pipe = load_pipeline("benchmark")
    items = make_items(load_prompts("benchmark", num=4, seed=0))
    kwargs = {**BENCHMARK_GENERATION_KWARGS, "num_inference_steps": 10}
    generate_images(pipe, items, tmp_path, batch_size=4, call_kwargs=kwargs, progress=False)
    images = load_arrays(tmp_path, [it.key for it in items])
    captions = [it.prompt for it in items]
    shuffled = [captions[i] for i in _derangement(len(captions))]
    # Measured on 8 images: about 68 vs 3.
    assert M.clip_score(images, captions, bundled_clip) > M.clip_score(images, shuffled, bundled_clip) + 20.0


def test_fid_with_bundled_clip_features_is_zero_on_itself_and_rises_with_noise(bundled_clip, heldout):
    images = heldout[0][:64]
    features = M.fid_features("clip", bundled_clip)
    reference = M.load_reference(images, features)
    rng = np.random.default_rng(0)
    values = []
    for sigma in (0.0, 0.05, 0.1, 0.2, 0.4):
        noise = rng.normal(0, sigma * 255, images.shape)
        values.append(M.fid(np.clip(np.round(images + noise), 0, 255).astype(np.uint8), reference, features))
    assert values[0] == pytest.approx(0.0, abs=1e-6)
    assert all(b > a for a, b in itertools.pairwise(values)), values
