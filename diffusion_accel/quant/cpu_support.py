"""Which CPU int8 kernels compute correct results, and fast, on the running CPU.

Three CPU int8 GEMMs exist in PyTorch, and each is right or fast only on some CPUs:

* oneDNN's ``qlinear_pointwise`` (``backend="onednn"``): fast with AMX tiles; ~60x slower than an
  fp32 ``F.linear`` on an AMD EPYC with AVX-512 VNNI but no AMX with int8 activations (a reference
  path; uint8 activations run its VNNI kernel at ``torch._int_mm``'s speed); **wrong** on an AVX2-only AMD EPYC
  (relative error 0.29: its kernel without VNNI does not compute exact int8 products).
* ``torch._int_mm`` (``backend="int_mm"``): exact; fast with AVX-512 VNNI, ~24x slower than fp32
  without it.
* the x86 / fbgemm quantized linear (``backend="fbgemm"``): exact and ~2x faster than fp32 on AVX2,
  **provided** one pair of ``u8 x s8`` products fits in int16 (AVX2's ``vpmaddubsw`` saturates):
  with 8-bit activations that means weights in ``[-64, 64]`` on CPUs without VNNI.

Facts come from the CPU's features (``torch.cpu._is_amx_tile_supported()``,
``torch.cpu._is_vnni_supported()``, ``torch.cpu._is_avx512_supported()``,
``torch.backends.cpu.get_cpu_capability()``) and from a tiny self-check GEMM per kernel against exact
integer arithmetic, with the worst-case operands (``127``, ``-128``) that expose saturation. Each check runs
once per process (cached: it describes the hardware and the PyTorch build, not any pipeline).

Example:
    >>> cpu_kind() in CPU_KINDS
    True
    >>> onednn_problem() is None or isinstance(onednn_problem(), str)
    True
"""

from __future__ import annotations

import functools
import warnings

import torch

__all__ = ["CPU_KINDS", "cpu_kind", "onednn_problem", "fbgemm_problem", "fbgemm_weight_level",
           "int_mm_slow_reason", "fbgemm_prepack", "FBGEMM_ENGINES"]

#: CPU kinds, best first: AMX tiles, AVX-512 with VNNI, AVX-512 without VNNI, AVX2, anything else.
CPU_KINDS = ("amx", "avx512_vnni", "avx512", "avx2", "other")
#: quantized engines whose ``linear_prepack`` builds fbgemm-style packed weights on x86.
FBGEMM_ENGINES = ("x86", "fbgemm")


def _flag(name: str) -> bool:
    fn = getattr(torch.cpu, name, None)
    try:
        return bool(fn()) if fn is not None else False
    except RuntimeError:
        return False


def cpu_kind() -> str:
    """The running CPU's kind (one of :data:`CPU_KINDS`), from its runtime features (read once per
    process, when this module is imported: ``torch.compile`` cannot trace the feature queries)."""
    return _CPU_KIND


def _detect_cpu_kind() -> str:
    if _flag("_is_amx_tile_supported"):
        return "amx"
    if _flag("_is_vnni_supported"):
        return "avx512_vnni"
    if _flag("_is_avx512_supported"):
        return "avx512"
    capability = torch.backends.cpu.get_cpu_capability()
    return "avx2" if capability.startswith("AVX2") or capability.startswith("AVX512") else "other"


_CPU_KIND = _detect_cpu_kind()


def _worst_case_operands(level: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Int8 activations ``(8, 64)`` and weights ``(16, 64)``: extremes first, then a random mix.

    Activations span the whole int8 range; weights ``[-level, level]``, and ``-128`` too at level 127
    (full 8-bit weights use ``[-128, 127]``, see :func:`~.quantizers.quantize_weight_per_channel`).
    """
    g = torch.Generator().manual_seed(0)
    low = -128 if level == 127 else -level
    x = torch.randint(-128, 128, (8, 64), dtype=torch.int8, generator=g)
    w = torch.randint(low, level + 1, (16, 64), dtype=torch.int8, generator=g)
    x[0], x[1] = 127, -128
    w[0], w[1] = level, low
    w[2, ::2], w[2, 1::2] = level, low
    return x, w


def _exact(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return (x.long() @ w.long().t()).double()


@functools.lru_cache(maxsize=None)
def onednn_problem() -> str | None:
    """Why oneDNN's int8 linear cannot be used here (missing, or wrong results), or ``None``."""
    try:
        if not (hasattr(torch.ops.onednn, "qlinear_pointwise") and torch.backends.mkldnn.is_available()):
            return "this PyTorch build has no oneDNN int8 linear (torch.ops.onednn.qlinear_pointwise)"
        x, w = _worst_case_operands(127)
        packed = torch.ops.onednn.qlinear_prepack(w, None)
        y = torch.ops.onednn.qlinear_pointwise(
            x, 1.0, 0, packed, torch.ones(w.shape[0]), torch.zeros(0, dtype=torch.int32), None, 1.0, 0,
            torch.float32, "none", [], "")
    except (AttributeError, RuntimeError) as exc:
        return f"oneDNN's int8 linear failed to run here ({type(exc).__name__}: {exc})"
    error = float((y.double() - _exact(x, w)).abs().max())
    if error != 0.0:
        return (f"oneDNN's int8 linear returns wrong results on this CPU ({cpu_kind()}; "
                f"max error {error:g} on an exact integer self-check GEMM)")
    return None


def fbgemm_prepack(qweight: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None):
    """Packed x86 / fbgemm weight of an int8 ``(N, K)`` weight with per-channel float scales.

    Quantized tensors (``torch.qint8``) are deprecated in PyTorch 2.13 and warn when created; the
    weight only passes through one on its way into the packed form, so that one warning is silenced
    here. If a later PyTorch removes them, :func:`fbgemm_problem` reports it and ``auto`` skips fbgemm.
    """
    n = qweight.shape[0]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*",
                                category=UserWarning)
        wq = torch._make_per_channel_quantized_tensor(
            qweight.cpu(), weight_scale.detach().cpu().double(), torch.zeros(n, dtype=torch.long), 0)
    return torch.ops.quantized.linear_prepack(wq, None if bias is None else bias.detach().float().cpu())


def _fbgemm_exact(level: int) -> bool:
    x, w = _worst_case_operands(level)
    packed = fbgemm_prepack(w, torch.ones(w.shape[0]), None)
    y = torch.ops.quantized.linear_with_input_q_dq_qweight_dq_output_fp32(x.float(), 1.0, 128, packed)
    return float((y.double() - _exact(x, w)).abs().max()) == 0.0


@functools.lru_cache(maxsize=None)
def _fbgemm_facts(engine: str) -> tuple[int | None, str | None]:
    if engine not in FBGEMM_ENGINES:
        return None, (f"the quantized engine is {engine!r} (torch.backends.quantized.engine); fbgemm packing "
                      f"needs one of {FBGEMM_ENGINES}")
    try:
        for level in (127, 64):
            if _fbgemm_exact(level):
                return level, None
    except (AttributeError, RuntimeError) as exc:
        return None, f"the x86/fbgemm quantized linear failed to run here ({type(exc).__name__}: {exc})"
    return None, "the x86/fbgemm quantized linear returns wrong results on an exact integer self-check GEMM"


def fbgemm_weight_level(engine: str | None = None) -> int | None:
    """Largest weight magnitude the fbgemm linear multiplies exactly with 8-bit activations here:
    127 (e.g. with VNNI), 64 (AVX2: ``vpmaddubsw`` pairs must fit int16), or ``None`` (unusable)."""
    return _fbgemm_facts(engine or torch.backends.quantized.engine)[0]


def fbgemm_problem(engine: str | None = None) -> str | None:
    """Why the x86 / fbgemm quantized linear cannot be used here, or ``None``."""
    return _fbgemm_facts(engine or torch.backends.quantized.engine)[1]


def int_mm_slow_reason() -> str | None:
    """Why ``torch._int_mm`` is slow on this CPU (no VNNI / AMX int8 instructions), or ``None``."""
    kind = cpu_kind()
    if kind in ("amx", "avx512_vnni"):
        return None
    return (f"torch._int_mm has no fast kernel on this CPU ({kind}, no VNNI/AMX): ~24x slower than an fp32 "
            "F.linear at 2048x1152x4608 on an AVX2 AMD EPYC")
