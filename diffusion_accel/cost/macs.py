"""MAC accounting for the denoising loop, from ``torch.utils.flop_counter.FlopCounterMode``.

:func:`profile_macs` runs the pipeline only until the denoiser's first call of step 1 (the "dry
step"), then replays each step-0 denoiser call under ``FlopCounterMode`` with forward hooks that
attribute MACs to every (block, component). A :class:`MacProfile` then prices any cache
schedule in microseconds, which is what the schedule search needs.

:func:`macs` compares the full loop with an accelerated one: analytically for a cache
schedule (or a config holding only a static cache), otherwise by counting the MACs the
denoiser actually executes during a real accelerated call (dynamic caching, sparse attention).
One MAC is counted as 2 FLOPs.

Example:
    >>> from diffusion_accel.caching import CacheSchedule
    >>> from diffusion_accel.cost import macs
    >>> from diffusion_accel.testing import tiny_pipeline, tiny_call_kwargs
    >>> pipe, kwargs = tiny_pipeline("pixart-alpha"), tiny_call_kwargs("pixart-alpha")
    >>> fora = CacheSchedule.fora(pipe.transformer, kwargs["num_inference_steps"], 2)
    >>> report = macs(pipe, fora, **kwargs)
    >>> report.ratio > 1
    True
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from ..api import acceleration_restored, apply, find_denoisers, remove
from ..caching.schedule import CacheSchedule
from ..caching.static import StaticCacheConfig, scheduler_num_steps
from ..config import AccelerationConfig
from ..models import get_model_adapter
from .counting import count_macs

__all__ = ["MacProfile", "MacReport", "profile_macs", "macs", "denoiser_macs"]


@dataclass
class MacProfile:
    """MACs of one denoising step of one denoiser, attributed to components.

    Attributes:
        family, components: the model family and component names (schedule axes).
        num_steps: steps of the profiled call.
        call_macs: ``(calls_per_step,)`` total MACs of each denoiser call of a step.
        component_macs: ``(calls_per_step, blocks, components)`` MACs of each component.
    """

    family: str
    components: tuple[str, ...]
    num_steps: int
    call_macs: np.ndarray
    component_macs: np.ndarray

    @property
    def calls_per_step(self) -> int:
        return int(self.call_macs.shape[0])

    def full_macs(self, num_steps: int | None = None) -> float:
        return float(self.call_macs.sum()) * (num_steps or self.num_steps)

    def schedule_macs(self, schedule: CacheSchedule) -> float:
        """MACs of the whole loop under ``schedule`` (reused components cost nothing)."""
        if schedule.compute.shape[1:] != self.component_macs.shape[1:] or schedule.components != self.components:
            raise ValueError(
                f"Schedule layout {schedule.compute.shape[1:]} {schedule.components} does not match the "
                f"profiled model {self.component_macs.shape[1:]} {self.components}."
            )
        per_step_component = self.component_macs.sum(axis=0)  # (blocks, components) over calls
        saved = ((~schedule.compute) * per_step_component[None]).sum()
        return self.full_macs(schedule.num_steps) - float(saved)

    def per_component(self) -> dict[str, float]:
        """MACs of one step per component name (summed over blocks and calls)."""
        totals = self.component_macs.sum(axis=(0, 1))
        return {name: float(v) for name, v in zip(self.components, totals)}


@dataclass
class MacReport:
    """Full vs accelerated MACs of the whole denoising loop."""

    full: float
    accelerated: float
    method: str
    per_component: dict[str, float] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        """``full / accelerated`` (2.0 = half the MACs)."""
        return self.full / self.accelerated if self.accelerated > 0 else float("inf")

    def to_dict(self) -> dict[str, Any]:
        return {
            "full_macs": self.full,
            "accelerated_macs": self.accelerated,
            "macs_ratio": self.ratio,
            "method": self.method,
            "per_component_macs_per_step": self.per_component,
        }


class _StopAfterFirstStep(Exception):
    pass


def _capture_first_step(pipe: Any, denoiser: torch.nn.Module, call_kwargs: dict) -> list[tuple[tuple, dict]]:
    """Run ``pipe`` until ``denoiser``'s first call with a new timestep; return the step-0 calls."""
    adapter = get_model_adapter(denoiser)
    calls: list[tuple[tuple, dict]] = []
    first_timestep: list[float | None] = []

    def pre_hook(module, args, kwargs):
        timestep = adapter.timestep_value(module, args, kwargs)
        if first_timestep and timestep != first_timestep[0]:
            raise _StopAfterFirstStep
        first_timestep.append(timestep)
        calls.append((args, kwargs))

    handle = denoiser.register_forward_pre_hook(pre_hook, with_kwargs=True)
    try:
        pipe(**call_kwargs)
    except _StopAfterFirstStep:
        pass
    finally:
        handle.remove()
    if not calls:
        raise ValueError("The pipeline call never ran the denoiser; check the call arguments.")
    return calls


@torch.no_grad()
def profile_macs(pipe: Any, **call_kwargs: Any) -> MacProfile:
    """Profile MACs per component from one dry step of ``pipe(**call_kwargs)``."""
    denoiser = find_denoisers(pipe)[0][1]
    adapter = get_model_adapter(denoiser)
    with acceleration_restored(pipe):
        remove(pipe)
        calls = _capture_first_step(pipe, denoiser, dict(call_kwargs))
        num_steps = scheduler_num_steps(pipe) or call_kwargs.get("num_inference_steps") or 1
        blocks = adapter.blocks(denoiser)
        names = adapter.component_names
        component_macs = np.zeros((len(calls), len(blocks), len(names)))
        call_macs = np.zeros(len(calls))
        for i, (args, kwargs) in enumerate(calls):
            with FlopCounterMode(display=False) as counter:
                hooks = []
                for block in blocks:
                    for comp_name, module in block.components().items():
                        hooks.extend(_attribute(module, counter, component_macs, (i, block.index, names.index(comp_name))))
                try:
                    denoiser(*args, **kwargs)
                finally:
                    for h in hooks:
                        h.remove()
            call_macs[i] = counter.get_total_flops() / 2
    return MacProfile(adapter.family, names, int(num_steps), call_macs, component_macs)


def _attribute(module: torch.nn.Module, counter: FlopCounterMode, out: np.ndarray, index: tuple[int, int, int]):
    start: list[int] = []

    def pre(mod, args):
        start.append(counter.get_total_flops())

    def post(mod, args, output):
        out[index] += (counter.get_total_flops() - start.pop()) / 2

    return [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]


@torch.no_grad()
def denoiser_macs(pipe: Any, **call_kwargs: Any) -> float:
    """MACs the pipeline's denoisers execute during one call of ``pipe(**call_kwargs)``, as it is
    (with whatever acceleration or third-party hooks are installed)."""
    return float(count_macs(lambda: pipe(**call_kwargs), [m for _, m in find_denoisers(pipe)]).modules)


def _measured_macs(pipe: Any, config: AccelerationConfig, call_kwargs: dict) -> float:
    """:func:`denoiser_macs` of ``pipe`` accelerated with ``config`` (the pipe is left as it was)."""
    with acceleration_restored(pipe):
        apply(pipe, config)
        return denoiser_macs(pipe, **call_kwargs)


def macs(pipe: Any, schedule_or_config: CacheSchedule | AccelerationConfig, **call_kwargs: Any) -> MacReport:
    """Full vs accelerated MACs of the denoising loop of ``pipe(**call_kwargs)``.

    Args:
        pipe: a diffusers pipeline (accelerated or not; it is left as it was).
        schedule_or_config: a :class:`CacheSchedule`, or an :class:`AccelerationConfig`.
        call_kwargs: the pipeline call's arguments (prompt, steps, resolution, ...).
    """
    profile = profile_macs(pipe, **call_kwargs)
    full = profile.full_macs()
    target = schedule_or_config
    if isinstance(target, AccelerationConfig) and _static_schedule_only(target):
        target = target.cache.schedule
        if schedule_or_config.cache.auto_resample:
            target = target.resample(profile.num_steps)
    if isinstance(target, CacheSchedule):
        target.check_steps(profile.num_steps)
        accelerated, method = profile.schedule_macs(target), "analytic"
    elif isinstance(target, AccelerationConfig):
        accelerated, method = _measured_macs(pipe, target, call_kwargs), "measured"
    else:
        raise TypeError(
            f"macs() takes a CacheSchedule or an AccelerationConfig, got {type(schedule_or_config).__name__}."
        )
    return MacReport(full, accelerated, method, profile.per_component())


def _static_schedule_only(config: AccelerationConfig) -> bool:
    return isinstance(config.cache, StaticCacheConfig) and config.quant is None and config.attention is None
