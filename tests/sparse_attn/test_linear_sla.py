"""Linear attention, SLA branches, and SLA == block-sparse when the projection is zero."""

import pytest
import torch

from diffusion_accel.sparse_attn import block_sparse_attention, linear_attention, sla_attention
from diffusion_accel.sparse_attn.linear import sla_linear_branch
from diffusion_accel.sparse_attn.masks import predict_block_map
from diffusion_accel.sparse_attn.reference import linear_attention_reference, sla_reference

from ._util import qkv, rel_err


@pytest.mark.parametrize("feature_map", ["elu", "relu", "softmax"])
def test_linear_attention_matches_reference_and_closed_form(feature_map):
    q, k, v = qkv(2, 2, 97, 83, 40)
    out = linear_attention(q, k, v, feature_map=feature_map)
    assert rel_err(out, linear_attention_reference(q, k, v, feature_map)) <= 1e-5
    # closed form through explicit (non-normalised) kernel weights
    phi = {"elu": lambda x: torch.nn.functional.elu(x) + 1, "relu": torch.relu, "softmax": lambda x: x.softmax(-1)}[feature_map]
    w = phi(q) @ phi(k).transpose(-1, -2)
    expected = (w @ v) / w.sum(-1, keepdim=True).clamp_min(1e-30)
    assert rel_err(out, expected) <= 1e-4


def test_linear_attention_bf16_output_dtype():
    q, k, v = qkv(1, 2, 64, 64, 16, dtype=torch.bfloat16)
    out = linear_attention(q, k, v)
    assert out.dtype == torch.bfloat16
    assert rel_err(out, linear_attention_reference(q, k, v)) <= 1e-2


@pytest.mark.parametrize("feature_map", ["elu", "softmax"])
def test_sla_linear_branch_matches_reference(feature_map):
    q, k, v = qkv(1, 2, 150, 130, 24, seed=5)
    crit = predict_block_map(q, k, density=0.3, block_q=32, block_k=32)
    marg = ~crit & predict_block_map(q, k, density=0.8, block_q=32, block_k=32)
    _, ref = sla_reference(q, k, v, crit, marg, 32, 32, feature_map)
    assert rel_err(sla_linear_branch(q, k, v, marg, 32, 32, feature_map), ref) <= 1e-5


def test_sla_with_zero_projection_equals_block_sparse():
    q, k, v = qkv(1, 2, 256, 256, 32)
    proj = torch.nn.Linear(32, 32)
    torch.nn.init.zeros_(proj.weight)
    torch.nn.init.zeros_(proj.bias)
    sla = sla_attention(q, k, v, density=0.25, proj=proj, block_q=32, block_k=32, backend="torch")
    sparse = block_sparse_attention(q, k, v, density=0.25, block_q=32, block_k=32, backend="torch")
    assert torch.allclose(sla, sparse, atol=1e-6)


def test_sla_with_identity_projection_adds_linear_branch():
    q, k, v = qkv(1, 1, 128, 128, 16, seed=9)
    crit = predict_block_map(q, k, density=0.25, block_q=32, block_k=32)
    marg = ~crit
    r_s, r_l = sla_reference(q, k, v, crit, marg, 32, 32, "softmax")
    out = sla_attention(q, k, v, density=0.25, proj=lambda x: x, block_q=32, block_k=32, backend="reference")
    assert rel_err(out, r_s + r_l) <= 1e-5
