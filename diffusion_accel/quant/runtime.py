"""Per-denoiser runtime state shared by its quantized linears.

One :class:`QuantRuntime` per quantized denoiser (never shared between pipelines) holds

* ``range_index``: which calibrated timestep range the current denoiser call belongs to (static
  activation scales are per range); a :class:`TimestepRangeHook` on the denoiser sets it;
* the **shared-input cache**: linears that read the same tensor with the same activation
  quantizer (``to_q``/``to_k``/``to_v`` of a self-attention) quantize it once. The entry is keyed
  by the tensor's identity and version counter (held through a weak reference), so a different
  or modified tensor is always quantized afresh. Tensors made under ``torch.inference_mode()``
  have no version counter (reading it raises), so an in-place write to them cannot be seen: they
  are quantized afresh by every layer (same integers, no reuse; see :func:`tensor_version`).
  Inside a ``torch.compile``d model the cache is bypassed: the compiler eliminates the repeated
  quantization of one tensor itself;
* whether the memory-bound quantize / rescale steps run through ``torch.compile``.

Example:
    >>> import torch
    >>> rt = QuantRuntime()
    >>> x = torch.randn(4, 8)
    >>> calls = []
    >>> def quantize(t):
    ...     calls.append(1)
    ...     return t.sign(), None
    >>> _ = rt.quantized_input("g", x, quantize); _ = rt.quantized_input("g", x, quantize)
    >>> len(calls)
    1
"""

from __future__ import annotations

import weakref
from typing import Any, Callable

import torch
from diffusers.hooks import ModelHook

__all__ = ["QuantRuntime", "TimestepRangeHook", "tensor_version", "unpack_for_tracing"]


def tensor_version(x: torch.Tensor) -> int | None:
    """``x``'s version counter (bumped by every in-place write), or ``None`` for an inference tensor.

    Tensors created under ``torch.inference_mode()`` track no version (``x._version`` raises
    ``RuntimeError``), so whether they were modified in place cannot be known without reading them.
    """
    return None if x.is_inference() else x._version


class QuantRuntime:
    """Mutable state of one quantized denoiser (see the module docstring)."""

    def __init__(self, compile: bool = False) -> None:
        self.compile = bool(compile)
        self.range_index = 0
        self.timestep: float | None = None
        self._last: dict[str, tuple[Any, int, Any]] = {}

    def quantized_input(self, group: str, x: torch.Tensor, quantize: Callable[[torch.Tensor], Any]) -> Any:
        """``quantize(x)``, reusing the result of the previous call of ``group`` on the same tensor."""
        if torch.compiler.is_compiling():  # traced into one graph: the compiler merges repeats (CSE)
            return quantize(x)
        version = tensor_version(x)
        if version is None:  # inference tensor: an in-place write would go unseen, so never reuse
            self._last.pop(group, None)
            return quantize(x)
        entry = self._last.get(group)
        if entry is not None:
            ref, last_version, value = entry
            if ref() is x and version == last_version:
                return value
        value = quantize(x)
        self._last[group] = (weakref.ref(x), version, value)
        return value

    def clear(self) -> None:
        self._last.clear()
        self.range_index = 0
        self.timestep = None


class TimestepRangeHook(ModelHook):
    """Sets ``runtime.range_index`` from the denoiser call's timestep before each call.

    ``edges`` are ascending timestep boundaries: range ``i`` holds timesteps in
    ``(edges[i-1], edges[i]]``.
    """

    _is_stateful = True

    def __init__(self, runtime: QuantRuntime, adapter, edges: list[float]) -> None:
        super().__init__()
        self.runtime = runtime
        self.adapter = adapter
        self.edges = [float(e) for e in edges]

    def pre_forward(self, module: torch.nn.Module, *args, **kwargs):
        if torch.compiler.is_compiling():
            unpack_for_tracing(module)
        t = self.adapter.timestep_value(module, args, kwargs)
        self.runtime.timestep = t
        self.runtime.range_index = range_index(t, self.edges)
        self.runtime._last.clear()
        return args, kwargs

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        self.runtime.clear()
        return module


@torch.compiler.disable
def unpack_for_tracing(module: torch.nn.Module) -> None:
    """Put the plain int8 weights back in every layer of ``module`` whose weight is held packed for
    a backend ``torch.compile`` cannot trace (e.g. fbgemm, after eager calls).

    Called by the denoiser's hook when the denoiser is being compiled: it runs eagerly, outside the
    graph (one break beside the hook's own timestep read), before the blocks are traced, so the
    layers trace without a graph break each. A no-op once nothing is packed.
    """
    from .gemm import GEMM_BACKENDS, release_execution_weight

    for layer in module.modules():
        packed = getattr(layer, "_packed", None)
        if packed is not None and not GEMM_BACKENDS[packed[0]].traceable:
            release_execution_weight(layer)


def range_index(timestep: float | None, edges: list[float]) -> int:
    """Index of the timestep range holding ``timestep`` (0 when unknown)."""
    if timestep is None:
        return 0
    index = 0
    for edge in edges:
        if timestep > edge:
            index += 1
    return index
