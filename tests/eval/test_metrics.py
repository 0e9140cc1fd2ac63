import itertools
import json
import math

import numpy as np
import pytest
import torch

from diffusion_accel.eval import metrics as M
from diffusion_accel.eval.report import decode_json_value, encode_json_value


def noisy(images, sigma, seed=1):
    rng = np.random.default_rng(seed)
    out = images.astype(np.float64) + rng.normal(0, sigma * 255, images.shape)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def test_fid_of_a_set_against_itself_is_zero(clip, make_scenes):
    images = make_scenes(48)
    features = M.fid_features("clip", clip)
    assert M.fid(images, images, features) == pytest.approx(0.0, abs=1e-6)


def test_fid_rises_monotonically_with_noise(clip, make_scenes):
    images = make_scenes(64)
    features = M.fid_features("clip", clip)
    reference = M.load_reference(images, features)
    values = [M.fid(noisy(images, s), reference, features) for s in (0.0, 0.05, 0.1, 0.2, 0.4)]
    assert values[0] == pytest.approx(0.0, abs=1e-6)
    assert all(b > a for a, b in itertools.pairwise(values)), values


def test_fid_reference_statistics_saved_equal_the_folder(clip, make_scenes, tmp_path):
    from PIL import Image

    real, fake = make_scenes(20, seed=0), make_scenes(20, seed=5)
    for i, img in enumerate(real):
        Image.fromarray(img).save(tmp_path / f"{i:03d}.png")
    features = M.fid_features("clip", clip)
    from_folder = M.fid(fake, str(tmp_path), features)
    M.load_reference(str(tmp_path), features).save(tmp_path / "stats.npz")
    assert M.fid(fake, str(tmp_path / "stats.npz"), features) == from_folder
    assert from_folder == pytest.approx(M.fid(fake, real, features), rel=1e-9)
    assert from_folder > 0


def test_reference_folder_without_images_is_one_clear_error(clip, tmp_path, make_scenes):
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(ValueError, match="holds no images"):
        M.fid(make_scenes(4), str(tmp_path), M.fid_features("clip", clip))


def test_reference_stats_of_another_extractor_are_refused(clip, tmp_path, make_scenes):
    stats = M.reference_stats(make_scenes(4), M.fid_features("clip", clip))
    stats.feature_kind = "inception-2048"
    stats.save(tmp_path / "s.npz")
    with pytest.raises(ValueError, match="computed with 'inception-2048' features"):
        M.fid(make_scenes(4), str(tmp_path / "s.npz"), M.fid_features("clip", clip))


def test_inception_without_torch_fidelity_says_how_to_get_it():
    from torchmetrics.utilities.imports import _TORCH_FIDELITY_AVAILABLE

    if _TORCH_FIDELITY_AVAILABLE:
        pytest.skip("torch-fidelity is installed")
    with pytest.raises(ValueError, match=r"torch-fidelity.*diffusion-accel\[fid\]"):
        M.fid_features("inception")


def test_psnr_of_identical_images_is_infinite_and_survives_json(make_scenes):
    images = make_scenes(3)
    value = M.psnr(images, images)
    assert value == math.inf
    text = json.dumps(encode_json_value({"psnr": value}))
    assert json.loads(text) == {"psnr": "inf"}
    assert decode_json_value(json.loads(text))["psnr"] == math.inf


def test_psnr_matches_its_definition(make_scenes):
    a = make_scenes(3)
    b = noisy(a, 0.05)
    mse = np.mean((a.astype(np.float64) / 255 - b.astype(np.float64) / 255) ** 2)
    assert M.psnr(b, a) == pytest.approx(10 * math.log10(1 / mse), rel=1e-5)


def test_ssim_is_one_for_identical_images_and_lower_with_noise(make_scenes):
    a = make_scenes(3)
    assert M.ssim(a, a) == pytest.approx(1.0, abs=1e-6)
    assert M.ssim(noisy(a, 0.1), a) < M.ssim(noisy(a, 0.02), a) < 1.0


def test_lpips_without_weights_returns_none_and_a_reason(make_scenes):
    a = make_scenes(2)
    value, reason = M.lpips(a, a)
    try:
        import torchvision  # noqa: F401
    except ImportError:
        assert value is None and "LPIPS not computed" in reason and "torchvision" in reason
    else:
        assert (value is None) == (reason is not None)


def test_numeric_deviation_values():
    a = np.zeros((2, 4, 4, 3), dtype=np.uint8)
    b = a.copy()
    b[0, 0, 0, 0] = 255
    dev = M.numeric_deviation(b, a)
    n = a.size
    assert dev["max_abs_error"] == 1.0
    assert dev["mean_abs_error"] == pytest.approx(1.0 / n)
    # One value of n moved from 0 to 1: the value distributions differ by 1/n of mass over distance 1.
    assert dev["wasserstein"] == pytest.approx(1.0 / n)
    shifted = M.numeric_deviation(np.full((5,), 0.5), np.full((5,), 0.25))
    assert shifted == {"max_abs_error": 0.25, "mean_abs_error": 0.25, "wasserstein": 0.25}
    with pytest.raises(ValueError, match="shapes"):
        M.numeric_deviation(a, a[:1])


def test_clip_score_is_torchmetrics_clipscore_and_video_metrics(clip, make_scenes):
    from torchmetrics.multimodal.clip_score import CLIPScore

    images = make_scenes(4)
    prompts = ["a red box", "a blue box", "two boxes", "a green box"]
    metric = CLIPScore(model_name_or_path=clip.as_callable())
    metric.update(torch.from_numpy(images).permute(0, 3, 1, 2), prompts)
    assert M.clip_score(images, prompts, clip, batch_size=3) == pytest.approx(float(metric.compute()), rel=1e-5)

    still = np.repeat(images[:2, None], 3, axis=1)  # two "videos" of 3 identical frames
    out = M.video_clip_metrics(still, prompts[:2], clip)
    assert out["frame_consistency"] == pytest.approx(100.0, abs=1e-3)
    assert out["clip_score"] == pytest.approx(M.clip_score(images[:2], prompts[:2], clip), rel=1e-5)
    moving = still.copy()
    moving[:, 1] = images[2:4]
    assert M.video_clip_metrics(moving, prompts[:2], clip)["frame_consistency"] < 99.9


def test_clip_score_rejects_mismatched_lengths(clip, make_scenes):
    with pytest.raises(ValueError, match="2 images but 1 prompts"):
        M.clip_score(make_scenes(2), ["x"], clip)
