"""Weight memory measured from a module's real tensors.

:func:`weight_bytes` sums the bytes of every parameter and buffer a module holds (each storage
once) plus the backend-packed weights of its :class:`QuantLinear` layers (e.g. oneDNN's prepacked
int8 copy, which replaces the plain one). :func:`bf16_weight_bytes` is the same model's size with
every floating-point tensor at 2 bytes per element and every quantized linear counted as the
bf16 ``nn.Linear`` it replaced: the baseline of the "× smaller than bf16" figures.

Example:
    >>> import torch
    >>> from diffusion_accel.quant import QuantLinear
    >>> m = torch.nn.Sequential(QuantLinear.from_linear(torch.nn.Linear(256, 256), weight_bits=4))
    >>> round(bf16_weight_bytes(m) / weight_bytes(m), 2)
    3.72
"""

from __future__ import annotations

import torch

from .gemm import execution_weight_bytes
from .linear import QuantLinear

__all__ = ["weight_bytes", "bf16_weight_bytes", "quantized_linear_bytes"]


def _tensor_bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def weight_bytes(module: torch.nn.Module) -> int:
    """Bytes of all tensors held by ``module`` (parameters, buffers, packed weights), deduplicated."""
    seen: set[int] = set()
    total = 0
    for t in list(module.parameters()) + list(module.buffers()):
        if t is None:
            continue
        key = t.untyped_storage().data_ptr() if t.device.type != "meta" else id(t)
        if key in seen and key != 0:
            continue
        seen.add(key)
        total += _tensor_bytes(t)
    for m in module.modules():
        if isinstance(m, QuantLinear):
            total += execution_weight_bytes(m)
    return total


def bf16_weight_bytes(module: torch.nn.Module) -> int:
    """Bytes of the bf16 model: floats at 2 bytes, each QuantLinear as a bf16 ``nn.Linear``."""
    total = 0
    quant_buffers: set[int] = set()
    for m in module.modules():
        if isinstance(m, QuantLinear):
            total += 2 * (m.in_features * m.out_features + (m.out_features if m.bias is not None else 0))
            quant_buffers.update(id(b) for b in m.buffers(recurse=False) if b is not None)
    for t in list(module.parameters()) + list(module.buffers()):
        if t is None or id(t) in quant_buffers:
            continue
        total += t.numel() * (2 if t.is_floating_point() else t.element_size())
    return total


def quantized_linear_bytes(module: torch.nn.Module) -> tuple[int, int]:
    """``(bytes held, bf16 bytes)`` of the QuantLinear layers of ``module`` only."""
    held = bf16 = 0
    for m in module.modules():
        if isinstance(m, QuantLinear):
            held += m.memory_bytes()
            bf16 += 2 * (m.in_features * m.out_features + (m.out_features if m.bias is not None else 0))
    return held, bf16

