"""VMoBA block selection: pooled scores, then top blocks per query block, per head or over all heads.

Scores: each block's queries and keys are mean-pooled (real tokens only); a query block's scores
over the video key blocks are ``softmax(pool(q) . pool(k) * scale)`` (they sum to 1). Selection
keeps, within a *scope*:

* ``"query"``: each query block on its own (MoBA);
* ``"head"``: all (query block, key block) pairs of a head jointly (VMoBA's global selection: a
  query block whose scores are concentrated keeps few blocks, a diffuse one many);
* ``"heads"``: all pairs of all heads of a batch item jointly (one budget shared by the heads).

the best pairs: ``density`` of the scope's pairs, ``topk`` per query block on average
(``topk * query blocks`` pairs), or, with ``cdf_threshold`` (VMoBA's threshold selection), the
fewest best pairs whose scores sum to ``cdf_threshold`` of the scope's total score; ``density``
together with ``cdf_threshold`` caps the threshold's choice. A query block's own key block is
always kept (counted in the budget); blocks of dense tokens (text) are kept on top, as full rows
and columns. ``cdf_threshold >= 1`` or ``density == 1`` keep every block.

Example:
    >>> import torch
    >>> from diffusion_accel.sparse_attn.vmoba_select import select_pairs
    >>> probs = torch.tensor([[[[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4]]]])
    >>> select_pairs(probs, scope="head", density=3 / 9).int()[0, 0].tolist()
    [[1, 0, 0], [0, 1, 0], [0, 0, 1]]
"""

from __future__ import annotations

import math

import torch

from .vmoba_blocks import BlockLayout

__all__ = ["SCOPES", "block_probs", "pool_slots", "select_pairs", "vmoba_block_map"]

#: selection scope -> what competes for the budget
SCOPES = {"query": "each query block alone", "head": "all query blocks of a head", "heads": "all heads jointly"}


def pool_slots(x: torch.Tensor, layout: BlockLayout) -> torch.Tensor:
    """Mean of each block's real tokens: ``(B, H, S, D) -> (B, H, n_blocks, D)`` fp32."""
    xs = x.float()[:, :, layout.index] * layout.valid[..., None]  # (B, H, n, slot, D)
    return xs.sum(-2) / layout.sizes[:, None].to(xs.dtype)


def block_probs(q, k, layout: BlockLayout, scale: float | None = None) -> torch.Tensor:
    """Softmax over the video key blocks of pooled scores: ``(B, H, nv, nv)`` (video blocks only)."""
    video = ~layout.dense
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    qv = pool_slots(q, layout)[:, :, video]
    kv = pool_slots(k, layout)[:, :, video]
    return (qv @ kv.transpose(-1, -2) * scale).softmax(-1)


def _keep(probs: torch.Tensor, forced: torch.Tensor, count: int | None, mass: float | None) -> torch.Tensor:
    """Bool keep ``(G, n)``: forced pairs, then the best by ``probs`` up to ``count`` and/or ``mass``."""
    ranked = torch.where(forced, torch.full_like(probs, 2.0), probs)
    order = torch.sort(ranked, dim=-1, descending=True, stable=True).indices
    keep_sorted = torch.ones_like(probs, dtype=torch.bool)
    if mass is not None:
        sorted_mass = probs.gather(-1, order)
        before = sorted_mass.cumsum(-1) - sorted_mass
        keep_sorted &= before < mass * probs.sum(-1, keepdim=True)
    if count is not None:
        keep_sorted[:, count:] = False
    keep_sorted[:, 0] = True
    return torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted) | forced


def select_pairs(
    probs: torch.Tensor,
    *,
    scope: str = "head",
    density: float | None = None,
    topk: int | None = None,
    cdf_threshold: float | None = None,
    keep: torch.Tensor | None = None,
) -> torch.Tensor:
    """Bool map ``(B, H, nq, nk)`` from block scores ``probs`` (rows sum to 1) within ``scope``.

    ``keep`` (broadcastable bool) pairs are always selected and count toward the budget.
    """
    if scope not in SCOPES:
        raise ValueError(f"Unknown selection scope {scope!r}; choose from {sorted(SCOPES)}.")
    B, H, nq, nk = probs.shape
    if (cdf_threshold is not None and cdf_threshold >= 1.0) or density == 1.0:
        return torch.ones(probs.shape, dtype=torch.bool, device=probs.device)
    forced = torch.zeros(probs.shape, dtype=torch.bool, device=probs.device)
    if keep is not None:
        forced |= keep.to(probs.device)
    groups = {"query": (B * H * nq, nk), "head": (B * H, nq * nk), "heads": (B, H * nq * nk)}[scope]
    pairs, rows = groups[1], groups[1] // nk
    count = None
    if density is not None:
        count = max(1, int(density * pairs + 0.5))
    elif topk is not None:
        count = min(pairs, topk * rows)
    chosen = _keep(probs.reshape(groups), forced.reshape(groups), count, cdf_threshold)
    return chosen.reshape(probs.shape)


def vmoba_block_map(q, k, layout: BlockLayout, *, scope: str = "head", density=None, topk=None,
                    cdf_threshold=None, scale=None) -> torch.Tensor:
    """The full block map ``(B, H, n, n)`` over the layout's blocks (video selected, dense blocks kept)."""
    probs = block_probs(q, k, layout, scale)
    nv = probs.shape[-1]
    eye = torch.eye(nv, dtype=torch.bool, device=probs.device)
    video_map = select_pairs(probs, scope=scope, density=density, topk=topk, cdf_threshold=cdf_threshold, keep=eye)
    dense = layout.dense.to(q.device)
    if not bool(dense.any()):
        return video_map
    n = dense.numel()
    full = dense[:, None] | dense[None, :]
    block_map = full.expand(*probs.shape[:2], n, n).clone()
    video = (~dense).nonzero().flatten()
    block_map[:, :, video[:, None], video[None, :]] = video_map
    return block_map
