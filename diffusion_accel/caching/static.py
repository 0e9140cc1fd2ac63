"""Static caching: follow a :class:`CacheSchedule` on an unmodified diffusers model.

A hook on every scheduled component (e.g. ``transformer_blocks.3.attn2``) asks the schedule
whether to run at the current (step, branch) — read from the denoiser's step tracker — and
either runs the component or returns its output from the last step at which it ran for the
same guidance branch. An output is stored only when the next step will reuse it, so the full
schedule stores nothing and is bit-identical to plain diffusers.

Example:
    >>> import torch, diffusion_accel
    >>> from diffusion_accel import AccelerationConfig
    >>> from diffusion_accel.caching import CacheSchedule, StaticCacheConfig
    >>> from diffusion_accel.testing import tiny_pipeline, tiny_call_kwargs
    >>> pipe = tiny_pipeline("pixart-alpha")
    >>> kwargs = tiny_call_kwargs("pixart-alpha")
    >>> schedule = CacheSchedule.fora(pipe.transformer, kwargs["num_inference_steps"], interval=2)
    >>> pipe = diffusion_accel.apply(pipe, AccelerationConfig(cache=StaticCacheConfig(schedule)))
    >>> images = pipe(**kwargs, generator=torch.Generator().manual_seed(0)).images
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from diffusers.hooks import ModelHook

from ..hooks import Denoiser, HookSet, StepTracker
from ..techniques import TechniqueConfig, TechniqueHandle, register_technique
from .schedule import CacheSchedule
from .state import BranchCache, CacheStats

__all__ = ["StaticCacheConfig", "apply_static_cache"]

_HOOK_NAME = "static_cache"


@dataclass(frozen=True)
class StaticCacheConfig(TechniqueConfig):
    """Cache components following ``schedule``.

    Args:
        schedule: the :class:`CacheSchedule` (made for this model family and depth).
        auto_resample: resample the schedule to each call's step count instead of raising a
            ``ValueError`` when they differ.
    """

    field_name = "cache"

    schedule: CacheSchedule = field(metadata={"encode": CacheSchedule.to_dict, "decode": CacheSchedule.from_dict})
    auto_resample: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.schedule, CacheSchedule):
            raise TypeError(
                f"StaticCacheConfig.schedule must be a CacheSchedule, got {type(self.schedule).__name__}."
            )
        if not isinstance(self.auto_resample, bool):
            raise TypeError(f"auto_resample must be a bool, got {self.auto_resample!r}.")


def scheduler_num_steps(pipe: Any) -> int | None:
    """Steps the pipeline's sampling loop runs in the current call (``None`` if unknown)."""
    scheduler = getattr(pipe, "scheduler", None)
    timesteps = getattr(scheduler, "timesteps", None)
    if timesteps is None:
        return None
    begin = getattr(scheduler, "begin_index", None) or 0
    return len(timesteps) - begin


class _SchedulePlan:
    """The schedule in force for the current pipeline call (checked/resampled once per call)."""

    def __init__(self, schedule: CacheSchedule, auto_resample: bool, pipe: Any) -> None:
        self.schedule = schedule
        self.auto_resample = auto_resample
        self._pipe = weakref.ref(pipe)
        self._compute = schedule.compute
        self._checked_call: Any = None

    def compute_table(self, tracker: StepTracker) -> np.ndarray:
        call = tracker.current
        first_call = tracker.history[0] if tracker.history else None
        if first_call is not self._checked_call:
            self._checked_call = first_call
            self._compute = self._schedule_for_call().compute
        if call.step >= self._compute.shape[0]:
            raise ValueError(
                f"The denoiser reached step {call.step} but the cache schedule has only "
                f"{self._compute.shape[0]} steps. Resample it: schedule.resample(num_inference_steps)."
            )
        return self._compute

    def _schedule_for_call(self) -> CacheSchedule:
        pipe = self._pipe()
        steps = scheduler_num_steps(pipe) if pipe is not None else None
        if steps is None or steps == self.schedule.num_steps:
            return self.schedule
        if self.auto_resample:
            return self.schedule.resample(steps)
        self.schedule.check_steps(steps)
        return self.schedule


class ComponentCacheHook(ModelHook):
    """Runs or reuses one component according to the plan."""

    _is_stateful = True

    def __init__(self, plan: _SchedulePlan, tracker: StepTracker, key: tuple[str, int, int], stats: CacheStats):
        super().__init__()
        self.plan = plan
        self.tracker = tracker
        self.key = key
        self.block, self.component = key[1], key[2]
        self.stats = stats
        self.cache = BranchCache(stats)

    def new_forward(self, module, *args, **kwargs):
        call = self.tracker.current
        if call is None:  # called outside a tracked denoiser call
            return self.fn_ref.original_forward(*args, **kwargs)
        table = self.plan.compute_table(self.tracker)
        if table[call.step, self.block, self.component] or call.branch not in self.cache:
            output = self.fn_ref.original_forward(*args, **kwargs)
            self.stats.computed[self.key] += 1
            next_step = call.step + 1
            if next_step < table.shape[0] and not table[next_step, self.block, self.component]:
                self.cache.put(call.branch, output)
            else:
                self.cache.drop(call.branch)
            return output
        self.stats.reused[self.key] += 1
        return self.cache.get(call.branch)

    def reset_state(self, module):
        self.cache.clear()
        return module


@register_technique(StaticCacheConfig)
def apply_static_cache(pipe: Any, config: StaticCacheConfig, denoisers: list[Denoiser]) -> TechniqueHandle:
    """Install a :class:`ComponentCacheHook` on every component of every denoiser."""
    stats = CacheStats()
    hooks = HookSet(_HOOK_NAME, [d.module for d in denoisers])
    for denoiser in denoisers:
        config.schedule.check_model(denoiser.module, denoiser.adapter)
    for denoiser in denoisers:
        plan = _SchedulePlan(config.schedule, config.auto_resample, pipe)
        names = denoiser.adapter.component_names
        for block in denoiser.blocks():
            for comp_name, module in block.components().items():
                key = (denoiser.name, block.index, names.index(comp_name))
                hooks.add(module, ComponentCacheHook(plan, denoiser.tracker, key, stats))
    hooks.added()
    return TechniqueHandle(remove=hooks.remove, report=stats.report, details=stats)
