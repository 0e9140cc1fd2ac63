"""Triton kernels (interpreted on CPU, TRITON_INTERPRET=1 from conftest) vs the fp32 reference."""

import os

import pytest
import torch

from diffusion_accel.sparse_attn import block_sparse_attention, sla_attention
from diffusion_accel.sparse_attn.masks import predict_block_map
from diffusion_accel.sparse_attn.reference import block_sparse_attention_reference, sla_reference

from ._util import qkv, rel_err

pytestmark = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1",
    reason="CPU tensors need the Triton interpreter (TRITON_INTERPRET=1, set by conftest)",
)

TOL = {torch.float32: 1e-5, torch.float16: 2e-3}
CASES = [  # (batch, heads, seq_q, seq_k, head_dim, block_q, block_k)
    (1, 2, 77, 77, 72, 16, 16),
    (2, 1, 93, 61, 96, 32, 16),
    (1, 2, 64, 64, 64, 16, 32),
    (1, 1, 45, 45, 40, 16, 16),
]


def _kernels():
    from diffusion_accel.sparse_attn import kernels

    return kernels


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("case", CASES)
def test_block_sparse_kernel_matches_reference(case, dtype):
    b, h, sq, sk, d, bq, bk = case
    q, k, v = qkv(b, h, sq, sk, d, dtype=dtype, seed=sq + d)
    bm = predict_block_map(q, k, density=0.5, block_q=bq, block_k=bk)
    out, lse = _kernels().block_sparse_attention_triton(q, k, v, bm, bq, bk)
    ref, ref_lse = block_sparse_attention_reference(q, k, v, bm, bq, bk, return_lse=True)
    assert out.dtype == dtype and out.shape == q.shape
    assert rel_err(out, ref) <= TOL[dtype]
    assert (lse - ref_lse).abs().max() <= 1e-4


def test_public_op_triton_backend_density_one_equals_sdpa():
    q, k, v = qkv(1, 2, 50, 50, 72)
    out = block_sparse_attention(q, k, v, density=1.0, block_q=16, block_k=16, backend="triton")
    assert rel_err(out, torch.nn.functional.scaled_dot_product_attention(q, k, v)) <= 1e-5


@pytest.mark.parametrize("feature_map", ["elu", "relu", "softmax"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_sla_fused_kernel_matches_reference(feature_map, dtype):
    q, k, v = qkv(1, 2, 70, 70, 72, dtype=dtype, seed=7)
    critical = predict_block_map(q, k, density=0.25, block_q=16, block_k=16)
    marginal = ~critical & predict_block_map(q, k, density=0.75, block_q=16, block_k=16)
    o_s, o_l, _ = _kernels().sla_attention_triton(q, k, v, critical, marginal, 16, 16, feature_map)
    r_s, r_l = sla_reference(q, k, v, critical, marginal, 16, 16, feature_map)
    assert rel_err(o_s, r_s) <= TOL[dtype]
    assert rel_err(o_l, r_l) <= TOL[dtype]


def test_sla_op_triton_equals_torch_backend():
    q, k, v = qkv(1, 2, 64, 64, 32, seed=2)
    proj = torch.nn.Linear(32, 32)
    a = sla_attention(q, k, v, density=0.25, skip_fraction=0.25, proj=proj, block_q=16, block_k=16, backend="triton")
    b = sla_attention(q, k, v, density=0.25, skip_fraction=0.25, proj=proj, block_q=16, block_k=16, backend="torch")
    assert rel_err(a.detach(), b.detach()) <= 1e-5


def test_triton_rejects_small_blocks_and_cpu_bf16():
    q, k, v = qkv(1, 1, 32, 32, 16)
    with pytest.raises(ValueError, match="at least 16"):
        block_sparse_attention(q, k, v, density=0.5, block_q=8, block_k=16, backend="triton")
    with pytest.raises(ValueError, match="bfloat16"):
        block_sparse_attention(*(t.bfloat16() for t in (q, k, v)), density=0.5, block_q=16, block_k=16, backend="triton")


def test_auto_backend_rule():
    from diffusion_accel.sparse_attn.ops import auto_backend

    assert auto_backend("cuda", grad=False) == "triton"
    assert auto_backend("cuda", grad=True) == "triton"  # differentiable: Triton forward, explicit backward
    assert auto_backend("cpu", grad=False) == auto_backend("cpu", grad=True) == "torch"


def test_auto_with_grad_takes_a_differentiable_path(monkeypatch):
    # Make "auto" prefer the Triton kernel on CPU, as it does on CUDA: it runs with and without
    # gradients, and with them the output carries the gradients of the fp32 reference.
    from diffusion_accel.sparse_attn import ops

    monkeypatch.setitem(ops.AUTO_BACKENDS, "cpu", "triton")
    kernels = _kernels()
    calls = []
    real = kernels.block_sparse_attention_triton
    monkeypatch.setattr(
        kernels, "block_sparse_attention_triton", lambda *a, **kw: calls.append(1) or real(*a, **kw)
    )
    q, k, v = qkv(1, 2, 64, 64, 16, seed=3)
    bm = predict_block_map(q, k, density=0.5, block_q=16, block_k=16)
    with torch.no_grad():
        fwd = block_sparse_attention(q, k, v, block_map=bm, block_q=16, block_k=16)
    assert calls == [1]
    qs, ks, vs = (t.clone().requires_grad_() for t in (q, k, v))
    out = block_sparse_attention(qs, ks, vs, block_map=bm, block_q=16, block_k=16)
    assert calls == [1, 1] and out.grad_fn is not None  # Triton forward inside the autograd.Function
    qr, kr, vr = (t.clone().requires_grad_() for t in (q, k, v))
    ref = block_sparse_attention_reference(qr, kr, vr, bm, 16, 16)
    w = torch.randn_like(ref)
    (out * w).sum().backward()
    (ref * w).sum().backward()
    assert rel_err(fwd, ref) <= 1e-5
    for a, b in ((qs, qr), (ks, kr), (vs, vr)):
        assert rel_err(a.grad, b.grad) <= 1e-4


def test_triton_backend_is_differentiable():
    # Regression: the Triton backend used to refuse q/k/v that require grad (forward-only kernels).
    q, k, v = qkv(1, 2, 40, 40, 16, seed=5)
    qs, ks, vs = (t.clone().requires_grad_() for t in (q, k, v))
    qr, kr, vr = (t.clone().requires_grad_() for t in (q, k, v))
    out = sla_attention(qs, ks, vs, density=0.5, block_q=16, block_k=16, backend="triton",
                        proj=lambda x: 0.5 * x)
    ref = sla_attention(qr, kr, vr, density=0.5, block_q=16, block_k=16, backend="reference",
                        proj=lambda x: 0.5 * x)
    w = torch.randn_like(ref)
    (out * w).sum().backward()
    (ref * w).sum().backward()
    assert rel_err(out, ref) <= 1e-5
    for a, b in ((qs, qr), (ks, kr), (vs, vr)):
        assert rel_err(a.grad, b.grad) <= 1e-4
