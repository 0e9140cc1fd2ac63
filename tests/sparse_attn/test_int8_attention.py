"""INT8 Q·Kᵀ attention: the op against its fp32 reference and exact SDPA, config, layer, pipelines."""

import importlib

import pytest
import torch
import torch.nn.functional as F

import diffusion_accel
from diffusion_accel import AccelerationConfig
from diffusion_accel.api import acceleration_state
from diffusion_accel.sparse_attn import SparseAttentionConfig, int8_attention, sparse_layers
from diffusion_accel.quant.quantizers import sqnr_db
from diffusion_accel.sparse_attn.int8_attention import int8_attention_reference, quantize_tokens
from diffusion_accel.sparse_attn.layer import SparseLayer, TokenLayout
from diffusion_accel.testing import TINY_PIPELINES, tiny_pipeline

from ..conftest import run

# the package exports the function under the module's name: reach the module itself
int8_module = importlib.import_module("diffusion_accel.sparse_attn.int8_attention")


def _qkv(B=1, H=2, Sq=200, Sk=200, D=64, seed=0, peak=2.0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, Sq, D, generator=g) * peak  # peakier softmax than unit scores
    return q, torch.randn(B, H, Sk, D, generator=g), torch.randn(B, H, Sk, D, generator=g)


@pytest.mark.parametrize("shape", [(1, 2, 200, 200, 64), (2, 3, 37, 301, 36), (1, 1, 5, 9, 72)])
def test_op_matches_reference_and_is_close_to_exact(shape):
    q, k, v = _qkv(*shape)
    with torch.no_grad():
        out, ref = int8_attention(q, k, v), int8_attention_reference(q, k, v)
    exact = F.scaled_dot_product_attention(q, k, v)
    assert out.shape == exact.shape and out.dtype == q.dtype
    assert sqnr_db(ref, out) > 40  # only the P·V dtype (bf16 where fast) differs from the reference
    assert sqnr_db(exact, ref) > 30  # int8 rounding of q and k (measured ~36 dB at these scores)


def test_reference_scores_ignore_a_constant_key_offset():
    """K is mean-smoothed before rounding, so a per-head offset shared by every key changes nothing."""
    q, k, v = _qkv()
    shifted = k + torch.randn(1, 2, 1, 64) * 5
    torch.testing.assert_close(int8_attention_reference(q, shifted, v), int8_attention_reference(q, k, v),
                               rtol=1e-5, atol=1e-5)


def test_row_chunks_do_not_change_the_result():
    q, k, v = _qkv(Sq=300, Sk=260)
    with torch.no_grad():
        whole = int8_attention(q, k, v, score_budget=1 << 22)
        chunked = int8_attention(q, k, v, score_budget=40 * 260)  # 40 query rows per chunk
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-6)


def test_quantize_tokens_round_trip_error_is_half_a_step():
    x = torch.randn(3, 50, 16)
    values, scale = quantize_tokens(x)
    assert values.dtype == torch.int8 and values.abs().max() == 127
    assert ((values.float() * scale - x).abs() <= scale / 2 + 1e-6).all()


def test_bad_inputs_raise_clear_errors():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="inference"):
        int8_attention(q.requires_grad_(), k, v)
    with pytest.raises(ValueError, match="do not match"):
        int8_attention(q.detach(), k[..., :32], v)


def test_config_refuses_sparse_settings():
    assert SparseAttentionConfig(method="int8").density is None
    with pytest.raises(ValueError, match="remove \\['density'\\]"):
        SparseAttentionConfig(method="int8", density=0.5)
    with pytest.raises(ValueError, match="backend"):
        SparseAttentionConfig(method="int8", backend="triton")
    config = AccelerationConfig(attention=SparseAttentionConfig(method="int8", dense_steps=1))
    assert AccelerationConfig.from_json(config.to_json()) == config


def test_layer_runs_sdpa_below_the_device_floor_and_int8_above():
    layer = SparseLayer("attn1", 0, SparseAttentionConfig(method="int8"), head_dim=32)
    floor = int8_module.int8_min_tokens(torch.device("cpu"))
    short = _qkv(Sq=floor - 1, Sk=floor - 1, D=32)
    with torch.no_grad():
        assert torch.equal(layer.attend(*short, TokenLayout()), F.scaled_dot_product_attention(*short))
        long = _qkv(Sq=floor, Sk=floor, D=32)
        out = layer.attend(*long, TokenLayout())
    assert torch.equal(out, int8_attention(*long))
    assert layer.stats["dense_calls"] == 1 and layer.stats["sparse_calls"] == 1


@pytest.mark.parametrize("name", TINY_PIPELINES)
def test_pipelines_stay_close_and_remove_restores(name, monkeypatch):
    monkeypatch.setitem(int8_module.MIN_TOKENS, "cpu", 0)  # tiny models have few tokens: force the int8 path
    pipe = tiny_pipeline(name)
    ref = run(pipe, name)
    diffusion_accel.apply(pipe, AccelerationConfig(attention=SparseAttentionConfig(method="int8")))
    assert sparse_layers(pipe)
    out = run(pipe, name)
    report = acceleration_state(pipe).report()["attention"]
    assert report["sparse_calls"] > 0 and report["mean_density"] is None
    assert sqnr_db(ref, out) > 20  # a whole (random-weight) denoising run, int8 scores in every layer
    diffusion_accel.remove(pipe)
    assert torch.equal(run(pipe, name), ref)


@pytest.mark.parametrize("tokens", [16, 300])  # SDPA below the floor, int8 above
def test_counting_calls_does_not_recompile_under_torch_compile(tokens):
    """Dynamo guarded on the call counters (and on the step when no dense steps are set): a recompile per call."""
    import torch._dynamo

    layer = SparseLayer("attn1", 0, SparseAttentionConfig(method="int8"), head_dim=16)
    torch._dynamo.reset()
    attend = torch.compile(lambda q, k, v: layer.attend(q, k, v, TokenLayout()), backend="eager")
    q, k, v = _qkv(Sq=tokens, Sk=tokens, D=16)
    with torch.no_grad(), torch._dynamo.config.patch(error_on_recompile=True):
        for _ in range(3):
            attend(q, k, v)
    assert layer.stats["dense_calls"] + layer.stats["sparse_calls"] == 3
