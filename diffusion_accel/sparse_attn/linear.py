"""Linear attention (whole sequence) and SLA's block-restricted linear branch, in PyTorch.

``linear_attention`` costs O(S D^2) instead of O(S^2 D): at 32k tokens it is one to two orders
of magnitude cheaper than softmax attention. Training-free it is *not* a faithful substitute for
softmax attention; use it on layers chosen for it (and fine-tuned), see ``docs/sparse_attn.md``.

``sla_linear_branch`` computes, for every query, linear attention over the keys of its query
block's *marginal* key blocks only (SLA), from per-key-block states ``h_j = phi(K_j)^T V_j`` and
``z_j = sum phi(K_j)`` summed with one matmul by the marginal block map.

Example:
    >>> import torch
    >>> from diffusion_accel.sparse_attn import linear_attention
    >>> q = k = v = torch.randn(1, 2, 1000, 64)
    >>> linear_attention(q, k, v).shape
    torch.Size([1, 2, 1000, 64])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._validate import check_qkv
from .autograd import linear_attention_fn
from .features import feature_map_fn
from .masks import num_blocks

__all__ = ["block_states", "linear_attention", "sla_linear_branch"]


def _safe_div(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    return num / torch.where(den > 0, den, torch.ones_like(den))


def linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, feature_map: str = "elu") -> torch.Tensor:
    """Non-causal linear attention ``phi(q)(phi(k)^T v) / (phi(q) . sum_j phi(k_j))``.

    Shapes: q ``(B, H, Sq, D)``, k/v ``(B, H, Sk, D)`` -> ``(B, H, Sq, D)`` in q's dtype; the
    states are accumulated in fp32.
    """
    check_qkv(q, k, v)
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        return linear_attention_fn(q, k, v, feature_map).to(q.dtype)
    phi = feature_map_fn(feature_map)
    fk = phi(k.float())
    kv = fk.transpose(-1, -2) @ v.float()  # (B, H, D, D)
    z = fk.sum(-2)  # (B, H, D)
    fq = phi(q.float())
    num = fq @ kv
    den = fq @ z.unsqueeze(-1)
    return _safe_div(num, den).to(q.dtype)


def block_states(k: torch.Tensor, v: torch.Tensor, block_k: int, feature_map: str):
    """Per-key-block linear-attention states: ``h (B, H, nk, D, D)`` and ``z (B, H, nk, D)`` fp32."""
    phi = feature_map_fn(feature_map)
    Sk = k.shape[2]
    nk = num_blocks(Sk, block_k)
    pad = nk * block_k - Sk
    fk = phi(k.float())
    v32 = v.float()
    if pad:  # padded keys must contribute nothing (phi(0) != 0 for elu/softmax)
        fk = F.pad(fk, (0, 0, 0, pad))
        v32 = F.pad(v32, (0, 0, 0, pad))
    fk = fk.unflatten(2, (nk, block_k))
    v32 = v32.unflatten(2, (nk, block_k))
    return fk.transpose(-1, -2) @ v32, fk.sum(-2)


def sla_linear_branch(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    marginal_map: torch.Tensor,
    block_q: int,
    block_k: int,
    feature_map: str = "softmax",
) -> torch.Tensor:
    """Linear attention of each query over its marginal key blocks; fp32 ``(B, H, Sq, D)``.

    ``marginal_map``: bool ``(B, H, nq, nk)``. Query blocks without marginal blocks give zeros.
    """
    _B, _H, Sq, D = q.shape
    nq = num_blocks(Sq, block_q)
    h, z = block_states(k, v, block_k, feature_map)
    sel = marginal_map.float()
    hm = (sel @ h.flatten(-2)).unflatten(-1, (D, v.shape[-1]))  # (B, H, nq, D, Dv)
    zm = sel @ z  # (B, H, nq, D)
    fq = feature_map_fn(feature_map)(q.float())
    pad = nq * block_q - Sq
    if pad:
        fq = F.pad(fq, (0, 0, 0, pad))
    fq = fq.unflatten(2, (nq, block_q))  # (B, H, nq, bq, D)
    num = fq @ hm
    den = fq @ zm.unsqueeze(-1)
    return _safe_div(num, den).flatten(2, 3)[:, :, :Sq]
