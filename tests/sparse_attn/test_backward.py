"""Explicit backward passes (autograd.Function) vs autograd through the fp32/fp64 reference."""

import pytest
import torch

from diffusion_accel.sparse_attn import block_sparse_attention, linear_attention, sla_attention
from diffusion_accel.sparse_attn.autograd import block_sparse_attention_fn, linear_attention_fn, linear_branch_fn
from diffusion_accel.sparse_attn.masks import predict_block_map
from diffusion_accel.sparse_attn.reference import (
    block_sparse_attention_reference,
    linear_attention_reference,
    sla_reference,
)

from ._util import qkv, rel_err

FEATURES = ("elu", "relu", "softmax")


def _maps(q, k, block):
    critical = predict_block_map(q.detach().float(), k.detach().float(), density=0.5, block_q=block, block_k=block)
    marginal = ~critical
    marginal[..., 0] |= ~critical[..., 0]  # every query block keeps some marginal block ...
    marginal[..., 1, :] = False  # ... except one, whose linear branch is zero
    return critical, marginal


def _f64(*shape, seed):
    return tuple(t.double().requires_grad_() for t in qkv(*shape, seed=seed))


def test_block_sparse_gradcheck_fp64():
    # Sq=40, Sk=37 with 16-token blocks: partial last query and key blocks.
    q, k, v = _f64(1, 2, 40, 37, 8, seed=1)
    bm = predict_block_map(q.detach().float(), k.detach().float(), density=0.5, block_q=16, block_k=16)
    assert not bool(bm.all())
    assert torch.autograd.gradcheck(lambda q, k, v: block_sparse_attention_fn(q, k, v, bm, 16, 16)[0], (q, k, v))


@pytest.mark.parametrize("feature", FEATURES)
def test_linear_branch_gradcheck_fp64(feature):
    q, k, v = _f64(1, 1, 40, 37, 6, seed=2)
    _, marginal = _maps(q, k, 16)
    assert torch.autograd.gradcheck(lambda q, k, v: linear_branch_fn(q, k, v, marginal, 16, 16, feature), (q, k, v))
    assert torch.autograd.gradcheck(lambda q, k, v: linear_attention_fn(q, k, v, feature), (q, k, v))


def _grads(fn, q, k, v, w):
    ins = tuple(t.clone().requires_grad_() for t in (q, k, v))
    out = fn(*ins)
    (out.float() * w).sum().backward()
    return out.detach(), [t.grad for t in ins]


def test_block_sparse_grads_match_reference_fp32():
    q, k, v = qkv(2, 2, 77, 61, 24, seed=3)
    bm = predict_block_map(q, k, density=0.4, block_q=16, block_k=16)
    w = torch.randn(2, 2, 77, 24)
    out, g = _grads(lambda *t: block_sparse_attention(*t, block_map=bm, block_q=16, block_k=16, backend="torch"), q, k, v, w)
    ref, gr = _grads(lambda *t: block_sparse_attention_reference(*t, bm, 16, 16), q, k, v, w)
    assert rel_err(out, ref) <= 1e-5
    for a, b in zip(g, gr):
        assert rel_err(a, b) <= 1e-4  # fp32 accumulation, different summation order


@pytest.mark.parametrize("feature", FEATURES)
def test_sla_and_linear_grads_match_reference_fp32(feature):
    q, k, v = qkv(1, 2, 70, 70, 16, seed=4)
    proj = torch.nn.Linear(16, 16)
    w = torch.randn(1, 2, 70, 16)
    kwargs = dict(density=0.3, skip_fraction=0.2, block_q=16, block_k=16, feature_map=feature, proj=proj)
    out, g = _grads(lambda *t: sla_attention(*t, backend="torch", **kwargs), q, k, v, w)
    ref, gr = _grads(lambda *t: sla_attention(*t, backend="reference", **kwargs), q, k, v, w)
    assert rel_err(out, ref) <= 1e-5
    for a, b in zip(g, gr):
        assert rel_err(a, b) <= 1e-4
    out, g = _grads(lambda *t: linear_attention(*t, feature_map=feature), q, k, v, w)
    ref, gr = _grads(lambda *t: linear_attention_reference(*t, feature), q, k, v, w)
    assert rel_err(out, ref) <= 1e-5
    for a, b in zip(g, gr):
        assert rel_err(a, b) <= 1e-4


def test_grad_ops_use_the_function_wrappers():
    q, k, v = (t.requires_grad_() for t in qkv(1, 1, 32, 32, 8))
    out = block_sparse_attention(q, k, v, density=0.5, block_q=16, block_k=16, backend="torch")
    assert "BlockSparseAttentionFunction" in type(out.grad_fn).__name__
    assert "LinearBranchFunction" in type(linear_attention(q, k, v).grad_fn).__name__


def test_sla_reference_branches_agree_with_function_forward():
    q, k, v = qkv(1, 2, 50, 50, 8, seed=6)
    critical, marginal = _maps(q, k, 16)
    _, o_lin = sla_reference(q, k, v, critical, marginal, 16, 16, "softmax")
    assert rel_err(linear_branch_fn(q, k, v, marginal, 16, 16, "softmax"), o_lin) <= 1e-6
