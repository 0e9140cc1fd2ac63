"""fp32 PyTorch references for block-sparse, linear and sparse+linear (SLA) attention.

Plain, obviously-correct maths, chunked over (batch, head) and query rows so that a 16-head
16k x 16k problem never materialises more than ``max_scores`` score elements at once. The fast
paths (``cpu.py``) and the Triton kernels (``kernels/``) are tested against these.

Example:
    >>> import torch
    >>> from diffusion_accel.sparse_attn.reference import block_sparse_attention_reference
    >>> q = k = v = torch.randn(1, 1, 100, 16)
    >>> full = torch.ones(1, 1, 2, 2, dtype=torch.bool)
    >>> out = block_sparse_attention_reference(q, k, v, full, 64, 64)
    >>> torch.allclose(out, torch.nn.functional.scaled_dot_product_attention(q, k, v), atol=1e-5)
    True
"""

from __future__ import annotations

import math

import torch

from .features import feature_map_fn

__all__ = [
    "block_sparse_attention_reference",
    "linear_attention_reference",
    "sla_reference",
]


def _token_mask(block_map_bh: torch.Tensor, rows: slice, block_q: int, block_k: int, seq_k: int) -> torch.Tensor:
    """Token-level bool mask ``(rows, Sk)`` from one head's block map ``(nq, nk)``."""
    r = torch.arange(rows.start, rows.stop, device=block_map_bh.device) // block_q
    m = block_map_bh[r]  # (rows, nk)
    return m.repeat_interleave(block_k, dim=-1)[:, :seq_k]


def block_sparse_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    block_map: torch.Tensor,
    block_q: int,
    block_k: int,
    scale: float | None = None,
    *,
    return_lse: bool = False,
    max_scores: int = 1 << 24,
):
    """Masked softmax attention in fp32; returns fp32 ``(B, H, Sq, D)`` (and lse ``(B, H, Sq)``).

    ``block_map`` is bool ``(B, H, ceil(Sq/block_q), ceil(Sk/block_k))``; every query block must
    keep at least one key block.
    """
    q32, k32, v32 = q.float(), k.float(), v.float()
    B, H, Sq, D = q.shape
    Sk = k.shape[2]
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    out = torch.empty(B, H, Sq, v.shape[-1], dtype=torch.float32, device=q.device)
    lse = torch.empty(B, H, Sq, dtype=torch.float32, device=q.device)
    rows_per_chunk = max(1, max_scores // Sk)
    for b in range(B):
        for h in range(H):
            for start in range(0, Sq, rows_per_chunk):
                rows = slice(start, min(Sq, start + rows_per_chunk))
                s = (q32[b, h, rows] @ k32[b, h].T) * scale
                s = s.masked_fill(~_token_mask(block_map[b, h], rows, block_q, block_k, Sk), float("-inf"))
                row_lse = torch.logsumexp(s, -1)
                out[b, h, rows] = torch.exp(s - row_lse[:, None]) @ v32[b, h]
                lse[b, h, rows] = row_lse
    return (out, lse) if return_lse else out


def linear_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, feature_map: str = "elu") -> torch.Tensor:
    """Non-causal linear attention in fp32: ``phi(q) (phi(k)^T v) / (phi(q) . sum phi(k))``."""
    phi = feature_map_fn(feature_map)
    fq, fk = phi(q.float()), phi(k.float())
    num = fq @ (fk.transpose(-1, -2) @ v.float())
    den = (fq * fk.sum(-2, keepdim=True)).sum(-1, keepdim=True)
    return num / torch.where(den > 0, den, torch.ones_like(den))


def sla_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    critical_map: torch.Tensor,
    marginal_map: torch.Tensor,
    block_q: int,
    block_k: int,
    feature_map: str = "softmax",
    scale: float | None = None,
):
    """SLA's two branches in fp32: ``(o_sparse, o_linear)``, both ``(B, H, Sq, D)``.

    ``o_sparse`` is softmax attention over the critical blocks; ``o_linear`` is linear attention
    of each query over the keys of its query block's marginal blocks (zero where a query block
    has no marginal block). The layer output is ``o_sparse + proj(o_linear)``.
    """
    o_sparse = block_sparse_attention_reference(q, k, v, critical_map, block_q, block_k, scale)
    phi = feature_map_fn(feature_map)
    fq, fk, v32 = phi(q.float()), phi(k.float()), v.float()
    B, H, Sq, _D = q.shape
    Sk = k.shape[2]
    o_lin = torch.zeros(B, H, Sq, v.shape[-1], dtype=torch.float32, device=q.device)
    for b in range(B):
        for h in range(H):
            rows = slice(0, Sq)
            mask = _token_mask(marginal_map[b, h], rows, block_q, block_k, Sk).float()  # (Sq, Sk)
            weights = (fq[b, h] @ fk[b, h].T) * mask  # (Sq, Sk), non-normalised kernel weights
            num = weights @ v32[b, h]
            den = weights.sum(-1, keepdim=True)
            o_lin[b, h] = num / torch.where(den > 0, den, torch.ones_like(den))
    return o_sparse, o_lin
