"""Fit CacheQuant-style decoupled error correction for a cache (+ quantization) config on your prompts.

:func:`calibrate_error_correction` returns ``config`` with its cache wrapped in a fitted
:class:`~diffusion_accel.caching.CorrectedCacheConfig`; ``pipe`` keeps the acceleration it had. Two methods:

* ``method="trajectory"`` (default): record the data prediction of every step on the **full-compute,
  full-precision** run of the calibration prompts (:class:`~diffusion_accel.caching.step_correction.X0Recorder`),
  then run ``config`` on the same prompts and seeds and fit, step after step with the maps of the earlier
  steps already applied, a per-channel ``scale * x0 + shift`` of the data prediction against the
  reference's (:class:`~diffusion_accel.caching.step_correction.StepFitter`). It corrects the accumulated
  cache + quantization error of the trajectory. The calibration prompts run as one batch (the maps of
  step ``t`` must be fitted before step ``t + 1`` runs). A config that changes nothing gets empty maps
  (bit-identical outputs).
* ``method="block_residual"``: replay every block unaccelerated on the accelerated run's inputs and fit
  per block and output channel ``plain ~ scale * accelerated + shift`` of its residual, separately on
  computed and reused steps (:mod:`diffusion_accel.caching.correction`). It corrects each block's local
  error only; on the bundled model it lowered end-to-end PSNR (docs/caching.md).

Example:
    >>> import diffusion_accel
    >>> from diffusion_accel.caching import CacheSchedule, StaticCacheConfig
    >>> from diffusion_accel.testing import tiny_pipeline, tiny_call_kwargs
    >>> pipe = tiny_pipeline("pixart-alpha")
    >>> kwargs = {k: v for k, v in tiny_call_kwargs("pixart-alpha").items() if k != "prompt"}
    >>> cache = StaticCacheConfig(CacheSchedule.fora(pipe.transformer, kwargs["num_inference_steps"], 2))
    >>> config = calibrate_error_correction(pipe, ["a cat"], diffusion_accel.AccelerationConfig(cache=cache), **kwargs)
    >>> type(config.cache).__name__, len(config.cache.step_scale)
    ('CorrectedCacheConfig', 3)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch

from .api import acceleration_restored, apply, remove
from .caching.calibrate import _calls
from .caching.correction import MODES, BlockOutputRecorder, ChannelFit, CorrectedCacheConfig, _mode
from .caching.schedule import resolve_denoiser
from .caching.static import StaticCacheConfig
from .caching.step_correction import StepFitter, X0Recorder, check_step_correction
from .config import AccelerationConfig
from .hooks import TRACKER_HOOK, pipeline_call_scope, remove_hook
from .pipeline_state import tracked_denoisers

__all__ = ["METHODS", "TrajectoryReference", "calibrate_error_correction", "record_reference"]

#: the fitting methods of :func:`calibrate_error_correction` (see the module doc).
METHODS = ("trajectory", "block_residual")


@dataclasses.dataclass(frozen=True)
class TrajectoryReference:
    """The reference data prediction per step (``x0[step]``, float64) of one call with ``call`` arguments
    and one generator per item (``seeds``): what ``method="trajectory"`` fits against."""

    x0: dict[int, torch.Tensor]
    call: dict[str, Any]
    seeds: tuple[int, ...]

    def generators(self) -> list[torch.Generator]:
        return [torch.Generator().manual_seed(s) for s in self.seeds]


def record_reference(pipe: Any, prompts: Sequence[Any], *, seed: int = 0, seeds: Sequence[int] | None = None,
                     base: AccelerationConfig | None = None, **call_kwargs: Any) -> TrajectoryReference:
    """Run ``prompts`` as one batch on the full-compute, full-precision pipeline (or ``base``), item ``i``
    with ``torch.Generator().manual_seed(seed + i)`` (or ``seeds[i]``), and keep the data prediction of
    every step. ``pipe`` keeps the acceleration it had."""
    (call,) = _calls(prompts, max(1, len(prompts)))
    seeds = tuple(seeds) if seeds is not None else tuple(seed + i for i in range(len(prompts)))
    if len(seeds) != len(prompts):
        raise ValueError(f"record_reference needs one seed per prompt ({len(prompts)}), got {len(seeds)}.")
    reference = TrajectoryReference({}, {**call_kwargs, **call, "output_type": "latent"}, seeds)
    with acceleration_restored(pipe):
        remove(pipe)
        if base is not None:
            apply(pipe, base)
        recorder = _run_with(pipe, reference, lambda d: X0Recorder(d, pipe.scheduler))
        reference.x0.update(recorder.x0)
    return reference


def calibrate_error_correction(pipe: Any, prompts: Sequence[Any] | None, config: AccelerationConfig, *,
                               batch_size: int = 8, seed: int = 0, method: str = "trajectory",
                               reference: TrajectoryReference | None = None, **call_kwargs: Any) -> AccelerationConfig:
    """``config`` with its cache wrapped in a fitted :class:`CorrectedCacheConfig`.

    Args:
        pipe: the pipeline (its current acceleration is restored afterwards).
        prompts: calibration prompts (strings or mappings of per-item call arguments); ``None`` with
            ``reference`` (its prompts are used).
        config: the acceleration to correct; ``config.cache`` must be a ``StaticCacheConfig`` (or a
            ``CorrectedCacheConfig`` without maps) made for the step count in ``num_inference_steps``.
        method: ``"trajectory"`` (default) or ``"block_residual"`` (see the module doc).
        reference: a :func:`record_reference` to fit against (``"trajectory"``; recorded here when ``None``).
        seed: item ``i`` uses ``torch.Generator().manual_seed(seed + i)`` (``"block_residual"``: batch ``k``
            uses ``seed + k``) in both runs.
    """
    cache = _static_cache(config)
    if method not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}.")
    config = dataclasses.replace(config, cache=cache)
    if method == "block_residual":
        return _block_residual(pipe, prompts, config, batch_size, seed, call_kwargs)
    if reference is None:
        if prompts is None:
            raise ValueError("calibrate_error_correction needs prompts= or reference=.")
        reference = record_reference(pipe, prompts, seed=seed, **call_kwargs)
    check_step_correction(pipe.scheduler)
    steps = cache.schedule.num_steps
    with acceleration_restored(pipe):
        remove(pipe)
        apply(pipe, config)
        fitter = _run_with(pipe, reference, lambda d: StepFitter(d, pipe.scheduler, reference.x0, steps))
        remove(pipe)
    scale, shift = fitter.tables()
    return dataclasses.replace(config, cache=CorrectedCacheConfig(cache, step_scale=scale, step_shift=shift))


def _static_cache(config: Any) -> StaticCacheConfig:
    cache = getattr(config, "cache", None)
    if isinstance(cache, CorrectedCacheConfig) and not cache.fitted:
        cache = cache.cache
    if not isinstance(config, AccelerationConfig) or not isinstance(cache, StaticCacheConfig):
        raise ValueError("calibrate_error_correction needs an AccelerationConfig whose cache is a StaticCacheConfig "
                         f"(or a CorrectedCacheConfig without maps); got cache={type(cache).__name__}.")
    return cache


def _run_with(pipe: Any, reference: TrajectoryReference, make_hook):
    """One call of ``reference.call`` with a hook object ``make_hook(denoiser)`` on the pipeline's main
    denoiser; returns that object, closed (what it recorded or fitted stays readable)."""
    model = resolve_denoiser(pipe)
    denoisers, attached = tracked_denoisers(pipe)
    hook = make_hook(next(d for d in denoisers if d.module is model))
    try:
        with torch.no_grad(), pipeline_call_scope(denoisers):
            pipe(**reference.call, generator=reference.generators())
    finally:
        hook.close()
        for module in attached:
            remove_hook(module, TRACKER_HOOK)
    return hook


def _block_residual(pipe: Any, prompts: Sequence[Any], config: AccelerationConfig, batch_size: int, seed: int,
                    call_kwargs: dict[str, Any]) -> AccelerationConfig:
    """``method="block_residual"``: per block, per channel, fitted on the plain blocks' replays."""
    calls = _calls(prompts, batch_size)
    fits = {(mode, b): ChannelFit() for mode in MODES for b in range(config.cache.schedule.num_blocks)}
    with acceleration_restored(pipe):
        for k, item in enumerate(calls):
            kwargs = {**call_kwargs, **item, "output_type": "latent"}
            remove(pipe)
            apply(pipe, config)
            recorder = _record(pipe, kwargs, seed + k)
            remove(pipe)
            plain = recorder.replay()  # the plain blocks on the accelerated run's inputs
            for key, accelerated in recorder.outputs.items():
                _, step, block = key
                fits[(_mode(config.cache.schedule.compute, step, block), block)].add(accelerated, plain[key])
    tables = {}
    for mode in MODES:
        solved = [fits[(mode, b)].solve() for b in range(config.cache.schedule.num_blocks)]
        if any(scale for scale, _ in solved):
            tables[f"{mode}_scale"] = tuple(scale for scale, _ in solved)
            tables[f"{mode}_shift"] = tuple(shift for _, shift in solved)
    return dataclasses.replace(config, cache=CorrectedCacheConfig(config.cache, **tables))


def _record(pipe: Any, kwargs: dict[str, Any], seed: int) -> BlockOutputRecorder:
    model = resolve_denoiser(pipe)
    denoisers, attached = tracked_denoisers(pipe)
    recorder = BlockOutputRecorder(next(d for d in denoisers if d.module is model), keep_inputs=True)
    try:
        with torch.no_grad(), pipeline_call_scope(denoisers):
            pipe(**kwargs, generator=torch.Generator().manual_seed(seed))
    finally:
        recorder.close()
        for module in attached:
            remove_hook(module, TRACKER_HOOK)
    return recorder
