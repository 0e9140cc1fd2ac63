"""A W8A8 transformer block under ``torch.compile`` traces into one graph and computes the eager result.

This is the path of the fastest CPU configuration measured against torchao (the whole transformer
compiled; ``auto`` takes a traceable backend there), so a graph break inside a block -- which would
cut the quantize / GEMM / rescale fusion -- fails here rather than showing up as a slow benchmark.
"""

import copy

import torch
from diffusers import PixArtTransformer2DModel

from diffusion_accel.hooks import Denoiser, StepTracker
from diffusion_accel.models import get_model_adapter
from diffusion_accel.quant import QuantConfig, QuantLinear, quantize_denoiser
from diffusion_accel.quant.fuse import FusedActivation


def _tiny_pixart():
    torch.manual_seed(0)
    return PixArtTransformer2DModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=8, num_layers=1,
        cross_attention_dim=32, sample_size=8, patch_size=2, caption_channels=24, norm_type="ada_norm_single",
        norm_elementwise_affine=False, norm_eps=1e-6, attention_bias=True, activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000, use_additional_conditions=False).eval()


def _quantized(model):
    adapter = get_model_adapter(model)
    quantize_denoiser(Denoiser("transformer", model, adapter, StepTracker.attach(model, adapter)),
                      QuantConfig(weight_bits=8, act_bits=8))
    return model


def _inputs():
    g = torch.Generator().manual_seed(1)
    return dict(hidden_states=torch.randn(2, 4, 8, 8, generator=g),
                encoder_hidden_states=torch.randn(2, 5, 24, generator=g),
                timestep=torch.tensor([500.0, 500.0]), added_cond_kwargs={"resolution": None, "aspect_ratio": None})


def test_w8a8_block_compiles_fullgraph_and_matches_eager():
    """The denoiser's own hooks (timestep range, step tracking) run outside the graph by design;
    everything inside a transformer block -- quantize, integer GEMM, rescale, fused GELU -- traces."""
    model = _quantized(_tiny_pixart())
    assert any(isinstance(m, FusedActivation) for m in model.modules())  # GELU in the up-projection epilogue
    fresh = copy.deepcopy(model.transformer_blocks[0])  # no backend has packed its weights yet
    block = model.transformer_blocks[0]
    assert sum(isinstance(m, QuantLinear) for m in block.modules()) == 10
    captured = {}
    handle = block.register_forward_pre_hook(
        lambda m, a, kw: captured.update(args=a, kwargs=kw), with_kwargs=True)
    with torch.no_grad():
        model(**_inputs())
    handle.remove()
    args, kwargs = captured["args"], captured["kwargs"]
    with torch.no_grad():
        expected = block(*args, **kwargs)
        explanation = torch._dynamo.explain(fresh)(*args, **kwargs)
        got = torch.compile(fresh, backend="aot_eager", fullgraph=True)(*args, **kwargs)
    assert explanation.graph_break_count == 0, [b.reason for b in explanation.break_reasons]
    # same integers and scales; the backends differ only in float rounding of the rescale
    assert float((got - expected).abs().max()) <= 1e-4 * float(expected.abs().max())


def _break_sites(explanation) -> list[str]:
    return [f"{frame.filename}:{frame.lineno}" for b in explanation.break_reasons for frame in b.user_stack[-1:]]


def test_compiling_after_eager_calls_unpacks_before_tracing_the_blocks():
    """Regression: eager calls pack the weights for fbgemm (opaque objects); compiling the model
    afterwards broke the graph in every quantized layer while unpacking them (29 breaks in this
    one-block model). The denoiser's hook now unpacks them eagerly before the blocks are traced."""
    model = _quantized(_tiny_pixart())
    inputs = _inputs()
    with torch.no_grad():
        expected = model(**inputs).sample  # eager: packs for the CPU's eager backend where there is one
        explanation = torch._dynamo.explain(model)(**inputs)
        got = torch.compile(model, backend="aot_eager")(**inputs).sample
    assert _break_sites(explanation) == [] and explanation.graph_break_count == 0
    assert all(getattr(m, "_packed", None) is None for m in model.modules())
    assert float((got - expected).abs().max()) <= 1e-4 * float(expected.abs().max())
