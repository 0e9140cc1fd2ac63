"""Input checks shared by the sparse-attention ops (one clear ValueError per problem)."""

from __future__ import annotations

import torch

__all__ = ["FLOAT_DTYPES", "check_block_size", "check_fraction", "check_qkv", "check_selection"]

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """q ``(B, H, Sq, D)``, k and v ``(B, H, Sk, D)``: same batch, heads, head_dim, dtype, device."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not torch.is_tensor(t):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}.")
        if t.dim() != 4:
            raise ValueError(
                f"{name} must have shape (batch, heads, seq, head_dim); got {tuple(t.shape)}. "
                "Transpose (batch, seq, heads, head_dim) inputs with .transpose(1, 2)."
            )
        if t.dtype not in FLOAT_DTYPES:
            raise ValueError(f"{name} has dtype {t.dtype}; use float32, float16 or bfloat16.")
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape; got k {tuple(k.shape)} and v {tuple(v.shape)}.")
    if q.shape[0] != k.shape[0] or q.shape[1] != k.shape[1] or q.shape[3] != k.shape[3]:
        raise ValueError(
            f"q {tuple(q.shape)} and k {tuple(k.shape)} disagree: batch, heads and head_dim must match."
        )
    if q.shape[2] == 0 or k.shape[2] == 0 or q.shape[3] == 0:
        raise ValueError(f"Empty attention input: q {tuple(q.shape)}, k {tuple(k.shape)}.")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v must share one dtype; got {q.dtype}, {k.dtype}, {v.dtype}.")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device; got {q.device}, {k.device}, {v.device}.")


def check_block_size(name: str, value: int, minimum: int = 1) -> None:
    """Block sizes are powers of two (``minimum`` for Triton's ``tl.dot`` is 16)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1 or value & (value - 1):
        raise ValueError(f"{name} must be a power of two (16, 32, 64, 128, ...); got {value!r}.")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum} for this backend; got {value}.")


def check_fraction(name: str, value: float, *, allow_zero: bool = False) -> None:
    """A fraction in (0, 1] (or [0, 1] with ``allow_zero``)."""
    ok_type = isinstance(value, (int, float)) and not isinstance(value, bool)
    low_ok = ok_type and (value >= 0 if allow_zero else value > 0)
    if not ok_type or not low_ok or value > 1:
        interval = "[0, 1]" if allow_zero else "(0, 1]"
        raise ValueError(f"{name} must be a number in {interval}; got {value!r}.")


def check_selection(density, topk, cdf_threshold, *, block_map_given: bool = False) -> None:
    """Exactly one of density / topk / cdf_threshold (or a ready block map)."""
    given = [n for n, v in (("density", density), ("topk", topk), ("cdf_threshold", cdf_threshold)) if v is not None]
    if block_map_given:
        given.append("block_map")
    if len(given) != 1:
        raise ValueError(
            "Pass exactly one of density (fraction of key blocks per query block), topk (key blocks "
            f"per query block), cdf_threshold (attention mass to keep) or block_map; got {given or 'none'}."
        )
    if density is not None:
        check_fraction("density", density)
    if topk is not None and (isinstance(topk, bool) or not isinstance(topk, int) or topk < 1):
        raise ValueError(f"topk must be a positive int (key blocks per query block); got {topk!r}.")
    if cdf_threshold is not None:
        check_fraction("cdf_threshold", cdf_threshold)
