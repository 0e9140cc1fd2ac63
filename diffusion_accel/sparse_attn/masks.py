"""Block-mask prediction: mean-pooled Q/K block scores, top-k / CDF selection, guards.

A *block map* is a bool tensor ``(batch, heads, n_q_blocks, n_k_blocks)``: ``True`` where a
query block attends to a key block. Prediction is training-free (SpargeAttn-style):

1. mean-pool Q over each query block and K over each key block;
2. score ``softmax(pool(Q) @ pool(K)^T * scale)`` over key blocks, per query block;
3. keep the best blocks: a fixed fraction (``density``), a fixed count (``topk``) or the
   fewest blocks whose scores sum to ``cdf_threshold``;
4. guards: a query block whose tokens are not alike (mean pairwise cosine similarity below
   ``similarity_threshold``) is pooled badly, so its row is computed in full; such a key block
   is kept for every query. In self-attention a query block's own (diagonal) key blocks are
   always kept. Token ranges given in ``dense_tokens`` (e.g. text tokens of joint attention) are
   always computed, as queries and as keys, outside the budget: ``density`` is the fraction of
   the image/video key blocks kept.

Example:
    >>> import torch
    >>> from diffusion_accel.sparse_attn.masks import predict_block_map
    >>> q, k = torch.randn(1, 2, 256, 64), torch.randn(1, 2, 256, 64)
    >>> m = predict_block_map(q, k, density=0.5, block_q=64, block_k=64)
    >>> m.shape, m.sum(-1).unique().tolist()
    (torch.Size([1, 2, 4, 4]), [2])
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = [
    "block_constraints",
    "block_density",
    "block_scores",
    "block_self_similarity",
    "diagonal_blocks",
    "forced_blocks",
    "num_blocks",
    "pool_blocks",
    "predict_block_map",
    "select_blocks",
]


def num_blocks(seq: int, block: int) -> int:
    """Number of blocks of size ``block`` covering ``seq`` tokens (last one may be partial)."""
    return -(-seq // block)


def _pad_seq(x: torch.Tensor, block: int) -> torch.Tensor:
    pad = num_blocks(x.shape[-2], block) * block - x.shape[-2]
    return F.pad(x, (0, 0, 0, pad)) if pad else x


def _block_counts(seq: int, block: int, device) -> torch.Tensor:
    n = num_blocks(seq, block)
    counts = torch.full((n,), float(block), device=device)
    counts[-1] = seq - (n - 1) * block
    return counts


def pool_blocks(x: torch.Tensor, block: int) -> torch.Tensor:
    """Mean over the tokens of each block: ``(B, H, S, D) -> (B, H, ceil(S/block), D)`` in fp32.

    The last, partial block is averaged over its real tokens only.
    """
    seq = x.shape[-2]
    xp = _pad_seq(x.float(), block)
    sums = xp.unflatten(-2, (-1, block)).sum(-2)
    return sums / _block_counts(seq, block, x.device)[:, None]


def block_scores(q: torch.Tensor, k: torch.Tensor, block_q: int, block_k: int, scale: float | None = None) -> torch.Tensor:
    """Predicted attention between blocks: ``softmax_k(pool(q) pool(k)^T * scale)``.

    Shapes: q ``(B, H, Sq, D)``, k ``(B, H, Sk, D)`` -> ``(B, H, nq, nk)`` fp32, rows sum to 1.
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    logits = pool_blocks(q, block_q) @ pool_blocks(k, block_k).transpose(-1, -2) * scale
    return logits.softmax(-1)


def block_self_similarity(x: torch.Tensor, block: int) -> torch.Tensor:
    """Mean pairwise cosine similarity of the tokens inside each block: ``(B, H, n)`` in [-1, 1].

    Uses ``mean_ij <x_i, x_j> / |x_i||x_j| = |sum_i x_i/|x_i||^2 / n^2`` (pairs include i = j).
    """
    seq = x.shape[-2]
    unit = F.normalize(x.float(), dim=-1)
    sums = _pad_seq(unit, block).unflatten(-2, (-1, block)).sum(-2)
    n = _block_counts(seq, block, x.device)
    return sums.square().sum(-1) / n.square()


def select_blocks(
    scores: torch.Tensor,
    *,
    density: float | None = None,
    topk: int | None = None,
    cdf_threshold: float | None = None,
    forced_rows: torch.Tensor | None = None,
    forced_cols: torch.Tensor | None = None,
    keep: torch.Tensor | None = None,
    dense_rows: torch.Tensor | None = None,
    dense_cols: torch.Tensor | None = None,
) -> torch.Tensor:
    """Bool block map from scores ``(B, H, nq, nk)`` (one selection rule must be given).

    The budget applies to the *sparse part*: the key blocks outside ``dense_cols``. ``density``:
    each query block keeps ``max(1, round(density * n))`` of those ``n`` blocks; ``topk``: keeps
    ``min(topk, n)``; ``cdf_threshold``: keeps the fewest best blocks whose scores, renormalised
    over the sparse part, sum to at least the threshold.

    Constraints:

    * ``dense_rows`` ``(nq,)`` / ``dense_cols`` ``(nk,)`` bool: blocks holding dense tokens (the
      text of joint attention). Always computed, as full rows and as columns every row keeps, and
      *outside* the budget.
    * ``keep`` (bool, broadcastable to ``(B, H, nq, nk)``, e.g. the diagonal) and ``forced_cols``
      (broadcastable to ``(B, H, 1, nk)``, the similarity guard): kept first and counted in the
      budget (if they alone exceed it, they are all kept).
    * ``forced_rows`` (broadcastable to ``(B, H, nq, 1)``): rows computed in full.
    """
    first = None
    for extra in (keep, forced_cols):
        if extra is not None:
            extra = extra.expand(scores.shape)
            first = extra if first is None else first | extra
    if dense_cols is None or not bool(dense_cols.any()):
        block_map = _select(scores, first, density, topk, cdf_threshold)
    else:  # the budget covers the other columns; dense columns are added on top
        dense_cols = dense_cols.to(scores.device)
        block_map = dense_cols.expand(scores.shape).clone()
        cols = (~dense_cols).nonzero().flatten()
        if cols.numel():
            sub_first = None if first is None else first.index_select(-1, cols)
            chosen = _select(scores.index_select(-1, cols), sub_first, density, topk, cdf_threshold)
            block_map.index_copy_(-1, cols, chosen)
    if dense_rows is not None:
        block_map |= dense_rows.to(block_map.device)[:, None]
    if forced_rows is not None:
        block_map |= forced_rows
    return block_map


def _select(scores, first, density, topk, cdf_threshold) -> torch.Tensor:
    """The budgeted choice over ``scores (B, H, nq, n)``; ``first`` blocks are ranked first."""
    n = scores.shape[-1]
    ranked = scores if first is None else torch.where(first, torch.full_like(scores, 2.0), scores)
    if cdf_threshold is not None:
        order = ranked.argsort(-1, descending=True)
        probs = scores / scores.sum(-1, keepdim=True).clamp_min(1e-30)
        mass = probs.gather(-1, order)  # real predicted mass, first blocks first
        mass_before = mass.cumsum(-1) - mass
        keep_sorted = mass_before < cdf_threshold
        keep_sorted[..., 0] = True
        block_map = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
    else:
        count = min(topk, n) if topk is not None else max(1, min(n, int(density * n + 0.5)))
        idx = ranked.topk(count, dim=-1).indices
        block_map = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device).scatter(-1, idx, True)
    return block_map if first is None else block_map | first


def forced_blocks(seq: int, block: int, token_ranges, device) -> torch.Tensor | None:
    """Bool ``(n_blocks,)``: blocks that contain a token of any ``(start, stop)`` range."""
    if not token_ranges:
        return None
    n = num_blocks(seq, block)
    out = torch.zeros(n, dtype=torch.bool, device=device)
    for start, stop in token_ranges:
        start, stop = max(0, int(start)), min(seq, int(stop))
        if stop > start:
            out[start // block : num_blocks(stop, block)] = True
    return out


def diagonal_blocks(seq: int, block_q: int, block_k: int, device=None) -> torch.Tensor:
    """Bool ``(nq, nk)``: the key blocks that hold a query block's own tokens (self-attention)."""
    nq, nk = num_blocks(seq, block_q), num_blocks(seq, block_k)
    start = torch.arange(nq, device=device) * block_q
    stop = torch.clamp(start + block_q, max=seq) - 1
    j = torch.arange(nk, device=device)
    return (j >= (start // block_k)[:, None]) & (j <= (stop // block_k)[:, None])


def predict_block_map(
    q: torch.Tensor,
    k: torch.Tensor,
    *,
    density: float | None = None,
    topk: int | None = None,
    cdf_threshold: float | None = None,
    block_q: int = 64,
    block_k: int = 64,
    scale: float | None = None,
    similarity_threshold: float | None = None,
    dense_tokens=(),
) -> torch.Tensor:
    """Predict the bool block map ``(B, H, nq, nk)`` for q ``(B, H, Sq, D)``, k ``(B, H, Sk, D)``.

    ``dense_tokens``: ``(start, stop)`` token ranges always computed as queries and as keys
    (e.g. the text tokens of joint attention); the selection budget applies to the other blocks.
    In self-attention (``Sq == Sk``) each query block's own (diagonal) key blocks are always kept.
    ``similarity_threshold``: the self-similarity guard (``None`` disables it; SpargeAttn-like
    values are 0.3-0.6).
    """
    scores = block_scores(q, k, block_q, block_k, scale)
    constraints = block_constraints(q, k, block_q, block_k, dense_tokens, similarity_threshold)
    return select_blocks(scores, density=density, topk=topk, cdf_threshold=cdf_threshold, **constraints)


def block_constraints(
    q, k, block_q: int, block_k: int, dense_tokens=(), similarity_threshold: float | None = None
) -> dict:
    """The constraint keywords of :func:`select_blocks` for one attention call.

    ``dense_rows``/``dense_cols``: blocks touching ``dense_tokens``; ``keep``: the diagonal
    (self-attention only); ``forced_rows``/``forced_cols``: blocks failing the self-similarity
    guard (``(B, H, nq, 1)`` / ``(B, H, 1, nk)``). Absent constraints are ``None``.
    """
    self_attention = q.shape[-2] == k.shape[-2]
    out = {
        "dense_rows": forced_blocks(q.shape[-2], block_q, dense_tokens, q.device),
        "dense_cols": forced_blocks(k.shape[-2], block_k, dense_tokens, k.device),
        "keep": diagonal_blocks(q.shape[-2], block_q, block_k, q.device) if self_attention else None,
        "forced_rows": None,
        "forced_cols": None,
    }
    if similarity_threshold is not None:
        out["forced_rows"] = (block_self_similarity(q, block_q) < similarity_threshold)[..., :, None]
        out["forced_cols"] = (block_self_similarity(k, block_k) < similarity_threshold)[..., None, :]
    return out


def block_density(
    block_map: torch.Tensor, dense_rows: torch.Tensor | None = None, dense_cols: torch.Tensor | None = None
) -> float:
    """Realised density: the fraction of (query block, key block) pairs computed.

    With ``dense_rows`` ``(nq,)`` / ``dense_cols`` ``(nk,)`` (the blocks of dense tokens), the fraction
    over the sparse part only (the image/video blocks); 1.0 when there is no sparse part.
    """
    part = block_map
    if dense_rows is not None:
        part = part[..., ~dense_rows.to(part.device), :]
    if dense_cols is not None:
        part = part[..., ~dense_cols.to(part.device)]
    return float(part.float().mean()) if part.numel() else 1.0
