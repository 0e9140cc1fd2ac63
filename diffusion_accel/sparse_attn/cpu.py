"""Fast PyTorch block-sparse attention (CPU and GPU): per-head chunked gathers + 4-D SDPA.

Query blocks (of every batch item and head) that keep the same number ``c`` of key blocks are
taken in chunks of ``g`` blocks; their selected K/V blocks are gathered with ``index_select``
into a reused buffer and one 4-D ``scaled_dot_product_attention`` call runs with the chunk's
query blocks as its "heads" axis: q ``(1, g, block_q, D)`` against k/v ``(1, g, c*block_k, D)``.
This is the layout measured fastest on CPU (docs/sparse_attn.md): the gather costs a few percent
of the sparse time, and SDPA's own kernel does the maths. On CPU, SDPA's flash kernel takes
32-row query tiles from calls shorter than 192 rows and 64-row tiles from there on, which is why
the CPU default query block is 256 rows (``defaults.py``).

A partial last key block (``Sk % block_k != 0``) needs no mask: the query blocks that keep it get
calls of their own, whose gathered key rows are cut before its padding by a strided view (the
flash kernel reads strided K/V). Outputs of padded query rows are dropped.

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
import threading

import torch
import torch.nn.functional as F

from .masks import num_blocks

__all__ = [
    "DEFAULT_KV_BUDGET",
    "CPU_KV_SPLIT_BYTES",
    "DEFAULT_KV_SPLIT",
    "attention_with_lse",
    "block_sparse_attention_torch",
    "default_kv_split",
    "rows_per_call",
]

#: Gathered key tokens per SDPA call and CPU thread (chunk ``g = budget // (c * block_k)``, 1..8 blocks).
DEFAULT_KV_BUDGET = 16384
#: Most key tokens one query block attends to in one SDPA call (more are split and merged), off CPU.
DEFAULT_KV_SPLIT = 32768
#: On CPU: most K+V bytes (counted in fp32) of one query block's part, so that the part stays in a
#: core's L2 while the flash kernel's query tiles walk it (1 MiB: 2048 keys at head_dim 64).
CPU_KV_SPLIT_BYTES = 1 << 20


_WORKSPACE = threading.local()


def _gather_buffers(device: torch.device, dtype: torch.dtype) -> dict:
    """This thread's reused K/V gather buffers for ``(device, dtype)``, kept across calls.

    Allocating them afresh each call costs page faults on every call (the buffers are megabytes,
    so the allocator maps new pages): ~5 % of the op's time at 8k tokens on CPU. Their size is
    bounded by one SDPA call's gathered keys (``rows_per_call``: at most ``kv_budget`` keys per
    thread, or ``kv_split`` for one long row), a few MB per (thread, device, dtype).
    """
    cache = getattr(_WORKSPACE, "buffers", None)
    if cache is None:
        cache = _WORKSPACE.buffers = {}
    return cache.setdefault((device, dtype), {})


def attention_with_lse(q, k, v, mask=None, scale=None):
    """4-D attention returning ``(out, lse)``; lse fp32 ``(B, H, Sq)``.

    ``mask`` is bool, broadcastable to ``(B, H, Sq, Sk)``, ``True`` = attend. Uses the CPU flash
    kernel unless autograd must record the call (an input requires grad), otherwise plain fp32
    maths (exact, not memory-efficient). Grad mode alone does not count: a caller outside
    ``torch.no_grad()`` with plain tensors gets the fast kernel (it got plain maths, ~3x slower).
    """
    needs_graph = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    if q.device.type == "cpu" and not needs_graph:
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


def _gathered_attention(qc, kb, vb, sel, trim, scale, need_lse, bufs, grad):
    """Attention of query blocks ``qc (n, bq, D)`` over their selected key blocks ``sel (n, c)``.

    ``kb``/``vb`` are the key/value blocks of every head ``(B*H*nk, bk, D)`` and ``sel`` holds
    global block ids; ``trim``: padded keys at the end of every row (its last block is its head's
    partial last key block), left out of the call by a strided view, so no mask is needed.
    Returns ``(o (1, n, bq, D), lse (1, n, bq) | None)``.
    """
    n, c = sel.shape
    block_k, D = kb.shape[1], kb.shape[2]
    flat = sel.reshape(-1)
    if grad:
        kc, vc = kb.index_select(0, flat), vb.index_select(0, flat)
    else:
        need = n * c * block_k * D  # flat buffers: reused across calls with other block shapes
        if bufs.get("k") is None or bufs["k"].numel() < need:
            bufs["k"] = torch.empty(need, dtype=kb.dtype, device=kb.device)
            bufs["v"] = torch.empty(need, dtype=vb.dtype, device=vb.device)
        kc = torch.index_select(kb, 0, flat, out=bufs["k"][:need].view(n * c, block_k, D))
        vc = torch.index_select(vb, 0, flat, out=bufs["v"][:need].view(n * c, block_k, D))
    keys = c * block_k - trim
    kc = kc.view(1, n, c * block_k, D)[:, :, :keys]
    vc = vc.view(1, n, c * block_k, D)[:, :, :keys]
    return _sdpa(qc.unsqueeze(0), kc, vc, None, scale, need_lse)


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


def rows_per_call(keys: int, device: torch.device, kv_budget: int = DEFAULT_KV_BUDGET) -> int:
    """Query blocks per SDPA call when each attends to ``keys`` gathered key tokens.

    CPU: up to 8 blocks and ``kv_budget`` gathered keys per thread (keeps each thread's K/V
    chunk cache-sized), times the thread count so every thread has work. Other devices: one
    call per ``kv_budget * 64`` gathered keys (GPUs want many (block, tile) programs per launch).
    """
    if device.type == "cpu":
        return max(1, min(8, kv_budget // keys)) * max(1, torch.get_num_threads())
    return max(1, kv_budget * 64 // keys)


def default_kv_split(device: torch.device, head_dim: int) -> int:
    """Default ``kv_split`` (key tokens per SDPA call and query block) on ``device``.

    CPU: the keys whose K and V take :data:`CPU_KV_SPLIT_BYTES` in fp32. Rows keeping more are
    computed in parts merged by log-sum-exp: PyTorch's CPU flash kernel reads a query block's
    K/V once per 64-row query tile, so a part that fits the cache is read from there. Measured
    (docs/sparse_attn.md): 32k tokens at 25 % (8192 keys per row) 7 % faster in parts of 2048
    keys, 16k (4096 keys) ~2.6 %. Other devices: :data:`DEFAULT_KV_SPLIT`.
    """
    if device.type == "cpu":
        return max(1, CPU_KV_SPLIT_BYTES // (2 * head_dim * 4))
    return DEFAULT_KV_SPLIT


def _row_chunks(counts: torch.Tensor, tails: torch.Tensor, block_k: int, kv_split: int, kv_budget: int,
                device, grad: bool):
    """Yield ``(count, per, has_tail, rows)``: query-block rows in SDPA-call groups.

    The rows of a group keep ``count`` key blocks and all or none of them keep their head's
    partial last key block (``has_tail``; ``tails`` flags each row). ``per`` key blocks go into
    one call (``per < count`` splits a long row into parts of at most ``kv_split`` keys; never
    with autograd, whose pieces must stay whole).
    """
    key = counts * 2 + tails
    for value in key.unique().tolist():
        count, has_tail = value // 2, bool(value % 2)
        rows = (key == value).nonzero().flatten()
        parts = 1 if grad else -(-count // max(1, kv_split // block_k))
        per = -(-count // parts)  # key blocks per part: balanced, at most kv_split keys (>= 1 block)
        group = rows_per_call(per * block_k, device, kv_budget)
        for start in range(0, rows.numel(), group):
            yield count, per, has_tail, rows[start : start + group]


def _rows_where(rows: torch.Tensor, device) -> slice | torch.Tensor:
    """A slice when the (ascending) ``rows`` are contiguous, else their index tensor on ``device``."""
    lo, hi = int(rows[0]), int(rows[-1]) + 1
    return slice(lo, hi) if hi - lo == rows.numel() else rows.to(device)


def _write_rows(target: torch.Tensor, where: slice | torch.Tensor, values: torch.Tensor) -> None:
    if isinstance(where, slice):
        target[where] = values
    else:
        target.index_copy_(0, where, values)


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
    kv_split: int | None = None,
):
    """Block-sparse attention; q ``(B, H, Sq, D)``, k/v ``(B, H, Sk, D)``, map ``(B, H, nq, nk)``.

    Returns ``out`` in q's dtype (and lse fp32 ``(B, H, Sq)`` if ``return_lse``). Differentiable
    when autograd is on (the reused gather buffer is only used without autograd).

    Query blocks of *all* heads that keep the same number of key blocks share SDPA calls (see
    :func:`rows_per_call`), so one call has work for every thread. ``kv_budget``: gathered key
    tokens per call and thread; ``kv_split``: query blocks selecting more key tokens than this are
    computed in parts of at most this many keys, merged by log-sum-exp (``None``:
    :func:`default_kv_split` of the device).
    """
    B, H, Sq, D = q.shape
    Sk = k.shape[2]
    kv_split = default_kv_split(q.device, D) if kv_split is None else kv_split
    nq, nk = num_blocks(Sq, block_q), num_blocks(Sk, block_k)
    tail = Sk - (nk - 1) * block_k  # real tokens in the last key block
    grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    # (B*H*n, block, D) views of the padded inputs: one index space for the blocks of every head
    qb = _pad_to(q, nq * block_q).reshape(B * H * nq, block_q, D)
    kb = _pad_to(k, nk * block_k).reshape(B * H * nk, block_k, D)
    vb = _pad_to(v, nk * block_k).reshape(B * H * nk, block_k, D)

    flat_map = block_map.reshape(B * H * nq, nk)
    counts = flat_map.sum(-1).cpu()
    # rows keeping their head's partial last key block: own calls, on key rows cut short by `trim`
    trim = block_k - tail
    tails = flat_map[:, -1].cpu().long() if trim else torch.zeros_like(counts)
    # Selected key blocks of each row, ascending, first `count` entries valid; as global block ids.
    order = torch.argsort((~flat_map).to(torch.int8), dim=-1, stable=True)
    order += (torch.arange(B * H * nq, device=order.device) // nq * nk)[:, None]

    out = None if grad else torch.empty(B * H * nq, block_q, D, dtype=q.dtype, device=q.device)
    lse = None
    if return_lse and not grad:
        lse = torch.empty(B * H * nq, block_q, dtype=torch.float32, device=q.device)
    pieces: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = []
    bufs = {} if grad else _gather_buffers(q.device, q.dtype)
    for count, per, has_tail, chunk in _row_chunks(counts, tails, block_k, kv_split, kv_budget, q.device, grad):
        where = _rows_where(chunk, q.device)
        qc = qb[where] if isinstance(where, slice) else qb.index_select(0, where)
        sel = (order[where] if isinstance(where, slice) else order.index_select(0, where))[:, :count]
        if per == count:
            o, l = _gathered_attention(qc, kb, vb, sel, trim * has_tail, scale, return_lse, bufs, grad)
        else:  # split the key blocks, merge the partial results by their log-sum-exp
            outs, lses = zip(*(
                _gathered_attention(qc, kb, vb, sel[:, j : j + per], trim * (has_tail and j + per >= count),
                                    scale, True, bufs, grad)
                for j in range(0, count, per)
            ))
            o, l = _merge_partials(outs, lses)
        if grad:
            pieces.append((chunk, o[0], None if l is None else l[0]))
        else:
            _write_rows(out, where, o[0])
            if return_lse:
                _write_rows(lse, where, l[0])
    if grad:  # assemble without in-place writes, so autograd sees every piece
        where = torch.cat([p[0] for p in pieces]).argsort().to(q.device)
        out = torch.cat([p[1] for p in pieces]).index_select(0, where)
        if return_lse:
            lse = torch.cat([p[2] for p in pieces]).index_select(0, where)
    out = out.view(B, H, nq * block_q, D)[:, :, :Sq]
    if return_lse:
        return out, lse.view(B, H, nq * block_q)[:, :, :Sq]
    return out
