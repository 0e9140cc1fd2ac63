"""The ``quant`` technique: :class:`QuantConfig` applied to a pipeline (registered on import).

``apply`` resolves the plan over each denoiser's linear layers (a plan entry that matches no
layer is an error naming the closest layers), calibrates if the config needs activation
statistics, swaps the linears for :class:`QuantLinear`, gives each denoiser one
:class:`QuantRuntime` and a hook that tracks the timestep range, and optionally quantizes the text
encoders. ``remove`` restores the very same original modules.

Example:
    >>> import torch, diffusion_accel
    >>> from diffusion_accel import AccelerationConfig
    >>> from diffusion_accel.quant import QuantConfig
    >>> from diffusion_accel.testing import tiny_pipeline, tiny_call_kwargs
    >>> pipe = diffusion_accel.apply(tiny_pipeline("pixart-alpha"), AccelerationConfig(quant=QuantConfig()))
    >>> out = pipe(**tiny_call_kwargs("pixart-alpha"), generator=torch.Generator().manual_seed(0))
    >>> _ = diffusion_accel.remove(pipe)
"""

from __future__ import annotations

from typing import Any

import torch

from ..hooks import Denoiser, add_hook, remove_hook
from ..techniques import TechniqueHandle, register_technique
from .calibrate import CalibrationResult, calibrate_denoisers
from .config import QuantConfig
from .fuse import fuse_activations, unfuse_activations
from .linear import QuantLinear
from .memory import bf16_weight_bytes, quantized_linear_bytes, weight_bytes
from .replace import OriginalStore, linear_names, quantize_linears, restore_linears
from .runtime import QuantRuntime, TimestepRangeHook
from .text_encoder import TEXT_ENCODER_COMPONENTS, quantize_text_encoder, restore_text_encoder

__all__ = ["apply_quant", "quantize_denoiser", "resolve_plan", "layer_bits", "FLOAT_BY_DEFAULT"]

_RANGE_HOOK = "quant_timestep_range"


#: Linears kept in full precision unless a plan rule names them: the denoiser's final projection
#: (diffusers transformers' top-level ``proj_out``, hidden -> patch² · channels). It writes the
#: denoiser output directly, so its quantization error reaches the output undiluted: on the 4-layer
#: PixArt-width DiT it carried most of the W8A8 output error (output SQNR 40.9 dB with it quantized,
#: 54.1 dB without), for 0.3 % of the GEMM work (N = 32 there: int8 does not make it faster).
FLOAT_BY_DEFAULT = ("proj_out",)


def layer_bits(plan, name: str) -> int | None:
    """The weight bits ``apply`` gives the denoiser linear ``name`` under ``plan`` (a
    :class:`~diffusion_accel.quant.QuantPlan`; ``None`` = full precision): the plan's bits, except that
    :data:`FLOAT_BY_DEFAULT` layers stay in full precision unless a plan rule names them. The one
    lookup of that decision (the latency model prices with it too).

    >>> from diffusion_accel.quant import QuantPlan
    >>> named = QuantPlan.from_mapping({"proj_out": 8}, default=8)
    >>> layer_bits(QuantPlan(default=8), "proj_out"), layer_bits(named, "proj_out"), layer_bits(named, "x")
    (None, 8, 8)
    """
    if name in FLOAT_BY_DEFAULT and not plan.names(name):
        return None
    return plan.bits_for(name)


def resolve_plan(config: QuantConfig, denoisers: list[Denoiser]) -> dict[str, dict[str, int | None]]:
    """``{denoiser name: {linear name: bits}}``; raises if a plan entry matches no layer anywhere.
    Layers of :data:`FLOAT_BY_DEFAULT` stay in full precision unless a plan rule names them."""
    plan = config.resolved_plan()
    names = {d.name: linear_names(d.module) for d in denoisers}
    plan.check_matches([n for ns in names.values() for n in ns])
    return {d: {n: layer_bits(plan, n) for n in ns} for d, ns in names.items()}


@register_technique(QuantConfig)
def apply_quant(pipe: Any, config: QuantConfig, denoisers: list[Denoiser]) -> TechniqueHandle:
    bits = resolve_plan(config, denoisers)
    calibration = {}
    if config.needs_calibration:
        targets = {d: [n for n, b in layer_bits.items() if b is not None] for d, layer_bits in bits.items()}
        calibration = calibrate_denoisers(
            pipe, denoisers, targets, config.calibration_prompts, config.calibration_steps,
            config.timestep_ranges, dict(config.calibration_kwargs),
        )
    undo: list = []
    stats: dict[str, Any] = {}
    try:
        for d in denoisers:
            _quantize_denoiser(d, bits[d.name], config, calibration.get(d.name), undo, stats)
        if config.text_encoder_bits is not None:
            _quantize_text_encoders(pipe, config, undo, stats)
    except BaseException:
        for step in reversed(undo):
            step()
        raise
    return _handle(undo, denoisers, stats)


def quantize_denoiser(denoiser: Denoiser, config: QuantConfig, calibration: CalibrationResult | None = None
                      ) -> TechniqueHandle:
    """Quantize one denoiser outside a pipeline (e.g. a bare transformer); returns the undo handle.

    ``denoiser`` needs a step tracker (``Denoiser(name, module, adapter, StepTracker.attach(...))``);
    configs that need calibration need ``calibration`` (see
    :func:`~diffusion_accel.quant.calibrate.collect_statistics`).
    """
    bits = resolve_plan(config, [denoiser])[denoiser.name]
    if config.needs_calibration and calibration is None:
        raise ValueError("This QuantConfig needs calibration statistics; pass calibration=collect_statistics(...).")
    undo: list = []
    stats: dict[str, Any] = {}
    try:
        _quantize_denoiser(denoiser, bits, config, calibration, undo, stats)
    except BaseException:
        for step in reversed(undo):
            step()
        raise
    return _handle(undo, [denoiser], stats)


def _handle(undo: list, denoisers: list[Denoiser], stats: dict) -> TechniqueHandle:
    def remove() -> None:
        while undo:
            undo.pop()()

    return TechniqueHandle(remove=remove, report=lambda: _report(denoisers, stats))


def _quantize_denoiser(d: Denoiser, layer_bits, config: QuantConfig, calibration, undo: list, stats) -> None:
    store = OriginalStore(config.keep_original)
    records = quantize_linears(
        d.module, layer_bits, act_bits=config.act_bits, group_size=config.group_size,
        act_mode=config.act_mode, smooth_alpha=config.smooth_alpha, calibration=calibration,
        backend=config.backend, store=store,
    )

    def restore() -> None:
        store.restore()
        restore_linears(d.module, records)

    undo.append(restore)
    if config.fuse_activations:
        fused = fuse_activations(d.module, records)
        undo.append(lambda: unfuse_activations(d.module, fused))
    runtime = QuantRuntime(compile=config.compile)
    for r in records:
        r.quantized._runtime = runtime
    edges = calibration.edges if calibration is not None else []
    add_hook(d.module, TimestepRangeHook(runtime, d.adapter, edges), _RANGE_HOOK)
    undo.append(lambda: remove_hook(d.module, _RANGE_HOOK))
    counts: dict[str, int] = {}
    for b in layer_bits.values():
        counts[str(b)] = counts.get(str(b), 0) + 1
    stats[d.name] = {"layers_by_bits": counts, "timestep_edges": edges, "originals": _originals(store)}


def _quantize_text_encoders(pipe, config: QuantConfig, undo: list, stats) -> None:
    components = getattr(pipe, "components", {})
    for name in TEXT_ENCODER_COMPONENTS:
        encoder = components.get(name)
        if not isinstance(encoder, torch.nn.Module):
            continue
        store = OriginalStore(config.keep_original)
        records = quantize_text_encoder(encoder, config.text_encoder_bits, config.act_bits, config.group_size,
                                        keep_first_token=True, backend=config.backend, store=store)

        def restore(encoder=encoder, records=records, store=store) -> None:
            store.restore()
            restore_text_encoder(encoder, records)

        undo.append(restore)
        stats[name] = {"layers": len(records), "bits": config.text_encoder_bits,
                       "originals": _originals(store)}


def _originals(store: OriginalStore) -> dict[str, Any]:
    """Where the float layers wait for ``remove``: the configured kind and the bytes moved out."""
    return {"keep_original": store.kind, "offloaded_bytes": dict(store.offloaded_bytes)}


def _report(denoisers: list[Denoiser], stats: dict) -> dict[str, Any]:
    out = {}
    for d in denoisers:
        held, bf16 = quantized_linear_bytes(d.module)
        total, total_bf16 = weight_bytes(d.module), bf16_weight_bytes(d.module)
        out[d.name] = {
            **stats.get(d.name, {}),
            "weight_bytes": total,
            "bf16_weight_bytes": total_bf16,
            "ratio_vs_bf16": round(total_bf16 / max(total, 1), 4),
            "quantized_linear_bytes": held,
            "quantized_linear_bf16_bytes": bf16,
            "quantized_layers": sum(isinstance(m, QuantLinear) for m in d.module.modules()),
        }
    for name, s in stats.items():
        if name not in out:
            out[name] = s
    return out
