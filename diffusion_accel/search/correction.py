"""Error correction inside a joint search: fit the candidates whose cache space switched it on.

A joint genome with the cache and another space has an error-correction gene (:class:`~.space.CacheSpace`);
its value 1 decodes to a :class:`~diffusion_accel.caching.CorrectedCacheConfig` without maps.
:class:`CorrectionFitter` fits those maps (:func:`~diffusion_accel.error_correction.calibrate_error_correction`,
``method="trajectory"``) before the candidate is scored: on the search's calibration prompts with **other
seeds** (each item's seed + :data:`FIT_SEED_OFFSET`), so the score the search sees is the correction's effect
on noise it was not fitted on. The reference trajectory (full compute on top of the search's base) is
recorded once per process; fitting is deterministic, so every process fits a candidate alike.

Example:
    >>> from diffusion_accel.testing import tiny_pipeline, tiny_call_kwargs
    >>> from diffusion_accel.eval.generate import make_items
    >>> from diffusion_accel.eval.prompts import load_prompts
    >>> from diffusion_accel.search.fitness import CandidateEvaluator
    >>> from diffusion_accel.search.genome import JointGenome
    >>> pipe = tiny_pipeline("pixart-alpha")
    >>> kwargs = {k: v for k, v in tiny_call_kwargs("pixart-alpha", height=32, width=32).items()
    ...           if k not in ("prompt", "output_type")}
    >>> ev = CandidateEvaluator(pipe, make_items(load_prompts(["a cat", "a dog"]), seed=0), kwargs)
    >>> genome = JointGenome.build(pipe, ("cache", "quant"), num_steps=3)
    >>> genes = genome.off.copy(); genes[genome.part("cache").genome.num_bits] = 1   # correction on
    >>> config = CorrectionFitter(ev)(genome.decode(genes))
    >>> config.cache.fitted      # full compute, no quantization: nothing to correct, no maps
    False
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ..caching.correction import CorrectedCacheConfig
from ..config import AccelerationConfig
from ..error_correction import TrajectoryReference, calibrate_error_correction, record_reference
from .fitness import CandidateEvaluator

__all__ = ["CorrectionFitter", "FIT_SEED_OFFSET", "correction_maps", "needs_fit", "with_correction"]

#: the correction is fitted with each calibration item's seed + this (other noise than it is scored on).
FIT_SEED_OFFSET = 7919


def needs_fit(config: AccelerationConfig) -> bool:
    """Whether ``config``'s cache asks for a correction that has no maps yet."""
    return isinstance(config.cache, CorrectedCacheConfig) and not config.cache.fitted


def correction_maps(config: AccelerationConfig) -> dict[str, list[list[float]]] | None:
    """The fitted step maps of ``config`` as JSON (what the search's archive keeps), or ``None``."""
    cache = config.cache
    if not isinstance(cache, CorrectedCacheConfig) or not cache.fitted:
        return None
    return {"step_scale": [list(v) for v in cache.step_scale], "step_shift": [list(v) for v in cache.step_shift]}


def with_correction(config: AccelerationConfig, maps: dict[str, Any]) -> AccelerationConfig:
    """``config`` (whose cache is a :class:`CorrectedCacheConfig`) with the maps of :func:`correction_maps`."""
    if not isinstance(config.cache, CorrectedCacheConfig):
        raise ValueError("with_correction needs a config whose cache is a CorrectedCacheConfig.")
    tables = {k: tuple(tuple(float(x) for x in row) for row in maps[k]) for k in ("step_scale", "step_shift")}
    return dataclasses.replace(config, cache=dataclasses.replace(config.cache, **tables))


class CorrectionFitter:
    """``fitter(config)`` -> ``config`` with its correction fitted (unchanged when :func:`needs_fit` is false)."""

    def __init__(self, evaluator: CandidateEvaluator) -> None:
        self.evaluator = evaluator
        self._reference: TrajectoryReference | None = None

    def reference(self) -> TrajectoryReference:
        if self._reference is None:
            ev = self.evaluator
            self._reference = record_reference(ev.pipe, [it.call_input() for it in ev.items],
                                               seeds=[it.seed + FIT_SEED_OFFSET for it in ev.items],
                                               base=ev.base, **ev.call_kwargs)
        return self._reference

    def __call__(self, config: AccelerationConfig) -> AccelerationConfig:
        if not needs_fit(config):
            return config
        return calibrate_error_correction(self.evaluator.pipe, None, config, reference=self.reference())
