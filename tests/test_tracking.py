"""Step and branch tracking over consecutive calls with different steps and batch sizes."""

import diffusion_accel
from diffusion_accel import AccelerationConfig
from diffusion_accel.hooks import StepTracker
from diffusion_accel.testing import tiny_pipeline


def _histories(pipe, name, run_pipe, calls):
    tracker = StepTracker.get(pipe.transformer)
    out = []
    for steps, images in calls:
        run_pipe(pipe, name, num_inference_steps=steps, prompt=["a red cat", "a blue dog", "a green owl"][:images])
        out.append([(c.step, c.branch, c.batch_size) for c in tracker.history])
    return out


def test_cfg_batched_pipeline_one_call_per_step(run_pipe):
    pipe = diffusion_accel.apply(tiny_pipeline("pixart-alpha"), AccelerationConfig())
    calls = [(3, 1), (5, 2), (2, 1)]
    histories = _histories(pipe, "pixart-alpha", run_pipe, calls)
    for (steps, images), history in zip(calls, histories):
        # cond and uncond are batched into one call: batch = 2 * images
        assert history == [(s, "call0", 2 * images) for s in range(steps)]


def test_two_calls_per_step_pipeline(run_pipe):
    pipe = diffusion_accel.apply(tiny_pipeline("wan"), AccelerationConfig())
    calls = [(3, 1), (4, 2), (2, 1)]
    histories = _histories(pipe, "wan", run_pipe, calls)
    for (steps, images), history in zip(calls, histories):
        expected = [(s, branch, images) for s in range(steps) for branch in ("cond", "uncond")]
        assert history == expected


def test_flux_true_cfg_two_calls_without_step_index(run_pipe):
    pipe = diffusion_accel.apply(tiny_pipeline("flux"), AccelerationConfig())
    run_pipe(pipe, "flux", num_inference_steps=3, true_cfg_scale=2.0, negative_prompt="blurry")
    history = StepTracker.get(pipe.transformer).steps_seen()
    assert history == [(s, b) for s in range(3) for b in ("cond", "uncond")]


def test_denoiser_called_outside_a_pipeline_resets_on_a_new_pass(run_pipe):
    import torch

    pipe = diffusion_accel.apply(tiny_pipeline("pixart-alpha"), AccelerationConfig())
    tracker = StepTracker.get(pipe.transformer)
    transformer = pipe.transformer
    x = torch.randn(1, transformer.config.in_channels, 8, 8)
    text = torch.randn(1, 4, transformer.config.caption_channels)
    added = {"resolution": None, "aspect_ratio": None}
    for t in (900, 900, 500, 100, 950):
        transformer(x, encoder_hidden_states=text, timestep=torch.tensor([t]), added_cond_kwargs=added)
    assert tracker.steps_seen() == [(0, "call0")]  # the rise 100 -> 950 started a new pass
