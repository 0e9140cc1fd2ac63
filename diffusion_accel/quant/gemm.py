"""Integer GEMM backends of :class:`~diffusion_accel.quant.linear.QuantLinear`.

A backend computes ``y = (xq @ Wint^T) * x_scale * weight_scale + bias`` from int8 activations
``xq`` ``(M, K)``, their float32 scale (``(M, 1)`` per token or 0-d per tensor) and the layer's
integer weight. Backends are registered by name; ``"auto"`` picks by device (CPU: oneDNN where
the CPU has AMX tiles, else ``int_mm``; CUDA: ``int_mm``, else Triton):

=========  ==========================================================================  ==========
name       how                                                                         devices
=========  ==========================================================================  ==========
onednn     8-bit weights: ``torch.ops.onednn.qlinear_prepack`` once, then               CPU
           ``qlinear_pointwise`` (AMX/VNNI int8). The prepacked weight *replaces* the
           plain int8 copy (no duplicate). 4-bit weights: unpacked per call to their
           exact integers held in bf16 and multiplied with the int8 activations held in
           bf16 (exact products, fp32 accumulation; fp32 for fp32 models): packed
           storage, bf16-class speed.
int_mm     ``torch._int_mm`` (int8 × int8 → int32), rescale after                       CUDA, CPU
triton     the Triton W8A8 / W4A8 kernel (:mod:`.kernels`)                              CUDA
fake       float quantize-dequantize: ``F.linear(xq * x_scale, Wint * weight_scale)``   any
=========  ==========================================================================  ==========

A fused activation (``layer.activation``, see :mod:`.fuse`) is applied in the same epilogue:
oneDNN's ``gelu`` post-op for static scales, the fused rescale step otherwise.

Why ``auto`` asks for AMX before oneDNN: on an Intel CPU with AMX, ``qlinear_pointwise`` is
1.6-1.9x faster than a bf16 ``F.linear`` while ``torch._int_mm`` is 0.6-0.9x of it; on an AMD EPYC
with AVX-512 VNNI but no AMX, ``qlinear_pointwise`` took 35 ms for a 128x160x160 GEMM that fp32
does in 0.6 ms, while ``torch._int_mm`` ran 4.5x faster than fp32 at 1024x1152x4608 (both
measured with torch 2.13.0). ``backend="onednn"`` still selects it explicitly.

Example:
    >>> import torch
    >>> from diffusion_accel.quant import QuantLinear
    >>> q = QuantLinear.from_linear(torch.nn.Linear(32, 16), backend="fake")
    >>> resolve_backend(q, torch.device("cpu"))
    'fake'
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from . import ops

__all__ = ["GEMM_BACKENDS", "check_backend_name", "resolve_backend", "run_gemm",
           "release_execution_weight", "unpack_execution_weight", "onednn_available", "onednn_fast"]


def onednn_available() -> bool:
    """Whether this PyTorch build has oneDNN's int8 linear ops."""
    try:
        return hasattr(torch.ops.onednn, "qlinear_pointwise") and torch.backends.mkldnn.is_available()
    except (AttributeError, RuntimeError):
        return False


def onednn_fast() -> bool:
    """Whether ``auto`` should prefer oneDNN on this CPU: its int8 ops exist and the CPU has AMX tiles."""
    is_amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return onednn_available() and bool(is_amx is not None and is_amx())


def _triton_available() -> bool:
    from .kernels import triton_available

    return triton_available()


def _fake(layer, xq, x_scale, out_dtype):
    x = xq.float() * x_scale
    w = layer.dequantized_weight(torch.float32)
    bias = None if layer.bias is None else layer.bias.float()
    return layer._activate(F.linear(x, w, bias)).to(out_dtype)


def _int_mm(layer, xq, x_scale, out_dtype):
    w = layer.int_weight()
    m = xq.shape[0]
    if xq.is_cuda and m <= 16:  # cuBLAS int8 needs M > 16
        xq = F.pad(xq, (0, 0, 0, 17 - m))
    acc = torch._int_mm(xq, w.t())[:m]
    acc = acc.float() * layer.weight_scale
    return ops.rescale_output(acc, x_scale, layer.bias, out_dtype, _compiled(layer), layer.activation)


def _triton(layer, xq, x_scale, out_dtype):
    from .kernels import qgemm

    m = xq.shape[0]
    xs = x_scale.reshape(-1).float().expand(m).contiguous() if x_scale.numel() == 1 else x_scale.reshape(m)
    bias = None if layer.bias is None else layer.bias.float()
    if layer.weight_bits == 8:
        out = qgemm(xq, xs, layer.int_weight(), layer.weight_scale, bias)
    else:
        out = qgemm(xq, xs, layer.qweight, layer.weight_scale, bias, group_scale=layer.group_scale,
                    group_size=layer.group_size, k=layer.in_features)
    return layer._activate(out).to(out_dtype)


def _onednn(layer, xq, x_scale, out_dtype):
    if layer.weight_bits == 4:
        return _int4_as_bf16(layer, xq, x_scale, out_dtype)
    packed = _onednn_packed(layer)
    gemm_dtype = out_dtype if out_dtype in (torch.float32, torch.bfloat16) else torch.float32
    if x_scale.dim() == 0:  # static per-tensor scale: rescale and bias fused in the GEMM epilogue
        bias = layer.bias
        if bias is not None and bias.dtype not in (torch.float32, gemm_dtype):
            bias = bias.float()
        post_op, algorithm = ("none", "") if layer.activation is None else ("gelu", layer.activation)
        y = torch.ops.onednn.qlinear_pointwise(
            xq, float(x_scale), 0, packed, layer.weight_scale, _EMPTY_ZP, bias, 1.0, 0, gemm_dtype,
            post_op, [], algorithm)
        return y.to(out_dtype)
    y = torch.ops.onednn.qlinear_pointwise(
        xq, 1.0, 0, packed, layer.weight_scale, _EMPTY_ZP, None, 1.0, 0, gemm_dtype, "none", [], "")
    return ops.rescale_output(y, x_scale, layer.bias, out_dtype, _compiled(layer), layer.activation)


_EMPTY_ZP = torch.zeros(0, dtype=torch.int32)


def _int4_as_bf16(layer, xq, x_scale, out_dtype):
    # Integers up to 127 are exact in bf16; fp32 models keep an fp32 GEMM (exact sums below 2**24).
    compute = torch.float32 if out_dtype == torch.float32 else torch.bfloat16
    w = ops.int4_to_int8_weight(layer.qweight, layer.group_scale, layer.in_features, layer.group_size,
                                compute, _compiled(layer))
    acc = F.linear(xq.to(compute), w)  # exact integer products, fp32 accumulation
    acc = acc * layer.weight_scale.to(acc.dtype)
    return ops.rescale_output(acc, x_scale, layer.bias, out_dtype, _compiled(layer), layer.activation)


def _onednn_packed(layer) -> torch.Tensor:
    if layer._packed is None:
        layer._packed = torch.ops.onednn.qlinear_prepack(layer.qweight, None)
        layer._buffers["qweight"] = None  # the prepacked tensor is now the only copy
    return layer._packed


def _compiled(layer) -> bool:
    return bool(layer._runtime is not None and layer._runtime.compile)


#: name -> (run function, devices it supports, availability check)
GEMM_BACKENDS: dict[str, tuple[Callable, tuple[str, ...], Callable[[], bool]]] = {
    "onednn": (_onednn, ("cpu",), onednn_available),
    "int_mm": (_int_mm, ("cuda", "cpu"), lambda: hasattr(torch, "_int_mm")),
    "triton": (_triton, ("cuda",), _triton_available),
    "fake": (_fake, ("cpu", "cuda", "mps", "xpu"), lambda: True),
}
_AUTO_ORDER = {"cpu": ("onednn", "int_mm", "fake"), "cuda": ("int_mm", "triton", "fake")}
#: backend -> the check ``auto`` uses instead of its availability check (each includes it).
_AUTO_PREFERRED_WHEN: dict[str, Callable[[], bool]] = {"onednn": onednn_fast}


def check_backend_name(name: str) -> str:
    if name != "auto" and name not in GEMM_BACKENDS:
        raise ValueError(f"Unknown GEMM backend {name!r}; choose 'auto' or one of {sorted(GEMM_BACKENDS)}.")
    return name


def resolve_backend(layer, device: torch.device) -> str:
    """The backend ``layer`` runs with on ``device`` (``"auto"`` resolved)."""
    name = layer.backend
    if name != "auto":
        _, devices, available = GEMM_BACKENDS[name]
        if device.type not in devices or not available():
            raise ValueError(
                f"GEMM backend {name!r} cannot run on {device.type} in this installation "
                f"(it supports {devices}); use backend='auto' or 'fake'."
            )
        return name
    for candidate in _AUTO_ORDER.get(device.type, ("fake",)):
        _, devices, available = GEMM_BACKENDS[candidate]
        if device.type in devices and _AUTO_PREFERRED_WHEN.get(candidate, available)():
            return candidate
    return "fake"


def run_gemm(layer, xq: torch.Tensor, x_scale: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
    """``(M, N)`` output of ``layer`` for int8 ``xq`` ``(M, K)`` (see the module docstring)."""
    name = resolve_backend(layer, xq.device)
    if layer._packed is not None and name != "onednn":
        release_execution_weight(layer)
    return GEMM_BACKENDS[name][0](layer, xq, x_scale, out_dtype)


def unpack_execution_weight(layer) -> torch.Tensor:
    """Plain int8 ``(N, K)`` weight recovered from the oneDNN prepacked copy."""
    return layer._packed.to_dense().t().contiguous()


def release_execution_weight(layer) -> None:
    """Drop the backend's packed copy, restoring the plain ``qweight`` buffer if needed."""
    if layer._packed is None:
        return
    if layer._buffers.get("qweight") is None:
        layer._buffers["qweight"] = unpack_execution_weight(layer)
    layer._packed = None
