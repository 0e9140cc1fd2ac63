"""Two 4-bit integers per byte: the storage format of 4-bit weights.

A row of ``K`` values is split in two halves of ``H = ceil(K / 2)``: byte ``j`` holds element
``j`` in its low nibble and element ``H + j`` in its high nibble, each in 4-bit two's complement
(values ``-8 .. 7``); an odd row is padded with a zero. Unpacking is then two contiguous
half-rows (a shift each), which vectorises well on CPU and in GPU kernels.

Example:
    >>> import torch
    >>> q = torch.tensor([[-8, 7, 3, -1]], dtype=torch.int8)
    >>> packed = pack_int4(q)            # (1, 2) uint8: bytes (−8 | 3<<4), (7 | −1<<4)
    >>> torch.equal(unpack_int4(packed, 4), q)
    True
"""

from __future__ import annotations

import torch

__all__ = ["pack_int4", "unpack_int4"]


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """Pack int8 values in ``[-8, 7]`` two per byte (see the module docstring for the layout).

    Args:
        q: ``(..., K)`` integer tensor with values in ``[-8, 7]``.

    Returns:
        ``(..., ceil(K / 2))`` uint8 tensor.
    """
    if q.dtype not in (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8):
        raise TypeError(f"pack_int4 expects an integer tensor, got {q.dtype}.")
    if q.numel() and (int(q.min()) < -8 or int(q.max()) > 7):
        raise ValueError(
            f"pack_int4: values must lie in [-8, 7], got [{int(q.min())}, {int(q.max())}]; "
            "quantize to 4 bits first."
        )
    q = q.to(torch.int16)
    half = (q.shape[-1] + 1) // 2
    if q.shape[-1] % 2:
        q = torch.nn.functional.pad(q, (0, 1))
    low = q[..., :half] & 0xF
    high = (q[..., half:] & 0xF) << 4
    return (low | high).to(torch.uint8)


def unpack_int4(packed: torch.Tensor, k: int) -> torch.Tensor:
    """Inverse of :func:`pack_int4`.

    Args:
        packed: ``(..., ceil(k / 2))`` uint8 tensor.
        k: number of 4-bit values per row to return.

    Returns:
        ``(..., k)`` int8 tensor with values in ``[-8, 7]``.
    """
    if packed.dtype != torch.uint8:
        raise TypeError(f"unpack_int4 expects a uint8 tensor, got {packed.dtype}.")
    if packed.shape[-1] != (k + 1) // 2:
        raise ValueError(f"unpack_int4: {packed.shape[-1]} bytes per row cannot hold k={k} values.")
    signed = packed.view(torch.int8)
    low = torch.bitwise_right_shift(torch.bitwise_left_shift(signed, 4), 4)  # sign-extends
    high = torch.bitwise_right_shift(signed, 4)
    return torch.cat((low, high), dim=-1)[..., :k]
