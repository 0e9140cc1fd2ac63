"""Plain PyTorch reference of the W8A8 / W4A8 GEMM (what the Triton kernel must compute).

``out[m, n] = (sum_k xq[m, k] * w[n, k]) * x_scale[m] * w_scale[n] + bias[n]`` with the integer
sum computed exactly (int64), then rescaled in float32. For 4-bit weights ``w = q4 * z`` (see
:mod:`diffusion_accel.quant.quantizers`), unpacked from two values per byte.

Example:
    >>> import torch
    >>> xq = torch.randint(-127, 128, (4, 32), dtype=torch.int8)
    >>> w = torch.randint(-127, 128, (8, 32), dtype=torch.int8)
    >>> qgemm_reference(xq, torch.ones(4), w, torch.ones(8)).shape
    torch.Size([4, 8])
"""

from __future__ import annotations

import torch

from ..packing import unpack_int4
from ..quantizers import groupwise_int8_weight

__all__ = ["qgemm_reference"]


def qgemm_reference(
    xq: torch.Tensor,
    x_scale: torch.Tensor,
    w: torch.Tensor,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    group_scale: torch.Tensor | None = None,
    group_size: int | None = None,
    k: int | None = None,
) -> torch.Tensor:
    """Float32 ``(M, N)`` result (see the module docstring for the shapes)."""
    if group_scale is not None:
        w = groupwise_int8_weight(unpack_int4(w, k), group_scale, group_size)
    acc = xq.to(torch.int64) @ w.to(torch.int64).t()
    out = acc.to(torch.float32) * x_scale.reshape(-1, 1).float() * w_scale.reshape(1, -1).float()
    if bias is not None:
        out = out + bias.float()
    return out
