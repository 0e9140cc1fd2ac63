"""The initial population: hand-made schedules from the literature, then random ones.

:func:`heuristic_schedules` lists every heuristic that applies to the model, in priority order
(full compute first, so the search always knows the exact model; then FORA, TGATE where the
model has cross-attention, Δ-DiT, DeepCache and encoder propagation on UNets). A heuristic that
does not apply to a model raises ``ValueError`` in its factory and is left out.
:func:`dynamic_schedules` adds data-driven seeds: static replays of dynamic caching's per-step
decisions on the calibration items.
:func:`initial_population` keeps the first distinct ones that fit in the population and fills
the rest with random schedules whose compute probability is spread over ``[0.3, 0.9]``, drawn
from a generator seeded by the search seed.

Example:
    >>> from diffusion_accel.testing import tiny_pipeline
    >>> pipe = tiny_pipeline("pixart-alpha")
    >>> genome = ScheduleGenome.for_model(pipe.transformer, 6)
    >>> names, bits = initial_population(pipe.transformer, genome, size=8, seed=0)
    >>> names[:3], bits.shape
    (['full', 'fora-2', 'fora-3'], (8, 30))
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..caching.dynamic import DynamicCacheConfig
from ..caching.policies import skip_policy
from ..caching.heuristics import deepcache, delta_dit, encoder_propagation, fora, full_compute, tgate
from ..caching.schedule import CacheSchedule
from .fitness import with_cache
from .problem import ScheduleGenome

__all__ = ["DYNAMIC_SEED_THRESHOLDS", "dynamic_seed", "dynamic_schedules", "heuristic_schedules",
           "initial_population"]


def _candidates(steps: int, blocks: int) -> list[tuple[str, Callable[[Any], CacheSchedule]]]:
    half, quarter, late = max(1, steps // 2), max(1, steps // 4), max(1, (3 * steps) // 4)
    most = max(1, (3 * blocks) // 4)
    out: list[tuple[str, Callable[[Any], CacheSchedule]]] = [
        ("full", lambda m: full_compute(m, steps)),
        ("fora-2", lambda m: fora(m, steps, 2)),
        ("fora-3", lambda m: fora(m, steps, 3)),
        (f"tgate-{half}", lambda m: tgate(m, steps, half)),
        ("delta-dit-2", lambda m: delta_dit(m, steps, interval=2)),
        ("deepcache-2", lambda m: deepcache(m, steps, 2)),
        ("fora-4", lambda m: fora(m, steps, 4)),
        ("delta-dit-3", lambda m: delta_dit(m, steps, interval=3)),
        (f"delta-dit-3-b{most}", lambda m: delta_dit(m, steps, interval=3, num_cached_blocks=most)),
        (f"tgate-{quarter}", lambda m: tgate(m, steps, quarter)),
        ("encoder-propagation-2", lambda m: encoder_propagation(m, steps, interval=2)),
        ("deepcache-3", lambda m: deepcache(m, steps, 3)),
        ("fora-5", lambda m: fora(m, steps, 5)),
        (f"delta-dit-4-b{most}", lambda m: delta_dit(m, steps, interval=4, num_cached_blocks=most)),
        ("delta-dit-4", lambda m: delta_dit(m, steps, interval=4)),
        (f"delta-dit-2-b{most}", lambda m: delta_dit(m, steps, interval=2, num_cached_blocks=most)),
        ("fora-6", lambda m: fora(m, steps, 6)),
        (f"tgate-{late}", lambda m: tgate(m, steps, late)),
    ]
    if blocks - 1 > most:  # Δ-DiT caching every block but the first
        out += [(f"delta-dit-{n}-b{blocks - 1}", lambda m, n=n: delta_dit(m, steps, interval=n,
                                                                          num_cached_blocks=blocks - 1))
                for n in (3, 2, 4)]
    return out


def heuristic_schedules(model: Any, num_steps: int) -> list[CacheSchedule]:
    """Every distinct heuristic schedule that applies to ``model`` at ``num_steps``, in priority order."""
    out: list[CacheSchedule] = []
    blocks = len(full_compute(model, num_steps).compute[0])
    for name, factory in _candidates(num_steps, blocks):
        try:
            schedule = factory(model).with_name(name)
        except ValueError:  # the heuristic does not apply to this model (no cross-attention, not a UNet...)
            continue
        if schedule not in out:
            out.append(schedule)
    return out


#: Thresholds of the dynamic-caching runs whose decisions seed the search (:func:`dynamic_schedules`).
DYNAMIC_SEED_THRESHOLDS = (0.1, 0.2, 0.3, 0.5, 0.8)


def dynamic_seed(seed: Any) -> float | dict[str, Any]:
    """One entry of ``dynamic_seeds`` checked: a threshold (float) or a mapping of
    :class:`~diffusion_accel.caching.DynamicCacheConfig` fields (a plain dict, as the checkpoint stores it)."""
    if isinstance(seed, dict):
        try:
            DynamicCacheConfig(**seed)
        except TypeError as exc:
            raise ValueError(f"dynamic_seeds entry {seed!r}: {exc}; use DynamicCacheConfig's field names.") from None
        return dict(seed)
    if isinstance(seed, bool) or not isinstance(seed, (int, float, np.floating, np.integer)):
        raise ValueError(f"dynamic_seeds entries are thresholds or mappings of DynamicCacheConfig fields, got {seed!r}.")
    return float(seed)


def _seed_config(seed: float | dict[str, Any]) -> tuple[DynamicCacheConfig, str]:
    """The dynamic cache of one seed and its replay's name."""
    if not isinstance(seed, dict):
        return DynamicCacheConfig(threshold=float(seed)), f"dynamic-replay-{float(seed):g}"
    config = DynamicCacheConfig(**seed)
    rule = config.policy + ("-last" if config.compare_to == "last_computed" else "")
    return config, f"dynamic-replay-{rule}-{config.threshold:g}"


def dynamic_schedules(evaluator: Any, genome: ScheduleGenome,
                      thresholds: Sequence[Any] = DYNAMIC_SEED_THRESHOLDS) -> list[CacheSchedule]:
    """Static replays of dynamic caching on the calibration items: one schedule per seed.

    Dynamic caching (:class:`~diffusion_accel.caching.DynamicCacheConfig`) decides per step,
    from the first block's change (or the policy's signal), whether the blocks rerun. Its decisions
    on the calibration items are a data-driven starting point the search can refine: at every step
    where most denoiser calls skipped, every block the policy skips (all but the first for
    ``"first_block"``, all for ``"teacache"``/``"magcache"``) reuses all its components.
    Seeds whose replay is the full schedule, or a duplicate, are left out.

    Args:
        evaluator: a prepared :class:`~diffusion_accel.search.CandidateEvaluator`.
        genome: the search layout (its step count must be the evaluator's).
        thresholds: the seeds (:func:`dynamic_seed`): thresholds of the default rule, or mappings of
            ``DynamicCacheConfig`` fields.
    """
    out: list[CacheSchedule] = []
    for seed in thresholds:
        config, name = _seed_config(dynamic_seed(seed))
        reports: list[dict[str, Any]] = []
        try:
            evaluator.run(with_cache(evaluator.base, config), observe=reports.append)
        except ValueError:  # dynamic caching does not apply to this model
            return []
        shares = reports[0]["cache"]["skip_share_by_step"] if reports else {}
        first = 0 if skip_policy(config.policy).before_first_block else 1
        compute = np.ones((genome.num_steps, *genome.applicable.shape), dtype=bool)
        for step, share in shares.items():
            if 0 < int(step) < genome.num_steps and share > 0.5:
                compute[int(step), first:] = False
        schedule = CacheSchedule(compute, genome.components, genome.family, applicable=genome.applicable, name=name)
        if not compute.all() and schedule not in out:
            out.append(schedule)
    return out


def initial_population(
    model: Any, genome: ScheduleGenome, size: int, seed: int, num_heuristics: int | None = None,
    extra: Sequence[CacheSchedule] = (),
) -> tuple[list[str], np.ndarray]:
    """``(names, bits)``: ``size`` distinct genomes, heuristics first, then random ones.

    Args:
        model: the denoiser (or pipeline) the schedules are for.
        genome: the search layout.
        size: population size (>= 2).
        seed: seeds the random schedules.
        num_heuristics: at most this many heuristic seeds (default: as many as fit, but at least
            one random schedule when ``size >= 4``, so the search starts with some diversity).
        extra: further seed schedules (e.g. :func:`dynamic_schedules`), placed right after the
            full schedule; they count as heuristics.

    A block-granularity genome holds each heuristic's nearest block schedule (blocks reusing only
    some components compute); heuristics that become a duplicate (TGATE becomes full compute) are
    skipped and the next one takes their place.

    Returns:
        names ``list[str]`` (``"random-<i>"`` for random ones) and bits ``(size, genome.num_bits)``.
    """
    heuristics = heuristic_schedules(model, genome.num_steps)
    heuristics = heuristics[:1] + list(extra) + heuristics[1:]
    limit = size - 1 if size >= 4 else size
    if num_heuristics is not None:
        limit = min(limit, num_heuristics)
    names, rows, seen = [], [], set()
    for schedule in heuristics:
        if len(rows) >= limit:
            break
        bits = genome.encode(schedule, project=True)  # block genomes: blocks reusing only a part compute
        key = bits.tobytes()
        if key not in seen:
            seen.add(key)
            names.append(schedule.name)
            rows.append(bits)
    rng = np.random.default_rng([int(seed), 0x5EED])
    attempts = 0
    while len(rows) < size:
        attempts += 1
        if attempts > 1000 * size:
            raise ValueError(
                f"Cannot make {size} distinct schedules from {genome.num_bits} free bits; use a smaller "
                "population or more steps."
            )
        p = 0.3 + 0.6 * rng.random()
        bits = rng.random(genome.num_bits) < p
        key = bits.tobytes()
        if key not in seen:
            seen.add(key)
            names.append(f"random-{len(rows)}")
            rows.append(bits)
    return names, np.stack(rows).astype(bool)
