"""VMoBA attention (Wu et al. 2025): video-partitioned block attention with global/threshold selection.

Blocks come from one of the 1d/2d/3d partitions of the token grid (``vmoba_blocks.py``), the
block map from pooled scores within a selection scope (``vmoba_select.py``). Execution:

* ``"reference"``: fp32 masked dense attention with the token-level mask of the block map
  (plain maths, what the other paths are tested against);
* ``"torch"``: the blocks' padded token slots are gathered and query blocks keeping the same
  number of key blocks share one 4-D SDPA call (as ``cpu.py``), with a key mask only where a slot
  is padded;
* ``"triton"``: when every slot is full and the slot size is a power of two >= 16, the layout is a
  permutation into equal blocks and the block-sparse Triton kernel runs on the permuted tokens;
  other layouts use ``"torch"``.

Example:
    >>> import torch
    >>> from diffusion_accel.sparse_attn.vmoba import vmoba_attention
    >>> q = k = v = torch.randn(1, 2, 4 * 8 * 8, 32)
    >>> out = vmoba_attention(q, k, v, grid=(4, 8, 8), partition="3d", block_cube=(2, 4, 4), density=1.0)
    >>> torch.allclose(out, torch.nn.functional.scaled_dot_product_attention(q, k, v), atol=1e-5)
    True
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ._validate import check_qkv
from .cpu import rows_per_call
from .ops import needs_grad, resolve_backend, run_block_sparse
from .vmoba_blocks import BlockLayout, partition_layout
from .vmoba_select import vmoba_block_map

__all__ = ["vmoba_attention", "vmoba_attention_reference", "vmoba_attention_torch", "run_vmoba"]


def vmoba_attention_reference(q, k, v, layout: BlockLayout, block_map: torch.Tensor, scale=None) -> torch.Tensor:
    """fp32 dense attention masked token by token: token i sees token j iff ``block_map[blk(i), blk(j)]``."""
    blk = layout.token_blocks().to(q.device)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    mask = block_map[:, :, blk[:, None], blk[None, :]]  # (B, H, S, S)
    s = (q.float() @ k.float().transpose(-1, -2)) * scale
    return s.masked_fill(~mask, float("-inf")).softmax(-1) @ v.float()


def _slots_of(x: torch.Tensor, layout: BlockLayout) -> torch.Tensor:
    """``(B, H, S, D) -> (B*H*n, slot, D)``: each block's tokens in its padded slot."""
    B, H, _, D = x.shape
    return x[:, :, layout.index].reshape(B * H * layout.index.shape[0], layout.slot, D)


def vmoba_attention_torch(q, k, v, layout: BlockLayout, block_map: torch.Tensor, scale=None) -> torch.Tensor:
    """Gathered-slot attention (see the module docstring); differentiable; returns q's dtype."""
    B, H, S, D = q.shape
    n, slot = layout.index.shape
    qb, kb, vb = _slots_of(q, layout), _slots_of(k, layout), _slots_of(v, layout)
    valid = layout.valid.repeat(B * H, 1)  # (B*H*n, slot)
    flat = block_map.reshape(B * H * n, n)
    counts = flat.sum(-1).cpu()
    order = torch.argsort((~flat).to(torch.int8), dim=-1, stable=True)
    order += (torch.arange(B * H * n, device=order.device) // n * n)[:, None]
    rows_out, outs = [], []
    for count in counts.unique().tolist():
        rows = (counts == count).nonzero().flatten().to(q.device)
        for chunk in rows.split(rows_per_call(count * slot, q.device)):
            sel = order.index_select(0, chunk)[:, :count]
            kc = kb.index_select(0, sel.reshape(-1)).view(1, chunk.numel(), count * slot, D)
            vc = vb.index_select(0, sel.reshape(-1)).view(1, chunk.numel(), count * slot, D)
            mask = None
            if not layout.uniform:
                mask = valid.index_select(0, sel.reshape(-1)).view(1, chunk.numel(), 1, count * slot)
            qc = qb.index_select(0, chunk).unsqueeze(0)
            o = F.scaled_dot_product_attention(qc, kc, vc, attn_mask=mask, scale=scale)
            rows_out.append(chunk)
            outs.append(o[0])
    slots = torch.cat(outs).index_select(0, torch.cat(rows_out).argsort()).view(B, H, n * slot, D)
    keep = layout.valid.reshape(-1).nonzero().flatten()
    tokens = layout.index.reshape(-1).index_select(0, keep)  # token of each real slot position
    return slots.index_select(2, keep.to(q.device)).index_select(2, tokens.argsort().to(q.device))


def _triton_ok(layout: BlockLayout) -> bool:
    slot = layout.slot
    return layout.uniform and slot >= 16 and not slot & (slot - 1)


def run_vmoba(q, k, v, layout: BlockLayout, block_map, *, scale=None, backend="auto") -> torch.Tensor:
    """Run a backend on a ready layout and block map ``(B, H, n, n)`` (no validation)."""
    name = resolve_backend(backend, q, grad=needs_grad(q, k, v))
    if name == "reference":
        return vmoba_attention_reference(q, k, v, layout, block_map, scale).to(q.dtype)
    if name == "triton" and _triton_ok(layout):
        perm = layout.index.reshape(-1).to(q.device)
        qp, kp, vp = (x.index_select(2, perm) for x in (q, k, v))
        out, _ = run_block_sparse(qp, kp, vp, block_map, layout.slot, layout.slot, scale=scale, backend=name)
        return out.index_select(2, perm.argsort())
    return vmoba_attention_torch(q, k, v, layout, block_map, scale)


def vmoba_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    grid: tuple[int, int, int],
    partition: str = "3d",
    block_frames: int = 1,
    block_spatial: tuple[int, int] = (8, 8),
    block_cube: tuple[int, int, int] = (4, 8, 8),
    scope: str = "head",
    density: float | None = None,
    topk: int | None = None,
    cdf_threshold: float | None = None,
    span: tuple[int, int] | None = None,
    scale: float | None = None,
    backend: str = "auto",
    return_block_map: bool = False,
):
    """VMoBA attention over q, k, v ``(B, H, S, D)`` whose tokens ``span`` form the video ``grid``.

    ``partition``: ``"1d"``, ``"2d"`` or ``"3d"`` (block sizes ``block_frames``, ``block_spatial``,
    ``block_cube``); ``scope``/``density``/``topk``/``cdf_threshold``: see ``vmoba_select.py``
    (at least one rule; ``density`` may cap ``cdf_threshold``). Tokens outside ``span`` (text)
    are computed densely. Returns ``(B, H, S, D)`` in q's dtype (and the block map ``(B, H, n, n)``
    and the layout with ``return_block_map``).
    """
    check_qkv(q, k, v)
    if q.shape[2] != k.shape[2]:
        raise ValueError(f"VMoBA is self-attention over one token grid: q has {q.shape[2]} tokens, k {k.shape[2]}.")
    if density is None and topk is None and cdf_threshold is None:
        raise ValueError("Pass a selection rule: density, topk and/or cdf_threshold (cdf_threshold may be "
                         "combined with density, which then caps it).")
    layout = partition_layout(grid, partition, (block_frames, block_spatial, block_cube), seq=q.shape[2], span=span)
    layout = layout.to(q.device)
    block_map = vmoba_block_map(q, k, layout, scope=scope, density=density, topk=topk,
                                cdf_threshold=cdf_threshold, scale=scale)
    out = run_vmoba(q, k, v, layout, block_map, scale=scale, backend=backend)
    return (out, block_map, layout) if return_block_map else out
