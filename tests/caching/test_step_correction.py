"""Trajectory error correction (caching/step_correction.py, calibrate_error_correction(method="trajectory")):
fitted step after step against the full-compute, full-precision run, it brings held-out outputs closer to
the reference; a config that changes nothing gets no maps and stays bit-identical."""

import dataclasses

import pytest
import torch

import diffusion_accel
from diffusion_accel import AccelerationConfig
from diffusion_accel.caching import CacheSchedule, CorrectedCacheConfig, StaticCacheConfig
from diffusion_accel.caching.step_correction import DataPrediction, StepFitter
from diffusion_accel.error_correction import calibrate_error_correction, record_reference
from diffusion_accel.pipeline_state import tracked_denoisers
from diffusion_accel.quant import QuantConfig
from diffusion_accel.testing import tiny_call_kwargs, tiny_pipeline

STEPS = 6
KWARGS = {k: v for k, v in tiny_call_kwargs("pixart-alpha", num_inference_steps=STEPS, height=32, width=32).items() if k != "prompt"}
CALIBRATION = ["a red cat", "a blue dog", "a green tree", "a yellow car"]
HELD_OUT = ["a white house", "a black bird", "an orange boat"]


def latents(pipe, config, prompts=HELD_OUT, seed=100):
    diffusion_accel.remove(pipe)
    if config is not None:
        diffusion_accel.apply(pipe, config)
    generators = [torch.Generator().manual_seed(seed + i) for i in range(len(prompts))]
    with torch.no_grad():
        out = pipe(prompt=prompts, **{**KWARGS, "output_type": "latent"}, generator=generators).images
    diffusion_accel.remove(pipe)
    return out


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction"])
def test_data_prediction_round_trips(kind):
    pipe = tiny_pipeline("pixart-alpha")
    pipe.scheduler.register_to_config(prediction_type=kind)
    x, p = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    pred = DataPrediction.of(pipe.scheduler, torch.tensor([900, 100]), x)
    assert torch.allclose(pred.output(x, pred.x0(x, p)), p.double(), atol=1e-9)


@pytest.mark.parametrize("family", ["sd3", "wan"])
def test_flow_data_prediction_round_trips_at_the_schedulers_sigma(family):
    pipe = tiny_pipeline(family)  # sd3: FlowMatchEulerDiscreteScheduler; wan: UniPC with flow_prediction
    pipe.scheduler.set_timesteps(6)
    x, v = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    pred = DataPrediction.of(pipe.scheduler, pipe.scheduler.timesteps[0], x)  # before step(): the first sigma
    sigma = float(pipe.scheduler.sigmas[0])
    assert pred.kind == "flow" and torch.equal(pred.sigma.flatten(), torch.full((2,), sigma, dtype=torch.float64))
    torch.testing.assert_close(pred.x0(x, v), x.double() - sigma * v.double())  # x_t = (1-s) x0 + s noise, v = noise - x0
    assert torch.allclose(pred.output(x, pred.x0(x, v)), v.double(), atol=1e-9)
    pipe.scheduler._step_index = 3  # what step() leaves after three steps
    assert float(DataPrediction.of(pipe.scheduler, None, x).sigma[0]) == float(pipe.scheduler.sigmas[3])


def test_a_scheduler_without_a_data_prediction_is_one_clear_error():
    from diffusers import FlowMatchHeunDiscreteScheduler

    with pytest.raises(ValueError, match="method='block_residual'"):
        DataPrediction.of(FlowMatchHeunDiscreteScheduler(), 500, torch.randn(1, 4, 8, 8))


@pytest.mark.slow
@pytest.mark.parametrize("family", ["sd3", "wan"])
def test_trajectory_correction_on_flow_matching_raises_held_out_quality(family):
    """Flow matching (SD3: FlowMatchEuler; Wan: UniPC flow prediction), 5-D video latents included."""
    pipe = tiny_pipeline(family)
    kwargs = {k: v for k, v in tiny_call_kwargs(family, num_inference_steps=STEPS).items() if k != "prompt"}

    def run(config, prompts=HELD_OUT):
        diffusion_accel.remove(pipe)
        if config is not None:
            diffusion_accel.apply(pipe, config)
        generators = [torch.Generator().manual_seed(100 + i) for i in range(len(prompts))]
        with torch.no_grad():
            out = pipe(prompt=prompts, **{**kwargs, "output_type": "latent"}, generator=generators)
        diffusion_accel.remove(pipe)
        return out.frames if family == "wan" else out.images

    reference = run(None)
    config = AccelerationConfig(cache=StaticCacheConfig(CacheSchedule.fora(pipe.transformer, STEPS, 3)),
                                quant=QuantConfig(weight_bits=4, act_bits=8, group_size=16))
    corrected = calibrate_error_correction(pipe, CALIBRATION, config, **kwargs)
    assert len(corrected.cache.step_shift) == STEPS
    before = (run(config) - reference).pow(2).mean().item()
    after = (run(corrected) - reference).pow(2).mean().item()
    assert after < 0.98 * before, (after, before)  # held-out prompts and seeds (sd3 0.96x, wan 0.89x measured)
    full = AccelerationConfig(cache=StaticCacheConfig(CacheSchedule.full(pipe.transformer, STEPS)))
    assert calibrate_error_correction(pipe, CALIBRATION, full, **kwargs).cache.step_shift == ()  # nothing to fix


@pytest.mark.slow
def test_trajectory_correction_raises_held_out_quality():
    pipe = tiny_pipeline("pixart-alpha")
    reference = latents(pipe, None)
    config = AccelerationConfig(cache=StaticCacheConfig(CacheSchedule.fora(pipe.transformer, STEPS, 3)),
                                quant=QuantConfig(weight_bits=4, act_bits=8, group_size=16))
    corrected = calibrate_error_correction(pipe, CALIBRATION, config, **KWARGS)
    assert diffusion_accel.api.acceleration_state(pipe) is None  # the pipeline got its own state back
    assert isinstance(corrected.cache, CorrectedCacheConfig) and len(corrected.cache.step_scale) == STEPS
    assert not corrected.cache.computed_scale and not corrected.cache.reused_scale
    assert AccelerationConfig.from_json(corrected.to_json()) == corrected  # saves with the rest
    before = (latents(pipe, config) - reference).pow(2).mean().item()
    after = (latents(pipe, corrected) - reference).pow(2).mean().item()
    assert after < 0.95 * before, (after, before)  # held-out prompts and seeds (0.89x measured at 64x64)
    assert torch.equal(latents(pipe, None), reference)  # remove() restores the plain model


@pytest.mark.slow
def test_reference_is_reusable_and_fits_are_deterministic():
    pipe = tiny_pipeline("pixart-alpha")
    config = AccelerationConfig(cache=StaticCacheConfig(CacheSchedule.fora(pipe.transformer, STEPS, 2)))
    ref = record_reference(pipe, CALIBRATION[:2], seed=5, **KWARGS)
    assert sorted(ref.x0) == list(range(STEPS))
    a = calibrate_error_correction(pipe, None, config, reference=ref)
    b = calibrate_error_correction(pipe, CALIBRATION[:2], config, seed=5, **KWARGS)
    assert a == b
    # an unfitted CorrectedCacheConfig (what a search gene decodes to) is fitted like its cache
    unfitted = dataclasses.replace(config, cache=CorrectedCacheConfig(config.cache))
    assert calibrate_error_correction(pipe, None, unfitted, reference=ref) == a


def test_installed_maps_give_the_fitting_runs_latents():
    """The fitting run corrects each step as soon as it fits it; the fitted maps installed by the
    CorrectedCacheConfig correct the same way (one shared function): same inputs and seeds, same latents."""
    pipe = tiny_pipeline("pixart-alpha")
    config = AccelerationConfig(cache=StaticCacheConfig(CacheSchedule.fora(pipe.transformer, STEPS, 2)))
    ref = record_reference(pipe, CALIBRATION[:2], seed=5, **KWARGS)
    corrected = calibrate_error_correction(pipe, None, config, reference=ref)
    assert corrected.cache.fitted

    def run(config, fit=False):
        diffusion_accel.apply(pipe, config)
        (denoiser,) = [d for d in tracked_denoisers(pipe)[0] if d.module is pipe.transformer]
        fitter = StepFitter(denoiser, pipe.scheduler, ref.x0, STEPS) if fit else None
        with torch.no_grad():
            out = pipe(**ref.call, generator=ref.generators()).images
        if fitter is not None:
            fitter.close()
            assert fitter.tables() == (corrected.cache.step_scale, corrected.cache.step_shift)
        diffusion_accel.remove(pipe)
        return out

    fitting = run(config, fit=True)
    assert torch.equal(run(corrected), fitting)
    assert not torch.equal(run(config), fitting)  # the maps do change the latents


def test_zero_error_config_is_bit_identical():
    pipe = tiny_pipeline("pixart-alpha")
    reference = latents(pipe, None)
    config = AccelerationConfig(cache=StaticCacheConfig(CacheSchedule.full(pipe, STEPS)))
    corrected = calibrate_error_correction(pipe, CALIBRATION[:2], config, **KWARGS)
    assert corrected.cache == CorrectedCacheConfig(config.cache) and not corrected.cache.fitted
    assert torch.equal(latents(pipe, corrected), reference)


def test_bad_input_is_one_clear_error():
    pipe = tiny_pipeline("pixart-alpha")
    cache = StaticCacheConfig(CacheSchedule.fora(pipe.transformer, STEPS, 2))
    with pytest.raises(ValueError, match="one entry per step"):
        CorrectedCacheConfig(cache, step_scale=((1.0,),), step_shift=((0.0,),))
    with pytest.raises(ValueError, match="give both step_scale and step_shift"):
        CorrectedCacheConfig(cache, step_scale=((1.0,),) * STEPS)
    with pytest.raises(ValueError, match="method must be one of"):
        calibrate_error_correction(pipe, CALIBRATION, AccelerationConfig(cache=cache), method="blocks", **KWARGS)
    pipe.scheduler.register_to_config(prediction_type="sample")
    with pytest.raises(ValueError, match="prediction_type"):
        calibrate_error_correction(pipe, CALIBRATION, AccelerationConfig(cache=cache), **KWARGS)
