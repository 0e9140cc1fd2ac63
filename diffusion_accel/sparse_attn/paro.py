"""PARO-style token reordering: per head, the axis order that makes attention block-friendly.

Video tokens are laid out frame by frame, row by row (``frames x height x width``). A head that
attends mostly along time (same pixel, other frames) has its mass scattered over many key blocks
in that order; listing tokens with the frame index varying fastest gathers it into few blocks.
For each head we pick one of the 6 axis orders (2 for images, whose frame axis has size 1) by a
short calibration: on a sample of query blocks, the exact attention mass captured by the best
``density`` fraction of key blocks under each order; the best order wins. The permutation is
applied to q, k, v before block selection and undone on the output.

Example:
    >>> import torch
    >>> from diffusion_accel.sparse_attn.paro import axis_orders, order_index
    >>> len(axis_orders()), order_index((2, 2, 3), (2, 1, 0))[:4].tolist()
    (6, [0, 6, 3, 9])
"""

from __future__ import annotations

import itertools
import math

import torch

from .masks import num_blocks

__all__ = ["axis_orders", "calibrate_orders", "head_permutation", "order_index", "permute_heads", "unpermute_heads"]


def axis_orders() -> list[tuple[int, int, int]]:
    """The 6 orders of the axes (0=frames, 1=height, 2=width); the first is the identity."""
    return list(itertools.permutations(range(3)))


def order_index(grid: tuple[int, int, int], order: tuple[int, int, int]) -> torch.Tensor:
    """New position -> old token index when tokens are listed in ``order`` (slowest axis first)."""
    return torch.arange(math.prod(grid)).view(*grid).permute(*order).reshape(-1)


def head_permutation(orders: torch.Tensor, grid, seq: int, span: tuple[int, int], device) -> torch.Tensor:
    """Per-head full-sequence permutation ``(H, seq)``; tokens outside ``span`` stay in place."""
    start, stop = span
    table = torch.stack([order_index(grid, o) for o in axis_orders()]).to(device) + start  # (6, n)
    perm = torch.arange(seq, device=device).repeat(orders.numel(), 1)
    perm[:, start:stop] = table[orders.to(device)]
    return perm


def permute_heads(x: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """``x (B, H, S, D)`` reordered per head: ``out[:, h, i] = x[:, h, perm[h, i]]``."""
    idx = perm[None, :, :, None].expand(x.shape[0], -1, -1, x.shape[-1])
    return torch.gather(x, 2, idx)


def unpermute_heads(x: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`permute_heads`."""
    idx = perm[None, :, :, None].expand(x.shape[0], -1, -1, x.shape[-1])
    return torch.empty_like(x).scatter_(2, idx, x)


@torch.no_grad()
def calibrate_orders(
    q: torch.Tensor,
    k: torch.Tensor,
    grid: tuple[int, int, int],
    span: tuple[int, int],
    *,
    block_q: int,
    block_k: int,
    density: float = 0.25,
    sample_blocks: int = 8,
) -> torch.Tensor:
    """Best axis order per head, as indices into :func:`axis_orders` (``(H,)`` long).

    Uses the tokens in ``span`` only (the video/image tokens), the exact softmax of up to
    ``sample_blocks`` evenly spaced query blocks per head, batch-averaged. Orders that give the
    same token sequence (axes of size 1) tie and the first one is kept.
    """
    start, stop = span
    qs = q[:, :, start:stop].float()
    ks = k[:, :, start:stop].float()
    n = stop - start
    nq, nk = num_blocks(n, block_q), num_blocks(n, block_k)
    keep = max(1, int(density * nk + 0.5))
    picks = torch.linspace(0, nq - 1, min(sample_blocks, nq)).round().long().unique()
    scale = 1.0 / math.sqrt(q.shape[-1])
    captured = []
    for order in axis_orders():
        idx = order_index(grid, order).to(q.device)
        qo, ko = qs[:, :, idx], ks[:, :, idx]
        total = torch.zeros(q.shape[1], device=q.device)
        for m in picks.tolist():
            rows = qo[:, :, m * block_q : (m + 1) * block_q]
            p = ((rows @ ko.transpose(-1, -2)) * scale).softmax(-1)  # (B, H, r, n)
            pad = nk * block_k - n
            if pad:
                p = torch.nn.functional.pad(p, (0, pad))
            mass = p.unflatten(-1, (nk, block_k)).sum(-1).mean(-2)  # (B, H, nk)
            total += mass.topk(keep, dim=-1).values.sum(-1).mean(0)
        captured.append(total)
    scores = torch.stack(captured)  # (6, H)
    # Prefer the earliest order on (near) ties so that equivalent orders resolve deterministically.
    best = scores.max(0).values
    return (scores >= best - 1e-6).float().argmax(0)
