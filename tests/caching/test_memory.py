"""Cache memory: released at the end of every call on every family, peak of the last call reported."""

import pytest
import torch

import diffusion_accel
from diffusion_accel import AccelerationConfig
from diffusion_accel.api import acceleration_state
from diffusion_accel.caching import CacheSchedule, DynamicCacheConfig, StaticCacheConfig
from diffusion_accel.hooks import reset_denoiser_state
from diffusion_accel.testing import TINY_PIPELINES, tiny_pipeline


def _cache_report(pipe):
    return acceleration_state(pipe).report()["cache"]


def _denoiser(pipe):
    return pipe.unet if hasattr(pipe, "unet") else pipe.transformer


@pytest.mark.parametrize("name", TINY_PIPELINES)
def test_caches_are_released_at_the_end_of_every_call(name, run_pipe):
    """PixArt, SD3 and SD1.5 used to keep their caches between calls (diffusers resets stateful
    hooks at the end of a call only for its CacheMixin models: Flux, Wan, CogVideoX)."""
    pipe = tiny_pipeline(name)
    configs = [  # both end with a reused / skipped step
        StaticCacheConfig(CacheSchedule.fora(pipe, 4, 2)),
        DynamicCacheConfig(threshold=1e9, max_consecutive_skips=1),
    ]
    for config in configs:
        diffusion_accel.apply(pipe, AccelerationConfig(cache=config))
        run_pipe(pipe, name, num_inference_steps=4)
        report = _cache_report(pipe)
        assert report["peak_cache_bytes"] > 0, type(config).__name__
        assert report["cache_bytes"] == 0, type(config).__name__


def test_a_call_that_fails_half_way_releases_its_caches(run_pipe):
    pipe = tiny_pipeline("sd3")
    diffusion_accel.apply(pipe, AccelerationConfig(cache=StaticCacheConfig(CacheSchedule.fora(pipe, 4, 2))))

    def fail_after_step_0(p, i, t, kwargs):
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError, match="stop"):
        run_pipe(pipe, "sd3", num_inference_steps=4, callback_on_step_end=fail_after_step_0)
    report = _cache_report(pipe)
    assert report["peak_cache_bytes"] > 0 and report["cache_bytes"] == 0


def test_peak_bytes_are_those_of_the_last_call(run_pipe):
    pipe = tiny_pipeline("pixart-alpha")
    diffusion_accel.apply(pipe, AccelerationConfig(cache=StaticCacheConfig(CacheSchedule.fora(pipe, 4, 2))))
    run_pipe(pipe, "pixart-alpha", num_inference_steps=4, prompt=["a red cat", "a blue dog"])
    two_images = _cache_report(pipe)["peak_cache_bytes"]
    run_pipe(pipe, "pixart-alpha", num_inference_steps=4, prompt="a red cat")
    assert _cache_report(pipe)["peak_cache_bytes"] * 2 == two_images


def test_denoiser_driven_outside_a_pipeline_holds_no_cache_after_its_last_step():
    """Static caching drops each stored output after its last reuse: a denoiser driven by hand
    through the schedule's steps ends with nothing held; dynamic caching's state is released by
    ``reset_denoiser_state`` (or at the next pass)."""
    pipe = tiny_pipeline("pixart-alpha")
    transformer = pipe.transformer
    x = torch.randn(2, transformer.config.in_channels, 8, 8)
    text = torch.randn(2, 4, transformer.config.caption_channels)
    added = {"resolution": None, "aspect_ratio": None}

    @torch.no_grad()
    def sample(timesteps):
        for t in timesteps:
            transformer(x, encoder_hidden_states=text, timestep=torch.tensor([t, t]), added_cond_kwargs=added)

    diffusion_accel.apply(pipe, AccelerationConfig(cache=StaticCacheConfig(CacheSchedule.fora(pipe, 4, 2))))
    sample([900, 600, 300, 100])
    report = _cache_report(pipe)
    assert report["peak_cache_bytes"] > 0 and report["cache_bytes"] == 0

    diffusion_accel.apply(pipe, AccelerationConfig(cache=DynamicCacheConfig(threshold=0.0)))
    sample([900, 600, 300])
    assert _cache_report(pipe)["cache_bytes"] > 0
    reset_denoiser_state(transformer)
    assert _cache_report(pipe)["cache_bytes"] == 0
