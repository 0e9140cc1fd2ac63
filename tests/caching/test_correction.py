"""Decoupled error correction (caching/correction.py, error_correction.py): it lowers the error of a
cached + W4A8 pipeline against the plain one, is bit-identical where nothing differs, saves to JSON
and is removed with the acceleration."""

import pytest
import torch

import diffusion_accel
from diffusion_accel import AccelerationConfig
from diffusion_accel.caching import CacheSchedule, CorrectedCacheConfig, StaticCacheConfig
from diffusion_accel.caching.correction import ChannelFit
from diffusion_accel.error_correction import _record, calibrate_error_correction
from diffusion_accel.quant import QuantConfig
from diffusion_accel.testing import tiny_call_kwargs, tiny_pipeline

KWARGS = {k: v for k, v in tiny_call_kwargs("pixart-alpha", num_inference_steps=6).items() if k != "prompt"}
CALIBRATION = ["a red cat", "a blue dog", "a green tree", "a yellow car"]
HELD_OUT = ["a white house", "a black bird"]


def latents(pipe, prompts, seed=100):
    out = pipe(prompt=prompts, **{**KWARGS, "output_type": "latent"}, generator=torch.Generator().manual_seed(seed))
    return out.images


def test_channel_fit_is_least_squares_and_identity_when_equal():
    x = torch.randn(50, 4, dtype=torch.float64)
    fit = ChannelFit()
    fit.add(x[:20], 3 * x[:20] - 2)
    fit.add(x[20:], 3 * x[20:] - 2)
    scale, shift = fit.solve()
    assert scale == pytest.approx([3.0] * 4) and shift == pytest.approx([-2.0] * 4)
    same = ChannelFit()
    same.add(x, x.clone())
    assert same.solve() == ((), ())


def block_error(pipe, config, prompts):
    """Relative squared error of every block's residual against the plain block run on the same input,
    summed over the blocks, steps and branches of one call on ``prompts`` (the error the correction fits)."""
    diffusion_accel.apply(pipe, config)
    recorder = _record(pipe, {**KWARGS, "prompt": prompts, "output_type": "latent"}, 100)
    diffusion_accel.remove(pipe)
    plain = recorder.replay()
    error = sum((recorder.outputs[k] - plain[k]).pow(2).sum().item() for k in plain)
    return error / sum(p.pow(2).sum().item() for p in plain.values())


def test_correction_lowers_the_cache_plus_quant_error_on_held_out_prompts():
    pipe = tiny_pipeline("pixart-alpha")
    reference = latents(pipe, HELD_OUT)
    steps = KWARGS["num_inference_steps"]
    config = AccelerationConfig(cache=StaticCacheConfig(CacheSchedule.fora(pipe.transformer, steps, 3)),
                                quant=QuantConfig(weight_bits=4, act_bits=8, group_size=16))
    corrected = calibrate_error_correction(pipe, CALIBRATION, config, method="block_residual", **KWARGS)
    assert diffusion_accel.api.acceleration_state(pipe) is None  # the pipeline got its own state back
    assert isinstance(corrected.cache, CorrectedCacheConfig) and corrected.cache.reused_scale
    assert corrected.cache.computed_scale  # the quantization error is corrected too (decoupled)
    assert AccelerationConfig.from_json(corrected.to_json()) == corrected  # saves with the rest

    uncorrected_error, corrected_error = block_error(pipe, config, HELD_OUT), block_error(pipe, corrected, HELD_OUT)
    assert corrected_error < 0.8 * uncorrected_error, (corrected_error, uncorrected_error)
    diffusion_accel.apply(pipe, corrected)
    assert acceleration_report(pipe)["corrected_blocks"] == 2
    diffusion_accel.remove(pipe)
    assert torch.equal(latents(pipe, HELD_OUT), reference)  # remove() restores the plain model


def acceleration_report(pipe):
    return diffusion_accel.api.acceleration_state(pipe).report()["cache"]


def test_full_compute_without_quant_is_bit_identical():
    pipe = tiny_pipeline("pixart-alpha")
    reference = latents(pipe, HELD_OUT)
    config = AccelerationConfig(cache=StaticCacheConfig(CacheSchedule.full(pipe, KWARGS["num_inference_steps"])))
    corrected = calibrate_error_correction(pipe, CALIBRATION[:2], config, method="block_residual", **KWARGS)
    assert corrected.cache == CorrectedCacheConfig(config.cache)  # nothing differed: identity everywhere
    diffusion_accel.apply(pipe, corrected)
    assert acceleration_report(pipe)["corrected_blocks"] == 0
    assert torch.equal(latents(pipe, HELD_OUT), reference)


def test_bad_input_is_one_clear_error():
    pipe = tiny_pipeline("pixart-alpha")
    cache = StaticCacheConfig(CacheSchedule.fora(pipe.transformer, 4, 2))
    with pytest.raises(ValueError, match="one entry per block"):
        CorrectedCacheConfig(cache, reused_scale=((1.0,),), reused_shift=((0.0,),))
    with pytest.raises(ValueError, match="give both reused_scale and reused_shift"):
        CorrectedCacheConfig(cache, reused_scale=((1.0,), (1.0,)))
    with pytest.raises(ValueError, match="cache is a StaticCacheConfig"):
        calibrate_error_correction(pipe, CALIBRATION, AccelerationConfig(), **KWARGS)
