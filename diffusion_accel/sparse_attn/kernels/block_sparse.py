"""Triton block-sparse flash-attention forward with a LUT of key blocks, and the SLA fused kernel.

Kernel -> launcher: one program per (query block, batch*head). The program walks the lookup
table ``lut[bh, m, :count[bh, m]]`` of key blocks selected for its query block with an online
softmax (fp32 accumulators, fp32 ``exp``), writes the output and the log-sum-exp. With
``HAS_LINEAR`` it also computes SLA's linear branch for the same query block from the summed
marginal-block states ``hm (D, D)`` and ``zm (D,)`` (prepared by the launcher) and writes it to
a second output — one pass over the queries for both branches.

Any sequence length and head_dim: loads are masked; head_dim is padded to a power of two inside
the kernel only. Block sizes must be powers of two >= 16.

Example (needs a GPU, or TRITON_INTERPRET=1 set before importing):
    >>> import torch
    >>> from diffusion_accel.sparse_attn.kernels import block_sparse_attention_triton
    >>> q = k = v = torch.randn(1, 1, 50, 72)
    >>> m = torch.ones(1, 1, 4, 4, dtype=torch.bool)
    >>> out, lse = block_sparse_attention_triton(q, k, v, m, 16, 16)
    >>> out.shape, lse.shape
    (torch.Size([1, 1, 50, 72]), torch.Size([1, 1, 50]))
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ..linear import block_states
from ..masks import num_blocks

__all__ = ["block_sparse_attention_triton", "build_lut", "sla_attention_triton"]

_FEATURE_IDS = {"elu": 0, "relu": 1, "softmax": 2}


@triton.jit
def _block_sparse_fwd(
    Q, K, V, O, LSE, LUT, CNT, HM, ZM, OL,
    sqb, sqh, sqs, sqd,
    skb, skh, sks, skd,
    svb, svh, svs, svd,
    sob, soh, sos, sod,
    H, seq_q, seq_k, head_dim, n_qblocks, max_blocks, scale,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    HAS_LINEAR: tl.constexpr, FEATURE: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_n0 = tl.arange(0, BLOCK_N)
    m_ok = offs_m < seq_q
    d_ok = offs_d < head_dim

    q_ptrs = Q + b * sqb + h * sqh + offs_m[:, None] * sqs + offs_d[None, :] * sqd
    q = tl.load(q_ptrs, mask=m_ok[:, None] & d_ok[None, :], other=0.0)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)

    row = pid_bh * n_qblocks + pid_m
    count = tl.load(CNT + row)
    for i in range(count):
        kb = tl.load(LUT + row * max_blocks + i)
        offs_n = kb * BLOCK_N + offs_n0
        n_ok = offs_n < seq_k
        k = tl.load(
            K + b * skb + h * skh + offs_n[:, None] * sks + offs_d[None, :] * skd,
            mask=n_ok[:, None] & d_ok[None, :], other=0.0,
        )
        v = tl.load(
            V + b * svb + h * svh + offs_n[:, None] * svs + offs_d[None, :] * svd,
            mask=n_ok[:, None] & d_ok[None, :], other=0.0,
        )
        s = tl.dot(q, tl.trans(k)).to(tl.float32) * scale
        s = tl.where(n_ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.exp(s - m_new[:, None])
        alpha = tl.exp(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v).to(tl.float32)
        m_i = m_new

    out = acc / l_i[:, None]
    o_ptrs = O + b * sob + h * soh + offs_m[:, None] * sos + offs_d[None, :] * sod
    tl.store(o_ptrs, out.to(O.dtype.element_ty), mask=m_ok[:, None] & d_ok[None, :])
    tl.store(LSE + pid_bh * seq_q + offs_m, m_i + tl.log(l_i), mask=m_ok)

    if HAS_LINEAR:
        x = q.to(tl.float32)
        if FEATURE == 0:
            fq = tl.where(x > 0, x + 1.0, tl.exp(x))
        elif FEATURE == 1:
            fq = tl.maximum(x, 0.0)
        else:
            xm = tl.where(d_ok[None, :], x, float("-inf"))
            e = tl.exp(xm - tl.max(xm, 1)[:, None])
            fq = e / tl.sum(e, 1)[:, None]
        fq = tl.where(d_ok[None, :], fq, 0.0)
        offs_e = tl.arange(0, BLOCK_D)
        e_ok = offs_e < head_dim
        hm = tl.load(
            HM + row * head_dim * head_dim + offs_d[:, None] * head_dim + offs_e[None, :],
            mask=d_ok[:, None] & e_ok[None, :], other=0.0,
        )
        zm = tl.load(ZM + row * head_dim + offs_d, mask=d_ok, other=0.0)
        num = tl.dot(fq, hm)
        den = tl.sum(fq * zm[None, :], 1)
        den = tl.where(den > 0, den, 1.0)
        ol = num / den[:, None]
        ol_ptrs = OL + pid_bh * seq_q * head_dim + offs_m[:, None] * head_dim + offs_e[None, :]
        tl.store(ol_ptrs, ol, mask=m_ok[:, None] & e_ok[None, :])


def build_lut(block_map: torch.Tensor):
    """``(lut int32 (B*H, nq, max_count), count int32 (B*H, nq))``: selected key blocks, ascending."""
    B, H, nq, _nk = block_map.shape
    counts = block_map.sum(-1).to(torch.int32).reshape(B * H, nq)
    max_count = max(1, int(counts.max()))
    order = torch.argsort((~block_map).to(torch.int8), dim=-1, stable=True)[..., :max_count]
    return order.to(torch.int32).reshape(B * H, nq, max_count).contiguous(), counts.contiguous()


def check_block_map(block_map: torch.Tensor, q: torch.Tensor, k: torch.Tensor, block_q: int, block_k: int) -> None:
    """``block_map`` must be ``(B, H, query blocks, key blocks)`` of ``q (B, H, Sq, D)`` and ``k (B, H, Sk, D)``."""
    B, H, Sq, _ = q.shape
    expected = (B, H, num_blocks(Sq, block_q), num_blocks(k.shape[2], block_k))
    if tuple(block_map.shape) != expected:
        raise ValueError(f"block_map has shape {tuple(block_map.shape)}, expected {expected}.")


def head_block(head_dim: int) -> int:
    """The kernels' ``BLOCK_D``: head_dim padded to a power of two, at least 16 (``tl.dot``'s minimum)."""
    return max(16, triton.next_power_of_2(head_dim))


def _launch(q, k, v, block_map, block_q, block_k, scale, linear=None):
    B, H, Sq, D = q.shape
    Sk = k.shape[2]
    nq = num_blocks(Sq, block_q)
    check_block_map(block_map, q, k, block_q, block_k)
    if bool((block_map.sum(-1) == 0).any()):
        raise ValueError("Every query block must keep at least one key block (a row of block_map is empty).")
    lut, cnt = build_lut(block_map)
    out = torch.empty_like(q)
    lse = torch.empty(B, H, Sq, dtype=torch.float32, device=q.device)
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    if linear is None:
        hm = zm = ol = out  # unused placeholders
        feature = 0
    else:
        hm, zm, feature = linear
        ol = torch.empty(B, H, Sq, D, dtype=torch.float32, device=q.device)
    grid = (nq, B * H)
    _block_sparse_fwd[grid](
        q, k, v, out, lse, lut, cnt, hm, zm, ol,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(),
        H, Sq, Sk, D, nq, lut.shape[-1], scale,
        BLOCK_M=block_q, BLOCK_N=block_k, BLOCK_D=head_block(D),
        HAS_LINEAR=linear is not None, FEATURE=feature,
    )
    return out, lse, (None if linear is None else ol)


def block_sparse_attention_triton(q, k, v, block_map, block_q, block_k, scale=None):
    """Block-sparse attention; returns ``(out (B, H, Sq, D) in q.dtype, lse fp32 (B, H, Sq))``."""
    out, lse, _ = _launch(q, k, v, block_map, block_q, block_k, scale)
    return out, lse


def sla_attention_triton(q, k, v, critical_map, marginal_map, block_q, block_k, feature_map="softmax", scale=None):
    """SLA's fused forward: ``(o_sparse in q.dtype, o_linear fp32, lse)``, each over ``(B, H, Sq, ...)``.

    The launcher sums per-key-block states over each query block's marginal blocks (one matmul);
    the kernel computes both branches in one pass over the queries.
    """
    if feature_map not in _FEATURE_IDS:
        raise ValueError(f"Unknown feature_map {feature_map!r}; choose one of {sorted(_FEATURE_IDS)}.")
    B, H, _Sq, D = q.shape
    h, z = block_states(k, v, block_k, feature_map)
    sel = marginal_map.float()
    hm = (sel @ h.flatten(-2)).reshape(B * H, -1, D * D).contiguous()
    zm = (sel @ z).reshape(B * H, -1, D).contiguous()
    out, lse, ol = _launch(q, k, v, critical_map, block_q, block_k, scale, (hm, zm, _FEATURE_IDS[feature_map]))
    return out, ol, lse
