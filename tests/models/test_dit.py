"""Class-conditioned DiT (DiTPipeline): caching, quantization and sparse attention with no user code."""

import pytest
import torch

import diffusion_accel
from diffusion_accel import AccelerationConfig
from diffusion_accel.api import acceleration_state
from diffusion_accel.caching import CacheSchedule, DynamicCacheConfig, StaticCacheConfig
from diffusion_accel.caching.static import REUSE_MODES
from diffusion_accel.models import get_model_adapter
from diffusion_accel.quant import QuantConfig, QuantLinear
from diffusion_accel.quant.calibrate import calibrate
from diffusion_accel.sparse_attn import SparseAttentionConfig, sparse_layers
from diffusion_accel.testing import tiny_call_kwargs, tiny_pipeline

NAME = "dit"


def _run(pipe, seed=0, **overrides):
    kwargs = tiny_call_kwargs(NAME, **overrides)
    return pipe(**kwargs, generator=torch.Generator().manual_seed(seed)).images


def _psnr(a, b):
    mse = float(((a.double() - b.double()) ** 2).mean())
    return float("inf") if mse == 0 else 10 * torch.log10(torch.tensor(1.0 / mse)).item()


@pytest.fixture(scope="module")
def dit():
    """A tiny DiT and its un-accelerated output at 4 steps."""
    pipe = tiny_pipeline(NAME)
    return pipe, _run(pipe, num_inference_steps=4)


def test_adapter_declares_the_blocks_the_components_and_the_token_grid():
    pipe = tiny_pipeline(NAME)
    adapter = get_model_adapter(pipe.transformer)
    blocks = adapter.blocks(pipe.transformer)
    assert adapter.family == "dit" and len(blocks) == 2
    assert [sorted(b.components()) for b in blocks] == [["attn1", "ff"]] * 2  # no cross-attention
    latents = torch.zeros(2, 4, 8, 8)
    assert adapter.token_grid(pipe.transformer, (latents,), {}) == (1, 4, 4)  # patch 2


@pytest.mark.parametrize("reuse", REUSE_MODES)
def test_static_cache_reuses_as_scheduled_and_remove_restores(dit, reuse):
    pipe, reference = dit
    schedule = CacheSchedule.fora(pipe, 4, 2)
    diffusion_accel.apply(pipe, AccelerationConfig(cache=StaticCacheConfig(schedule, reuse=reuse)))
    try:
        cached = _run(pipe, num_inference_steps=4)
        report = acceleration_state(pipe).report()["cache"]
    finally:
        diffusion_accel.remove(pipe)
    # FORA-2 at 4 steps: every block computes at steps 0 and 2 and reuses at 1 and 3 (one call per step).
    assert report["component_calls_computed"] == report["component_calls_reused"] == 2 * 2 * 2
    assert not torch.equal(cached, reference) and _psnr(cached, reference) > 20
    assert torch.equal(_run(pipe, num_inference_steps=4), reference)


def test_dynamic_cache_skips_steps_and_remove_restores(dit):
    pipe, reference = dit
    diffusion_accel.apply(pipe, AccelerationConfig(cache=DynamicCacheConfig(threshold=1e9)))
    try:
        cached = _run(pipe, num_inference_steps=4)
        assert acceleration_state(pipe).report()["cache"]["steps_skipped"] > 0
    finally:
        diffusion_accel.remove(pipe)
    assert not torch.equal(cached, reference)
    assert torch.equal(_run(pipe, num_inference_steps=4), reference)


def test_w8a8_stays_close_and_remove_restores(dit):
    pipe, reference = dit
    diffusion_accel.apply(pipe, AccelerationConfig(quant=QuantConfig(weight_bits=8, act_bits=8)))
    try:
        quantized = [n for n, m in pipe.transformer.named_modules() if isinstance(m, QuantLinear)]
        images = _run(pipe, num_inference_steps=4)
    finally:
        diffusion_accel.remove(pipe)
    assert "transformer_blocks.0.attn1.to_q" in quantized and "transformer_blocks.1.ff.net.2" in quantized
    assert _psnr(images, reference) >= 35.0
    assert not any(isinstance(m, QuantLinear) for m in pipe.transformer.modules())
    assert torch.equal(_run(pipe, num_inference_steps=4), reference)


def test_static_activation_calibration_takes_class_labels(dit):
    """Issue 16.5: calibration ran pipe(prompt=...) and DiT raised a raw TypeError."""
    pipe, reference = dit
    config = QuantConfig(act_mode="static", timestep_ranges=2, calibration_prompts=({"class_labels": 1},
                         {"class_labels": 2}), calibration_kwargs={"num_inference_steps": 4})
    diffusion_accel.apply(pipe, AccelerationConfig(quant=config))
    try:
        layer = pipe.transformer.transformer_blocks[0].attn1.to_q
        assert layer.act_mode == "static" and layer.act_scale.shape == (2,)
        images = _run(pipe, num_inference_steps=4)
    finally:
        diffusion_accel.remove(pipe)
    assert _psnr(images, reference) >= 30.0
    assert AccelerationConfig.from_json(AccelerationConfig(quant=config).to_json()).quant == config


def test_text_prompts_on_a_class_conditioned_pipeline_name_the_fix():
    pipe = tiny_pipeline(NAME)
    with pytest.raises(ValueError, match=r"DiTPipeline takes no \['prompt'\].*'class_labels'"):
        calibrate(pipe, ["a red cat"], num_inference_steps=2)
    with pytest.raises(ValueError, match="same call arguments"):
        calibrate(pipe, [{"class_labels": 1}, {"class_labels": 2, "guidance_scale": 2.0}], num_inference_steps=2)


def test_sparse_attention_with_paro_is_exact_at_density_one_and_remove_restores(dit):
    pipe, reference = dit
    processors = [b.attn1.processor for b in pipe.transformer.transformer_blocks]
    config = SparseAttentionConfig(density=1.0, block_q=4, block_k=4, reorder="paro")
    diffusion_accel.apply(pipe, AccelerationConfig(attention=config))
    try:
        out = _run(pipe, num_inference_steps=4)
        assert acceleration_state(pipe).report()["attention"]["sparse_calls"] > 0
        assert all(layer.paro_orders for layer in sparse_layers(pipe))  # the grid came from the adapter
    finally:
        diffusion_accel.remove(pipe)
    assert (out - reference).abs().max() <= 1e-4
    assert [b.attn1.processor for b in pipe.transformer.transformer_blocks] == processors
    assert torch.equal(_run(pipe, num_inference_steps=4), reference)


def test_all_three_compose_through_the_drop_in_class(tmp_path, dit):
    pipe, reference = dit
    from diffusion_accel.pipelines import DiTPipeline

    pipe.save_pretrained(tmp_path / "dit")
    config = AccelerationConfig(cache=StaticCacheConfig(CacheSchedule.fora(pipe, 4, 2), reuse="block_residual"),
                                quant=QuantConfig(), attention=SparseAttentionConfig(density=0.5, block_q=4, block_k=4))
    config.save(tmp_path / "accel.json")
    loaded = DiTPipeline.from_pretrained(tmp_path / "dit", acceleration=tmp_path / "accel.json")
    loaded.set_progress_bar_config(disable=True)
    assert loaded.acceleration == config
    out = _run(loaded, num_inference_steps=4)
    assert torch.isfinite(out).all() and _psnr(out, reference) > 15
    loaded.disable_acceleration()
    assert torch.equal(_run(loaded, num_inference_steps=4), reference)
