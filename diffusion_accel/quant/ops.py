"""Memory-bound steps around an int8 GEMM: quantize the input, rescale the output.

Each step is a plain PyTorch function; with ``compiled=True`` the same function runs through
``torch.compile`` (dynamic shapes), which fuses it into one pass over memory — on CPU this is what
keeps the int8 GEMM's gain (see ``docs/quant.md``). Both variants compute the same integers.

Example:
    >>> import torch
    >>> q, s = quantize_dynamic(torch.randn(5, 16), None, compiled=False)
    >>> q.dtype, s.shape
    (torch.int8, torch.Size([5, 1]))
"""

from __future__ import annotations

from typing import Callable

import torch

from .quantizers import normalize_per_token, quantize_act_per_tensor, quantize_act_per_token

__all__ = ["quantize_dynamic", "normalize_dynamic", "quantize_static", "rescale_output",
           "int4_to_int8_weight"]

_COMPILED: dict[str, Callable] = {}


def _maybe_compiled(name: str, fn: Callable, compiled: bool, dynamic: bool = True) -> Callable:
    if not compiled:
        return fn
    if name not in _COMPILED:
        _COMPILED[name] = torch.compile(fn, dynamic=dynamic)
    return _COMPILED[name]


def _dynamic(x: torch.Tensor, inv_smooth: torch.Tensor | None):
    return quantize_act_per_token(x, 8, inv_smooth)


def _normalize(x: torch.Tensor, inv_smooth: torch.Tensor | None):
    return normalize_per_token(x, 8, inv_smooth)


def _static(x: torch.Tensor, scale: torch.Tensor, inv_smooth: torch.Tensor | None):
    return quantize_act_per_tensor(x, scale, 8, inv_smooth)


def _rescale(y: torch.Tensor, x_scale: torch.Tensor, bias: torch.Tensor | None, out_dtype: torch.dtype,
             activation: str | None = None):
    out = y.float() * x_scale
    if bias is not None:
        out = out + bias.float()
    if activation is not None:
        out = torch.nn.functional.gelu(out, approximate=activation)
    return out.to(out_dtype)


def _rescale_eager(y: torch.Tensor, x_scale: torch.Tensor, bias: torch.Tensor | None, out_dtype: torch.dtype,
                   activation: str | None = None):
    # same arithmetic as _rescale, in one pass (addcmul) written over the GEMM's fresh float32 output:
    # on CPU every new (M, N) temporary costs page faults comparable to the pass itself
    y = y.float()
    out = y.mul_(x_scale) if bias is None else torch.addcmul(bias.float(), y, x_scale, out=y)
    if activation is not None:
        out = torch.ops.aten.gelu_(out, approximate=activation)
    return out.to(out_dtype)


def _int4_to_int8(packed: torch.Tensor, group_scale: torch.Tensor, k: int, group_size: int,
                  dtype: torch.dtype) -> torch.Tensor:
    signed = packed.view(torch.int8)
    low = torch.bitwise_right_shift(torch.bitwise_left_shift(signed, 4), 4)
    high = torch.bitwise_right_shift(signed, 4)
    q = torch.cat((low, high), dim=-1)  # (N, 2 * ceil(k / 2))
    n, groups = group_scale.shape
    padded = groups * group_size
    if q.shape[-1] < padded:
        q = torch.nn.functional.pad(q, (0, padded - q.shape[-1]))
    q = q[:, :padded].reshape(n, groups, group_size).to(dtype) * group_scale.to(dtype)[..., None]
    return q.reshape(n, padded)[:, :k]


def quantize_dynamic(x: torch.Tensor, inv_smooth: torch.Tensor | None, compiled: bool = False):
    """Per-token int8: ``(M, K)`` float → ``q`` int8 ``(M, K)``, ``scale`` float32 ``(M, 1)``."""
    return _maybe_compiled("dynamic", _dynamic, compiled)(x, inv_smooth)


def normalize_dynamic(x: torch.Tensor, inv_smooth: torch.Tensor | None, compiled: bool = False):
    """Per-token ``x / scale`` before rounding: ``(M, K)`` float → float32 ``(M, K)``, scale ``(M, 1)``."""
    return _maybe_compiled("normalize", _normalize, compiled)(x, inv_smooth)


def quantize_static(x: torch.Tensor, scale: torch.Tensor, inv_smooth: torch.Tensor | None,
                    compiled: bool = False) -> torch.Tensor:
    """Per-tensor int8 with a calibrated 0-d float32 ``scale``: ``(M, K)`` → int8 ``(M, K)``."""
    return _maybe_compiled("static", _static, compiled)(x, scale, inv_smooth)


def rescale_output(y: torch.Tensor, x_scale: torch.Tensor, bias: torch.Tensor | None,
                   out_dtype: torch.dtype, compiled: bool = False, activation: str | None = None) -> torch.Tensor:
    """``act(y * x_scale + bias).to(out_dtype)`` for ``y`` ``(M, N)``, ``x_scale`` ``(M, 1)`` or 0-d;
    ``activation`` is ``None`` or a GELU ``approximate`` mode (``"none"``, ``"tanh"``).

    ``y`` must be a fresh GEMM output owned by the caller: the eager path rescales it in place.
    """
    if not compiled:
        return _rescale_eager(y, x_scale, bias, out_dtype, activation)
    return _maybe_compiled("rescale", _rescale, compiled)(y, x_scale, bias, out_dtype, activation)


def int4_to_int8_weight(packed: torch.Tensor, group_scale: torch.Tensor, k: int, group_size: int,
                        dtype: torch.dtype = torch.int8, compiled: bool = False) -> torch.Tensor:
    """Exact integer weight ``q4 * z`` ``(N, k)`` of a packed 4-bit weight, in ``dtype``.

    ``dtype`` may be int8 or a float type that holds the integers exactly (bf16, fp16, fp32):
    the products ``q4 * z`` (at most 120 in magnitude) are exact in each.
    """
    # weight shapes are fixed per layer: compile per shape (dynamic shapes vectorise poorly here)
    return _maybe_compiled("int4", _int4_to_int8, compiled, dynamic=False)(packed, group_scale, k, group_size, dtype)
