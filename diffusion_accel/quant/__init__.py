"""Mixed-precision post-training quantization with real int8 execution and packed int4 storage.

Public API (see ``docs/quant.md``)::

    from diffusion_accel import AccelerationConfig, apply
    from diffusion_accel.quant import QuantConfig, QuantPlan
    apply(pipe, AccelerationConfig(quant=QuantConfig(weight_bits=8, act_bits=8)))          # W8A8
    apply(pipe, AccelerationConfig(quant=QuantConfig(plan=QuantPlan.load("plan.json"))))    # mixed

Building blocks: :class:`QuantLinear` (packed weights, int8 GEMM backends), quantizers,
calibration, channel balancing, sensitivity measurement, MILP bit allocation, text-encoder
quantization and safetensors save/load.
"""

from . import technique as _technique  # noqa: F401  (registers QuantConfig)
from .allocate import allocate_bits
from .calibrate import CalibrationResult, calibrate, collect_statistics
from .config import QuantConfig
from .flops import register_quant_flop_formulas
from .linear import QuantLinear
from .memory import bf16_weight_bytes, weight_bytes
from .plan import QuantPlan
from .quantizers import sqnr_db
from .sensitivity import measure_sensitivity
from .serialize import load_quantized, save_quantized
from .technique import quantize_denoiser
from .text_encoder import quantize_text_encoder

register_quant_flop_formulas()

__all__ = [
    "QuantConfig",
    "QuantPlan",
    "QuantLinear",
    "calibrate",
    "collect_statistics",
    "quantize_denoiser",
    "CalibrationResult",
    "measure_sensitivity",
    "allocate_bits",
    "quantize_text_encoder",
    "save_quantized",
    "load_quantized",
    "weight_bytes",
    "bf16_weight_bytes",
    "sqnr_db",
]
