"""Triton block-sparse backward (interpreted on CPU, TRITON_INTERPRET=1 from conftest) vs the fp32 reference.

Gradients of q, k, v through ``autograd.Function`` with the Triton forward and backward are
compared with autograd through ``block_sparse_attention_reference`` (fp32, on the same inputs
upcast): relative Frobenius error <= 1e-5 for fp32 inputs, <= 2e-3 for fp16 inputs.
"""

import os

import pytest
import torch

from diffusion_accel.sparse_attn import autograd as sa_autograd
from diffusion_accel.sparse_attn import block_sparse_attention
from diffusion_accel.sparse_attn.autograd import block_sparse_attention_fn
from diffusion_accel.sparse_attn.reference import block_sparse_attention_reference

from ._util import qkv, rel_err

pytestmark = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1",
    reason="CPU tensors need the Triton interpreter (TRITON_INTERPRET=1, set by conftest)",
)

TOL = {torch.float32: 1e-5, torch.float16: 2e-3}
CASES = [  # (batch, heads, seq_q, seq_k, head_dim, block_q, block_k)
    (1, 2, 77, 61, 24, 16, 16),  # padded q and k tails, head_dim padded to 32
    (2, 1, 64, 96, 16, 32, 16),  # block_q != block_k, no padding
    (1, 2, 90, 90, 16, 16, 32),  # self-attention, padded
]


def _kernels():
    from diffusion_accel.sparse_attn import kernels

    return kernels


def _block_map(b, h, nq, nk, seed):
    """A random map with one single-block row and one key block that no query block selects."""
    g = torch.Generator().manual_seed(seed)
    m = torch.rand(b, h, nq, nk, generator=g) < 0.5
    m[..., 1] = False  # an unselected key block: its dk/dv are exactly zero
    m[..., 0] |= ~m.any(-1)  # every row keeps a block
    m[..., -1, -1] = True  # the (padded) last key block is used by the (padded) last query block
    m[0, 0, 1] = False
    m[0, 0, 1, nk - 1] = True  # a row with a single block (the padded tail)
    return m


def _grads(fn, q, k, v, w):
    ins = tuple(t.clone().requires_grad_() for t in (q, k, v))
    out = fn(*ins)
    (out.float() * w).sum().backward()
    return out.detach(), [t.grad for t in ins]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("case", CASES)
def test_triton_backward_matches_reference(case, dtype):
    b, h, sq, sk, d, bq, bk = case
    q, k, v = qkv(b, h, sq, sk, d, dtype=dtype, seed=sq + d)
    bm = _block_map(b, h, -(-sq // bq), -(-sk // bk), seed=sk)
    w = torch.randn(b, h, sq, d, generator=torch.Generator().manual_seed(1))
    out, g = _grads(lambda *t: block_sparse_attention_fn(*t, bm, bq, bk, use_triton=True)[0], q, k, v, w)
    ref, gr = _grads(lambda *t: block_sparse_attention_reference(*t, bm, bq, bk), q.float(), k.float(), v.float(), w)
    assert rel_err(out, ref) <= TOL[dtype]
    for name, a, r in zip("qkv", g, gr):
        assert a.dtype == dtype and a.shape == r.shape
        assert rel_err(a, r) <= TOL[dtype], name
    unused = slice(bk, 2 * bk)
    assert bool((g[1][:, :, unused] == 0).all()) and bool((g[2][:, :, unused] == 0).all())


def test_triton_backward_launcher_matches_pytorch_backward():
    from diffusion_accel.sparse_attn.backward import block_sparse_backward

    q, k, v = qkv(1, 2, 45, 45, 16, seed=5)
    bm = _block_map(1, 2, 3, 3, seed=5)
    out, lse = _kernels().block_sparse_attention_triton(q, k, v, bm, 16, 16)
    d_out = torch.randn_like(out)
    ours = _kernels().block_sparse_backward_triton(q, k, v, out, lse, d_out, bm, 16, 16, scale=0.3)
    theirs = block_sparse_backward(q, k, v, out, lse, d_out, bm, 16, 16, 0.3)
    for a, r in zip(ours, theirs):
        assert rel_err(a, r) <= 1e-5


def _spy(monkeypatch):
    calls = []
    triton_bwd = _kernels().block_sparse_backward_triton
    torch_bwd = sa_autograd.block_sparse_backward
    monkeypatch.setattr(_kernels(), "block_sparse_backward_triton", lambda *a: calls.append("triton") or triton_bwd(*a))
    monkeypatch.setattr(sa_autograd, "block_sparse_backward", lambda *a: calls.append("torch") or torch_bwd(*a))
    return calls


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_function_picks_the_backward_of_its_forward(backend, monkeypatch):
    calls = _spy(monkeypatch)
    q, k, v = (t.requires_grad_() for t in qkv(1, 1, 40, 40, 16, seed=2))
    out = block_sparse_attention(q, k, v, density=0.5, block_q=16, block_k=16, backend=backend)
    out.sum().backward()
    assert calls == [backend]


def test_triton_backward_rejects_bad_inputs():
    q, k, v = qkv(1, 1, 32, 32, 16)
    bm = torch.ones(1, 1, 2, 2, dtype=torch.bool)
    out, lse = _kernels().block_sparse_attention_triton(q, k, v, bm, 16, 16)
    with pytest.raises(ValueError, match="expected"):
        _kernels().block_sparse_backward_triton(q, k, v, out, lse, out, bm[..., :1], 16, 16)
    with pytest.raises(ValueError, match="lse"):
        _kernels().block_sparse_backward_triton(q, k, v, out, lse[..., :5], out, bm, 16, 16)
    bf = [t.bfloat16() for t in (q, k, v, out)]
    with pytest.raises(ValueError, match="backend='torch'"):
        _kernels().block_sparse_backward_triton(*bf, lse, bf[3], bm, 16, 16)
