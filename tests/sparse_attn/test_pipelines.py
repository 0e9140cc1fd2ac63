"""Sparse processors in every covered model: exact at density 1.0, text dense, clean removal."""

import pytest
import torch

import diffusion_accel
from diffusion_accel import AccelerationConfig
from diffusion_accel.api import acceleration_state
from diffusion_accel.sparse_attn import (
    SparseAttentionConfig,
    fit_sla_projections,
    sla_parameters,
    sparse_layers,
)
from diffusion_accel.sparse_attn.processors import SparseProcessor
from diffusion_accel.testing import TINY_PIPELINES, tiny_call_kwargs, tiny_pipeline

from ..conftest import run


def _denoiser(pipe):
    return getattr(pipe, "transformer", None) or pipe.unet


def _processors(model):
    """``model.attn_processors`` for any model (``DiTTransformer2DModel`` lacks the property)."""
    return {f"{name}.processor": m.processor for name, m in model.named_modules() if hasattr(m, "set_processor")}


def _apply(pipe, **cfg):
    return diffusion_accel.apply(pipe, AccelerationConfig(attention=SparseAttentionConfig(**cfg)))


def _report(pipe):
    return acceleration_state(pipe).report()["attention"]


@pytest.mark.parametrize("name", TINY_PIPELINES)
def test_density_one_reproduces_model_output_and_remove_restores(name):
    pipe = tiny_pipeline(name)
    originals = _processors(_denoiser(pipe))
    ref = run(pipe, name)
    _apply(pipe, density=1.0, block_q=4, block_k=4)  # many blocks even at tiny token counts
    swapped = [p for p in _processors(_denoiser(pipe)).values() if isinstance(p, SparseProcessor)]
    assert swapped, "no attention layer was sparsified"
    out = run(pipe, name)
    report = _report(pipe)
    assert report["sparse_calls"] > 0 and report["mean_density"] == 1.0
    assert (out - ref).abs().max() <= 1e-4
    diffusion_accel.remove(pipe)
    restored = _processors(_denoiser(pipe))
    assert all(restored[key] is originals[key] for key in originals)


@pytest.mark.parametrize("name,text_first", [("flux", True), ("sd3", False), ("cogvideox", True)])
def test_joint_attention_keeps_text_tokens_dense(name, text_first):
    pipe = tiny_pipeline(name)
    _apply(pipe, density=0.25, block_q=4, block_k=4)
    layouts = []
    for layer in sparse_layers(pipe):
        attend = layer.attend

        def spy(q, k, v, layout, _attend=attend):
            layouts.append((q.shape[2], layout))
            return _attend(q, k, v, layout)

        layer.attend = spy
    run(pipe, name, num_inference_steps=1)
    assert layouts
    for seq, layout in layouts:
        (start, stop), = layout.dense_tokens
        n_txt = stop - start
        assert n_txt > 0
        assert (start == 0) if text_first else (stop == seq)
        assert layout.span == ((n_txt, seq) if text_first else (0, seq - n_txt))


def test_cross_attention_stays_dense():
    pipe = tiny_pipeline("pixart-alpha")
    _apply(pipe, density=0.5, block_q=4, block_k=4)
    for block in _denoiser(pipe).transformer_blocks:
        assert isinstance(block.attn1.processor, SparseProcessor)
        assert not isinstance(block.attn2.processor, SparseProcessor)
    pipe = tiny_pipeline("wan")
    _apply(pipe, density=0.5, block_q=4, block_k=4)
    for block in _denoiser(pipe).blocks:
        assert isinstance(block.attn1.processor, SparseProcessor)
        assert not isinstance(block.attn2.processor, SparseProcessor)


def test_realised_density_in_a_video_model():
    pipe = tiny_pipeline("wan")
    _apply(pipe, density=0.5, block_q=4, block_k=4)
    out = run(pipe, "wan")
    assert torch.isfinite(out).all()
    assert abs(_report(pipe)["mean_density"] - 0.5) <= 0.05


@pytest.mark.parametrize("name", ["wan", "cogvideox"])
def test_paro_reordering_is_exact_at_density_one(name):
    pipe = tiny_pipeline(name)
    ref = run(pipe, name, num_inference_steps=2)
    _apply(pipe, density=1.0, block_q=4, block_k=4, reorder="paro")
    out = run(pipe, name, num_inference_steps=2)
    assert (out - ref).abs().max() <= 1e-4
    assert all(layer.paro_orders for layer in sparse_layers(pipe))


def test_rettention_and_dense_steps_follow_the_step_tracker():
    pipe = tiny_pipeline("wan")
    ref = run(pipe, "wan")
    _apply(pipe, method="rettention", density=1.0, block_q=4, block_k=4, dense_steps=1)
    out = run(pipe, "wan")
    report = _report(pipe)
    # 3 steps x 2 guidance calls x 2 layers: step 0 dense for both branches, then sparse
    assert report["dense_calls"] == 4 and report["sparse_calls"] == 8
    assert (out - ref).abs().max() <= 1e-4  # density 1.0: ratio 1, residual 0
    _apply(pipe, density=0.25, block_q=4, block_k=4, dense_steps=2)
    run(pipe, "wan")
    assert _report(pipe)["sparse_calls"] == 4  # only step 2 is sparse


def test_sla_zero_projection_equals_block_sparse_and_fit_updates_it():
    name = "cogvideox"
    pipe = tiny_pipeline(name)
    _apply(pipe, density=0.25, block_q=4, block_k=4)
    sparse = run(pipe, name, num_inference_steps=2)
    _apply(pipe, method="sla", density=0.25, skip_fraction=0.25, block_q=4, block_k=4)
    sla = run(pipe, name, num_inference_steps=2)
    assert (sla - sparse).abs().max() <= 1e-5
    params = sla_parameters(pipe)
    assert params and all(float(p.detach().abs().max()) == 0.0 for p in params)
    fitted = fit_sla_projections(pipe, **tiny_call_kwargs(name, num_inference_steps=2),
                                 generator=torch.Generator().manual_seed(0))
    assert len(fitted) == len(sparse_layers(pipe)) and min(fitted.values()) > 0
    assert any(float(p.detach().abs().max()) > 0 for p in sla_parameters(pipe))


def test_attention_mask_on_sparse_layer_raises():
    pipe = tiny_pipeline("pixart-alpha")
    _apply(pipe, density=0.5, block_q=4, block_k=4)
    attn = _denoiser(pipe).transformer_blocks[0].attn1
    x = torch.randn(1, 16, attn.to_q.in_features)
    with pytest.raises(ValueError, match="attention_mask"):
        attn(x, attention_mask=torch.ones(1, 16, dtype=torch.bool))


def test_unknown_processor_is_a_clear_error_and_changes_nothing():
    from diffusers.models.attention_processor import AttnProcessor

    pipe = tiny_pipeline("pixart-alpha")
    _denoiser(pipe).set_attn_processor(AttnProcessor())
    with pytest.raises(ValueError, match="AttnProcessor"):
        _apply(pipe, density=0.5)
    assert not any(isinstance(p, SparseProcessor) for p in _denoiser(pipe).attn_processors.values())
