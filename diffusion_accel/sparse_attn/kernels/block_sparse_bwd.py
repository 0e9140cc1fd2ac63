"""Triton block-sparse flash-attention backward (FlashAttention-2 style), three kernels.

Kernel -> launcher, as the forward (``block_sparse.py``):

* ``_bwd_preprocess``: ``delta = rowsum(dO * O)`` per query row, fp32, one program per
  (query block, batch*head).
* ``_bwd_dq``: one program per (query block, batch*head) walks the forward's lookup table of
  selected key blocks and accumulates ``dq = scale * sum_j ds_j k_j``.
* ``_bwd_dkdv``: one program per (key block, batch*head) walks the *transposed* lookup table
  (the query blocks that selected this key block, built on the host from ``block_map^T``) and
  accumulates ``dv = sum_i p_i^T do_i`` and ``dk = scale * sum_i ds_i^T q_i``; a key block no
  query block selected gets zeros.

Probabilities are recomputed from the forward's log-sum-exp, ``p = exp(q k^T scale - lse)``, and
``ds = p * (do v^T - delta)``. Padding rows and columns (sequence tails, head_dim padded to a power
of two) are masked to zero; accumulation is fp32, matmul inputs stay in the inputs' dtype
(fp32/fp16; bf16 needs a GPU). Each program owns its output tile: no atomics.

Example (needs a GPU, or TRITON_INTERPRET=1 set before importing):
    >>> import torch
    >>> from diffusion_accel.sparse_attn.kernels import block_sparse_attention_triton, block_sparse_backward_triton
    >>> q = k = v = torch.randn(1, 1, 40, 16)
    >>> m = torch.ones(1, 1, 3, 3, dtype=torch.bool)
    >>> out, lse = block_sparse_attention_triton(q, k, v, m, 16, 16)
    >>> dq, dk, dv = block_sparse_backward_triton(q, k, v, out, lse, torch.ones_like(out), m, 16, 16)
    >>> dq.shape, dk.shape
    (torch.Size([1, 1, 40, 16]), torch.Size([1, 1, 40, 16]))
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ..masks import num_blocks
from .block_sparse import build_lut, check_block_map, head_block

__all__ = ["block_sparse_backward_triton"]


@triton.jit
def _bwd_preprocess(O, DO, DELTA, H, seq_q, head_dim, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (offs_m < seq_q)[:, None] & (offs_d < head_dim)[None, :]
    base = pid_bh * seq_q * head_dim + offs_m[:, None] * head_dim + offs_d[None, :]
    o = tl.load(O + base, mask=mask, other=0.0).to(tl.float32)
    do = tl.load(DO + base, mask=mask, other=0.0).to(tl.float32)
    tl.store(DELTA + pid_bh * seq_q + offs_m, tl.sum(o * do, 1), mask=offs_m < seq_q)


@triton.jit
def _bwd_dq(
    Q, K, V, DO, LSE, DELTA, DQ, LUT, CNT,
    seq_q, seq_k, head_dim, n_qblocks, max_blocks, scale,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_n0 = tl.arange(0, BLOCK_N)
    m_ok = offs_m < seq_q
    d_ok = offs_d < head_dim
    q_off = pid_bh * seq_q * head_dim + offs_m[:, None] * head_dim + offs_d[None, :]
    q = tl.load(Q + q_off, mask=m_ok[:, None] & d_ok[None, :], other=0.0)
    do = tl.load(DO + q_off, mask=m_ok[:, None] & d_ok[None, :], other=0.0)
    lse = tl.load(LSE + pid_bh * seq_q + offs_m, mask=m_ok, other=0.0)
    delta = tl.load(DELTA + pid_bh * seq_q + offs_m, mask=m_ok, other=0.0)
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)

    row = pid_bh * n_qblocks + pid_m
    count = tl.load(CNT + row)
    for i in range(count):
        kb = tl.load(LUT + row * max_blocks + i)
        offs_n = kb * BLOCK_N + offs_n0
        n_ok = offs_n < seq_k
        kv_off = pid_bh * seq_k * head_dim + offs_n[:, None] * head_dim + offs_d[None, :]
        k = tl.load(K + kv_off, mask=n_ok[:, None] & d_ok[None, :], other=0.0)
        v = tl.load(V + kv_off, mask=n_ok[:, None] & d_ok[None, :], other=0.0)
        s = tl.dot(q, tl.trans(k)).to(tl.float32) * scale
        p = tl.exp(s - lse[:, None])
        p = tl.where(m_ok[:, None] & n_ok[None, :], p, 0.0)
        dp = tl.dot(do, tl.trans(v)).to(tl.float32)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k).to(tl.float32)

    tl.store(DQ + q_off, (dq * scale).to(DQ.dtype.element_ty), mask=m_ok[:, None] & d_ok[None, :])


@triton.jit
def _bwd_dkdv(
    Q, K, V, DO, LSE, DELTA, DK, DV, LUT_T, CNT_T,
    seq_q, seq_k, head_dim, n_kblocks, max_blocks, scale,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_m0 = tl.arange(0, BLOCK_M)
    n_ok = offs_n < seq_k
    d_ok = offs_d < head_dim
    kv_off = pid_bh * seq_k * head_dim + offs_n[:, None] * head_dim + offs_d[None, :]
    k = tl.load(K + kv_off, mask=n_ok[:, None] & d_ok[None, :], other=0.0)
    v = tl.load(V + kv_off, mask=n_ok[:, None] & d_ok[None, :], other=0.0)
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)

    col = pid_bh * n_kblocks + pid_n
    count = tl.load(CNT_T + col)
    for i in range(count):
        qb = tl.load(LUT_T + col * max_blocks + i)
        offs_m = qb * BLOCK_M + offs_m0
        m_ok = offs_m < seq_q
        q_off = pid_bh * seq_q * head_dim + offs_m[:, None] * head_dim + offs_d[None, :]
        q = tl.load(Q + q_off, mask=m_ok[:, None] & d_ok[None, :], other=0.0)
        do = tl.load(DO + q_off, mask=m_ok[:, None] & d_ok[None, :], other=0.0)
        lse = tl.load(LSE + pid_bh * seq_q + offs_m, mask=m_ok, other=0.0)
        delta = tl.load(DELTA + pid_bh * seq_q + offs_m, mask=m_ok, other=0.0)
        s = tl.dot(q, tl.trans(k)).to(tl.float32) * scale  # (BLOCK_M, BLOCK_N)
        p = tl.exp(s - lse[:, None])
        p = tl.where(m_ok[:, None] & n_ok[None, :], p, 0.0)
        dv += tl.dot(tl.trans(p.to(do.dtype)), do).to(tl.float32)
        dp = tl.dot(do, tl.trans(v)).to(tl.float32)
        ds = p * (dp - delta[:, None])
        dk += tl.dot(tl.trans(ds.to(q.dtype)), q).to(tl.float32)

    mask = n_ok[:, None] & d_ok[None, :]
    tl.store(DK + kv_off, (dk * scale).to(DK.dtype.element_ty), mask=mask)
    tl.store(DV + kv_off, dv.to(DV.dtype.element_ty), mask=mask)


def _check(q, k, v, out, lse, d_out, block_map, block_q, block_k):
    B, H, Sq, D = q.shape
    check_block_map(block_map, q, k, block_q, block_k)
    if k.shape != v.shape or out.shape != q.shape or d_out.shape != q.shape or tuple(lse.shape) != (B, H, Sq):
        raise ValueError(
            "block_sparse_backward_triton needs q/out/d_out (B, H, Sq, D), k/v (B, H, Sk, D) and lse (B, H, Sq); "
            f"got q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}, out {tuple(out.shape)}, "
            f"d_out {tuple(d_out.shape)}, lse {tuple(lse.shape)}."
        )
    if q.dtype == torch.bfloat16 and q.device.type == "cpu":
        raise ValueError("The Triton backward cannot run bfloat16 on CPU (interpreter); use float16/float32 or backend='torch'.")


def block_sparse_backward_triton(q, k, v, out, lse, d_out, block_map, block_q, block_k, scale=None):
    """Gradients ``(dq, dk, dv)`` (inputs' dtypes) of ``block_sparse_attention_triton``.

    ``out``/``lse`` are the forward's outputs, ``d_out`` the output gradient; the same block map
    and block sizes as the forward (powers of two >= 16).
    """
    _check(q, k, v, out, lse, d_out, block_map, block_q, block_k)
    B, H, Sq, D = q.shape
    Sk = k.shape[2]
    nq, nk = num_blocks(Sq, block_q), num_blocks(Sk, block_k)
    q, k, v, out = (t.contiguous() for t in (q, k, v, out))
    d_out = d_out.to(q.dtype).contiguous()  # the output gradient may be an expanded (stride-0) view
    lse = lse.float().contiguous()
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    block_d = head_block(D)
    delta = torch.empty(B, H, Sq, dtype=torch.float32, device=q.device)
    _bwd_preprocess[(nq, B * H)](out, d_out, delta, H, Sq, D, BLOCK_M=block_q, BLOCK_D=block_d)

    lut, cnt = build_lut(block_map)
    dq = torch.empty_like(q)
    _bwd_dq[(nq, B * H)](
        q, k, v, d_out, lse, delta, dq, lut, cnt, Sq, Sk, D, nq, lut.shape[-1], scale,
        BLOCK_M=block_q, BLOCK_N=block_k, BLOCK_D=block_d,
    )
    lut_t, cnt_t = build_lut(block_map.transpose(-1, -2))  # the query blocks that selected each key block
    dk, dv = torch.empty_like(k), torch.empty_like(v)
    _bwd_dkdv[(nk, B * H)](
        q, k, v, d_out, lse, delta, dk, dv, lut_t, cnt_t, Sq, Sk, D, nk, lut_t.shape[-1], scale,
        BLOCK_M=block_q, BLOCK_N=block_k, BLOCK_D=block_d,
    )
    return dq, dk, dv
