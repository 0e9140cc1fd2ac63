"""INT8 Q and K for the attention scores: per-(head, block) symmetric quantization.

K is first smoothed by subtracting its mean over the tokens (per head): every query's scores
then shift by one constant, which softmax ignores, and the remaining values are centred, so the
int8 grid is spent on what differs between keys. Each block of ``block`` tokens of one head gets
its own scale ``amax / 127``; values are rounded to int8 in ``[-127, 127]``.

:func:`quantize_blocks` gives the int8 values and scales (what an int8 kernel consumes);
:func:`int8_qk` returns q and k rebuilt from them (``int8 * scale``), so that any backend computes
exactly the scores of the int8 product scaled back: on CPU this reproduces INT8 QK's numerics
(there is no int8 attention kernel here, so it is not faster).

Example:
    >>> import torch
    >>> q, k = torch.randn(1, 2, 100, 16), torch.randn(1, 2, 100, 16)
    >>> qi, scales = quantize_blocks(q, 64)
    >>> qi.dtype, qi.shape, scales.shape
    (torch.int8, torch.Size([1, 2, 128, 16]), torch.Size([1, 2, 2, 1, 1]))
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .masks import num_blocks

__all__ = ["int8_qk", "quantize_blocks"]


def quantize_blocks(x: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``x (B, H, S, D)`` -> int8 ``(B, H, nb*block, D)`` (zero padded) and fp32 scales ``(B, H, nb, 1, 1)``."""
    B, H, S, D = x.shape
    pad = num_blocks(S, block) * block - S
    xb = F.pad(x.float(), (0, 0, 0, pad)).view(B, H, -1, block, D)
    scale = (xb.abs().amax((-1, -2), keepdim=True) / 127.0).clamp_min(1e-12)
    q = (xb / scale).round().clamp(-127, 127).to(torch.int8)
    return q.view(B, H, -1, D), scale


def _dequantize(x: torch.Tensor, block: int) -> torch.Tensor:
    values, scale = quantize_blocks(x, block)
    B, H, S, D = x.shape
    return (values.view(B, H, -1, block, D).float() * scale).view(B, H, -1, D)[:, :, :S].to(x.dtype)


def int8_qk(q: torch.Tensor, k: torch.Tensor, block_q: int, block_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """q and k as the int8 values times their block scales (k mean-smoothed first), in q's dtype."""
    k = k - k.float().mean(-2, keepdim=True).to(k.dtype)
    return _dequantize(q, block_q), _dequantize(k, block_k)
