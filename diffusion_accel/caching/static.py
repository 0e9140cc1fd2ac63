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
from .block_io import add_stream, block_argument, block_streams, pack_block_output, sub_stream
from .schedule import CacheSchedule
from .state import BranchCache, CacheStats

__all__ = ["REUSE_MODES", "StaticCacheConfig", "apply_static_cache", "block_residual_supported"]

_HOOK_NAME = "static_cache"
_BLOCK_HOOK_NAME = "static_cache_block"

#: Values of :attr:`StaticCacheConfig.reuse`.
REUSE_MODES = ("outputs", "block_residual")


@dataclass(frozen=True)
class StaticCacheConfig(TechniqueConfig):
    """Cache components following ``schedule``.

    Args:
        schedule: the :class:`CacheSchedule` (made for this model family and depth).
        auto_resample: resample the schedule to each call's step count instead of raising a
            ``ValueError`` when they differ.
        reuse: what a reused component contributes. ``"outputs"`` (default; FORA, ECAD): its
            output from the last step where it ran, fed through the block's current modulation.
            ``"block_residual"`` (Δ-DiT's Δ-cache, FBCache): a block all of whose components
            are reused at a step is skipped as a whole and adds its residual (output - input)
            of the last step where it ran; blocks that compute some components reuse outputs.
            Needs blocks whose input/output streams are declared (``BlockIO``: every covered
            transformer; UNets have none).
    """

    field_name = "cache"

    schedule: CacheSchedule = field(metadata={"encode": CacheSchedule.to_dict, "decode": CacheSchedule.from_dict})
    auto_resample: bool = False
    reuse: str = "outputs"

    def __post_init__(self) -> None:
        if not isinstance(self.schedule, CacheSchedule):
            raise TypeError(
                f"StaticCacheConfig.schedule must be a CacheSchedule, got {type(self.schedule).__name__}."
            )
        if not isinstance(self.auto_resample, bool):
            raise TypeError(f"auto_resample must be a bool, got {self.auto_resample!r}.")
        if self.reuse not in REUSE_MODES:
            raise ValueError(f"reuse must be one of {list(REUSE_MODES)}, got {self.reuse!r}.")


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


class BlockResidualHook(ModelHook):
    """Skips a block whose every component is reused at this step: returns its input plus the
    residual (output - input, per stream) from the last step where the block ran."""

    _is_stateful = True

    def __init__(self, plan: _SchedulePlan, tracker: StepTracker, block: Any, keys: list[tuple[str, int, int]],
                 stats: CacheStats):
        super().__init__()
        self.plan, self.tracker, self.io, self.stats = plan, tracker, block.group.io, stats
        self.block = block.index
        self.components = [key[2] for key in keys]
        self.keys = keys
        self.cache = BranchCache(stats)

    def _skipped(self, table: np.ndarray, step: int) -> bool:
        return not table[step, self.block, self.components].any()

    def new_forward(self, module, *args, **kwargs):
        call = self.tracker.current
        if call is None:
            return self.fn_ref.original_forward(*args, **kwargs)
        table = self.plan.compute_table(self.tracker)
        hidden = block_argument(module, self.io.hidden_states_arg, args, kwargs)
        encoder = block_argument(module, self.io.encoder_hidden_states_arg, args, kwargs)
        if self._skipped(table, call.step) and call.branch in self.cache:
            for key in self.keys:
                self.stats.reused[key] += 1
            residual, encoder_residual = self.cache.get(call.branch)
            return pack_block_output(self.io, add_stream(hidden, residual), add_stream(encoder, encoder_residual))
        output = self.fn_ref.original_forward(*args, **kwargs)
        next_step = call.step + 1
        if next_step < table.shape[0] and self._skipped(table, next_step):
            out_hidden, out_encoder = block_streams(self.io, output)
            self.cache.put(call.branch, (sub_stream(out_hidden, hidden), sub_stream(out_encoder, encoder)))
        else:
            self.cache.drop(call.branch)
        return output

    def reset_state(self, module):
        self.cache.clear()
        return module


def block_residual_supported(model: Any) -> bool:
    """Whether every block of ``model`` (a denoiser) declares its streams, as
    ``reuse="block_residual"`` needs (every covered transformer; not UNets)."""
    from ..models import get_model_adapter

    return all(block.group.io is not None for block in get_model_adapter(model).blocks(model))


@register_technique(StaticCacheConfig)
def apply_static_cache(pipe: Any, config: StaticCacheConfig, denoisers: list[Denoiser]) -> TechniqueHandle:
    """Install a :class:`ComponentCacheHook` on every component of every denoiser (and, with
    ``reuse="block_residual"``, a :class:`BlockResidualHook` on every block)."""
    stats = CacheStats()
    hooks = HookSet(_HOOK_NAME, [d.module for d in denoisers])
    for denoiser in denoisers:
        config.schedule.check_model(denoiser.module, denoiser.adapter)
    if config.reuse == "block_residual":
        for denoiser in denoisers:
            if not block_residual_supported(denoiser.module):
                raise ValueError(
                    f"reuse='block_residual' needs blocks with declared input/output streams (BlockIO); "
                    f"{type(denoiser.module).__name__} ({denoiser.adapter.family}) has blocks without one. "
                    "Use StaticCacheConfig(schedule, reuse='outputs')."
                )
    block_hooks = HookSet(_BLOCK_HOOK_NAME, [d.module for d in denoisers])
    for denoiser in denoisers:
        plan = _SchedulePlan(config.schedule, config.auto_resample, pipe)
        names = denoiser.adapter.component_names
        for block in denoiser.blocks():
            keys = []
            for comp_name, module in block.components().items():
                key = (denoiser.name, block.index, names.index(comp_name))
                hooks.add(module, ComponentCacheHook(plan, denoiser.tracker, key, stats))
                keys.append(key)
            if config.reuse == "block_residual" and keys:
                block_hooks.add(block.module, BlockResidualHook(plan, denoiser.tracker, block, keys, stats))
    hooks.added()
    block_hooks.added()

    def remove() -> None:
        block_hooks.remove()
        hooks.remove()

    return TechniqueHandle(remove=remove, report=stats.report, details=stats)
