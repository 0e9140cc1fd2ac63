"""Triton kernels for block-sparse and sparse+linear (SLA) attention, and the block-sparse backward.

Importing this package imports Triton and defines the kernels. On machines without a GPU,
Triton only runs with ``TRITON_INTERPRET=1`` set *before* this import (tests do that); the
public op selects the Triton backend automatically only for CUDA tensors.
"""

from .block_sparse import block_sparse_attention_triton, sla_attention_triton
from .block_sparse_bwd import block_sparse_backward_triton

__all__ = ["block_sparse_attention_triton", "block_sparse_backward_triton", "sla_attention_triton"]
