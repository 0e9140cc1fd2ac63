"""MAC accounting: analytic schedule pricing equals what actually executes."""

import pytest

import diffusion_accel
from diffusion_accel import AccelerationConfig
from diffusion_accel.caching import CacheSchedule, DynamicCacheConfig, StaticCacheConfig
from diffusion_accel.cost import macs, profile_macs
from diffusion_accel.cost.macs import _measured_macs
from diffusion_accel.testing import tiny_call_kwargs, tiny_pipeline


@pytest.mark.parametrize("name", ["pixart-alpha", "flux", "wan", "sd15"])
def test_analytic_schedule_macs_equal_executed_macs(name):
    pipe = tiny_pipeline(name)
    kwargs = tiny_call_kwargs(name, num_inference_steps=4)
    profile = profile_macs(pipe, **kwargs)
    schedule = CacheSchedule.random(pipe, 4, 0.5, seed=2)
    analytic = profile.schedule_macs(schedule)
    executed = _measured_macs(pipe, AccelerationConfig(cache=StaticCacheConfig(schedule)), kwargs)
    assert analytic == pytest.approx(executed, rel=1e-12)
    full = _measured_macs(pipe, AccelerationConfig(), kwargs)
    assert profile.full_macs() == pytest.approx(full, rel=1e-12)


def test_fora_ratio_and_report():
    pipe = tiny_pipeline("pixart-alpha")
    kwargs = tiny_call_kwargs("pixart-alpha", num_inference_steps=4)
    report = macs(pipe, CacheSchedule.fora(pipe, 4, 2), **kwargs)
    profile = profile_macs(pipe, **kwargs)
    components = profile.component_macs.sum()
    assert report.method == "analytic"
    assert report.full == pytest.approx(4 * profile.call_macs.sum())
    assert report.accelerated == pytest.approx(report.full - 2 * components)
    assert 1.0 < report.ratio < 2.0
    assert set(report.to_dict()["per_component_macs_per_step"]) == {"attn1", "attn2", "ff"}


def test_measured_macs_for_dynamic_config_and_pipeline_left_as_it_was():
    pipe = tiny_pipeline("pixart-alpha")
    kwargs = tiny_call_kwargs("pixart-alpha", num_inference_steps=5)
    before = AccelerationConfig(cache=DynamicCacheConfig(threshold=0.0))
    diffusion_accel.apply(pipe, before)
    never = macs(pipe, AccelerationConfig(cache=DynamicCacheConfig(threshold=0.0)), **kwargs)
    assert never.method == "measured" and never.ratio == pytest.approx(1.0, rel=1e-12)
    always = macs(pipe, AccelerationConfig(cache=DynamicCacheConfig(threshold=1e9, max_consecutive_skips=1)), **kwargs)
    # steps 1 and 3 skip every block after the first (PixArt's blocks hold no other matmuls)
    skipped_block_macs = profile_macs(pipe, **kwargs).component_macs[:, 1:, :].sum()
    assert always.accelerated == pytest.approx(always.full - 2 * skipped_block_macs, rel=1e-12)
    assert pipe.acceleration == before


def test_step_mismatch_is_an_error():
    pipe = tiny_pipeline("pixart-alpha")
    with pytest.raises(ValueError, match="has 6 steps but this call runs 3"):
        macs(pipe, CacheSchedule.fora(pipe, 6, 2), **tiny_call_kwargs("pixart-alpha", num_inference_steps=3))
