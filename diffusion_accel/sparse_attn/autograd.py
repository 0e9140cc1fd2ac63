"""``torch.autograd.Function`` wrappers: fast forward, explicit backward (``backward.py``).

* :class:`BlockSparseAttentionFunction` — forward with the PyTorch fast path (``cpu.py``, run
  without autograd: reused gather buffers, flash kernel) or the Triton kernel; backward from the
  saved output and log-sum-exp with the same backend as the forward: the Triton backward kernels
  (``kernels/block_sparse_bwd.py``) after a Triton forward, the PyTorch backward otherwise.
* :class:`LinearBranchFunction` — SLA's block-restricted linear branch; with one query block and
  one key block it is whole-sequence linear attention.

The public ops (``ops.py``, ``linear.py``) route through these whenever q, k or v require grad.

Example:
    >>> import torch
    >>> from diffusion_accel.sparse_attn.autograd import block_sparse_attention_fn
    >>> q, k, v = (torch.randn(1, 1, 64, 16, requires_grad=True) for _ in range(3))
    >>> m = torch.ones(1, 1, 2, 2, dtype=torch.bool)
    >>> out, lse = block_sparse_attention_fn(q, k, v, m, 32, 32)
    >>> out.sum().backward()
    >>> q.grad.shape
    torch.Size([1, 1, 64, 16])
"""

from __future__ import annotations

import torch

from .backward import block_sparse_backward, linear_branch_backward, linear_branch_forward
from .cpu import block_sparse_attention_torch

__all__ = [
    "BlockSparseAttentionFunction",
    "LinearBranchFunction",
    "block_sparse_attention_fn",
    "linear_attention_fn",
    "linear_branch_fn",
]


class BlockSparseAttentionFunction(torch.autograd.Function):
    """``(out, lse) = f(q, k, v)`` over a fixed block map; ``lse`` carries no gradient."""

    @staticmethod
    def forward(ctx, q, k, v, block_map, block_q, block_k, scale, use_triton):
        with torch.no_grad():
            if use_triton:
                from .kernels import block_sparse_attention_triton

                out, lse = block_sparse_attention_triton(q, k, v, block_map, block_q, block_k, scale)
            else:
                out, lse = block_sparse_attention_torch(q, k, v, block_map, block_q, block_k, scale, return_lse=True)
        ctx.save_for_backward(q, k, v, out, lse, block_map)
        ctx.args = (block_q, block_k, scale, use_triton)
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    def backward(ctx, d_out, _d_lse):
        q, k, v, out, lse, block_map = ctx.saved_tensors
        block_q, block_k, scale, use_triton = ctx.args
        backward = _triton_backward() if use_triton else block_sparse_backward
        dq, dk, dv = backward(q, k, v, out, lse, d_out, block_map, block_q, block_k, scale)
        return dq, dk, dv, None, None, None, None, None


def _triton_backward():
    """The Triton backward launcher (imported on use, as the forward kernel: it imports Triton)."""
    from .kernels import block_sparse_backward_triton

    return block_sparse_backward_triton


def block_sparse_attention_fn(q, k, v, block_map, block_q, block_k, scale=None, *, use_triton=False):
    """Differentiable block-sparse attention: ``(out in q.dtype, lse fp32)``."""
    return BlockSparseAttentionFunction.apply(q, k, v, block_map, block_q, block_k, scale, use_triton)


class LinearBranchFunction(torch.autograd.Function):
    """SLA's linear branch ``(B, H, Sq, Dv)`` fp32 over the marginal blocks of each query block."""

    @staticmethod
    def forward(ctx, q, k, v, marginal_map, block_q, block_k, feature_map):
        with torch.no_grad():
            out = linear_branch_forward(q, k, v, marginal_map, block_q, block_k, feature_map)
        ctx.save_for_backward(q, k, v, marginal_map)
        ctx.args = (block_q, block_k, feature_map)
        return out

    @staticmethod
    def backward(ctx, d_out):
        q, k, v, marginal_map = ctx.saved_tensors
        dq, dk, dv = linear_branch_backward(q, k, v, marginal_map, *ctx.args, d_out)
        return dq, dk, dv, None, None, None, None


def linear_branch_fn(q, k, v, marginal_map, block_q, block_k, feature_map="softmax"):
    """Differentiable SLA linear branch (fp32)."""
    return LinearBranchFunction.apply(q, k, v, marginal_map, block_q, block_k, feature_map)


def linear_attention_fn(q, k, v, feature_map="elu"):
    """Differentiable whole-sequence linear attention (fp32): the linear branch with one block each."""
    B, H, Sq, _ = q.shape
    full = torch.ones(B, H, 1, 1, dtype=torch.bool, device=q.device)
    return LinearBranchFunction.apply(q, k, v, full, Sq, k.shape[2], feature_map)
