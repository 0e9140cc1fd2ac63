"""Video metrics: Fréchet video distance on clip-level CLIP features, flicker, temporal fidelity."""

import math

import numpy as np
import pytest
import torch

from diffusion_accel.eval import metrics as M
from diffusion_accel.eval.video_metrics import (
    PSNR_CEILING,
    ClipVideoFeatures,
    TemporalSums,
    fvd,
    fvd_features,
    video_reference_stats,
    video_tensor,
)


def moving_square(n=3, frames=5, size=16, step=1, seed=0):
    """uint8 (n, frames, size, size, 3): a bright square moving ``step`` px right per frame."""
    rng = np.random.default_rng(seed)
    videos = np.zeros((n, frames, size, size, 3), np.uint8)
    for i in range(n):
        top, colour = int(rng.integers(0, size - 4)), rng.integers(64, 256, 3)
        for f in range(frames):
            videos[i, f, top : top + 4, f * step : f * step + 4] = colour
    return videos


def test_identical_videos_have_no_temporal_error_and_infinite_psnr():
    videos = moving_square()
    sums = TemporalSums()
    sums.update(videos, videos)
    values = sums.compute()
    assert values["temporal_error"] == 0.0 and values["psnr_per_video"] == math.inf
    assert values["ssim_per_video"] == pytest.approx(1.0)
    assert values["flicker"] == values["baseline_flicker"] > 0


def test_frozen_motion_is_temporal_error_equal_to_the_baselines_flicker():
    moving = moving_square()
    frozen = np.repeat(moving[:, :1], moving.shape[1], axis=1)  # a cache that stopped the clock
    sums = TemporalSums()
    sums.update(frozen, moving)
    values = sums.compute()
    assert values["flicker"] == 0.0
    assert values["temporal_error"] == pytest.approx(values["baseline_flicker"], rel=1e-12)


def test_psnr_per_video_is_the_mean_of_each_videos_psnr():
    base = moving_square(n=2)
    shifted = base.copy()
    shifted[0] = np.clip(base[0].astype(int) + 10, 0, 255).astype(np.uint8)  # every pixel +10 (none clip)
    sums = TemporalSums()
    sums.update(shifted, base)
    expected = (20 * math.log10(25.5) + PSNR_CEILING) / 2  # the second video is identical
    assert sums.compute()["psnr_per_video"] == pytest.approx(expected, rel=1e-9)


def test_temporal_sums_reject_images_and_mismatched_items():
    sums = TemporalSums()
    with pytest.raises(ValueError, match=r"videos \(N, F, H, W, 3\)"):
        sums.update(np.zeros((2, 8, 8, 3), np.uint8), np.zeros((2, 8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="same items"):
        sums.update(moving_square(n=2), moving_square(n=3))
    with pytest.raises(ValueError, match="before any update"):
        sums.compute()


def test_clip_video_features_see_motion_that_frame_features_do_not(clip):
    extractor = fvd_features("clip-video", clip)
    assert isinstance(extractor, ClipVideoFeatures)
    moving = moving_square(n=2, frames=4, size=32, step=4)
    frozen = np.repeat(moving[:, :1], 4, axis=1)
    with torch.inference_mode():
        f_moving, f_frozen = extractor(video_tensor(moving)), extractor(video_tensor(frozen))
    d = f_moving.shape[1] // 3
    assert f_moving.shape == (2, extractor.num_features) and f_moving.dtype == torch.float64
    assert torch.all(f_frozen[:, d:] == 0)  # no spread, no change over time
    assert torch.all(f_moving[:, 2 * d :].abs().sum(1) > 0)


def test_fvd_is_zero_for_the_reference_itself_and_grows_when_motion_freezes(clip):
    extractor = fvd_features("clip-video", clip)
    moving = moving_square(n=6, frames=4, size=32, step=4, seed=1)
    frozen = np.repeat(moving[:, :1], 4, axis=1)
    stats = video_reference_stats(moving, extractor)
    assert stats.feature_kind == "clip-video" and stats.num_samples == 6
    assert fvd(moving, stats, extractor) == pytest.approx(0.0, abs=1e-6)
    # Fréchet distance >= |mean difference|^2, and frozen videos differ at least in the change features
    with torch.inference_mode():
        change = extractor(video_tensor(moving))[:, 2 * (extractor.num_features // 3) :].mean(0)
    bound = float(change.pow(2).sum())
    assert bound > 0 and fvd(frozen, moving, extractor) >= bound * (1 - 1e-6)


def test_unknown_video_extractor_and_too_few_videos_are_clear_errors(clip):
    with pytest.raises(ValueError, match="choose one of"):
        fvd_features("i3d", clip)
    with pytest.raises(ValueError, match="CLIP model"):
        fvd_features("clip-video", None)
    extractor = fvd_features("clip-video", clip)
    with pytest.raises(ValueError, match="at least 2 reference videos"):
        video_reference_stats(moving_square(n=1, size=32), extractor)


def test_a_custom_module_plugs_in_as_the_video_extractor():
    class MeanColour(torch.nn.Module):
        kind, num_features = "mean-colour", 3

        def forward(self, videos):
            return videos.double().mean(dim=(1, 3, 4))

    extractor = fvd_features(MeanColour())
    videos = moving_square(n=4, size=16)
    assert isinstance(video_reference_stats(videos, extractor), M.ReferenceStats)
    assert fvd(videos, videos, extractor) == pytest.approx(0.0, abs=1e-6)


def test_a_custom_extractor_without_num_features_is_a_clear_error():
    with pytest.raises(ValueError, match="num_features"):
        fvd_features(torch.nn.Identity())


def test_quality_scorer_adds_temporal_scores_and_fvd_for_videos(clip):
    from diffusion_accel.eval.scoring import QualityScorer

    extractor = fvd_features("clip-video", clip)
    moving = moving_square(n=4, frames=4, size=32, step=4, seed=2)
    frozen = np.repeat(moving[:, :1], 4, axis=1)
    stats = video_reference_stats(moving, extractor)
    scorer = QualityScorer(lpips=False, video_extractor=extractor, video_reference=stats, video_baseline=stats)
    scorer.update(frozen[:2], moving[:2], ["a", "b"])
    scorer.update(frozen[2:], moving[2:], ["c", "d"])  # streamed in chunks
    values, _ = scorer.compute()
    whole = TemporalSums()
    whole.update(frozen, moving)
    for key, value in whole.compute().items():
        assert values[key] == pytest.approx(value, rel=1e-12)
    assert values["fvd"] == values["fvd_vs_baseline"] == pytest.approx(fvd(frozen, stats, extractor), rel=1e-9)


def test_quality_scorer_leaves_images_without_video_scores():
    from diffusion_accel.eval.scoring import QualityScorer

    images = np.zeros((2, 8, 8, 3), np.uint8)
    scorer = QualityScorer(lpips=False)
    scorer.update(images, images, ["a", "b"])
    values, _ = scorer.compute()
    assert "flicker" not in values and "fvd" not in values


def test_the_bundled_held_out_clips_are_the_default_fvd_reference(clip):
    """``--video-reference auto`` for benchmark-video: the 200 real held-out clips, re-rendered."""
    from diffusion_accel.assets.bundled import BUNDLED_MODELS
    from diffusion_accel.eval.video_metrics import load_video_reference

    pytest.importorskip("sklearn")
    assert BUNDLED_MODELS["benchmark-video"].fvd_reference == "benchmark-video"
    assert BUNDLED_MODELS["benchmark"].fvd_reference is None
    extractor = fvd_features("clip-video", clip)
    stats = load_video_reference("benchmark-video", extractor)
    assert stats.num_samples == 200 and stats.feature_kind == "clip-video"
    with pytest.raises(ValueError, match="video-reference"):
        load_video_reference("clips.mp4", extractor)
