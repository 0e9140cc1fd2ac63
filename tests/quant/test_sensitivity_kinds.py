"""Sensitivity measurement on video pipelines and the content / fidelity classing of layers."""

import pytest
import torch

from diffusion_accel.quant import measure_sensitivity
from diffusion_accel.quant.replace import linear_names
from diffusion_accel.quant.sensitivity import as_image_batch, layer_kinds, ssim_loss
from diffusion_accel.testing import tiny_call_kwargs, tiny_pipeline


def test_flux_single_block_mlp_is_content():
    """Flux's single-stream MLP component *is* the linear ``proj_mlp``: it was classed as fidelity."""
    model = tiny_pipeline("flux").transformer
    kinds = layer_kinds(model, linear_names(model))
    assert kinds["single_transformer_blocks.0.proj_mlp"] == ("single_transformer_blocks.0.proj_mlp", "content")
    assert kinds["single_transformer_blocks.0.attn.to_q"][1] == "fidelity"
    assert kinds["transformer_blocks.0.ff.net.0.proj"][1] == "content"


def test_ssim_loss_takes_video_frames():
    video = torch.rand(2, 3, 3, 16, 16)  # (B, F, C, H, W)
    assert as_image_batch(video).shape == (6, 3, 16, 16)
    assert ssim_loss(video, video) == pytest.approx(0.0, abs=1e-6)
    assert ssim_loss(video, (video + 0.2 * torch.rand_like(video)).clamp(0, 1)) > 0.01
    with pytest.raises(ValueError, match="video frames"):
        as_image_batch(torch.rand(3, 16, 16))


@pytest.mark.slow
def test_sensitivity_on_a_video_pipeline():
    """5-D frames reached SSIM and crashed ``measure_sensitivity`` on video pipelines."""
    pipe = tiny_pipeline("cogvideox")
    kwargs = tiny_call_kwargs("cogvideox")
    prompt = kwargs.pop("prompt")
    kwargs.pop("output_type")
    kwargs.pop("num_inference_steps")
    names = linear_names(pipe.transformer)
    content = next(n for n in names if ".ff." in n)
    result = measure_sensitivity(pipe, [prompt], layers=[names[0], content], num_inference_steps=1,
                                 call_kwargs=kwargs)
    assert result.kinds == {names[0]: "fidelity", content: "content"}
    assert all(loss[4] > 0 for loss in result.losses.values())
