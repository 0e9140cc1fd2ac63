"""Fit CacheQuant-style decoupled error correction for a cache (+ quantization) config on your prompts.

:func:`calibrate_error_correction` runs ``pipe`` with ``config`` applied on the calibration prompts,
records every block's input and residual (output - input) per (branch, step, block), replays each
block without acceleration (full precision, full compute) on the same input, and fits per block and
output channel ``plain ~ scale * accelerated + shift`` by least squares -- separately on the steps
where the block computes and where it reuses cached outputs (:mod:`diffusion_accel.caching.correction`). It returns ``config`` with its cache replaced by a
:class:`~diffusion_accel.caching.CorrectedCacheConfig`; ``pipe`` keeps the acceleration it had.

Example:
    >>> import diffusion_accel
    >>> from diffusion_accel.caching import CacheSchedule, StaticCacheConfig
    >>> from diffusion_accel.testing import tiny_pipeline, tiny_call_kwargs
    >>> pipe = tiny_pipeline("pixart-alpha")
    >>> kwargs = {k: v for k, v in tiny_call_kwargs("pixart-alpha").items() if k != "prompt"}
    >>> cache = StaticCacheConfig(CacheSchedule.fora(pipe.transformer, kwargs["num_inference_steps"], 2))
    >>> config = calibrate_error_correction(pipe, ["a cat"], diffusion_accel.AccelerationConfig(cache=cache), **kwargs)
    >>> type(config.cache).__name__
    'CorrectedCacheConfig'
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
from .config import AccelerationConfig
from .hooks import TRACKER_HOOK, pipeline_call_scope, remove_hook
from .pipeline_state import tracked_denoisers

__all__ = ["calibrate_error_correction"]


def calibrate_error_correction(pipe: Any, prompts: Sequence[Any], config: AccelerationConfig, *, batch_size: int = 8,
                               seed: int = 0, **call_kwargs: Any) -> AccelerationConfig:
    """``config`` with its ``StaticCacheConfig`` wrapped in a fitted :class:`CorrectedCacheConfig`.

    Args:
        pipe: the pipeline (its current acceleration is restored afterwards).
        prompts: calibration prompts (strings or mappings of per-item call arguments), ``batch_size`` per call.
        config: the acceleration to correct; ``config.cache`` must be a ``StaticCacheConfig`` made for the
            step count in ``call_kwargs["num_inference_steps"]``.
        seed: the k-th batch uses ``torch.Generator().manual_seed(seed + k)`` in both runs.
    """
    if not isinstance(config, AccelerationConfig) or not isinstance(config.cache, StaticCacheConfig):
        raise ValueError("calibrate_error_correction needs an AccelerationConfig whose cache is a StaticCacheConfig "
                         f"(got cache={type(getattr(config, 'cache', None)).__name__}).")
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
