"""apply/remove leave outputs bit-identical; drop-in classes keep the diffusers API."""

import diffusers
import pytest
import torch

import diffusion_accel
from diffusion_accel import AccelerationConfig
from diffusion_accel.api import acceleration_state
from diffusion_accel.caching import DynamicCacheConfig
from diffusion_accel.hooks import StepTracker
from diffusion_accel.pipelines import PixArtAlphaPipeline, accelerated_class_for
from diffusion_accel.testing import TINY_PIPELINES, tiny_call_kwargs, tiny_pipeline


@pytest.mark.parametrize("name", TINY_PIPELINES)
def test_empty_config_and_remove_are_bit_identical(name, run_pipe):
    pipe = tiny_pipeline(name)
    original_class = type(pipe)
    reference = run_pipe(pipe, name)
    diffusion_accel.apply(pipe, AccelerationConfig())
    assert type(pipe).__name__ == original_class.__name__
    assert isinstance(pipe, original_class)
    assert torch.equal(run_pipe(pipe, name), reference)
    diffusion_accel.remove(pipe)
    assert type(pipe) is original_class
    assert acceleration_state(pipe) is None
    assert torch.equal(run_pipe(pipe, name), reference)


def test_apply_again_replaces_instead_of_stacking(run_pipe):
    pipe = tiny_pipeline("pixart-alpha")
    reference = run_pipe(pipe, "pixart-alpha")
    diffusion_accel.apply(pipe, AccelerationConfig(cache=DynamicCacheConfig(threshold=1e9)))
    diffusion_accel.apply(pipe, AccelerationConfig())
    hooks = [m for m in pipe.transformer.modules() if getattr(m, "_diffusers_hook", None) and m._diffusers_hook.hooks]
    assert hooks == [pipe.transformer]  # only the step tracker remains
    assert torch.equal(run_pipe(pipe, "pixart-alpha"), reference)


def test_unknown_denoiser_gives_one_clear_error():
    pipe = tiny_pipeline("pixart-alpha")
    pipe.register_modules(transformer=torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="no denoiser diffusion-accel knows.*register_model_adapter"):
        diffusion_accel.apply(pipe, AccelerationConfig())


def test_shared_denoiser_accelerated_twice_is_refused():
    pipe = tiny_pipeline("pixart-alpha")
    diffusion_accel.apply(pipe, AccelerationConfig())
    other = diffusers.PixArtAlphaPipeline.from_pipe(pipe)
    with pytest.raises(ValueError, match="already accelerated through another pipeline"):
        diffusion_accel.apply(other, AccelerationConfig())


def test_drop_in_class_from_pretrained_with_acceleration(tmp_path, run_pipe):
    pipe = tiny_pipeline("pixart-alpha")
    reference = run_pipe(pipe, "pixart-alpha")
    pipe.save_pretrained(tmp_path / "model")
    config = AccelerationConfig(cache=DynamicCacheConfig(threshold=0.05))
    config.save(tmp_path / "accel.json")

    loaded = PixArtAlphaPipeline.from_pretrained(tmp_path / "model", acceleration=tmp_path / "accel.json")
    assert isinstance(loaded, diffusers.PixArtAlphaPipeline)
    assert loaded.acceleration == config
    loaded.disable_acceleration()
    assert loaded.acceleration is None
    assert torch.equal(run_pipe(loaded, "pixart-alpha"), reference)
    loaded.enable_acceleration(AccelerationConfig())
    assert torch.equal(run_pipe(loaded, "pixart-alpha"), reference)


def test_accelerated_pipeline_saves_as_the_diffusers_class(tmp_path):
    pipe = diffusion_accel.apply(tiny_pipeline("pixart-alpha"), AccelerationConfig())
    pipe.save_pretrained(tmp_path / "saved")
    reloaded = diffusers.DiffusionPipeline.from_pretrained(tmp_path / "saved")
    assert type(reloaded) is diffusers.PixArtAlphaPipeline


def test_callbacks_still_work_on_drop_in_class(run_pipe):
    pipe = tiny_pipeline("pixart-alpha")
    pipe = PixArtAlphaPipeline.from_pipe(pipe)
    pipe.enable_acceleration(AccelerationConfig())
    steps = []
    run_pipe(pipe, "pixart-alpha", callback=lambda i, t, latents: steps.append(i))  # PixArt's callback API
    assert steps == list(range(tiny_call_kwargs("pixart-alpha")["num_inference_steps"]))


def test_generic_wrapper_class_is_cached_and_named_like_the_original():
    cls = accelerated_class_for(diffusers.PixArtSigmaPipeline)
    assert cls is accelerated_class_for(diffusers.PixArtSigmaPipeline)
    assert cls.__name__ == "PixArtSigmaPipeline" and issubclass(cls, diffusers.PixArtSigmaPipeline)
    assert accelerated_class_for(diffusers.PixArtAlphaPipeline) is PixArtAlphaPipeline


def test_remove_detaches_the_tracker():
    pipe = diffusion_accel.apply(tiny_pipeline("pixart-alpha"), AccelerationConfig())
    assert StepTracker.get(pipe.transformer) is not None
    diffusion_accel.remove(pipe)
    assert StepTracker.get(pipe.transformer) is None
