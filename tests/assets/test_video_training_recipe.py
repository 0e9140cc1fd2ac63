"""The video training script's single-run options: the named preset, the session deadline, the chunked bank."""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def script():
    """``scripts/train_video_benchmark_model.py`` as a module (its sibling ``train_benchmark_model`` on the path)."""
    folder = str(REPO / "scripts")
    if folder not in sys.path:
        sys.path.insert(0, folder)
    spec = importlib.util.spec_from_file_location("train_video_benchmark_model", REPO / "scripts" /
                                                  "train_video_benchmark_model.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["train_video_benchmark_model"] = module
    spec.loader.exec_module(module)
    return module


def parse(script, monkeypatch, *argv):
    monkeypatch.setattr(sys, "argv", ["train_video_benchmark_model.py", *argv])
    return script.parse_args()


def test_the_default_options_describe_the_bundled_recipe(script, monkeypatch):
    args = parse(script, monkeypatch)
    assert args.preset is None and args.latent_channels == 4 and args.wall_minutes is None
    assert args.train_clips == 1500 and args.vae_train_clips == 3000


def test_a_preset_sets_its_defaults_and_explicit_flags_win(script, monkeypatch):
    args = parse(script, monkeypatch, "--preset", "single-run-90")
    for key, value in script.PRESETS["single-run-90"].items():
        assert getattr(args, key) == value
    args = parse(script, monkeypatch, "--preset", "single-run-90", "--minutes", "5", "--latent-channels", "8")
    assert args.minutes == 5.0 and args.latent_channels == 8
    assert args.train_clips == script.PRESETS["single-run-90"]["train_clips"]


def test_the_single_run_preset_fits_its_phases_in_the_wall_budget(script):
    preset = script.PRESETS["single-run-90"]
    assert preset["wall_minutes"] <= 90
    # VAE + flow leave room for data, encoding, saving and evaluation
    assert preset["vae_minutes"] + preset["minutes"] <= preset["wall_minutes"] - 3


def test_the_session_deadline_leaves_the_evaluation_reserve(script, monkeypatch):
    log = type("Log", (), {"start": 1000.0})()
    assert script.session_deadline(parse(script, monkeypatch), log) == float("inf")
    args = parse(script, monkeypatch, "--wall-minutes", "90", "--eval-reserve-minutes", "4")
    assert script.session_deadline(args, log) == 1000.0 + 86 * 60


def test_flow_matching_stops_at_the_session_deadline(tmp_path):
    from diffusion_accel.assets.video_architecture import VideoArchitecture
    from diffusion_accel.assets.video_training import FlowSettings, train_flow_matching

    arch = VideoArchitecture()
    torch.manual_seed(0)
    latents = torch.randn(4, *arch.latent_shape)
    weights = torch.ones(4, 1, *arch.latent_shape[1:])
    ids, mask = torch.ones(2, 6, dtype=torch.long), torch.ones(2, 6, dtype=torch.long)
    common = (latents, weights, ids, mask, torch.tensor([0, 1, 0, 1]), torch.zeros(6, dtype=torch.long),
              torch.zeros(6, dtype=torch.long))
    past = FlowSettings(seconds=float("inf"), max_steps=2, batch_size=2, stop_at=time.time() - 1)
    *_, steps, _ = train_flow_matching(arch.build_transformer(), arch.build_text_encoder(8), *common, past)
    assert steps == 0
    future = FlowSettings(seconds=float("inf"), max_steps=2, batch_size=2, stop_at=time.time() + 600)
    *_, steps, _ = train_flow_matching(arch.build_transformer(), arch.build_text_encoder(8), *common, future)
    assert steps == 2


def test_the_bank_is_encoded_a_chunk_at_a_time_like_all_at_once(script):
    from diffusion_accel.assets.video_architecture import VideoArchitecture
    from diffusion_accel.assets.video_training import encode_video_latents

    torch.manual_seed(0)
    vae = VideoArchitecture(latent_channels=8).build_vae().eval()
    videos = np.random.default_rng(0).integers(0, 256, (5, 9, 32, 32, 3), dtype=np.uint8)
    chunked = script.encode_clips(vae, videos, chunk=2)
    with torch.no_grad():
        whole = encode_video_latents(vae, script.to_model_input(videos))
    assert chunked.shape == (5, 8, 5, 16, 16)
    torch.testing.assert_close(chunked, whole, atol=1e-5, rtol=1e-5)


def test_vae_stages_end_on_whole_clips_with_the_decay(script, monkeypatch):
    args = parse(script, monkeypatch, "--vae-minutes", "10", "--vae-clip-frames", "5", "--vae-lr-decay", "0.4")
    assert script.vae_stages(args) == [(600.0, 5, 0.4)]  # the bundled recipe: one stage
    args = parse(script, monkeypatch, "--vae-minutes", "10", "--vae-clip-frames", "5", "--vae-lr-decay", "0.4",
                 "--vae-full-clip-share", "0.5")
    (end1, frames1, decay1), (end2, frames2, decay2) = script.vae_stages(args)
    assert (end1, frames1, decay1) == (300.0, 5, 0.0)
    assert (end2, frames2) == (600.0, 9) and decay2 == pytest.approx(0.8)


def test_decayed_lr_holds_then_falls_to_five_percent():
    from diffusion_accel.assets.video_training import decayed_lr

    assert decayed_lr(2.0, 99, 100, 0.0, float("inf"), 0.0) == 2.0
    assert decayed_lr(2.0, 10, 100, 0.0, float("inf"), 0.5) == 2.0
    assert decayed_lr(2.0, 80, 100, 0.0, float("inf"), 0.5) == pytest.approx(0.8)
    assert decayed_lr(2.0, 0, 100, 75.0, 100.0, 0.5) == pytest.approx(1.0)  # the time budget runs out first
    assert decayed_lr(2.0, 0, 100, 100.0, 100.0, 0.5) == pytest.approx(0.1)


def test_training_noise_levels_are_shifted_like_the_schedulers_sigmas():
    from diffusers import FlowMatchEulerDiscreteScheduler

    from diffusion_accel.assets.video_training import shift_noise_levels

    levels = torch.linspace(0.0, 1.0, 11)
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    unshifted = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)
    torch.testing.assert_close(shift_noise_levels(unshifted.sigmas, 3.0), scheduler.sigmas, atol=1e-6, rtol=1e-6)
    assert torch.equal(shift_noise_levels(levels, 1.0), levels)
    with pytest.raises(ValueError, match="shift must be > 0"):
        shift_noise_levels(levels, 0.0)


def test_the_flow_batch_draws_shifted_noise_levels():
    from diffusion_accel.assets.video_training import FlowSettings, _flow_batch, shift_noise_levels

    latents, weights = torch.randn(8, 4, 5, 16, 16), torch.ones(8, 1, 5, 16, 16)
    ids, mask = torch.ones(2, 6, dtype=torch.long), torch.ones(2, 6, dtype=torch.long)
    args = (latents, weights, ids, mask, torch.arange(8) % 2, torch.zeros(6, dtype=torch.long),
            torch.zeros(6, dtype=torch.long))
    draws = {shift: _flow_batch(torch.Generator().manual_seed(0), FlowSettings(seconds=1.0, batch_size=64,
                                                                                timestep_shift=shift), *args)[-1]
             for shift in (1.0, 3.0)}
    torch.testing.assert_close(draws[3.0], shift_noise_levels(draws[1.0], 3.0))
    assert draws[3.0].median() > 0.7 > 0.55 > draws[1.0].median()


def test_the_shift_flag_reaches_the_architecture_and_the_preset_shifts(script, monkeypatch):
    assert parse(script, monkeypatch).shift == 1.0  # the bundled model's scheduler
    assert parse(script, monkeypatch, "--preset", "single-run-90").shift == 3.0
