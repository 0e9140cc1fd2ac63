"""Integer GEMM backends of :class:`~diffusion_accel.quant.linear.QuantLinear`, chosen per device and CPU.

A backend computes ``y = (xq @ Wint^T) * x_scale * weight_scale + bias`` from int8 activations
``xq`` ``(M, K)``, their float32 scale (``(M, 1)`` per token or 0-d per tensor) and the layer's
integer weight. Some backends also take the float input directly and quantize it inside their own
kernel (``forward``): the x86 / fbgemm linear quantizes while packing the activations.

=========  ============================================================================  ==========
name       how                                                                           devices
=========  ============================================================================  ==========
onednn     8-bit weights: ``torch.ops.onednn.qlinear_prepack`` once, then                 CPU
           ``qlinear_pointwise`` (AMX int8). The prepacked weight *replaces* the plain
           int8 copy. 4-bit weights: unpacked per call to their exact integers held in
           bf16 and multiplied with the int8 activations held in bf16 (exact products,
           fp32 accumulation; fp32 for fp32 models).
fbgemm     8-bit weights: the x86 / fbgemm quantized linear                               CPU
           (``torch.ops.quantized.linear_prepack`` once, then
           ``linear_with_input_q_dq_qweight_dq_output_fp32``), which quantizes the float
           input inside its packing step: static scales need no separate pass (rescale
           and bias in its epilogue); per-token scales need one normalising pass. The
           packed weight replaces the plain int8 copy. Exact only while a pair of
           ``u8 x s8`` products fits int16, so on CPUs without VNNI the weights are
           quantized to ``[-64, 64]`` (see :mod:`.cpu_support`). 4-bit weights, and
           8-bit weights outside that range: exact integers in an fp32 GEMM.
int_mm     ``torch._int_mm`` (int8 x int8 -> int32), rescale after; inner or outer        CUDA, CPU
           dimensions below 16 run as exact integers in fp32 instead (``K = 1``
           returned garbage on an AVX-512 VNNI CPU).
triton     the Triton W8A8 / W4A8 kernel (:mod:`.kernels`)                                CUDA
fake       float quantize-dequantize: ``F.linear(xq * x_scale, Wint * weight_scale)``     any
=========  ============================================================================  ==========

``backend="auto"`` takes the first backend of :data:`AUTO_ORDER` for the device (and, on CPU, the
CPU kind of :func:`~diffusion_accel.quant.cpu_support.cpu_kind`) that computes correct results
here and is not known to be slow here. Why (torch 2.13.0, ratios against an fp32 ``F.linear``):

* AMX: ``qlinear_pointwise`` 1.6-1.9x faster than *bf16* (which is itself ~5x fp32 there);
  ``torch._int_mm`` 0.6-0.9x of bf16.
* AVX-512 VNNI without AMX (AMD EPYC): whole W8A8 linears (quantize, GEMM, rescale, bias; CPU time,
  one thread) at 2048 tokens, 1152 -> 1152 / 1152 -> 4608 / 4608 -> 1152: fbgemm 5.3x / 3.7x / 5.6x
  faster than fp32, ``torch._int_mm`` 3.9x / 2.7x / 6.2x (its int32 output is one more (M, N)
  temporary); same integers, same SQNR (fbgemm's self-check is exact with weights up to 127 here).
  ``qlinear_pointwise`` ~60x *slower* than fp32 with int8 (``s8``) activations, as this backend passes
  them: oneDNN has no VNNI kernel for ``s8 x s8`` and takes a reference path (1152 -> 1152: 46 s per
  call). With ``uint8`` activations (``q + 128``, zero point 128) it runs its VNNI kernel, but only at
  ``_int_mm``'s speed (bare GEMM, fp32 output with the weight scale applied: 5.7 / 42.9 / 23.5 ms vs
  ``_int_mm`` 5.9 / 39.0 / 24.0 ms; ``_int_mm`` into a reused output 5.8 / 23.3 / 23.1 ms), so it is no
  backend here: ``_int_mm`` in the compiled DiT already runs at ~95 % of the best int8 rate any
  kernel reached on this CPU. Inside a ``torch.compile``d model the order flips:
  a whole compiled ``int_mm`` layer (quantize and rescale fused by inductor) took 8.2 / 62 / 28 ms
  against 10.0 / 69 / 32 ms for fbgemm with compiled quantize / rescale steps (fp32: 51 / 221 /
  205 ms); the bare GEMMs: ``_int_mm`` 5.5 / 39 / 22 ms, fbgemm's linear (its input quantization
  and output dequantization included) 7.4 / 56 / 29 ms. So a traceable fbgemm op would not pay
  here; ``auto`` takes ``int_mm`` (the first traceable backend) when compiling.
* AVX2 only (AMD EPYC): ``torch._int_mm`` ~24x slower than fp32; ``qlinear_pointwise`` wrong; the
  fbgemm linear ~1.5-2.3x faster than fp32 and exact with weights in ``[-64, 64]``.

An explicitly named backend that computes wrong results here (or cannot run) raises a
``ValueError`` naming the reason and the alternative; one that is merely slow here warns.

Example:
    >>> import torch
    >>> from diffusion_accel.quant import QuantLinear
    >>> q = QuantLinear.from_linear(torch.nn.Linear(32, 16), backend="fake")
    >>> resolve_backend(q, torch.device("cpu"))
    'fake'
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from . import cpu_support, ops

__all__ = ["GemmBackend", "GEMM_BACKENDS", "AUTO_ORDER", "check_backend_name", "resolve_backend",
           "resolve_backend_name", "backend_problem", "run_gemm", "run_linear", "weight_level_for",
           "release_execution_weight", "unpack_execution_weight", "execution_weight_bytes",
           "onednn_available"]

#: GEMMs with an inner or outer dimension below this run as exact integers in fp32 (no int8 kernel).
SMALL_DIM = 16


def onednn_available() -> bool:
    """Whether this PyTorch build has oneDNN's int8 linear ops (not whether they are right here)."""
    try:
        return hasattr(torch.ops.onednn, "qlinear_pointwise") and torch.backends.mkldnn.is_available()
    except (AttributeError, RuntimeError):
        return False


def _compiled(layer) -> bool:
    return bool(layer._runtime is not None and layer._runtime.compile)


def _exact_int_product(xq: torch.Tensor, w: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``xq @ w^T`` of int8 operands in a float GEMM: exact while ``K * 127**2 < 2**24`` in fp32."""
    return F.linear(xq.to(dtype), w.to(dtype))


# --- backends: int8 activations in, (M, N) out ----------------------------------------------------
def _fake(layer, xq, x_scale, out_dtype):
    x = xq.float() * x_scale
    w = layer.dequantized_weight(torch.float32)
    bias = None if layer.bias is None else layer.bias.float()
    return layer._activate(F.linear(x, w, bias)).to(out_dtype)


def _int_mm(layer, xq, x_scale, out_dtype):
    w = layer.int_weight()
    m, k = xq.shape
    n = w.shape[0]
    if min(k, n) < SMALL_DIM or (xq.is_cuda and (k % 8 or n % 8)):
        acc = _exact_int_product(xq, w)  # the int8 kernels mishandle tiny / unaligned shapes
    else:
        if xq.is_cuda and m <= 16:  # cuBLAS int8 needs M > 16
            xq = F.pad(xq, (0, 0, 0, 17 - m))
        acc = torch._int_mm(xq, w.t())[:m]
    acc = torch.mul(acc, layer.weight_scale)  # int32 -> float32 and the weight scale in one pass
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


def _int_as_float(layer, xq, x_scale, out_dtype, compute: torch.dtype):
    """Exact integer products in a float GEMM (``compute`` holds every integer up to 127 exactly)."""
    if layer.weight_bits == 4:
        w = ops.int4_to_int8_weight(layer.qweight, layer.group_scale, layer.in_features, layer.group_size,
                                    compute, _compiled(layer))
    else:
        w = layer.int_weight().to(compute)
    acc = F.linear(xq.to(compute), w)  # exact integer products, fp32 accumulation
    acc = acc * layer.weight_scale.to(acc.dtype)
    return ops.rescale_output(acc, x_scale, layer.bias, out_dtype, _compiled(layer), layer.activation)


def _onednn(layer, xq, x_scale, out_dtype):
    if layer.weight_bits == 4:
        # Integers up to 127 are exact in bf16 (fast with AMX); fp32 models keep an fp32 GEMM.
        compute = torch.float32 if out_dtype == torch.float32 else torch.bfloat16
        return _int_as_float(layer, xq, x_scale, out_dtype, compute)
    packed = _packed(layer, "onednn", _onednn_pack)
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


def _onednn_pack(layer):
    return torch.ops.onednn.qlinear_prepack(layer.qweight, None)


# --- fbgemm: takes the float input and quantizes it inside its packing step -----------------------
_FBGEMM_ZP = 128  # int8 activations travel as uint8 = q + 128


def _fbgemm_ready(layer) -> bool:
    level = cpu_support.fbgemm_weight_level()
    return layer.weight_bits == 8 and level is not None and layer.weight_qmax <= level


def _fbgemm_pack(layer):
    static = layer.act_mode == "static"  # the bias goes into the epilogue only with static scales
    return cpu_support.fbgemm_prepack(layer.qweight, layer.weight_scale, layer.bias if static else None)


def _fbgemm_op():
    return torch.ops.quantized.linear_with_input_q_dq_qweight_dq_output_fp32


def _fbgemm_gemm(layer, xq, x_scale, out_dtype):
    if not _fbgemm_ready(layer):
        return _int_as_float(layer, xq, x_scale, out_dtype, torch.float32)
    y = _fbgemm_op()(xq.float(), 1.0, _FBGEMM_ZP, _packed(layer, "fbgemm", _fbgemm_pack))
    if layer.act_mode == "static":  # the packed weight holds the bias: remove it, rescale, add it back
        bias = None if layer.bias is None else layer.bias.float()
        y = y if bias is None else y - bias
    return ops.rescale_output(y, x_scale, layer.bias, out_dtype, _compiled(layer), layer.activation)


def _fbgemm_forward(layer, x, out_dtype):
    if not _fbgemm_ready(layer):
        xq, x_scale = layer.quantize_input(x)
        return _int_as_float(layer, xq, x_scale, out_dtype, torch.float32)
    packed = _packed(layer, "fbgemm", _fbgemm_pack)
    if layer.act_mode == "static":  # quantize + GEMM + rescale + bias in one fbgemm call
        x2 = x.reshape(-1, x.shape[-1]).float()
        if layer.inv_smooth is not None:
            x2 = x2 * layer.inv_smooth
        y = _fbgemm_op()(x2, float(layer.static_scale()), _FBGEMM_ZP, packed)
        return layer._activate(y).to(out_dtype)
    xn, x_scale = layer.quantize_input(x, normalized=True)  # x / scale, rounded by fbgemm's packing
    y = _fbgemm_op()(xn, 1.0, _FBGEMM_ZP, packed)
    return ops.rescale_output(y, x_scale, layer.bias, out_dtype, _compiled(layer), layer.activation)


def _packed(layer, kind: str, pack: Callable):
    if layer._packed is None or layer._packed[0] != kind:
        release_execution_weight(layer)
        layer._packed = (kind, pack(layer))
        layer._buffers["qweight"] = None  # the packed weight is now the only copy
    return layer._packed[1]


def _unpack(kind: str, packed) -> torch.Tensor:
    if kind == "onednn":
        return packed.to_dense().t().contiguous()
    return torch.ops.quantized.linear_unpack(packed)[0].int_repr().contiguous()


def unpack_execution_weight(layer) -> torch.Tensor:
    """Plain int8 ``(N, K)`` weight recovered from the backend's packed copy."""
    kind, packed = layer._packed
    return _unpack(kind, packed)


def release_execution_weight(layer) -> None:
    """Drop the backend's packed copy, restoring the plain ``qweight`` buffer if needed."""
    if layer._packed is None:
        return
    if layer._buffers.get("qweight") is None:
        layer._buffers["qweight"] = unpack_execution_weight(layer)
    layer._packed = None


def execution_weight_bytes(layer) -> int:
    """Bytes held by the backend's packed weight (``K * N`` int8, plus fbgemm's per-channel data)."""
    if layer._packed is None:
        return 0
    kind, packed = layer._packed
    n, k = layer.out_features, layer.in_features
    if kind == "fbgemm":  # int8 matrix + column offsets, scales, zero points (+ the bias copy)
        return n * k + 12 * n + (4 * n if layer.act_mode == "static" and layer.bias is not None else 0)
    return n * k


# --- the table ------------------------------------------------------------------------------------
def _no_problem(device: torch.device) -> str | None:
    return None


def _triton_problem(device: torch.device) -> str | None:
    from .kernels import triton_available

    return None if triton_available() else "Triton is not installed or there is no CUDA device"


def _int_mm_problem(device: torch.device) -> str | None:
    return None if hasattr(torch, "_int_mm") else "this PyTorch has no torch._int_mm"


def _int_mm_slow(device: torch.device) -> str | None:
    return cpu_support.int_mm_slow_reason() if device.type == "cpu" else None


def _fbgemm_reduced(device: torch.device) -> str | None:
    level = cpu_support.fbgemm_weight_level()
    if level is None or level >= 127:
        return None
    return (f"the x86/fbgemm linear is exact here only with weights in [-{level}, {level}] (int16 pair sums "
            "saturate without VNNI), which costs ~6 dB of weight SQNR")


def _onednn_slow(device: torch.device) -> str | None:
    kind = cpu_support.cpu_kind()
    if kind == "amx":
        return None
    return (f"oneDNN's int8 linear has no fast kernel for int8 activations without AMX tiles (this CPU: "
            f"{kind}); on an AMD EPYC with AVX-512 VNNI it ran ~60x slower than fp32")


@dataclass(frozen=True)
class GemmBackend:
    """One integer GEMM path.

    Attributes:
        gemm: ``(layer, xq int8 (M, K), x_scale, out_dtype) -> (M, N)``.
        devices: device types it runs on.
        problem: ``device -> reason`` it cannot run or computes wrong results here, or ``None``.
        slow: ``device -> reason`` it is slow here (``auto`` skips it; naming it warns), or ``None``.
        forward: optional ``(layer, x float (..., K), out_dtype) -> (M, N)`` that quantizes the
            input itself (fused); default: ``layer.quantize_input`` then ``gemm``.
        reduced: ``device -> reason`` it runs here only with fewer than 8 weight bits, or ``None``;
            ``auto`` prefers a later full-precision integer backend of the list, if any runs here.
        traceable: whether ``torch.compile`` traces it into a graph (packed weights held as opaque
            objects are not); inside a compiled model ``auto`` takes the first traceable backend.
        int_weight_bits: weight widths it runs in an integer kernel; ``auto`` skips it for other
            layers (fbgemm runs 4-bit weights only as exact integers in an fp32 GEMM: slow).
    """

    gemm: Callable
    devices: tuple[str, ...]
    problem: Callable[[torch.device], str | None] = _no_problem
    slow: Callable[[torch.device], str | None] = _no_problem
    forward: Callable | None = None
    reduced: Callable[[torch.device], str | None] = _no_problem
    traceable: bool = True
    int_weight_bits: tuple[int, ...] = (4, 8)


GEMM_BACKENDS: dict[str, GemmBackend] = {
    "onednn": GemmBackend(_onednn, ("cpu",), lambda d: cpu_support.onednn_problem(), _onednn_slow,
                          traceable=False),
    "fbgemm": GemmBackend(_fbgemm_gemm, ("cpu",), lambda d: cpu_support.fbgemm_problem(),
                          forward=_fbgemm_forward, reduced=_fbgemm_reduced, traceable=False,
                          int_weight_bits=(8,)),
    "int_mm": GemmBackend(_int_mm, ("cuda", "cpu"), _int_mm_problem, _int_mm_slow),
    "triton": GemmBackend(_triton, ("cuda",), _triton_problem),
    "fake": GemmBackend(_fake, ("cpu", "cuda", "mps", "xpu")),
}

#: Where ``auto`` looks, in order: ``"cpu:<cpu kind>"`` (see :func:`cpu_support.cpu_kind`) or a device
#: type. The first backend that runs correctly here and is not slow here wins ("fake" always runs).
AUTO_ORDER: dict[str, tuple[str, ...]] = {
    "cpu:amx": ("onednn", "int_mm", "fbgemm", "fake"),
    "cpu:avx512_vnni": ("fbgemm", "int_mm", "fake"),
    "cpu:avx512": ("fbgemm", "fake"),
    "cpu:avx2": ("fbgemm", "fake"),
    "cpu:other": ("fake",),
    "cuda": ("int_mm", "triton", "fake"),
}


def check_backend_name(name: str) -> str:
    if name != "auto" and name not in GEMM_BACKENDS:
        raise ValueError(f"Unknown GEMM backend {name!r}; choose 'auto' or one of {sorted(GEMM_BACKENDS)}.")
    return name


def _auto_key(device: torch.device) -> str:
    return f"cpu:{cpu_support.cpu_kind()}" if device.type == "cpu" else device.type


def backend_problem(name: str, device: torch.device) -> str | None:
    """Why backend ``name`` cannot run correctly on ``device`` here, or ``None``."""
    backend = GEMM_BACKENDS[name]
    if device.type not in backend.devices:
        return f"it runs on {backend.devices}, not on {device.type}"
    return backend.problem(device)


def resolve_backend_name(name: str, device: torch.device, weight_bits: int = 8) -> str:
    """The backend that runs on ``device`` for the configured ``name`` (``"auto"`` resolved).

    Raises:
        ValueError: ``name`` is a backend that cannot run, or computes wrong results, here.
    """
    check_backend_name(name)
    if name != "auto":
        problem = backend_problem(name, device)
        if problem is not None:
            raise ValueError(f"GEMM backend {name!r} cannot be used here: {problem}. Use backend='auto' "
                             f"(here: {resolve_backend_name('auto', device)!r}) or 'fake'.")
        slow = GEMM_BACKENDS[name].slow(device)
        if slow is not None:
            warnings.warn(f"GEMM backend {name!r} is slow here: {slow}. backend='auto' picks "
                          f"{resolve_backend_name('auto', device)!r} on this machine.", stacklevel=3)
        return name
    compiling = torch.compiler.is_compiling()
    usable = [c for c in AUTO_ORDER.get(_auto_key(device), ("fake",))
              if (GEMM_BACKENDS[c].traceable or not compiling)
              and (c == "fake" or weight_bits in GEMM_BACKENDS[c].int_weight_bits)
              and backend_problem(c, device) is None and GEMM_BACKENDS[c].slow(device) is None]
    full = [c for c in usable if c != "fake" and GEMM_BACKENDS[c].reduced(device) is None]
    return (full or usable or ["fake"])[0]


def resolve_backend(layer, device: torch.device) -> str:
    """The backend ``layer`` runs with on ``device`` (cached on the layer per device)."""
    if torch.compiler.is_compiling():  # traced once per graph: no cache (auto takes a traceable backend)
        return resolve_backend_name(layer.backend, device, layer.weight_bits)
    cached = layer._resolved
    if cached is not None and cached[0] == device:
        return cached[1]
    name = resolve_backend_name(layer.backend, device, layer.weight_bits)
    layer._resolved = (device, name)
    return name


def weight_level_for(backend: str, device: torch.device) -> int:
    """Largest 8-bit weight magnitude to quantize to for ``backend`` on ``device``: 127, or 64 where
    the backend chosen is fbgemm on a CPU whose kernel is exact only with 7-bit weights."""
    name = resolve_backend_name(backend, device)
    if name == "fbgemm":
        return cpu_support.fbgemm_weight_level() or 127
    return 127


def _prepare(layer, device: torch.device) -> str:
    name = resolve_backend(layer, device)
    if layer._packed is not None and layer._packed[0] != name:
        release_execution_weight(layer)
    return name


def run_gemm(layer, xq: torch.Tensor, x_scale: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
    """``(M, N)`` output of ``layer`` for int8 ``xq`` ``(M, K)`` (see the module docstring)."""
    return GEMM_BACKENDS[_prepare(layer, xq.device)].gemm(layer, xq, x_scale, out_dtype)


def run_linear(layer, x: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
    """``(M, N)`` output of ``layer`` for its float input ``x`` ``(..., K)``: quantize, GEMM, rescale."""
    backend = GEMM_BACKENDS[_prepare(layer, x.device)]
    if backend.forward is not None:
        return backend.forward(layer, x, out_dtype)
    xq, x_scale = layer.quantize_input(x)
    return backend.gemm(layer, xq, x_scale, out_dtype)
