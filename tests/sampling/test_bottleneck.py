"""Bottleneck Sampling: config data, exactness of the full-resolution plan, the cheaper middle stage."""

from __future__ import annotations

import json

import diffusers
import pytest
import torch

import diffusion_accel
from diffusion_accel import AccelerationConfig
from diffusion_accel.caching import DynamicCacheConfig
from diffusion_accel.cost import count_macs
from diffusion_accel.pipeline_state import acceleration_state
from diffusion_accel.sampling import BottleneckSamplingConfig
from diffusion_accel.sampling.stages import resize_latents, stage_step_counts, subsample_noise
from diffusion_accel.testing import tiny_call_kwargs, tiny_pipeline

FAMILIES = ("pixart-alpha", "wan")
#: Wan calls take several seconds on a busy CPU: its exactness test runs with the slow ones.
FAMILIES_WAN_SLOW = ("pixart-alpha", pytest.param("wan", marks=pytest.mark.slow))
HIGH_LOW_HIGH = ((0.25, 1), (0.5, 2), (0.25, 1))


def call(pipe, name, seed=0, **overrides):
    """The call's final latents (decoding adds nothing to what is tested, and costs most of a Wan call)."""
    kwargs = tiny_call_kwargs(name, **{"num_inference_steps": 4, "output_type": "latent", **overrides})
    out = pipe(**kwargs, generator=torch.Generator().manual_seed(seed))
    return out.frames if hasattr(out, "frames") else out.images


def sampling(**options) -> AccelerationConfig:
    return AccelerationConfig(sampling=BottleneckSamplingConfig(**options))


def denoiser_macs(pipe, name, **overrides) -> int:
    return count_macs(lambda: call(pipe, name, **overrides), [pipe.transformer]).modules


# -- config -----------------------------------------------------------------------------------
def test_config_round_trips_through_json(tmp_path):
    cfg = sampling(stages=((0.2, 1), (0.3, 2), (0.3, 4), (0.2, 1)), renoise=(0.1, 0.2, 0.4),
                   shifts=(None, 2.0, 1.5, 6.0), noise="initial", seed=3)
    cfg.save(tmp_path / "c.json")
    loaded = AccelerationConfig.load(tmp_path / "c.json")
    assert loaded == cfg and loaded.to_json() == cfg.to_json()
    assert json.loads(cfg.to_json())["sampling"]["stages"] == [[0.2, 1], [0.3, 2], [0.3, 4], [0.2, 1]]


def test_configs_without_sampling_keep_their_exact_json():
    assert AccelerationConfig().to_dict() == {
        "format": "diffusion-accel/acceleration-config", "version": 1, "cache": None, "quant": None,
        "attention": None,
    }
    cfg = AccelerationConfig(cache=DynamicCacheConfig(threshold=0.2))
    assert "sampling" not in cfg.to_dict()
    assert AccelerationConfig.from_json(cfg.to_json()) == cfg
    assert AccelerationConfig(DynamicCacheConfig()).cache == DynamicCacheConfig()  # positional order kept


@pytest.mark.parametrize("options, fix", [
    ({"stages": ((0.5, 1), (0.6, 2), (0.2, 1))}, "must sum to 1"),
    ({"stages": ((0.5, 2), (0.5, 1))}, "first and last stages must be at full resolution"),
    ({"stages": ((0.3, 1), (0.3, 2), (0.4, 2), (0.0, 1))}, r"stages\[3\]: the fraction"),
    ({"stages": ((0.3, 1), (0.3, 2), (0.2, 2), (0.2, 1)), "shifts": (None, 2.0, 3.0, None)},
     "same factor, so they are one stage, but different shifts"),
    ({"stages": ((0.3, 1), (0.3, 2), (0.2, 2), (0.2, 1)), "renoise": (0.3, 0.2, 0.3)},
     r"renoise\[1\] = 0.2 .* no resolution change .* set it to 0"),
    ({"stages": ((0.3, 1), (0.4, 1.5), (0.3, 1))}, "integer >= 1"),
    ({"stages": ()}, "non-empty list"),
    ({"renoise": 1.5}, r"numbers in \[0, 1\]"),
    ({"renoise": (0.1, 0.2, 0.3)}, "one value per transition"),
    ({"shifts": (None, 2.0)}, "one value .* per stage"),
    ({"shifts": (None, -1.0, None)}, "numbers > 0 or None"),
    ({"noise": "pink"}, "noise must be one of"),
    ({"seed": -1}, "seed must be an integer"),
])
def test_bad_configs_raise_one_value_error_naming_the_fix(options, fix):
    with pytest.raises(ValueError, match=fix):
        BottleneckSamplingConfig(**options)


def test_stage_step_counts_split_the_steps():
    assert stage_step_counts((0.25, 0.5, 0.25), 4) == [1, 2, 1]
    assert stage_step_counts((0.3, 0.4, 0.3), 20) == [6, 8, 6]
    assert stage_step_counts((0.05, 0.9, 0.05), 5) == [1, 3, 1]
    with pytest.raises(ValueError, match="at least 3 steps"):
        stage_step_counts((0.25, 0.5, 0.25), 2)


def test_resizing_keeps_means_and_noise_statistics():
    x = torch.randn(2, 4, 3, 8, 8)
    down = resize_latents(x, (4, 4))
    assert down.shape == (2, 4, 3, 4, 4)
    torch.testing.assert_close(down[0, 0, 0, 0, 0], x[0, 0, 0, :2, :2].mean())
    assert resize_latents(down, (8, 8)).shape == x.shape
    noise = torch.randn(1, 4, 256, 256)
    assert abs(float(subsample_noise(noise, 4).std()) - 1.0) < 0.05


# -- behaviour on tiny pipelines ---------------------------------------------------------------
@pytest.mark.parametrize("name", FAMILIES_WAN_SLOW)
def test_full_resolution_plan_is_bit_identical_and_remove_restores(name):
    pipe = tiny_pipeline(name)
    base = call(pipe, name)
    for stages in (((1.0, 1),), ((0.3, 1), (0.4, 1), (0.3, 1))):  # all full resolution: plain sampling
        diffusion_accel.apply(pipe, sampling(stages=stages, renoise=0.5))
        assert torch.equal(call(pipe, name), base)  # the staged scheduler reproduces plain sampling exactly
    diffusion_accel.apply(pipe, sampling(stages=HIGH_LOW_HIGH, renoise=0.5))
    assert not torch.equal(call(pipe, name), base)
    diffusion_accel.remove(pipe)
    assert torch.equal(call(pipe, name), base)
    assert type(pipe.scheduler).__module__.startswith("diffusers.")


@pytest.mark.parametrize("name", (*FAMILIES, "sd3"))
def test_middle_stage_runs_on_a_quarter_of_the_tokens(name):
    pipe = tiny_pipeline(name)
    base = call(pipe, name)
    diffusion_accel.apply(pipe, sampling(stages=HIGH_LOW_HIGH))
    out = call(pipe, name)
    assert out.shape == base.shape and torch.isfinite(torch.as_tensor(out)).all()
    tokens = acceleration_state(pipe).handles[-1][1].details.tokens
    full = tokens[0][1]
    per_step = {}
    for step, count in tokens:
        per_step.setdefault(step, set()).add(count)
    assert per_step == {0: {full}, 1: {full // 4}, 2: {full // 4}, 3: {full}}


@pytest.mark.slow
@pytest.mark.parametrize("name", FAMILIES)
def test_middle_stage_costs_exactly_a_half_size_call(name):
    pipe = tiny_pipeline(name)
    kwargs = tiny_call_kwargs(name)
    full_macs = denoiser_macs(pipe, name)
    half_macs = denoiser_macs(pipe, name, height=kwargs["height"] // 2, width=kwargs["width"] // 2)
    diffusion_accel.apply(pipe, sampling(stages=HIGH_LOW_HIGH, renoise=0.5))
    macs = denoiser_macs(pipe, name)
    # 4 steps: 1 full, 2 at half height and width, 1 full -> exactly half a full call and half a half-size call
    assert 2 * macs == full_macs + half_macs
    assert half_macs < full_macs


def test_re_noised_transitions_raise_the_timestep_and_steps_stay_counted():
    """Regression: a rising timestep used to look like a new sampling pass to the step tracker,
    which reset every stateful hook mid-call (the run lost its plan)."""
    pipe = tiny_pipeline("pixart-alpha")
    diffusion_accel.apply(pipe, sampling(stages=((0.5, 1), (0.25, 2), (0.25, 1)), renoise=0.6))
    call(pipe, "pixart-alpha", num_inference_steps=8)
    timesteps = [float(t) for t in pipe.scheduler.timesteps]
    assert any(b > a for a, b in zip(timesteps, timesteps[1:]))
    tracker = acceleration_state(pipe).denoisers[0].tracker
    assert [c.step for c in tracker.history] == list(range(8))


@pytest.mark.slow
def test_flow_matching_stages_take_their_own_shift():
    pipe = tiny_pipeline("wan")
    diffusion_accel.apply(pipe, sampling(stages=HIGH_LOW_HIGH))
    call(pipe, "wan", num_inference_steps=8)
    plain = [float(t) for t in pipe.scheduler.timesteps]
    diffusion_accel.apply(pipe, sampling(stages=HIGH_LOW_HIGH, shifts=(None, 1.0, 8.0)))
    out = call(pipe, "wan", num_inference_steps=8)
    shifted = [float(t) for t in pipe.scheduler.timesteps]
    assert shifted[:2] == plain[:2] and shifted[2:] != plain[2:] and torch.isfinite(out).all()


def test_quantized_denoiser_takes_the_bottleneck_schedule():
    from diffusion_accel.quant import QuantConfig

    pipe = tiny_pipeline("pixart-alpha")
    diffusion_accel.apply(pipe, AccelerationConfig(quant=QuantConfig(weight_bits=8, act_bits=8)))
    quantized = call(pipe, "pixart-alpha")
    both = AccelerationConfig(quant=QuantConfig(weight_bits=8, act_bits=8), sampling=BottleneckSamplingConfig())
    diffusion_accel.apply(pipe, both)
    out = call(pipe, "pixart-alpha")
    tokens = [t for _, t in acceleration_state(pipe).handles[-1][1].details.tokens]
    assert out.shape == quantized.shape and torch.isfinite(out).all()
    assert tokens == [tokens[0], tokens[0] // 4, tokens[0] // 4, tokens[0]]
    diffusion_accel.apply(pipe, AccelerationConfig(quant=QuantConfig(weight_bits=8, act_bits=8)))
    assert torch.equal(call(pipe, "pixart-alpha"), quantized)


def test_initial_noise_mode_is_deterministic():
    pipe = tiny_pipeline("pixart-alpha")
    diffusion_accel.apply(pipe, sampling(stages=HIGH_LOW_HIGH, noise="initial"))
    assert torch.equal(call(pipe, "pixart-alpha"), call(pipe, "pixart-alpha"))


# -- what is refused ---------------------------------------------------------------------------
def test_unsupported_family_names_the_reason():
    pipe = tiny_pipeline("flux")
    with pytest.raises(ValueError, match=r"does not support FluxTransformer2DModel \(flux\): the pipeline packs"):
        diffusion_accel.apply(pipe, sampling())
    assert acceleration_state(pipe) is None and type(pipe.scheduler).__module__.startswith("diffusers.")


def test_shift_needs_a_flow_matching_scheduler():
    with pytest.raises(ValueError, match="has no shift; pass shifts=None"):
        diffusion_accel.apply(tiny_pipeline("pixart-alpha"), sampling(shifts=(None, 2.0, None)))


def test_cache_and_bottleneck_are_refused_together_and_apply_rolls_back():
    pipe = tiny_pipeline("pixart-alpha")
    base = call(pipe, "pixart-alpha")
    config = AccelerationConfig(cache=DynamicCacheConfig(), sampling=BottleneckSamplingConfig())
    with pytest.raises(ValueError, match="without cache="):
        diffusion_accel.apply(pipe, config)
    assert acceleration_state(pipe) is None and type(pipe.scheduler).__module__.startswith("diffusers.")
    assert torch.equal(call(pipe, "pixart-alpha"), base)


def test_a_from_pipe_sibling_sharing_the_scheduler_samples_plainly():
    pipe = tiny_pipeline("pixart-alpha")
    base = call(pipe, "pixart-alpha")
    diffusion_accel.apply(pipe, sampling())
    sibling = diffusers.PixArtAlphaPipeline.from_pipe(pipe)  # shares the scheduler and the transformer
    assert sibling.scheduler is pipe.scheduler
    assert torch.equal(call(sibling, "pixart-alpha"), base)
    assert not torch.equal(call(pipe, "pixart-alpha"), base)


def test_latent_size_must_divide_by_the_factor():
    pipe = diffusion_accel.apply(tiny_pipeline("pixart-alpha"), sampling(stages=((0.25, 1), (0.5, 3), (0.25, 1))))
    with pytest.raises(ValueError, match="cannot be downscaled 3x"):
        call(pipe, "pixart-alpha")


def test_a_scheduler_replaced_after_apply_is_caught():
    pipe = diffusion_accel.apply(tiny_pipeline("pixart-alpha"), sampling())
    pipe.scheduler = type(pipe.scheduler).__mro__[2].from_config(pipe.scheduler.config)
    with pytest.raises(ValueError, match="was pipe.scheduler replaced after apply"):
        call(pipe, "pixart-alpha")
