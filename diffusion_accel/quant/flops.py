"""FLOP formulas of the int8 GEMM operators (oneDNN's, the x86 / fbgemm quantized linear and
``aten._int_mm``), so
``torch.utils.flop_counter.FlopCounterMode``
(and every MAC count built on it: ``diffusion_accel.cost.macs``, the evaluation harness) counts
quantized linears like the float ones they replace: ``2 * rows * in_features * out_features``.

An integer multiply-accumulate counts as one MAC, exactly like a float one; the saving of W8A8 is
in bytes and in the speed of each MAC, not in their number.

Example::

    >>> from diffusion_accel.quant.flops import register_quant_flop_formulas
    >>> register_quant_flop_formulas()  # idempotent; done when diffusion_accel.quant is imported
"""

from __future__ import annotations

import math

import torch

__all__ = ["register_quant_flop_formulas"]


def _qlinear_flops(x_shape, *args, out_shape=None, **kwargs) -> int:
    """``x`` ``(..., K)`` times a packed ``(N, K)`` weight gives ``(..., N)``: 2*M*K*N FLOPs."""
    rows = math.prod(x_shape[:-1])
    return 2 * rows * x_shape[-1] * out_shape[-1]


def _int_mm_flops(a_shape, b_shape, *args, out_shape=None, **kwargs) -> int:
    """``(M, K) @ (K, N)`` int8 -> int32: 2*M*K*N FLOPs (torch has no formula: it counted 0)."""
    return 2 * a_shape[0] * a_shape[1] * b_shape[1]


def _free(*args, **kwargs) -> int:
    return 0


def register_quant_flop_formulas() -> None:
    """Register the formulas once per process (a no-op when oneDNN's int8 ops are absent).

    Registering an operator's FLOP formula is per-operator metadata, like the operator itself:
    it changes no pipeline and no module.
    """
    from torch.utils.flop_counter import flop_registry, register_flop_formula

    onednn = getattr(torch.ops, "onednn", None)
    quantized = getattr(torch.ops, "quantized", None)
    for namespace, name, formula in ((onednn, "qlinear_pointwise", _qlinear_flops),
                                     (onednn, "qlinear_prepack", _free),
                                     (quantized, "linear_with_input_q_dq_qweight_dq_output_fp32", _qlinear_flops),
                                     (quantized, "linear_prepack", _free),
                                     (torch.ops.aten, "_int_mm", _int_mm_flops)):
        try:
            op = getattr(namespace, name)
        except (AttributeError, RuntimeError):
            continue
        if op not in flop_registry:
            register_flop_formula(op)(formula)
