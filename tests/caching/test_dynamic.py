"""Dynamic (first-block residual) caching: exact when it never skips, correct when it does."""

import pytest
import torch

import diffusion_accel
from diffusion_accel import AccelerationConfig
from diffusion_accel.api import acceleration_state
from diffusion_accel.caching import DynamicCacheConfig
from diffusion_accel.hooks import StepTracker
from diffusion_accel.models import get_model_adapter
from diffusion_accel.testing import TINY_PIPELINES, tiny_pipeline
from diffusion_accel.testing.counting import ParameterUseCounter, watch_components


def _denoiser(pipe):
    return pipe.unet if hasattr(pipe, "unet") else pipe.transformer


def _apply(pipe, **kw):
    return diffusion_accel.apply(pipe, AccelerationConfig(cache=DynamicCacheConfig(**kw)))


@pytest.mark.parametrize("name", TINY_PIPELINES)
def test_threshold_zero_never_skips_and_is_bit_identical(name, run_pipe):
    pipe = tiny_pipeline(name)
    reference = run_pipe(pipe, name)
    _apply(pipe, threshold=0.0)
    assert torch.equal(run_pipe(pipe, name), reference)
    assert acceleration_state(pipe).report()["cache"]["steps_skipped"] == 0


@pytest.mark.parametrize("name", ["pixart-alpha", "sd3", "flux", "cogvideox", "wan", "sd15"])
def test_skips_follow_the_guards(name, run_pipe):
    """Huge threshold, at most 1 consecutive skip, 1 warm-up step: compute, skip, compute, skip..."""
    pipe = tiny_pipeline(name)
    _apply(pipe, threshold=1e9, max_consecutive_skips=1, warmup_steps=1)
    denoiser = _denoiser(pipe)
    adapter = get_model_adapter(denoiser)
    with ParameterUseCounter(watch_components(adapter, denoiser)) as counter:
        run_pipe(pipe, name, num_inference_steps=5)
    history = StepTracker.get(denoiser).history
    computed_steps = [0, 2, 4]
    calls_per_step = len(history) // 5
    report = acceleration_state(pipe).report()["cache"]
    assert report["steps_skipped"] == 2 * calls_per_step
    blocks = adapter.blocks(denoiser)
    always = {blocks[0].index} | ({blocks[-1].index} if adapter.family == "unet" else set())
    for block in blocks:
        for comp in block.components():
            runs = counter.counts[(block.index, adapter.component_names.index(comp))]
            expected = 5 if block.index in always else len(computed_steps)
            assert runs == expected * calls_per_step, (block.name, comp)


def test_final_steps_always_compute(run_pipe):
    pipe = tiny_pipeline("pixart-alpha")
    _apply(pipe, threshold=1e9, max_consecutive_skips=10, final_steps=2)
    run_pipe(pipe, "pixart-alpha", num_inference_steps=6)
    assert acceleration_state(pipe).report()["cache"]["steps_skipped"] == 3  # steps 1, 2, 3


def test_skipped_step_adds_the_cached_residual(run_pipe):
    """At a skipped step the last block returns its input plus (last - first) of the last computed step."""
    pipe = tiny_pipeline("flux")
    _apply(pipe, threshold=1e9, max_consecutive_skips=1)
    first, last = pipe.transformer.transformer_blocks[0], pipe.transformer.single_transformer_blocks[-1]
    seen = {"first": [], "last_in": [], "last_out": []}
    first.register_forward_hook(lambda m, a, o: seen["first"].append(o))

    def record_last(module, args, kwargs, output):
        seen["last_in"].append((kwargs["encoder_hidden_states"], kwargs["hidden_states"]))
        seen["last_out"].append(output)

    last.register_forward_hook(record_last, with_kwargs=True)
    run_pipe(pipe, "flux", num_inference_steps=3)
    # step 0 computed, step 1 skipped
    for stream in (0, 1):
        residual = seen["last_out"][0][stream] - seen["first"][0][stream]
        assert torch.equal(seen["last_in"][1][stream], seen["first"][1][stream])  # pass-through
        assert torch.equal(seen["last_out"][1][stream], seen["last_in"][1][stream] + residual)


def test_unet_skipped_step_reuses_deep_block_outputs(run_pipe):
    pipe = tiny_pipeline("sd15")
    _apply(pipe, threshold=1e9, max_consecutive_skips=1)
    outputs = []
    pipe.unet.mid_block.register_forward_hook(lambda m, a, o: outputs.append(o))
    run_pipe(pipe, "sd15", num_inference_steps=3)
    assert outputs[1] is outputs[0] and outputs[2] is not outputs[1]


def test_branches_decide_separately(run_pipe):
    pipe = tiny_pipeline("flux")
    _apply(pipe, threshold=1e9, max_consecutive_skips=1)
    controller = acceleration_state(pipe).handles[0][1].details[0]
    branches_during_call = []

    def on_step_end(p, i, t, kwargs):
        branches_during_call.append(sorted(controller.branches))
        return kwargs

    run_pipe(pipe, "flux", num_inference_steps=3, true_cfg_scale=2.0, negative_prompt="blurry",
             callback_on_step_end=on_step_end)
    assert branches_during_call == [["cond", "uncond"]] * 3
    assert controller.skipped_steps == 2  # step 1 of each branch


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"threshold": -1.0}, "threshold must be a number >= 0"),
        ({"warmup_steps": 0}, "warmup_steps must be an integer >= 1"),
        ({"max_consecutive_skips": 1.5}, "max_consecutive_skips must be an integer"),
    ],
)
def test_bad_config(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DynamicCacheConfig(**kwargs)
