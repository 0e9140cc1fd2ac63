"""Fast PyTorch block-sparse attention (CPU and GPU): per-head chunked gathers + 4-D SDPA.

For each (batch, head), query blocks that keep the same number ``c`` of key blocks are taken in
chunks of ``g`` blocks; their selected K/V blocks are gathered with ``index_select`` into a
reused buffer and one 4-D ``scaled_dot_product_attention`` call runs with the chunk's query
blocks as its "heads" axis: q ``(1, g, block_q, D)`` against k/v ``(1, g, c*block_k, D)``.
This is the layout measured fastest on CPU (see ``/work/shared/notes/cpu-performance.md``):
the gather costs a few percent of dense attention, and SDPA's own kernel does the maths.

A partial last key block (``Sk % block_k != 0``) is handled with a boolean mask, only in the
chunks that gathered it. Outputs of padded query rows are dropped.

Example:
    >>> import torch
    >>> from diffusion_accel.sparse_attn.cpu import block_sparse_attention_torch
    >>> q = k = v = torch.randn(1, 2, 300, 64)
    >>> full = torch.ones(1, 2, 3, 5, dtype=torch.bool)
    >>> out = block_sparse_attention_torch(q, k, v, full, 128, 64)
    >>> torch.allclose(out, torch.nn.functional.scaled_dot_product_attention(q, k, v), atol=1e-5)
    True
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .masks import num_blocks

__all__ = ["DEFAULT_KV_BUDGET", "DEFAULT_KV_SPLIT", "attention_with_lse", "block_sparse_attention_torch"]

#: Gathered key tokens per SDPA call (chunk size ``g = budget // (c * block_k)``, 1..8 blocks).
DEFAULT_KV_BUDGET = 16384
#: Most key tokens one query block attends to in one SDPA call (more are split and merged).
DEFAULT_KV_SPLIT = 32768


def attention_with_lse(q, k, v, mask=None, scale=None):
    """4-D attention returning ``(out, lse)``; lse fp32 ``(B, H, Sq)``.

    ``mask`` is bool, broadcastable to ``(B, H, Sq, Sk)``, ``True`` = attend. Uses the CPU flash
    kernel when available, otherwise plain fp32 maths (exact, not memory-efficient).
    """
    if q.device.type == "cpu" and not torch.is_grad_enabled():
        float_mask = None
        if mask is not None:
            float_mask = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill_(~mask, float("-inf"))
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            q, k, v, 0.0, False, attn_mask=float_mask, scale=scale
        )
        return out, lse.float()
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    s = (q.float() @ k.float().transpose(-1, -2)) * scale
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(s, -1)
    out = torch.exp(s - lse[..., None]) @ v.float()
    return out.to(q.dtype), lse


def _sdpa(q, k, v, mask, scale, need_lse):
    if need_lse:
        return attention_with_lse(q, k, v, mask, scale)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale), None


def _gathered_attention(qc, kb, vb, sel, nk, tail, scale, need_lse, bufs, grad):
    """Attention of query blocks ``qc (n, bq, D)`` over their selected key blocks ``sel (n, c)``.

    ``kb``/``vb`` are one head's key/value blocks ``(nk, bk, D)``; ``tail`` real tokens in the last
    key block. Returns ``(o (1, n, bq, D), lse (1, n, bq) | None)``.
    """
    n, c = sel.shape
    block_k, D = kb.shape[1], kb.shape[2]
    flat = sel.reshape(-1)
    if grad:
        kc, vc = kb.index_select(0, flat), vb.index_select(0, flat)
    else:
        need = n * c
        if bufs.get("k") is None or bufs["k"].shape[0] < need:
            bufs["k"] = torch.empty(need, block_k, D, dtype=kb.dtype, device=kb.device)
            bufs["v"] = torch.empty(need, block_k, D, dtype=vb.dtype, device=vb.device)
        kc = torch.index_select(kb, 0, flat, out=bufs["k"][:need])
        vc = torch.index_select(vb, 0, flat, out=bufs["v"][:need])
    kc = kc.view(1, n, c * block_k, D)
    vc = vc.view(1, n, c * block_k, D)
    mask = None
    if tail < block_k:
        has_tail = sel[:, -1] == nk - 1  # ascending order: the last block is last
        if bool(has_tail.any()):
            mask = torch.ones(n, c * block_k, dtype=torch.bool, device=qc.device)
            mask[has_tail, (c - 1) * block_k + tail :] = False
            mask = mask.view(1, n, 1, c * block_k)
    return _sdpa(qc.unsqueeze(0), kc, vc, mask, scale, need_lse)


def _merge_partials(outs, lses):
    """Combine attention over disjoint key sets: ``sum_p exp(lse_p - lse) o_p``."""
    lse = torch.logsumexp(torch.stack(lses), 0)
    acc = None
    for o, l in zip(outs, lses):
        term = o.float() * torch.exp(l - lse).unsqueeze(-1)
        acc = term if acc is None else acc.add_(term)
    return acc.to(outs[0].dtype), lse


def _pad_to(x: torch.Tensor, length: int) -> torch.Tensor:
    pad = length - x.shape[-2]
    return F.pad(x, (0, 0, 0, pad)) if pad else x


def block_sparse_attention_torch(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    block_map: torch.Tensor,
    block_q: int,
    block_k: int,
    scale: float | None = None,
    *,
    return_lse: bool = False,
    kv_budget: int = DEFAULT_KV_BUDGET,
    kv_split: int = DEFAULT_KV_SPLIT,
):
    """Block-sparse attention; q ``(B, H, Sq, D)``, k/v ``(B, H, Sk, D)``, map ``(B, H, nq, nk)``.

    Returns ``out`` in q's dtype (and lse fp32 ``(B, H, Sq)`` if ``return_lse``). Differentiable
    when autograd is on (the reused gather buffer is only used without autograd).

    ``kv_budget``: gathered key tokens per SDPA call (sets the chunk of query blocks);
    ``kv_split``: query blocks selecting more key tokens than this are computed in parts of at
    most this many keys, merged by log-sum-exp (keeps each part's K/V cache-resident).
    """
    B, H, Sq, D = q.shape
    Sk = k.shape[2]
    nq, nk = num_blocks(Sq, block_q), num_blocks(Sk, block_k)
    tail = Sk - (nk - 1) * block_k  # real tokens in the last key block
    qp = _pad_to(q, nq * block_q)
    kp, vp = _pad_to(k, nk * block_k), _pad_to(v, nk * block_k)
    grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)

    counts = block_map.sum(-1)  # (B, H, nq)
    # Selected key blocks of each row, ascending, first `count` entries valid.
    order = torch.argsort((~block_map).to(torch.int8), dim=-1, stable=True)
    counts_cpu = counts.cpu()
    order_cpu = order.cpu() if order.device.type != "cpu" else order

    out_rows: list[torch.Tensor] = []
    lse_rows: list[torch.Tensor] = []
    out = None if grad else torch.empty(B, H, nq, block_q, D, dtype=q.dtype, device=q.device)
    lse = torch.empty(B, H, nq, block_q, dtype=torch.float32, device=q.device) if return_lse else None
    bufs: dict = {}
    for b in range(B):
        for h in range(H):
            kb = kp[b, h].view(nk, block_k, D)
            vb = vp[b, h].view(nk, block_k, D)
            qb = qp[b, h].view(nq, block_q, D)
            row_counts = counts_cpu[b, h]
            pieces = [None] * nq if grad else None
            lse_pieces = [None] * nq if (grad and return_lse) else None
            for c in row_counts.unique().tolist():
                rows = (row_counts == c).nonzero().flatten()
                g = max(1, min(8, kv_budget // (min(c * block_k, kv_split) if not grad else c * block_k)))
                for start in range(0, rows.numel(), g):
                    chunk = rows[start : start + g]
                    n = chunk.numel()
                    sel = order_cpu[b, h, chunk, :c].to(q.device)  # (n, c)
                    lo, hi = int(chunk[0]), int(chunk[-1]) + 1
                    qc = qb[lo:hi] if hi - lo == n else qb.index_select(0, chunk.to(q.device))
                    parts = 1 if grad else max(1, -(-c * block_k // kv_split))
                    if parts == 1:
                        o, l = _gathered_attention(qc, kb, vb, sel, nk, tail, scale, return_lse, bufs, grad)
                    else:  # split the key blocks, merge the partial results by their log-sum-exp
                        per = -(-c // parts)
                        outs, lses = zip(*(
                            _gathered_attention(qc, kb, vb, sel[:, j : j + per], nk, tail, scale, True, bufs, grad)
                            for j in range(0, c, per)
                        ))
                        o, l = _merge_partials(outs, lses)
                    if grad:
                        for i, r in enumerate(chunk.tolist()):
                            pieces[r] = o[0, i]
                            if return_lse:
                                lse_pieces[r] = l[0, i]
                    else:
                        if hi - lo == n:
                            out[b, h, lo:hi] = o[0]
                            if return_lse:
                                lse[b, h, lo:hi] = l[0]
                        else:
                            out[b, h].index_copy_(0, chunk.to(q.device), o[0])
                            if return_lse:
                                lse[b, h].index_copy_(0, chunk.to(q.device), l[0])
            if grad:
                out_rows.append(torch.stack(pieces))
                if return_lse:
                    lse_rows.append(torch.stack(lse_pieces))
    if grad:
        out = torch.stack(out_rows).view(B, H, nq, block_q, D)
        if return_lse:
            lse = torch.stack(lse_rows).view(B, H, nq, block_q)
    out = out.reshape(B, H, nq * block_q, D)[:, :, :Sq]
    if return_lse:
        return out, lse.reshape(B, H, nq * block_q)[:, :, :Sq]
    return out
