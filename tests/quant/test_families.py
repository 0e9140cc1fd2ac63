"""Quantization on every supported pipeline family: runs, stays close, and removes bit-exactly."""

import pytest
import torch

import diffusion_accel
from diffusion_accel import AccelerationConfig
from diffusion_accel.quant import QuantConfig, QuantLinear
from diffusion_accel.testing import TINY_PIPELINES, tiny_call_kwargs, tiny_pipeline

from .conftest import psnr


def _output(pipe, name):
    out = pipe(**tiny_call_kwargs(name, num_inference_steps=2), generator=torch.Generator().manual_seed(0))
    images = getattr(out, "images", None)
    return torch.as_tensor(images if images is not None else out.frames).float()


@pytest.mark.slow
@pytest.mark.parametrize("name", list(TINY_PIPELINES))
def test_w8a8_runs_on_every_family_and_removes_exactly(name):
    """Wan crashed (StopIteration): diffusers reads the time embedder's dtype from its first parameter."""
    pipe = tiny_pipeline(name)
    reference = _output(pipe, name)
    diffusion_accel.apply(pipe, AccelerationConfig(quant=QuantConfig(weight_bits=8, act_bits=8)))
    try:
        denoiser = pipe.transformer if hasattr(pipe, "transformer") else pipe.unet
        assert any(isinstance(m, QuantLinear) for m in denoiser.modules())
        quantized = _output(pipe, name)
    finally:
        diffusion_accel.remove(pipe)
    assert psnr(quantized, reference) >= 30.0
    assert torch.equal(_output(pipe, name), reference)


@pytest.mark.slow
def test_weight_only_runs_on_wan():
    pipe = tiny_pipeline("wan")
    reference = _output(pipe, "wan")
    diffusion_accel.apply(pipe, AccelerationConfig(quant=QuantConfig(weight_bits=8, act_bits=None)))
    try:
        quantized = _output(pipe, "wan")
    finally:
        diffusion_accel.remove(pipe)
    assert psnr(quantized, reference) >= 35.0
    assert torch.equal(_output(pipe, "wan"), reference)


@pytest.mark.parametrize("act_bits", [8, None])
def test_a_module_made_only_of_quantized_linears_reports_its_float_dtype(act_bits):
    """``next(module.parameters()).dtype`` is what diffusers reads (Wan's time embedder)."""
    from diffusers.models.embeddings import TimestepEmbedding

    from diffusion_accel.quant.replace import quantize_linears

    embedder = TimestepEmbedding(16, 32)
    quantize_linears(embedder, {"linear_1": 8, "linear_2": 8}, act_bits=act_bits)
    first = next(iter(embedder.parameters()))
    assert first.dtype == torch.float32 and first.numel() == 0
    embedder.to(torch.bfloat16)
    assert next(iter(embedder.parameters())).dtype == torch.bfloat16
    assert embedder.linear_1.weight_scale.dtype == torch.float32
    assert "dtype_anchor" not in "".join(embedder.state_dict())  # zero bytes, never saved
    y = embedder(torch.randn(3, 16, dtype=torch.bfloat16))
    assert y.dtype == torch.bfloat16 and y.shape == (3, 32)
