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
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from diffusers.hooks import ModelHook

from ..hooks import Denoiser, HookSet, StepTracker
from ..techniques import TechniqueConfig, TechniqueHandle, register_technique
from .forecast import ForecastCache
from .block_io import add_stream, block_argument, block_streams, pack_block_output, sub_stream
from .schedule import CacheSchedule
from .state import BranchCache, CacheStats

__all__ = ["REUSE_MODES", "FORECAST_ORDERS", "StaticCacheConfig", "apply_static_cache", "block_residual_supported"]

_HOOK_NAME = "static_cache"
_BLOCK_HOOK_NAME = "static_cache_block"

#: Values of :attr:`StaticCacheConfig.reuse`.
REUSE_MODES = ("outputs", "block_residual", "forecast")
#: Values of :attr:`StaticCacheConfig.forecast_order`.
FORECAST_ORDERS = (1, 2)
_BLOCK_RESIDUAL_UNSUPPORTED = (
    "reuse='block_residual' needs blocks with declared input/output streams (BlockIO); {model} ({family}) "
    "has blocks without one. Use StaticCacheConfig(schedule, reuse='outputs')."
)


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
            ``"forecast"`` (TaylorSeer): as ``"block_residual"``, but a skipped block's residual
            and a reused component's output are extrapolated from their last ``forecast_order + 1``
            computed values by finite differences in step index (:mod:`.forecast`), per guidance
            branch. On blocks without declared streams (UNets) components are forecast one by one.
        forecast_order: 1 (linear) or 2 (quadratic); only with ``reuse="forecast"``.
    """

    field_name = "cache"

    schedule: CacheSchedule = field(metadata={"encode": CacheSchedule.to_dict, "decode": CacheSchedule.from_dict})
    auto_resample: bool = False
    reuse: str = "outputs"
    forecast_order: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.schedule, CacheSchedule):
            raise TypeError(
                f"StaticCacheConfig.schedule must be a CacheSchedule, got {type(self.schedule).__name__}."
            )
        if not isinstance(self.auto_resample, bool):
            raise TypeError(f"auto_resample must be a bool, got {self.auto_resample!r}.")
        if self.reuse not in REUSE_MODES:
            raise ValueError(f"reuse must be one of {list(REUSE_MODES)}, got {self.reuse!r}.")
        if self.forecast_order not in FORECAST_ORDERS or isinstance(self.forecast_order, bool):
            raise ValueError(f"forecast_order must be one of {list(FORECAST_ORDERS)}, got {self.forecast_order!r}.")
        if self.forecast_order != 1 and self.reuse != "forecast":
            raise ValueError(f"forecast_order={self.forecast_order} only applies to reuse='forecast' "
                             f"(got reuse={self.reuse!r}); pass reuse='forecast' or drop forecast_order.")

    def check(self, denoisers: Sequence[tuple[Any, Any]], num_steps: int | None) -> None:
        """The schedule matches every denoiser (family, components, block count), ``block_residual``
        has declared block streams, and -- unless ``auto_resample`` -- ``num_steps`` is the schedule's."""
        for module, adapter in denoisers:
            self.schedule.check_model(module, adapter)
            if self.reuse == "block_residual" and not block_residual_supported(module):
                raise ValueError(_BLOCK_RESIDUAL_UNSUPPORTED.format(model=type(module).__name__,
                                                                    family=adapter.family))
        if num_steps is not None and not self.auto_resample:
            self.schedule.check_steps(num_steps)


def scheduler_num_steps(pipe: Any, tracker: StepTracker | None = None) -> int | None:
    """Steps the pipeline's sampling loop runs in the current call (``None`` if unknown).

    The scheduler's ``timesteps`` hold every step ``set_timesteps`` made, but a call may start
    part-way through them (img2img and inpainting with ``strength < 1``). With the denoiser's
    ``tracker`` (during a call) the loop starts where the first tracked call's timestep sits in
    ``timesteps`` (less its step index: a second denoiser, such as Wan 2.2's ``transformer_2``,
    joins part-way through); otherwise, or when that timestep is not found there, at the
    scheduler's ``begin_index``, which DDIM and other schedulers do not have. A denoiser driven
    outside a pipeline call (``tracker.in_pipeline_call`` false) has no known step count.
    """
    if tracker is not None and not tracker.in_pipeline_call:
        return None
    scheduler = getattr(pipe, "scheduler", None)
    timesteps = getattr(scheduler, "timesteps", None)
    if timesteps is None:
        return None
    start = None
    first = tracker.history[0] if tracker is not None and tracker.history else None
    if first is not None and first.timestep is not None:
        position = _timestep_position(timesteps, first.timestep / tracker.adapter.timestep_scale)
        if position is not None and position >= first.step:
            start = position - first.step
    if start is None:
        start = getattr(scheduler, "begin_index", None) or 0
    return len(timesteps) - start


def _timestep_position(timesteps: Any, value: float) -> int | None:
    """Index of ``value`` in the 1-D ``timesteps`` (closer than half a gap to a neighbour), else None."""
    values = torch.as_tensor(timesteps).detach().to("cpu", torch.float64).numpy()
    if values.ndim != 1 or len(values) == 0:
        return None
    index = int(np.argmin(np.abs(values - value)))
    gaps = [abs(values[j + 1] - values[j]) for j in (index - 1, index) if 0 <= j < len(values) - 1]
    gaps = [g for g in gaps if g > 0]
    tolerance = 0.5 * min(gaps) if gaps else 1e-6 * max(1.0, abs(value))
    return index if abs(values[index] - value) <= tolerance else None


class _SchedulePlan:
    """The schedule in force for the current sampling pass of one denoiser.

    At the first denoiser call of a pass the schedule is checked against the number of steps
    the call really runs (:func:`scheduler_num_steps`) and resampled or refused.
    """

    def __init__(self, config: StaticCacheConfig, pipe: Any, tracker: StepTracker, stats: CacheStats,
                 block_level: bool) -> None:
        self.schedule = config.schedule
        self.auto_resample = config.auto_resample
        self.block_residual = block_level  # blocks whose components are all reused are skipped whole
        self.forecast = config.reuse == "forecast"
        self.forecast_order = config.forecast_order
        self.tracker = tracker
        self.stats = stats
        self._pipe = weakref.ref(pipe)
        self._compute = self.schedule.compute
        self._pass: Any = None

    def table(self) -> np.ndarray:
        """``compute[step, block, component]`` for this pass (checked once per pass)."""
        call = self.tracker.current
        first_call = self.tracker.history[0] if self.tracker.history else None
        if first_call is not self._pass:
            self._pass = first_call
            self.stats.start_pass(self.tracker.pass_id)
            self._compute = self._schedule_for_call().compute
        if call.step >= self._compute.shape[0]:
            raise ValueError(
                f"The denoiser reached step {call.step} but the cache schedule has only "
                f"{self._compute.shape[0]} steps. Resample it: schedule.resample(num_inference_steps)."
            )
        return self._compute

    def reused_next(self, table: np.ndarray, step: int, block: int, component: int) -> bool:
        """Whether the component's hook returns its stored output at the next step (a block
        skipped as a whole under ``block_residual`` does not ask its components)."""
        step += 1
        if step >= table.shape[0] or table[step, block, component]:
            return False
        return not (self.block_residual and not table[step, block].any())

    def new_cache(self) -> BranchCache | ForecastCache:
        """The store of one hook: the last value, or the history a forecast extrapolates."""
        return ForecastCache(self.stats, self.forecast_order) if self.forecast else BranchCache(self.stats)

    def keep_for_later(self, table: np.ndarray, step: int, block: int, component: int) -> bool:
        """Whether a later step asks the component's hook for a reused value (a forecast needs
        every computed value until then, not only the one just before)."""
        if not self.forecast:
            return self.reused_next(table, step, block, component)
        later = table[step + 1 :]
        asked = ~later[:, block, component]
        if self.block_residual:
            asked &= later[:, block].any(axis=1)
        return bool(asked.any())

    def _schedule_for_call(self) -> CacheSchedule:
        pipe = self._pipe()
        steps = scheduler_num_steps(pipe, self.tracker) if pipe is not None else None
        if steps is None or steps == self.schedule.num_steps:
            return self.schedule
        if self.auto_resample:
            return self.schedule.resample(steps)
        self.schedule.check_steps(steps)
        return self.schedule


class ComponentCacheHook(ModelHook):
    """Runs or reuses one component according to the plan.

    The decisions and the cache live in Python, outside ``torch.compile`` graphs
    (``torch.compiler.disable``); only the component's own forward is traced, so a compiled
    denoiser gets one graph per component whatever the step, block or branch.
    """

    _is_stateful = True

    def __init__(self, plan: _SchedulePlan, tracker: StepTracker, key: tuple[str, int, int], stats: CacheStats):
        super().__init__()
        self.plan = plan
        self.tracker = tracker
        self.key = key
        self.block, self.component = key[1], key[2]
        self.stats = stats
        self.cache = plan.new_cache()

    def new_forward(self, module, *args, **kwargs):
        reused = self._reused_output()
        if reused is not None:
            return reused
        output = self.fn_ref.original_forward(*args, **kwargs)
        self._computed(output)
        return output

    @torch.compiler.disable
    def _reused_output(self) -> Any:
        """The stored output if the component reuses at this (step, branch), else ``None``; the
        stored output is released after its last reuse."""
        call = self.tracker.current
        if call is None:  # called outside a tracked denoiser call
            return None
        table = self.plan.table()
        if table[call.step, self.block, self.component] or call.branch not in self.cache:
            return None
        self.stats.reused[self.key] += 1
        if self.plan.forecast:
            output = self.cache.predict(call.branch, call.step)
        else:
            output = self.cache.get(call.branch)
        if not self.plan.keep_for_later(table, call.step, self.block, self.component):
            self.cache.drop(call.branch)
        return output

    @torch.compiler.disable
    def _computed(self, output: Any) -> None:
        call = self.tracker.current
        if call is None:
            return
        table = self.plan.table()
        self.stats.computed[self.key] += 1
        if not self.plan.keep_for_later(table, call.step, self.block, self.component):
            self.cache.drop(call.branch)
        elif self.plan.forecast:
            self.cache.add(call.branch, call.step, output)
        else:
            self.cache.put(call.branch, output)

    def reset_state(self, module):
        self.cache.clear()
        return module


class BlockResidualHook(ModelHook):
    """Skips a block whose every component is reused at this step: returns its input plus the
    residual (output - input, per stream) from the last step where the block ran. Decisions run
    outside ``torch.compile`` graphs, as in :class:`ComponentCacheHook`."""

    _is_stateful = True

    def __init__(self, plan: _SchedulePlan, tracker: StepTracker, block: Any, keys: list[tuple[str, int, int]],
                 stats: CacheStats):
        super().__init__()
        self.plan, self.tracker, self.io, self.stats = plan, tracker, block.group.io, stats
        self.block = block.index
        self.components = [key[2] for key in keys]
        self.keys = keys
        self.cache = plan.new_cache()

    def _skipped(self, table: np.ndarray, step: int) -> bool:
        return 0 <= step < table.shape[0] and not table[step, self.block, self.components].any()

    def _skipped_later(self, table: np.ndarray, step: int) -> bool:
        """Whether the stored residual is needed after ``step`` (the next step; any later one
        for a forecast, which extrapolates from every value computed until then)."""
        if not self.plan.forecast:
            return self._skipped(table, step + 1)
        return bool((~table[step + 1 :, self.block][:, self.components].any(axis=1)).any())

    def new_forward(self, module, *args, **kwargs):
        skipped = self._skipped_output(module, args, kwargs)
        if skipped is not None:
            return skipped
        output = self.fn_ref.original_forward(*args, **kwargs)
        self._ran(module, args, kwargs, output)
        return output

    @torch.compiler.disable
    def _skipped_output(self, module, args, kwargs) -> Any:
        """Input plus the stored residual if the block is skipped at this (step, branch), else ``None``."""
        call = self.tracker.current
        if call is None:
            return None
        table = self.plan.table()
        if not self._skipped(table, call.step) or call.branch not in self.cache:
            return None
        for key in self.keys:
            self.stats.reused[key] += 1
        if self.plan.forecast:
            residual, encoder_residual = self.cache.predict(call.branch, call.step)
        else:
            residual, encoder_residual = self.cache.get(call.branch)
        if not self._skipped_later(table, call.step):
            self.cache.drop(call.branch)
        hidden = block_argument(module, self.io.hidden_states_arg, args, kwargs)
        encoder = block_argument(module, self.io.encoder_hidden_states_arg, args, kwargs)
        return pack_block_output(self.io, add_stream(hidden, residual), add_stream(encoder, encoder_residual))

    @torch.compiler.disable
    def _ran(self, module, args, kwargs, output) -> None:
        call = self.tracker.current
        if call is None:
            return
        if not self._skipped_later(self.plan.table(), call.step):
            self.cache.drop(call.branch)
            return
        hidden = block_argument(module, self.io.hidden_states_arg, args, kwargs)
        encoder = block_argument(module, self.io.encoder_hidden_states_arg, args, kwargs)
        out_hidden, out_encoder = block_streams(self.io, output)
        residual = (sub_stream(out_hidden, hidden), sub_stream(out_encoder, encoder))
        if self.plan.forecast:
            self.cache.add(call.branch, call.step, residual)
        else:
            self.cache.put(call.branch, residual)

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
                raise ValueError(_BLOCK_RESIDUAL_UNSUPPORTED.format(model=type(denoiser.module).__name__,
                                                                    family=denoiser.adapter.family))
    block_hooks = HookSet(_BLOCK_HOOK_NAME, [d.module for d in denoisers])
    for denoiser in denoisers:
        block_level = config.reuse == "block_residual" or (
            config.reuse == "forecast" and block_residual_supported(denoiser.module))
        plan = _SchedulePlan(config, pipe, denoiser.tracker, stats, block_level)
        names = denoiser.adapter.component_names
        for block in denoiser.blocks():
            keys = []
            for comp_name, module in block.components().items():
                key = (denoiser.name, block.index, names.index(comp_name))
                hooks.add(module, ComponentCacheHook(plan, denoiser.tracker, key, stats))
                keys.append(key)
            if plan.block_residual and keys:
                block_hooks.add(block.module, BlockResidualHook(plan, denoiser.tracker, block, keys, stats))
    hooks.added()
    block_hooks.added()

    def remove() -> None:
        block_hooks.remove()
        hooks.remove()

    return TechniqueHandle(remove=remove, report=stats.report, details=stats)
