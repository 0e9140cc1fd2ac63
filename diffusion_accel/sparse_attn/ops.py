"""Public ops: ``block_sparse_attention`` and ``sla_attention`` (sparse + linear).

Backends (a registry, not a ladder): ``"reference"`` (fp32 PyTorch, chunked), ``"torch"``
(fast PyTorch: chunked gathers + 4-D SDPA, CPU or GPU), ``"triton"`` (the Triton kernel; CUDA,
or CPU under ``TRITON_INTERPRET=1`` for testing). ``"auto"`` picks ``"triton"`` for CUDA tensors
and ``"torch"`` otherwise.

Example:
    >>> import torch
    >>> from diffusion_accel.sparse_attn import block_sparse_attention
    >>> q = k = v = torch.randn(1, 4, 1000, 72)
    >>> res = block_sparse_attention(q, k, v, density=0.25, return_block_map=True)
    >>> res.output.shape, res.block_map.shape, round(res.density, 2)
    (torch.Size([1, 4, 1000, 72]), torch.Size([1, 4, 16, 16]), 0.25)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

from ._validate import check_block_size, check_fraction, check_qkv, check_selection
from .cpu import block_sparse_attention_torch
from .features import feature_map_fn
from .linear import sla_linear_branch
from .masks import block_density, block_scores, num_blocks, predict_block_map, select_blocks
from .reference import block_sparse_attention_reference, sla_reference

__all__ = [
    "BACKENDS",
    "SparseAttentionOutput",
    "block_sparse_attention",
    "resolve_backend",
    "run_block_sparse",
    "sla_attention",
    "sla_block_maps",
]


class SparseAttentionOutput(NamedTuple):
    """What ``block_sparse_attention(..., return_block_map=True)`` returns."""

    output: torch.Tensor  #: ``(B, H, Sq, D)``, q's dtype
    block_map: torch.Tensor  #: bool ``(B, H, nq, nk)``
    density: float  #: fraction of (query block, key block) pairs computed


def _reference(q, k, v, block_map, block_q, block_k, scale, need_lse):
    out, lse = block_sparse_attention_reference(q, k, v, block_map, block_q, block_k, scale, return_lse=True)
    return out.to(q.dtype), (lse if need_lse else None)


def _torch(q, k, v, block_map, block_q, block_k, scale, need_lse):
    if need_lse:
        return block_sparse_attention_torch(q, k, v, block_map, block_q, block_k, scale, return_lse=True)
    return block_sparse_attention_torch(q, k, v, block_map, block_q, block_k, scale), None


def _triton(q, k, v, block_map, block_q, block_k, scale, need_lse):
    kernels = _triton_kernels(q, block_q, block_k)
    out, lse = kernels.block_sparse_attention_triton(q, k, v, block_map, block_q, block_k, scale)
    return out, (lse if need_lse else None)


def _triton_kernels(q, block_q, block_k):
    if q.dtype == torch.bfloat16 and q.device.type == "cpu":
        raise ValueError("The Triton backend cannot run bfloat16 on CPU (interpreter); use float16/float32 or backend='torch'.")
    check_block_size("block_q", block_q, 16)
    check_block_size("block_k", block_k, 16)
    try:
        from . import kernels
    except ImportError as exc:  # pragma: no cover - triton is a dependency
        raise ValueError(f"backend='triton' needs Triton ({exc}); use backend='torch'.") from exc
    return kernels


#: name -> fn(q, k, v, block_map, block_q, block_k, scale, need_lse) -> (out, lse | None)
BACKENDS: dict[str, Callable] = {"reference": _reference, "torch": _torch, "triton": _triton}


def resolve_backend(backend: str, q: torch.Tensor) -> str:
    """``"auto"`` -> ``"triton"`` on CUDA, else ``"torch"``; ValueError for unknown names."""
    if backend == "auto":
        return "triton" if q.is_cuda else "torch"
    if backend not in BACKENDS:
        raise ValueError(f"Unknown backend {backend!r}; choose 'auto' or one of {sorted(BACKENDS)}.")
    return backend


def run_block_sparse(q, k, v, block_map, block_q, block_k, *, scale=None, backend="auto", need_lse=False):
    """Run a backend on a ready block map (no validation); returns ``(out, lse | None)``."""
    return BACKENDS[resolve_backend(backend, q)](q, k, v, block_map, block_q, block_k, scale, need_lse)


def _check_common(q, k, v, block_q, block_k, backend, block_map):
    check_qkv(q, k, v)
    check_block_size("block_q", block_q)
    check_block_size("block_k", block_k)
    resolve_backend(backend, q)
    if block_map is not None:
        expected = (q.shape[0], q.shape[1], num_blocks(q.shape[2], block_q), num_blocks(k.shape[2], block_k))
        if not torch.is_tensor(block_map) or block_map.dtype != torch.bool or tuple(block_map.shape) != expected:
            got = tuple(block_map.shape) if torch.is_tensor(block_map) else type(block_map).__name__
            raise ValueError(f"block_map must be a bool tensor of shape {expected}; got {got}.")
        if bool((block_map.sum(-1) == 0).any()):
            raise ValueError("block_map has a query block with no key block; keep at least one per row.")


def block_sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    density: float | None = None,
    topk: int | None = None,
    cdf_threshold: float | None = None,
    block_q: int = 64,
    block_k: int = 64,
    backend: str = "auto",
    scale: float | None = None,
    block_map: torch.Tensor | None = None,
    similarity_threshold: float | None = None,
    return_block_map: bool = False,
):
    """Block-sparse softmax attention with a predicted (or given) block mask.

    Args:
        q: ``(batch, heads, seq_q, head_dim)``; k, v: ``(batch, heads, seq_k, head_dim)``.
            Any sequence length and head_dim (padded inside); float32/float16/bfloat16.
        density: fraction of key blocks each query block keeps (``(0, 1]``; 1.0 = dense).
        topk: number of key blocks each query block keeps.
        cdf_threshold: keep the fewest best blocks whose predicted attention sums to this.
        block_q, block_k: block sizes (powers of two; >= 16 for ``"triton"``).
        backend: ``"auto"``, ``"reference"``, ``"torch"`` or ``"triton"``.
        scale: softmax scale (default ``1/sqrt(head_dim)``).
        block_map: a ready bool map ``(B, H, nq, nk)`` instead of a selection rule.
        similarity_threshold: self-similarity guard of the mask prediction (None = off).
        return_block_map: also return the block map and the realised density.

    Exactly one of ``density``, ``topk``, ``cdf_threshold``, ``block_map`` is given.

    Returns:
        the output ``(B, H, Sq, D)`` in q's dtype, or a :class:`SparseAttentionOutput`.
    """
    check_selection(density, topk, cdf_threshold, block_map_given=block_map is not None)
    _check_common(q, k, v, block_q, block_k, backend, block_map)
    if similarity_threshold is not None and not isinstance(similarity_threshold, (int, float)):
        raise ValueError(f"similarity_threshold must be a number or None; got {similarity_threshold!r}.")
    if block_map is None:
        block_map = predict_block_map(
            q, k, density=density, topk=topk, cdf_threshold=cdf_threshold, block_q=block_q,
            block_k=block_k, scale=scale, similarity_threshold=similarity_threshold,
        )
    out, _ = run_block_sparse(q, k, v, block_map, block_q, block_k, scale=scale, backend=backend)
    if return_block_map:
        return SparseAttentionOutput(out, block_map, block_density(block_map))
    return out


def sla_block_maps(scores: torch.Tensor, density: float, skip_fraction: float, forced_rows=None, forced_cols=None):
    """SLA's split of scores ``(B, H, nq, nk)``: ``(critical, marginal)`` bool maps.

    Critical: the top ``density`` of key blocks per query block (plus forced blocks); negligible:
    the lowest ``skip_fraction``; marginal: the rest.
    """
    critical = select_blocks(scores, density=density, forced_rows=forced_rows, forced_cols=forced_cols)
    if skip_fraction >= 1.0 - density:
        return critical, torch.zeros_like(critical)
    kept = select_blocks(scores, density=1.0 - skip_fraction, forced_rows=forced_rows, forced_cols=forced_cols)
    return critical, kept & ~critical


def sla_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    density: float,
    skip_fraction: float = 0.0,
    proj: Callable[[torch.Tensor], torch.Tensor] | None = None,
    feature_map: str = "softmax",
    block_q: int = 64,
    block_k: int = 64,
    backend: str = "auto",
    scale: float | None = None,
):
    """Sparse + linear attention (SLA): ``o_sparse + proj(o_linear)``.

    Critical blocks (top ``density``) get exact softmax attention, marginal blocks linear
    attention, negligible blocks (lowest ``skip_fraction``) nothing. ``proj`` maps the linear
    branch ``(B, H, Sq, D)`` fp32 to the output's space (SLA uses a learnable linear layer
    initialised to zero, so that untrained SLA equals sparse attention); ``None`` drops it.
    Returns ``(B, H, Sq, D)`` in q's dtype.
    """
    check_qkv(q, k, v)
    check_fraction("density", density)
    check_fraction("skip_fraction", skip_fraction, allow_zero=True)
    feature_map_fn(feature_map)
    _check_common(q, k, v, block_q, block_k, backend, None)
    scores = block_scores(q, k, block_q, block_k, scale)
    critical, marginal = sla_block_maps(scores, density, skip_fraction)
    o_sparse, o_linear = sla_branches(q, k, v, critical, marginal, block_q, block_k, feature_map, scale, backend)
    if proj is None:
        return o_sparse
    return (o_sparse.float() + proj(o_linear)).to(q.dtype)


def sla_branches(q, k, v, critical, marginal, block_q, block_k, feature_map, scale=None, backend="auto"):
    """The two SLA branches ``(o_sparse (q.dtype), o_linear fp32)`` with the chosen backend."""
    name = resolve_backend(backend, q)
    if name == "triton":
        o_s, o_l, _ = _triton_kernels(q, block_q, block_k).sla_attention_triton(
            q, k, v, critical, marginal, block_q, block_k, feature_map, scale
        )
        return o_s, o_l
    if name == "reference":
        o_s, o_l = sla_reference(q, k, v, critical, marginal, block_q, block_k, feature_map, scale)
        return o_s.to(q.dtype), o_l
    o_s, _ = run_block_sparse(q, k, v, critical, block_q, block_k, scale=scale, backend=name)
    return o_s, sla_linear_branch(q, k, v, marginal, block_q, block_k, feature_map)
