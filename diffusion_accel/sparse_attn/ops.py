"""Public ops: ``block_sparse_attention`` and ``sla_attention`` (sparse + linear).

Backends (a registry, not a ladder): ``"reference"`` (fp32 PyTorch, chunked), ``"torch"``
(fast PyTorch: chunked gathers + 4-D SDPA, CPU or GPU), ``"triton"`` (the Triton kernel; CUDA,
or CPU under ``TRITON_INTERPRET=1`` for testing). Every backend is differentiable: ``"reference"``
through autograd, ``"torch"`` and ``"triton"`` through ``autograd.Function`` wrappers
(``autograd.py``: their own forward, the explicit backward of ``backward.py``), so ``"auto"``
picks the device's entry of :data:`AUTO_BACKENDS` (``"triton"`` on CUDA, else ``"torch"``) with
or without gradients.

Block sizes left at ``None`` take the device's measured default (``defaults.py``).

Example:
    >>> import torch
    >>> from diffusion_accel.sparse_attn import block_sparse_attention
    >>> q = k = v = torch.randn(1, 4, 1000, 72)
    >>> res = block_sparse_attention(q, k, v, density=0.25, block_q=64, block_k=64, return_block_map=True)
    >>> res.output.shape, res.block_map.shape, round(res.density, 2)
    (torch.Size([1, 4, 1000, 72]), torch.Size([1, 4, 16, 16]), 0.25)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

from ._validate import check_block_size, check_fraction, check_qkv, check_selection
from .autograd import block_sparse_attention_fn, linear_branch_fn
from .cpu import block_sparse_attention_torch
from .defaults import resolve_block_shape
from .features import feature_map_fn
from .linear import sla_linear_branch
from .masks import (
    block_constraints,
    block_density,
    block_scores,
    num_blocks,
    predict_block_map,
    select_blocks,
)
from .reference import block_sparse_attention_reference, sla_reference

__all__ = [
    "AUTO_BACKENDS",
    "BACKENDS",
    "DIFFERENTIABLE_BACKENDS",
    "SparseAttentionOutput",
    "auto_backend",
    "block_sparse_attention",
    "needs_grad",
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
    if needs_grad(q, k, v):
        out, lse = block_sparse_attention_fn(q, k, v, block_map, block_q, block_k, scale)
        return out, (lse if need_lse else None)
    if need_lse:
        return block_sparse_attention_torch(q, k, v, block_map, block_q, block_k, scale, return_lse=True)
    return block_sparse_attention_torch(q, k, v, block_map, block_q, block_k, scale), None


def _triton(q, k, v, block_map, block_q, block_k, scale, need_lse):
    kernels = _triton_kernels(q, block_q, block_k)
    if needs_grad(q, k, v):
        out, lse = block_sparse_attention_fn(q, k, v, block_map, block_q, block_k, scale, use_triton=True)
    else:
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
#: backends whose output carries gradients to q, k, v (all: Triton and torch via ``autograd.py``)
DIFFERENTIABLE_BACKENDS = frozenset({"reference", "torch", "triton"})
#: device type -> what ``"auto"`` runs when no gradient is needed (others: ``"torch"``)
AUTO_BACKENDS: dict[str, str] = {"cuda": "triton"}


def needs_grad(*tensors: torch.Tensor) -> bool:
    """True when autograd would record an op on ``tensors`` (grad mode on and one requires grad)."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def auto_backend(device_type: str, grad: bool) -> str:
    """What ``backend="auto"`` runs on ``device_type``: a differentiable backend when ``grad``."""
    name = AUTO_BACKENDS.get(device_type, "torch")
    return name if not grad or name in DIFFERENTIABLE_BACKENDS else "torch"


def resolve_backend(backend: str, q: torch.Tensor, *, grad: bool = False) -> str:
    """The backend that runs: ``"auto"`` -> :func:`auto_backend`; ValueError for unknown names and
    for a forward-only backend asked to compute a gradient (``grad``)."""
    if backend == "auto":
        return auto_backend(q.device.type, grad)
    if backend not in BACKENDS:
        raise ValueError(f"Unknown backend {backend!r}; choose 'auto' or one of {sorted(BACKENDS)}.")
    if grad and backend not in DIFFERENTIABLE_BACKENDS:
        raise ValueError(
            f"backend={backend!r} is forward-only, but q, k or v require grad. Use backend='torch' "
            "(or 'auto', which picks a differentiable backend when gradients are needed), or run under "
            "torch.no_grad()."
        )
    return backend


def run_block_sparse(q, k, v, block_map, block_q, block_k, *, scale=None, backend="auto", need_lse=False):
    """Run a backend on a ready block map (no validation); returns ``(out, lse | None)``."""
    name = resolve_backend(backend, q, grad=needs_grad(q, k, v))
    return BACKENDS[name](q, k, v, block_map, block_q, block_k, scale, need_lse)


def _check_common(q, k, v, block_q, block_k, backend, block_map):
    check_qkv(q, k, v)
    check_block_size("block_q", block_q)
    check_block_size("block_k", block_k)
    resolve_backend(backend, q, grad=needs_grad(q, k, v))
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
    block_q: int | None = None,
    block_k: int | None = None,
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
        block_q, block_k: block sizes (powers of two; >= 16 for ``"triton"``); ``None`` = the
            device's measured default (:data:`~diffusion_accel.sparse_attn.defaults.DEFAULT_BLOCK_SHAPES`:
            256x64 on x86 CPUs, 128x64 on CUDA).
        backend: ``"auto"``, ``"reference"``, ``"torch"`` or ``"triton"`` (all differentiable).
        scale: softmax scale (default ``1/sqrt(head_dim)``).
        block_map: a ready bool map ``(B, H, nq, nk)`` instead of a selection rule.
        similarity_threshold: self-similarity guard of the mask prediction (None = off).
        return_block_map: also return the block map and the realised density.

    Exactly one of ``density``, ``topk``, ``cdf_threshold``, ``block_map`` is given. When
    ``Sq == Sk`` each query block's own (diagonal) key blocks are always kept, inside the budget.

    Returns:
        the output ``(B, H, Sq, D)`` in q's dtype, or a :class:`SparseAttentionOutput`.
    """
    check_selection(density, topk, cdf_threshold, block_map_given=block_map is not None)
    check_qkv(q, k, v)
    block_q, block_k = resolve_block_shape(block_q, block_k, q.device)
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


def sla_block_maps(scores: torch.Tensor, density: float, skip_fraction: float, **constraints):
    """SLA's split of scores ``(B, H, nq, nk)``: ``(critical, marginal)`` bool maps.

    Critical: the top ``density`` of key blocks per query block (plus forced blocks); negligible:
    the lowest ``skip_fraction``; marginal: the rest. ``constraints``: the keywords of
    :func:`~diffusion_accel.sparse_attn.masks.select_blocks` (``masks.block_constraints``).
    """
    critical = select_blocks(scores, density=density, **constraints)
    if skip_fraction >= 1.0 - density:
        return critical, torch.zeros_like(critical)
    kept = select_blocks(scores, density=1.0 - skip_fraction, **constraints)
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
    block_q: int | None = None,
    block_k: int | None = None,
    backend: str = "auto",
    scale: float | None = None,
):
    """Sparse + linear attention (SLA): ``o_sparse + proj(o_linear)``.

    Critical blocks (top ``density``) get exact softmax attention, marginal blocks linear
    attention, negligible blocks (lowest ``skip_fraction``) nothing. ``proj`` maps the linear
    branch ``(B, H, Sq, D)`` fp32 to the output's space (SLA uses a learnable linear layer
    initialised to zero, so that untrained SLA equals sparse attention); ``None`` drops it.
    Block sizes left at ``None`` take the device's default; in self-attention the diagonal
    blocks are critical. Returns ``(B, H, Sq, D)`` in q's dtype.
    """
    check_qkv(q, k, v)
    check_fraction("density", density)
    check_fraction("skip_fraction", skip_fraction, allow_zero=True)
    feature_map_fn(feature_map)
    block_q, block_k = resolve_block_shape(block_q, block_k, q.device)
    _check_common(q, k, v, block_q, block_k, backend, None)
    scores = block_scores(q, k, block_q, block_k, scale)
    constraints = block_constraints(q, k, block_q, block_k)
    critical, marginal = sla_block_maps(scores, density, skip_fraction, **constraints)
    o_sparse, o_linear = sla_branches(q, k, v, critical, marginal, block_q, block_k, feature_map, scale, backend)
    if proj is None:
        return o_sparse
    return (o_sparse.float() + proj(o_linear)).to(q.dtype)


def sla_branches(q, k, v, critical, marginal, block_q, block_k, feature_map, scale=None, backend="auto"):
    """The two SLA branches ``(o_sparse (q.dtype), o_linear fp32)`` with the chosen backend."""
    grad = needs_grad(q, k, v)
    name = resolve_backend(backend, q, grad=grad)
    if grad and name != "reference":  # the Function wrappers: fast forward, explicit backward
        o_s, _ = run_block_sparse(q, k, v, critical, block_q, block_k, scale=scale, backend=name)
        return o_s, linear_branch_fn(q, k, v, marginal, block_q, block_k, feature_map)
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
