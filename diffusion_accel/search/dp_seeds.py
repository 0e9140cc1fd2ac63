"""DP cache schedules as seeds of the NSGA-II search (``dp_seeds=N`` / ``--dp-seeds N``; issue #21).

:func:`dp_schedules` measures the reuse errors once on the search's calibration items
(:func:`diffusion_accel.caching.dp.reuse_errors`, at full compute on top of the non-cache part of the
pipeline's acceleration) and solves the DP (:func:`~diffusion_accel.caching.dp.schedule_from_errors`,
one set of compute steps for all blocks) at ``N`` compute budgets spread evenly over ``[0.3, 0.8]`` of
the (step, block) pairs (``0.5`` for one). They join the heuristic seeds right after the full schedule
(:func:`.seeding.initial_population`'s ``extra``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..api import acceleration_restored, apply, remove
from ..caching.dp import reuse_errors, schedule_from_errors
from ..caching.schedule import CacheSchedule

__all__ = ["DP_SEED_BUDGETS", "dp_budgets", "dp_schedules"]

#: The compute shares the DP seeds are spread over.
DP_SEED_BUDGETS = (0.3, 0.8)


def dp_budgets(count: int) -> list[float]:
    """``count`` compute shares spread evenly over :data:`DP_SEED_BUDGETS` (``[0.5]`` for one)."""
    if count <= 1:
        return [0.5] * count
    return [round(float(b), 4) for b in np.linspace(*DP_SEED_BUDGETS, count)]


def dp_schedules(evaluator: Any, count: int) -> list[CacheSchedule]:
    """``count`` DP schedules (distinct, not the full schedule) measured on ``evaluator``'s items."""
    if count <= 0:
        return []
    pipe = evaluator.pipe
    kwargs = {k: v for k, v in evaluator.call_kwargs.items() if k != "generator"}
    with acceleration_restored(pipe):
        remove(pipe)
        if evaluator.base is not None:  # e.g. W8A8 the user applied: measure the errors on top of it
            apply(pipe, evaluator.base)
        items = [item.call_input() for item in evaluator.items]
        errors = reuse_errors(pipe, items, batch_size=evaluator.batch_size, **kwargs)
    out: list[CacheSchedule] = []
    for budget in dp_budgets(count):
        schedule = schedule_from_errors(pipe, errors, budget, "step", name=f"dp-{budget:g}")
        if not schedule.compute.all() and schedule not in out:
            out.append(schedule)
    return out
