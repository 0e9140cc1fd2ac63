"""Forecast reuse (TaylorSeer): reused values extrapolated by finite differences in step index."""

import numpy as np
import pytest
import torch

import diffusion_accel
from diffusion_accel import AccelerationConfig
from diffusion_accel.api import acceleration_state
from diffusion_accel.caching import CacheSchedule, StaticCacheConfig
from diffusion_accel.caching.forecast import ForecastCache, newton_extrapolate
from diffusion_accel.caching.state import CacheStats, tensor_bytes
from diffusion_accel.testing import tiny_pipeline


def _apply(pipe, schedule, **kw):
    return diffusion_accel.apply(pipe, AccelerationConfig(cache=StaticCacheConfig(schedule, **kw)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_newton_extrapolation_is_exact_for_polynomials_of_its_order(dtype):
    steps = [0, 3, 4]
    a, b, c = torch.tensor([1.0, -2.0]), torch.tensor([0.5, 0.25]), torch.tensor([0.125, -0.0625])
    linear = [(a + b * s).to(dtype) for s in steps[1:]]
    assert torch.equal(newton_extrapolate(steps[1:], linear, 6), (a + b * 6).to(dtype))
    quadratic = [(a + b * s + c * s * s).to(dtype) for s in steps]
    expected = (a + b * 7 + c * 49).to(dtype)
    assert newton_extrapolate(steps, quadratic, 7).dtype == dtype
    tolerance = 0 if dtype != torch.bfloat16 else 0.1  # bf16 inputs are rounded; the arithmetic is fp32
    assert torch.allclose(newton_extrapolate(steps, quadratic, 7).double(), expected.double(), atol=tolerance)


def test_forecast_cache_keeps_order_plus_one_values_and_accounts_bytes():
    stats = CacheStats()
    cache = ForecastCache(stats, order=1)
    value = torch.zeros(4)
    for step in range(4):
        cache.add("cond", step, value + step)
    assert stats.bytes == 2 * tensor_bytes(value) and stats.peak_bytes == 2 * tensor_bytes(value)
    assert torch.equal(cache.predict("cond", 5), value + 5)
    cache.add("cond", 0, value + 10)  # a new pass: the old trajectory is forgotten
    assert torch.equal(cache.predict("cond", 3), value + 10)  # one value: plain reuse
    cache.add("uncond", 1, (value, None))
    assert cache.predict("uncond", 2)[1] is None
    cache.clear()
    assert stats.bytes == 0 and "cond" not in cache


def test_config_checks_the_order_and_round_trips(tmp_path):
    pipe = tiny_pipeline("pixart-alpha")
    schedule = CacheSchedule.fora(pipe, 4, 2)
    with pytest.raises(ValueError, match="forecast_order must be one of"):
        StaticCacheConfig(schedule, reuse="forecast", forecast_order=3)
    with pytest.raises(ValueError, match="only applies to reuse='forecast'"):
        StaticCacheConfig(schedule, reuse="block_residual", forecast_order=2)
    config = AccelerationConfig(cache=StaticCacheConfig(schedule, reuse="forecast", forecast_order=2))
    config.save(tmp_path / "c.json")
    assert AccelerationConfig.load(tmp_path / "c.json") == config


@pytest.mark.parametrize("order", [1, 2])
def test_a_reused_component_gets_the_extrapolation_of_its_computed_outputs(order, run_pipe):
    """A schedule that computes the cross-attention of block 1 at steps 0, 2, 3 and reuses it at
    1, 4, 5 (other blocks compute): its outputs at 4 and 5 extrapolate those of 2 and 3 (and 0)."""
    steps = 6
    pipe = tiny_pipeline("pixart-alpha")
    compute = CacheSchedule.full(pipe, steps).compute.copy()
    component = 1  # attn2 (components: attn1, attn2, ff)
    compute[[1, 4, 5], 1, component] = False
    _apply(pipe, CacheSchedule.from_model(pipe, compute), reuse="forecast", forecast_order=order)
    outputs = []
    pipe.transformer.transformer_blocks[1].attn2.register_forward_hook(lambda m, a, o: outputs.append(o.clone()))
    run_pipe(pipe, "pixart-alpha", num_inference_steps=steps)
    assert torch.equal(outputs[1], outputs[0])  # one computed value so far: plain reuse
    known = [0, 2, 3][-(order + 1):]
    for step in (4, 5):
        expected = newton_extrapolate(known, [outputs[s] for s in known], step)
        assert torch.equal(outputs[step], expected)
    assert acceleration_state(pipe).report()["cache"]["cache_bytes"] == 0  # released after the call


def test_forecast_keeps_two_residuals_per_block_where_block_residual_keeps_one(run_pipe):
    steps = 6
    pipe = tiny_pipeline("pixart-alpha")
    schedule = CacheSchedule.fora(pipe, steps, 3)
    peaks, images = {}, {}
    for reuse in ("block_residual", "forecast"):
        _apply(pipe, schedule, reuse=reuse)
        images[reuse] = run_pipe(pipe, "pixart-alpha", num_inference_steps=steps)
        report = acceleration_state(pipe).report()["cache"]
        peaks[reuse] = report["peak_cache_bytes"]
        assert report["component_calls_reused"] > 0 and report["cache_bytes"] == 0
    assert peaks["forecast"] == 2 * peaks["block_residual"] > 0
    assert not torch.equal(images["forecast"], images["block_residual"])
    assert np.isfinite(images["forecast"].numpy()).all()


def test_forecast_on_a_unet_forecasts_components(run_pipe):
    pipe = tiny_pipeline("sd15")
    _apply(pipe, CacheSchedule.fora(pipe, 4, 2), reuse="forecast")
    out = run_pipe(pipe, "sd15", num_inference_steps=4)
    assert torch.isfinite(out).all()
    assert acceleration_state(pipe).report()["cache"]["component_calls_reused"] > 0
