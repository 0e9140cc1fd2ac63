"""Dynamic caching with forecast reuse: the same skip rule, the skipped blocks' residual extrapolated."""

import pytest
import torch

import diffusion_accel
from diffusion_accel import AccelerationConfig
from diffusion_accel.api import acceleration_state
from diffusion_accel.caching import DynamicCacheConfig
from diffusion_accel.caching.forecast import newton_extrapolate
from diffusion_accel.testing import tiny_pipeline


def _apply(pipe, **kw):
    return diffusion_accel.apply(pipe, AccelerationConfig(cache=DynamicCacheConfig(**kw)))


@pytest.mark.parametrize("name", ["pixart-alpha", "wan", "flux"])
@pytest.mark.parametrize("order", [1, 2])
def test_threshold_zero_is_bit_identical(name, order, run_pipe):
    pipe = tiny_pipeline(name)
    reference = run_pipe(pipe, name)
    _apply(pipe, threshold=0.0, compare_to="last_computed", max_consecutive_skips=20, reuse="forecast",
           forecast_order=order)
    assert torch.equal(run_pipe(pipe, name), reference)
    assert acceleration_state(pipe).report()["cache"]["steps_skipped"] == 0


def _record_wan(pipe):
    """(first block outputs, last block inputs, last block outputs) of every call, in call order."""
    blocks = pipe.transformer.blocks
    seen = {"first": [], "last_in": [], "last_out": []}
    blocks[0].register_forward_hook(lambda m, a, o: seen["first"].append(o))

    def record_last(module, args, kwargs, output):
        seen["last_in"].append(kwargs.get("hidden_states", args[0] if args else None))
        seen["last_out"].append(output)

    blocks[-1].register_forward_hook(record_last, with_kwargs=True)
    return seen


def test_skipped_step_adds_the_extrapolated_residual(run_pipe):
    """Warm-up 2, then compute / skip alternately: step 2 adds r1 + (r1 - r0), step 4 r3 + (r3 - r1) / 2."""
    pipe = tiny_pipeline("wan")
    _apply(pipe, threshold=1e9, max_consecutive_skips=1, warmup_steps=2, reuse="forecast")
    seen = _record_wan(pipe)
    run_pipe(pipe, "wan", num_inference_steps=5, guidance_scale=1.0)
    assert len(seen["first"]) == 5 and acceleration_state(pipe).report()["cache"]["steps_skipped"] == 2
    residual = {s: seen["last_out"][s] - seen["first"][s] for s in (0, 1, 3)}
    for step, (a, b) in ((2, (0, 1)), (4, (1, 3))):
        assert torch.equal(seen["last_in"][step], seen["first"][step])  # the middle blocks pass through
        expected = seen["last_in"][step] + newton_extrapolate([a, b], [residual[a], residual[b]], step)
        assert torch.equal(seen["last_out"][step], expected)
        by_hand = seen["last_in"][step] + residual[b] + (step - b) * (residual[b] - residual[a]) / (b - a)
        torch.testing.assert_close(seen["last_out"][step], by_hand, rtol=1e-5, atol=1e-6)


def test_one_computed_step_is_plain_reuse(run_pipe):
    """Before two computed steps the forecast has nothing to extrapolate from: plain residual reuse."""
    outputs = []
    for reuse in ("residual", "forecast"):
        pipe = tiny_pipeline("wan")
        _apply(pipe, threshold=1e9, max_consecutive_skips=5, warmup_steps=1, reuse=reuse)
        outputs.append(run_pipe(pipe, "wan", num_inference_steps=4, guidance_scale=1.0))
    assert torch.equal(outputs[0], outputs[1])


def test_history_is_released_after_the_call(run_pipe):
    pipe = tiny_pipeline("wan")
    _apply(pipe, threshold=1e9, max_consecutive_skips=1, reuse="forecast", forecast_order=2)
    run_pipe(pipe, "wan", num_inference_steps=6)
    report = acceleration_state(pipe).report()["cache"]
    assert report["cache_bytes"] == 0 and report["peak_cache_bytes"] > 0


def test_config_round_trips():
    config = AccelerationConfig(cache=DynamicCacheConfig(threshold=0.1, compare_to="last_computed",
                                                         reuse="forecast", forecast_order=2))
    assert AccelerationConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"reuse": "outputs"}, "reuse must be one of"),
        ({"forecast_order": 3, "reuse": "forecast"}, "forecast_order must be 1 or 2"),
        ({"forecast_order": 2}, "needs reuse='forecast'"),
        ({"reuse": "forecast", "decide_per": "sample"}, "use decide_per='batch'"),
    ],
)
def test_bad_config(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DynamicCacheConfig(**kwargs)


def test_unet_refuses_forecast():
    pipe = tiny_pipeline("sd15")
    with pytest.raises(ValueError, match="use reuse='residual'"):
        _apply(pipe, reuse="forecast")


def test_forecast_until_reuses_the_plain_residual_after_it(run_pipe):
    """Compute / skip alternately over 6 steps: with forecast_until=0.5 the skipped step 2 forecasts
    (r1 + (r1 - r0)) and the skipped step 4 (>= 0.5 x 6 = 3) adds the last computed residual r3 as is."""
    pipe = tiny_pipeline("wan")
    _apply(pipe, threshold=1e9, max_consecutive_skips=1, warmup_steps=2, reuse="forecast", forecast_until=0.5)
    seen = _record_wan(pipe)
    run_pipe(pipe, "wan", num_inference_steps=6, guidance_scale=1.0)
    assert acceleration_state(pipe).report()["cache"]["steps_skipped"] == 2
    residual = {s: seen["last_out"][s] - seen["first"][s] for s in (0, 1, 3)}
    forecast = newton_extrapolate([0, 1], [residual[0], residual[1]], 2)
    assert torch.equal(seen["last_out"][2], seen["last_in"][2] + forecast)
    assert torch.equal(seen["last_out"][4], seen["last_in"][4] + residual[3])


def test_forecast_until_one_is_forecast_everywhere_and_never_skipping_is_plain_diffusers(run_pipe):
    outputs = []
    for until in (1.0, None):
        pipe = tiny_pipeline("wan")
        kw = {} if until is None else {"forecast_until": until}
        _apply(pipe, threshold=1e9, max_consecutive_skips=1, warmup_steps=2, reuse="forecast", **kw)
        outputs.append(run_pipe(pipe, "wan", num_inference_steps=6, guidance_scale=1.0))
    assert torch.equal(outputs[0], outputs[1])
    pipe = tiny_pipeline("pixart-alpha")
    reference = run_pipe(pipe, "pixart-alpha")
    _apply(pipe, threshold=0.0, compare_to="last_computed", reuse="forecast", forecast_until=0.5)
    assert torch.equal(run_pipe(pipe, "pixart-alpha"), reference)


@pytest.mark.parametrize("kw, match", [
    ({"reuse": "forecast", "forecast_until": 0.0}, r"forecast_until must be a number in \(0, 1\]"),
    ({"reuse": "forecast", "forecast_until": 1.5}, r"forecast_until must be a number in \(0, 1\]"),
    ({"reuse": "forecast", "forecast_until": True}, r"forecast_until must be a number"),
    ({"forecast_until": 0.5}, "needs reuse='forecast'"),
])
def test_forecast_until_is_checked(kw, match):
    with pytest.raises(ValueError, match=match):
        DynamicCacheConfig(**kw)


def test_forecast_until_round_trips():
    config = AccelerationConfig(cache=DynamicCacheConfig(reuse="forecast", forecast_until=0.65))
    assert AccelerationConfig.from_dict(config.to_dict()) == config
