"""``QuantConfig``: post-training quantization of a pipeline's denoiser (and text encoder).

Example:
    >>> from diffusion_accel import AccelerationConfig
    >>> cfg = AccelerationConfig(quant=QuantConfig(weight_bits=8, act_bits=8))
    >>> AccelerationConfig.from_json(cfg.to_json()) == cfg
    True
    >>> QuantConfig(plan={"re:.*attn2.*": 8, "proj_out": None}, weight_bits=4).plan.bits_for("proj_out") is None
    True
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from ..call_inputs import check_item_inputs
from ..techniques import TechniqueConfig
from .gemm import check_backend_name
from .linear import ACT_MODES
from .plan import QuantPlan
from .quantizers import check_bits
from .replace import KEEP_ORIGINAL

__all__ = ["QuantConfig"]


@dataclass(frozen=True)
class QuantConfig(TechniqueConfig):
    """Quantize the linear layers of the denoiser(s).

    Args:
        weight_bits: default weight bits: 8 (per output channel) or 4 (group-wise, packed two per
            byte); ``None`` quantizes nothing by default (use ``plan`` to pick layers).
        act_bits: 8 (W8A8 / W4A8 integer GEMM) or ``None`` (weight-only: memory saving only).
        group_size: input channels per group of 4-bit weights.
        plan: per-layer weight bits (:class:`~diffusion_accel.quant.plan.QuantPlan`, or a mapping
            ``{name or "re:pattern": bits}`` whose default is ``weight_bits``). Names are relative
            to the denoiser; ``None`` keeps a layer in full precision.
        act_mode: ``"dynamic"`` (per-token scales at run time, default) or ``"static"`` (one
            calibrated scale per tensor and timestep range; needs ``calibration_prompts``).
        smooth_alpha: channel-balancing migration strength α in ``[0, 1]`` (SmoothQuant-style), or
            ``None`` for none. Needs ``calibration_prompts``.
        timestep_ranges: number of timestep ranges with their own static activation scales.
        calibration_prompts: prompts run through the pipeline to collect activation statistics; for a
            pipeline without a text prompt, mappings of per-item call arguments instead (e.g.
            ``{"class_labels": 207}`` for DiT).
        calibration_steps: ``num_inference_steps`` of the calibration runs (``None``: pipeline default).
        calibration_kwargs: extra JSON keyword arguments of the calibration calls (e.g. height).
        text_encoder_bits: also quantize the text encoder(s) to 8 or 4 bits (W·A8, first token in
            high precision), or ``None`` to leave them.
        backend: GEMM backend: ``"auto"`` (per device and CPU kind: oneDNN with AMX, ``torch._int_mm``
            with AVX-512 VNNI and on CUDA, the x86 / fbgemm linear on AVX2; see ``docs/quant.md``),
            ``"onednn"``, ``"fbgemm"``, ``"int_mm"``, ``"triton"`` or ``"fake"`` (quantize-dequantize in
            float). A backend that computes wrong results on the running CPU is refused.
        compile: run the memory-bound quantize / rescale steps through ``torch.compile`` (fused
            into one pass; the first calls compile).
        fuse_activations: compute the GELU that follows a quantized ``proj`` (diffusers ``GELU``
            modules) inside that layer's rescale step instead of a separate pass.
        keep_original: where the original float layers wait for :func:`diffusion_accel.remove`:
            ``"auto"`` (default: moved to CPU memory when the model is on an accelerator, to temporary
            safetensors files when it is on the CPU — either way quantization lowers the memory in
            use), ``"cpu"``, ``"disk"``, or ``"memory"`` (left in place: fastest ``remove``, no saving).
            Every choice restores bit-exactly.
    """

    field_name = "quant"
    version = 1

    weight_bits: int | None = 8
    act_bits: int | None = 8
    group_size: int = 128
    plan: QuantPlan | None = field(default=None, metadata={"encode": QuantPlan.to_dict,
                                                           "decode": QuantPlan.from_dict})
    act_mode: str = "dynamic"
    smooth_alpha: float | None = None
    timestep_ranges: int = 1
    calibration_prompts: tuple[str | dict[str, Any], ...] = ()
    calibration_steps: int | None = None
    calibration_kwargs: dict[str, Any] = field(default_factory=dict)
    text_encoder_bits: int | None = None
    backend: str = "auto"
    compile: bool = False
    fuse_activations: bool = True
    keep_original: str = "auto"

    def __post_init__(self) -> None:
        check_bits(self.weight_bits, "QuantConfig.weight_bits")
        check_bits(self.act_bits, "QuantConfig.act_bits")
        if self.act_bits == 4:
            raise ValueError("QuantConfig.act_bits must be 8 or None; 4-bit activations are not supported.")
        check_bits(self.text_encoder_bits, "QuantConfig.text_encoder_bits")
        if isinstance(self.group_size, bool) or not isinstance(self.group_size, int) or self.group_size <= 0 \
                or self.group_size % 2:
            raise ValueError(f"QuantConfig.group_size must be a positive even integer; got {self.group_size!r}.")
        if isinstance(self.plan, Mapping) and not isinstance(self.plan, QuantPlan):
            object.__setattr__(self, "plan", QuantPlan.from_mapping(self.plan, default=self.weight_bits))
        if self.plan is not None and not isinstance(self.plan, QuantPlan):
            raise ValueError(f"QuantConfig.plan must be a QuantPlan or a mapping name -> bits; got {type(self.plan).__name__}.")
        if self.act_mode not in ACT_MODES:
            raise ValueError(f"QuantConfig.act_mode must be one of {ACT_MODES}; got {self.act_mode!r}.")
        if self.smooth_alpha is not None and not (0.0 <= float(self.smooth_alpha) <= 1.0):
            raise ValueError(f"QuantConfig.smooth_alpha must be in [0, 1] or None; got {self.smooth_alpha!r}.")
        if isinstance(self.timestep_ranges, bool) or not isinstance(self.timestep_ranges, int) \
                or self.timestep_ranges < 1:
            raise ValueError(f"QuantConfig.timestep_ranges must be a positive integer; got {self.timestep_ranges!r}.")
        if isinstance(self.calibration_prompts, str):
            raise ValueError("QuantConfig.calibration_prompts must be a list of prompts, not one string.")
        object.__setattr__(self, "calibration_prompts",
                           tuple(check_item_inputs(self.calibration_prompts, "QuantConfig.calibration_prompts")))
        if self.needs_calibration and not self.calibration_prompts:
            what = "act_mode='static'" if self.act_mode == "static" else "smooth_alpha"
            raise ValueError(
                f"QuantConfig with {what} needs activation statistics, but calibration_prompts is empty; "
                "pass calibration_prompts=[...] (a few prompts of your domain)."
            )
        if self.act_bits is None and self.act_mode == "static":
            raise ValueError("QuantConfig.act_mode='static' needs act_bits=8.")
        check_backend_name(self.backend)
        if self.keep_original not in KEEP_ORIGINAL:
            raise ValueError(f"QuantConfig.keep_original must be one of {KEEP_ORIGINAL}; "
                             f"got {self.keep_original!r}.")

    @property
    def needs_calibration(self) -> bool:
        return self.act_bits is not None and (self.act_mode == "static" or self.smooth_alpha is not None)

    def resolved_plan(self) -> QuantPlan:
        """The plan in force: ``plan``, or every linear at ``weight_bits``."""
        return self.plan if self.plan is not None else QuantPlan(default=self.weight_bits)

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.weight_bits, self.act_bits, self.plan, self.act_mode))
