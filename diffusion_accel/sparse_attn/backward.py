"""Explicit backward passes (PyTorch) of block-sparse attention and of SLA's linear branch.

Block-sparse: the flash-attention backward restricted to the selected blocks. With the forward's
log-sum-exp ``lse`` the probabilities of a (query block, key block) pair are recomputed as
``p = exp(q k^T * scale - lse)``; then ``dv += p^T do``, ``ds = p * (do v^T - delta)`` with
``delta = rowsum(do * o)``, ``dq = ds k * scale``, ``dk += ds^T q * scale``. Query blocks that keep
the same number of key blocks are processed together (one batched matmul over their gathered K/V
blocks, as in the forward of ``cpu.py``); ``dk``/``dv`` are accumulated with ``index_add_``.

Linear branch (SLA, and whole-sequence linear attention as the one-block case): with
``hm = sum_j sel_j phi(K_j)^T V_j`` and ``zm = sum_j sel_j sum phi(K_j)`` per query block,
``o = phi(q) hm / (phi(q) . zm)``; the backward runs that chain in reverse and differentiates the
feature map ``phi`` alone with autograd (``elu``/``relu``/``softmax`` are elementwise or per-row).

Everything is computed in fp32 (fp64 for fp64 inputs); gradients come back in the inputs' dtypes.

Example:
    >>> import torch
    >>> from diffusion_accel.sparse_attn.backward import block_sparse_backward
    >>> from diffusion_accel.sparse_attn.reference import block_sparse_attention_reference
    >>> q = k = v = torch.randn(1, 1, 40, 8)
    >>> m = torch.ones(1, 1, 3, 3, dtype=torch.bool)
    >>> o, lse = block_sparse_attention_reference(q, k, v, m, 16, 16, return_lse=True)
    >>> dq, dk, dv = block_sparse_backward(q, k, v, o, lse, torch.ones_like(o), m, 16, 16)
    >>> dq.shape
    torch.Size([1, 1, 40, 8])
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .features import feature_map_fn
from .masks import num_blocks

__all__ = ["block_sparse_backward", "linear_branch_backward", "linear_branch_forward"]

def _acc(x: torch.Tensor) -> torch.Tensor:
    """The accumulation dtype: fp32, or fp64 for fp64 inputs (gradcheck)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


#: score elements (query rows x gathered keys) per batched matmul of the backward
_MAX_SCORES = 1 << 22


def _blocks(x: torch.Tensor, block: int) -> torch.Tensor:
    """``(B, H, S, D)`` fp32 -> ``(B*H*n, block, D)`` with zero padding."""
    B, H, S, D = x.shape
    n = num_blocks(S, block)
    x = _acc(x)
    if n * block != S:
        x = F.pad(x, (0, 0, 0, n * block - S))
    return x.reshape(B * H * n, block, D)


def _unblock(x: torch.Tensor, shape, dtype) -> torch.Tensor:
    B, H, S, D = shape
    return x.reshape(B, H, -1, D)[:, :, :S].to(dtype)


def _key_valid(sel: torch.Tensor, nk: int, block_k: int, tail: int) -> torch.Tensor | None:
    """``(n, c*block_k)`` bool: real (not padding) keys of the gathered blocks; None if all are."""
    if tail == block_k:
        return None
    last = (sel % nk == nk - 1).repeat_interleave(block_k, dim=1)
    pos = torch.arange(block_k, device=sel.device).repeat(sel.shape[1])
    return ~(last & (pos >= tail))


def block_sparse_backward(q, k, v, out, lse, d_out, block_map, block_q, block_k, scale=None):
    """Gradients ``(dq, dk, dv)`` of block-sparse attention, given the forward's ``out`` and ``lse``.

    Shapes as in the forward: q ``(B, H, Sq, D)``, k/v ``(B, H, Sk, D)``, ``block_map`` bool
    ``(B, H, nq, nk)``, ``lse`` fp32 ``(B, H, Sq)``.
    """
    B, H, Sq, D = q.shape
    Sk = k.shape[2]
    nq, nk = num_blocks(Sq, block_q), num_blocks(Sk, block_k)
    tail = Sk - (nk - 1) * block_k
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    qb, dob = _blocks(q, block_q), _blocks(d_out, block_q)
    kb, vb = _blocks(k, block_k), _blocks(v, block_k)
    delta = (_acc(d_out) * _acc(out)).sum(-1, keepdim=True)
    deltab = _blocks(delta, block_q)[..., 0]
    lseb = _blocks(lse.unsqueeze(-1), block_q)[..., 0]
    dq, dk, dv = torch.zeros_like(qb), torch.zeros_like(kb), torch.zeros_like(vb)

    flat_map = block_map.reshape(B * H * nq, nk)
    counts = flat_map.sum(-1).cpu()
    order = torch.argsort((~flat_map).to(torch.int8), dim=-1, stable=True)
    order += (torch.arange(B * H * nq, device=order.device) // nq * nk)[:, None]
    for count in counts.unique().tolist():
        rows = (counts == count).nonzero().flatten().to(q.device)
        group = max(1, _MAX_SCORES // (block_q * count * block_k))
        for start in range(0, rows.numel(), group):
            r = rows[start : start + group]
            sel = order.index_select(0, r)[:, :count]
            flat = sel.reshape(-1)
            kc = kb.index_select(0, flat).view(r.numel(), count * block_k, -1)
            vc = vb.index_select(0, flat).view(r.numel(), count * block_k, -1)
            qc, doc = qb.index_select(0, r), dob.index_select(0, r)
            p = torch.exp(qc @ kc.transpose(1, 2) * scale - lseb.index_select(0, r)[..., None])
            valid = _key_valid(sel, nk, block_k, tail)
            if valid is not None:
                p = p * valid[:, None, :]
            ds = p * (doc @ vc.transpose(1, 2) - deltab.index_select(0, r)[..., None])
            dq.index_copy_(0, r, ds @ kc * scale)
            dk.index_add_(0, flat, (ds.transpose(1, 2) @ qc * scale).view(-1, block_k, D))
            dv.index_add_(0, flat, (p.transpose(1, 2) @ doc).view(-1, block_k, vb.shape[-1]))
    return _unblock(dq, q.shape, q.dtype), _unblock(dk, k.shape, k.dtype), _unblock(dv, v.shape, v.dtype)


def _states(fk, v32, block_k):
    """Per-key-block states ``h (B, H, nk, D, Dv)``, ``z (B, H, nk, D)`` from padded features."""
    nk = fk.shape[2] // block_k
    fkb, vb = fk.unflatten(2, (nk, block_k)), v32.unflatten(2, (nk, block_k))
    return fkb.transpose(-1, -2) @ vb, fkb.sum(-2)


def _pad_seq(x: torch.Tensor, block: int) -> torch.Tensor:
    n = num_blocks(x.shape[2], block)
    return F.pad(x, (0, 0, 0, n * block - x.shape[2])) if n * block != x.shape[2] else x


def linear_branch_forward(q, k, v, marginal_map, block_q, block_k, feature_map):
    """SLA's linear branch, fp32 ``(B, H, Sq, Dv)`` (the same maths as ``linear.sla_linear_branch``)."""
    phi = feature_map_fn(feature_map)
    fq = _pad_seq(phi(_acc(q)), block_q)
    fk, v32 = _pad_seq(phi(_acc(k)), block_k), _pad_seq(_acc(v), block_k)
    h, z = _states(fk, v32, block_k)
    sel = marginal_map.to(h.dtype)
    hm = torch.einsum("bhqk,bhkde->bhqde", sel, h)
    zm = sel @ z
    fqb = fq.unflatten(2, (sel.shape[2], block_q))
    num = fqb @ hm
    den = fqb @ zm.unsqueeze(-1)
    out = num / torch.where(den > 0, den, torch.ones_like(den))
    return out.flatten(2, 3)[:, :, : q.shape[2]]


def linear_branch_backward(q, k, v, marginal_map, block_q, block_k, feature_map, d_out):
    """Gradients ``(dq, dk, dv)`` of :func:`linear_branch_forward` for the output gradient ``d_out``."""
    phi = feature_map_fn(feature_map)
    Sq, Sk = q.shape[2], k.shape[2]
    with torch.enable_grad():  # only the feature map is differentiated by autograd
        q32 = _acc(q.detach()).requires_grad_()
        k32 = _acc(k.detach()).requires_grad_()
        fq_raw, fk_raw = phi(q32), phi(k32)
    fq, fk = _pad_seq(fq_raw.detach(), block_q), _pad_seq(fk_raw.detach(), block_k)
    v32 = _pad_seq(_acc(v), block_k)
    h, z = _states(fk, v32, block_k)
    sel = marginal_map.to(h.dtype)
    nq, nk = sel.shape[2], sel.shape[3]
    hm = torch.einsum("bhqk,bhkde->bhqde", sel, h)
    zm = sel @ z
    fqb = fq.unflatten(2, (nq, block_q))  # (B, H, nq, bq, D)
    den = fqb @ zm.unsqueeze(-1)  # (B, H, nq, bq, 1)
    ok = den > 0
    inv = torch.where(ok, 1.0 / torch.where(ok, den, torch.ones_like(den)), torch.zeros_like(den))
    out = (fqb @ hm) * torch.where(ok, inv, torch.ones_like(inv))
    do = _pad_seq(_acc(d_out), block_q).unflatten(2, (nq, block_q))
    d_num = do * torch.where(ok, inv, torch.ones_like(inv))
    d_den = -(do * out).sum(-1, keepdim=True) * inv  # zero where den <= 0 (safe division by 1)
    d_fq = d_num @ hm.transpose(-1, -2) + d_den * zm.unsqueeze(-2)
    d_hm = fqb.transpose(-1, -2) @ d_num  # (B, H, nq, D, Dv)
    d_zm = (fqb * d_den).sum(-2)  # (B, H, nq, D)
    d_h = torch.einsum("bhqk,bhqde->bhkde", sel, d_hm)
    d_z = sel.transpose(-1, -2) @ d_zm  # (B, H, nk, D)
    fkb, vb = fk.unflatten(2, (nk, block_k)), v32.unflatten(2, (nk, block_k))
    d_fk = vb @ d_h.transpose(-1, -2) + d_z.unsqueeze(-2)
    d_v = fkb @ d_h
    d_fq = d_fq.flatten(2, 3)[:, :, :Sq]
    d_fk = d_fk.flatten(2, 3)[:, :, :Sk]
    dq, dk = torch.autograd.grad((fq_raw, fk_raw), (q32, k32), (d_fq, d_fk))
    return dq.to(q.dtype), dk.to(k.dtype), d_v.flatten(2, 3)[:, :, :Sk].to(v.dtype)
