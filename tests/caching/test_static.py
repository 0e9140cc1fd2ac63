"""Static caching on every covered model: exactness, call counts, freshness, errors."""

import numpy as np
import pytest
import torch

import diffusion_accel
from diffusion_accel import AccelerationConfig
from diffusion_accel.api import acceleration_state
from diffusion_accel.caching import CacheSchedule, DynamicCacheConfig, StaticCacheConfig
from diffusion_accel.caching.static import REUSE_MODES
from diffusion_accel.hooks import StepTracker
from diffusion_accel.models import get_model_adapter
from diffusion_accel.testing import TINY_PIPELINES, tiny_call_kwargs, tiny_pipeline

from diffusion_accel.testing.counting import ParameterUseCounter, expected_counts, watch_components

STEPS = tiny_call_kwargs("pixart-alpha")["num_inference_steps"]


def _apply(pipe, schedule, **kw):
    return diffusion_accel.apply(pipe, AccelerationConfig(cache=StaticCacheConfig(schedule, **kw)))


@pytest.mark.parametrize("reuse", REUSE_MODES)
@pytest.mark.parametrize("name", TINY_PIPELINES)
def test_full_schedule_is_bit_identical(name, reuse, run_pipe):
    if name == "sd15" and reuse == "block_residual":
        pytest.skip("UNet blocks declare no BlockIO (see test_block_residual_needs_block_io)")
    pipe = tiny_pipeline(name)
    reference = run_pipe(pipe, name)
    steps = tiny_call_kwargs(name)["num_inference_steps"]
    _apply(pipe, CacheSchedule.full(pipe, steps), reuse=reuse)
    assert torch.equal(run_pipe(pipe, name), reference)
    report = acceleration_state(pipe).report()["cache"]
    assert report["component_calls_reused"] == 0 and report["peak_cache_bytes"] == 0


@pytest.mark.parametrize(
    "name, extra",
    [
        ("pixart-alpha", {}),  # CFG batched into one call
        ("wan", {}),  # two calls per step
        ("flux", {"true_cfg_scale": 2.0, "negative_prompt": "blurry"}),  # two calls, cond/uncond contexts
        ("sd15", {}),
    ],
)
@pytest.mark.parametrize("kind", ["fora2", "random"])
@pytest.mark.parametrize("reuse", REUSE_MODES)
def test_components_run_exactly_as_scheduled(name, extra, kind, reuse, run_pipe):
    if name == "sd15" and reuse == "block_residual":
        pytest.skip("UNet blocks declare no BlockIO")
    steps = 4
    pipe = tiny_pipeline(name)
    schedule = (
        CacheSchedule.fora(pipe, steps, 2) if kind == "fora2" else CacheSchedule.random(pipe, steps, 0.5, seed=1)
    )
    _apply(pipe, schedule, reuse=reuse)
    denoiser = pipe.unet if name == "sd15" else pipe.transformer
    adapter = get_model_adapter(denoiser)
    with ParameterUseCounter(watch_components(adapter, denoiser)) as counter:
        run_pipe(pipe, name, num_inference_steps=steps, **extra)
    history = StepTracker.get(denoiser).history
    assert len(history) == steps * (2 if name in ("wan", "flux") else 1)
    applicable = adapter.applicable(denoiser)
    expected = expected_counts(schedule, history, applicable)
    assert counter.counts == expected
    stats = acceleration_state(pipe).handles[0][1].details
    assert sum(stats.computed.values()) == sum(expected.values())
    present = int(np.sum(applicable))
    assert sum(stats.reused.values()) == len(history) * present - sum(expected.values())


def test_reused_outputs_are_the_last_computed_ones(run_pipe):
    """Hook the attention module from outside: at a reuse step it returns the stored tensor unchanged."""
    pipe = tiny_pipeline("pixart-alpha")
    _apply(pipe, CacheSchedule.fora(pipe, 4, 2))
    attn = pipe.transformer.transformer_blocks[1].attn1
    outputs = []
    attn.register_forward_hook(lambda m, a, o: outputs.append((o, o.clone())))
    run_pipe(pipe, "pixart-alpha", num_inference_steps=4)
    assert len(outputs) == 4
    assert outputs[1][0] is outputs[0][0] and outputs[3][0] is outputs[2][0]
    assert not torch.equal(outputs[2][1], outputs[0][1])
    for out, snapshot in outputs:  # nothing downstream modified a cached tensor in place
        assert torch.equal(out, snapshot)


def test_consecutive_calls_match_fresh_pipelines(run_pipe):
    """Different step counts (resampled schedule), batch sizes and resolutions: no stale cache."""
    base = CacheSchedule.fora(tiny_pipeline("pixart-alpha"), 6, 2)
    calls = [
        dict(num_inference_steps=6, prompt=["a red cat"], height=64, width=64),
        dict(num_inference_steps=4, prompt=["a red cat", "a blue dog"], height=32, width=32),
        dict(num_inference_steps=5, prompt=["a green owl"], height=64, width=32),
    ]
    reused = _apply(tiny_pipeline("pixart-alpha"), base, auto_resample=True)
    for kwargs in calls:
        fresh = _apply(tiny_pipeline("pixart-alpha"), base.resample(kwargs["num_inference_steps"]))
        assert torch.equal(run_pipe(reused, "pixart-alpha", **kwargs), run_pipe(fresh, "pixart-alpha", **kwargs))


def test_step_count_mismatch_without_resampling_is_an_error(run_pipe):
    pipe = tiny_pipeline("pixart-alpha")
    _apply(pipe, CacheSchedule.fora(pipe, 6, 2))
    with pytest.raises(ValueError, match="has 6 steps but this call runs 3.*resample"):
        run_pipe(pipe, "pixart-alpha", num_inference_steps=3)


def test_schedule_for_another_family_is_an_error():
    pixart_schedule = CacheSchedule.full(tiny_pipeline("pixart-alpha"), 3)
    with pytest.raises(ValueError, match="made for the 'pixart' family"):
        _apply(tiny_pipeline("sd3"), pixart_schedule)


def test_schedule_for_another_depth_is_an_error():
    pipe = tiny_pipeline("pixart-alpha")
    s = CacheSchedule.full(pipe, 3)
    deeper = CacheSchedule(np.ones((3, 5, 3), dtype=bool), s.components, s.family)
    with pytest.raises(ValueError, match="has 5 blocks"):
        _apply(pipe, deeper)


def test_cache_memory_is_reported(run_pipe):
    pipe = tiny_pipeline("pixart-alpha")
    _apply(pipe, CacheSchedule.fora(pipe, 4, 2))
    run_pipe(pipe, "pixart-alpha", num_inference_steps=4)
    report = acceleration_state(pipe).report()["cache"]
    hidden = pipe.transformer.config.num_attention_heads * pipe.transformer.config.attention_head_dim
    tokens = (64 // 8 // pipe.transformer.config.patch_size) ** 2
    one_output = 2 * tokens * hidden * 4  # CFG batch 2, fp32
    assert report["peak_cache_bytes"] == 2 * 3 * one_output  # 2 blocks x 3 components


@pytest.mark.parametrize("name", ["pixart-alpha", "sd3", "flux"])
def test_block_residual_reuse_replays_dynamic_caching(name, run_pipe):
    """Skipping blocks 1.. at the steps dynamic caching skips adds, block by block, the residuals
    dynamic caching adds at once: the same images up to float summation order."""
    steps = 6
    pipe = tiny_pipeline(name)
    diffusion_accel.apply(pipe, AccelerationConfig(cache=DynamicCacheConfig(threshold=1e9)))
    dynamic = run_pipe(pipe, name, num_inference_steps=steps)
    skipped = [s for s, share in acceleration_state(pipe).report()["cache"]["skip_share_by_step"].items() if share]
    assert skipped == [1, 2, 3, 5]
    compute = CacheSchedule.full(pipe, steps).compute.copy()
    compute[skipped, 1:] = False
    schedule = CacheSchedule.from_model(pipe, compute)
    _apply(pipe, schedule, reuse="block_residual")
    replay = run_pipe(pipe, name, num_inference_steps=steps)
    assert torch.allclose(replay, dynamic, atol=1e-5, rtol=1e-4)
    _apply(pipe, schedule)  # reusing component outputs is a different approximation
    assert not torch.equal(run_pipe(pipe, name, num_inference_steps=steps), replay)


def test_block_residual_needs_block_io():
    pipe = tiny_pipeline("sd15")
    with pytest.raises(ValueError, match="reuse='block_residual' needs blocks with declared"):
        _apply(pipe, CacheSchedule.fora(pipe, 4, 2), reuse="block_residual")
    with pytest.raises(ValueError, match="reuse must be one of"):
        StaticCacheConfig(CacheSchedule.fora(pipe, 4, 2), reuse="residual")


def _img2img_sd15():
    from diffusers import StableDiffusionImg2ImgPipeline

    pipe = StableDiffusionImg2ImgPipeline(**tiny_pipeline("sd15").components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _img2img(pipe, **kw):
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    kwargs = tiny_call_kwargs("sd15", image=image, num_inference_steps=8, strength=0.5)
    kwargs.pop("height"), kwargs.pop("width")
    return pipe(**{**kwargs, **kw}, generator=torch.Generator().manual_seed(0)).images


def test_img2img_with_ddim_runs_the_steps_the_schedule_is_checked_against():
    """An 8-step call at strength 0.5 runs 4 DDIM steps (DDIM has no begin_index): an 8-step
    schedule used to run silently with its rows 0-3."""
    pipe = _img2img_sd15()
    assert type(pipe.scheduler).__name__ == "DDIMScheduler" and not hasattr(pipe.scheduler, "begin_index")
    eight = CacheSchedule.random(pipe, 8, 0.5, seed=3)
    _apply(pipe, eight)
    with pytest.raises(ValueError, match="has 8 steps but this call runs 4"):
        _img2img(pipe)

    _apply(pipe, eight, auto_resample=True)
    with ParameterUseCounter(watch_components(get_model_adapter(pipe.unet), pipe.unet)) as counter:
        _img2img(pipe)
    history = StepTracker.get(pipe.unet).history
    assert [c.step for c in history] == [0, 1, 2, 3]
    applicable = get_model_adapter(pipe.unet).applicable(pipe.unet)
    assert counter.counts == expected_counts(eight.resample(4), history, applicable)


def test_img2img_final_steps_count_from_the_real_step_count():
    pipe = _img2img_sd15()
    diffusion_accel.apply(pipe, AccelerationConfig(cache=DynamicCacheConfig(
        threshold=1e9, max_consecutive_skips=10, final_steps=2)))
    _img2img(pipe)  # 4 steps: 0 warm-up, 1 skipped, 2-3 final
    skip_share = acceleration_state(pipe).report()["cache"]["skip_share_by_step"]
    assert skip_share == {0: 0.0, 1: 1.0, 2: 0.0, 3: 0.0}


@pytest.mark.parametrize("name", TINY_PIPELINES)
def test_each_call_is_found_in_the_scheduler_timesteps(name, run_pipe):
    """What the step count rests on: every denoiser call's timestep, divided by the adapter's
    ``timestep_scale`` (Flux is called with t / 1000), sits at its step in ``scheduler.timesteps``."""
    from diffusion_accel.caching.static import _timestep_position

    pipe = diffusion_accel.apply(tiny_pipeline(name), AccelerationConfig())
    run_pipe(pipe, name, num_inference_steps=4)
    denoiser = pipe.unet if name == "sd15" else pipe.transformer
    tracker = StepTracker.get(denoiser)
    positions = [_timestep_position(pipe.scheduler.timesteps, c.timestep / tracker.adapter.timestep_scale)
                 for c in tracker.history]
    assert positions == [c.step for c in tracker.history]
