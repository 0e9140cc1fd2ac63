"""Does a searched schedule hold up outside the search's settings?

A schedule is searched at one step count and resolution. :func:`evaluate_generalisation`
scores schedules resampled (:meth:`CacheSchedule.resample`) to other step counts, and at a
resolution the search never saw, each against the full-compute outputs of that setting, with the
same quality metric and calibration items. :func:`default_settings` picks half and 1.5x the
step count and 1.5x the resolution (rounded to a multiple of 16).

Example:
    >>> default_settings({"height": 32, "width": 32}, 20)
    [{'label': 'steps=10', 'num_inference_steps': 10}, {'label': 'steps=30', 'num_inference_steps': 30}, {'label': '48x48', 'height': 48, 'width': 48}]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..caching.schedule import CacheSchedule
from ..call_inputs import accepts_call_arguments
from .distributed import map_tasks
from .fitness import CandidateEvaluator

__all__ = ["default_settings", "evaluate_generalisation"]


def default_settings(call_kwargs: dict[str, Any], num_steps: int, pipe: Any = None,
                     steps: Sequence[int] | None = None,
                     resolution: tuple[int, int] | None = None) -> list[dict[str, Any]]:
    """Generalisation settings: other step counts, then one unseen resolution.

    Args:
        call_kwargs: the search's pipeline arguments (``height``/``width`` if set).
        num_steps: the search's step count.
        pipe: used to find the default resolution when ``call_kwargs`` has none.
        steps: step counts (default: ``num_steps // 2`` and ``num_steps * 3 // 2``).
        resolution: ``(height, width)`` (default: 1.5x the search's, a multiple of 16; none when the
            pipeline takes no ``height``/``width``, e.g. DiT).
    """
    if steps is None:
        steps = sorted({max(2, num_steps // 2), num_steps * 3 // 2} - {num_steps})
    out: list[dict[str, Any]] = []
    for s in steps:
        if not isinstance(s, int) or s < 2:
            raise ValueError(f"Generalisation step counts must be integers >= 2, got {s!r}.")
        out.append({"label": f"steps={s}", "num_inference_steps": int(s)})
    if resolution is None and pipe is not None and not accepts_call_arguments(pipe, ("height", "width")):
        return out  # the pipeline's size is fixed (DiT): no unseen resolution to try
    if resolution is None:
        height = call_kwargs.get("height") or _default_size(pipe)
        width = call_kwargs.get("width") or height
        if height:
            resolution = (_bigger(height), _bigger(width))
    if resolution is not None:
        h, w = (int(v) for v in resolution)
        out.append({"label": f"{h}x{w}", "height": h, "width": w})
    return out


def _bigger(size: int) -> int:
    new = round(size * 1.5 / 16) * 16
    return new if new != size else size + 16


def _default_size(pipe: Any) -> int | None:
    if pipe is None:
        return None
    size = getattr(pipe, "default_sample_size", None)
    if size is None:
        denoiser = getattr(pipe, "transformer", None) or getattr(pipe, "unet", None)
        size = getattr(getattr(denoiser, "config", None), "sample_size", None)
    scale = getattr(pipe, "vae_scale_factor", None) or 8
    return int(size) * int(scale) if isinstance(size, int) else None


def evaluate_generalisation(
    search: CandidateEvaluator,
    schedules: dict[str, CacheSchedule],
    settings: Sequence[dict[str, Any]],
    *,
    state: Any,
    progress: Any = None,
) -> list[dict[str, Any]]:
    """Records ``{setting, steps, height, width, name, macs_ratio, quality}`` for every
    (setting, schedule), computed across processes (every process gets all records).

    ``search`` is the search's evaluator: each setting is scored by its :meth:`~CandidateEvaluator.variant`
    with the setting's pipeline arguments (same items, metric, batch size and reuse mode).
    """
    evaluators: dict[int, CandidateEvaluator] = {}

    def evaluator(index: int) -> CandidateEvaluator:
        if index not in evaluators:
            setting = {k: v for k, v in settings[index].items() if k != "label"}
            ev = search.variant(call_kwargs={**search.call_kwargs, **setting})
            ev.prepare()
            evaluators[index] = ev
        return evaluators[index]

    def run(task: tuple[int, str]) -> dict[str, Any]:
        index, name = task
        ev = evaluator(index)
        steps = ev.call_kwargs.get("num_inference_steps")
        schedule = schedules[name].resample(ev.profile.num_steps) if steps is None else schedules[name].resample(steps)
        result = ev.evaluate(schedule)
        return {"setting": settings[index]["label"], "steps": schedule.num_steps,
                "height": ev.call_kwargs.get("height"), "width": ev.call_kwargs.get("width"), "name": name,
                "macs_ratio": result.macs_ratio, "quality": result.quality}

    tasks = [(i, name) for i in range(len(settings)) for name in schedules]
    return map_tasks(run, tasks, state, progress)
