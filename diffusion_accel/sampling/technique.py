"""Apply / remove Bottleneck Sampling on a pipeline (registered for :class:`BottleneckSamplingConfig`).

Two attachments, both undone by the handle's ``remove``:

* the pipeline's scheduler instance consults a :class:`~.runtime.BottleneckRun` (:mod:`.scheduler_hook`):
  the stage plan, the re-noised transitions;
* a :class:`BottleneckGuardHook` on every denoiser records the tokens of each call and stops a call
  whose scheduler is not the one the run is attached to (``pipe.scheduler`` replaced after ``apply``)
  or whose timesteps are per token (Wan 2.2 TI2V's ``expand_timesteps``: laid out for the
  full-resolution grid).

Example:
    >>> import torch, diffusion_accel
    >>> from diffusion_accel.sampling import BottleneckSamplingConfig
    >>> from diffusion_accel.testing import tiny_pipeline, tiny_call_kwargs
    >>> pipe = tiny_pipeline("pixart-alpha")
    >>> cfg = diffusion_accel.AccelerationConfig(sampling=BottleneckSamplingConfig(stages=((0.34, 1), (0.33, 2), (0.33, 1))))
    >>> pipe = diffusion_accel.apply(pipe, cfg)
    >>> image = pipe(**tiny_call_kwargs("pixart-alpha"), generator=torch.Generator().manual_seed(0)).images
    >>> [t for _, t in diffusion_accel.api.acceleration_state(pipe).handles[-1][1].details.tokens]
    [16, 4, 16]
"""

from __future__ import annotations

import math
from typing import Any

import torch
from diffusers.hooks import ModelHook

from ..hooks import Denoiser, HookSet
from ..models import forward_argument, registered_adapters
from ..pipeline_state import acceleration_state
from ..techniques import TechniqueHandle, register_technique
from .config import BottleneckSamplingConfig
from .runtime import BottleneckRun
from .scheduler_hook import attach, detach
from .schedulers import stage_scheduler

__all__ = ["BottleneckGuardHook", "apply_bottleneck_sampling"]

_HOOK_NAME = "bottleneck_sampling"


class BottleneckGuardHook(ModelHook):
    """Checks each denoiser call against the run and records its token count."""

    _is_stateful = True

    def __init__(self, run: BottleneckRun, denoiser: Denoiser) -> None:
        super().__init__()
        self.run = run
        self.denoiser = denoiser

    def pre_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any):
        tracker = self.denoiser.tracker
        if tracker.in_pipeline_call:
            if not self.run.planned():
                raise ValueError(
                    "Bottleneck Sampling is applied but this call's schedule did not go through the scheduler it "
                    "was applied to (was pipe.scheduler replaced after apply?). Call diffusion_accel.apply(pipe, "
                    "config) again after changing the scheduler."
                )
            timestep = forward_argument(module, self.denoiser.adapter.timestep_arg, args, kwargs)
            if torch.is_tensor(timestep) and timestep.dim() > 1:
                raise ValueError(
                    f"{self.denoiser.adapter.family}: this pipeline passes per-token timesteps laid out for the "
                    "full-resolution grid (e.g. Wan 2.2 TI2V's expand_timesteps), which Bottleneck Sampling "
                    "cannot resize; use a pipeline with one timestep per sample."
                )
            grid = self.denoiser.adapter.token_grid
            if grid is not None:
                self.run.tokens.append((self.run.step_index, math.prod(grid(module, args, kwargs))))
        return args, kwargs

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        if not self.denoiser.tracker.in_pipeline_call:  # pipeline_call_scope: before and after a call
            self.run.release()
        return module


def _check_supported(pipe: Any, config: BottleneckSamplingConfig, denoisers: list[Denoiser]) -> Any:
    for d in denoisers:
        if d.adapter.latent_layout is None:
            why = d.adapter.latent_layout_note or "its model adapter declares no latent_layout"
            supported = sorted(f"{cls.__name__} ({a.family})" for cls, a in registered_adapters().items()
                               if a.latent_layout is not None)
            raise ValueError(
                f"Bottleneck Sampling does not support {type(d.module).__name__} ({d.adapter.family}): {why}. "
                f"Supported: {', '.join(supported)}; or declare a LatentLayout in the family's model adapter."
            )
    state = acceleration_state(pipe)
    if state is not None and state.config.cache is not None:
        raise ValueError(
            "Bottleneck Sampling changes the latent resolution between steps, which a cache's stored component "
            "outputs cannot follow; use AccelerationConfig(sampling=...) without cache=."
        )
    scheduler = getattr(pipe, "scheduler", None)
    if scheduler is None or not hasattr(scheduler, "step") or not hasattr(scheduler, "set_timesteps"):
        raise ValueError(f"{type(pipe).__name__} has no diffusers scheduler; Bottleneck Sampling needs one.")
    for _, _, shift, _ in config.resolution_stages():
        stage_scheduler(type(scheduler), scheduler.config, shift)  # a shift it cannot take raises
    return scheduler


@register_technique(BottleneckSamplingConfig)
def apply_bottleneck_sampling(pipe: Any, config: BottleneckSamplingConfig, denoisers: list[Denoiser]) -> TechniqueHandle:
    """Attach Bottleneck Sampling to ``pipe``'s scheduler and denoisers."""
    scheduler = _check_supported(pipe, config, denoisers)
    original_class = type(scheduler)
    run = BottleneckRun(config, original_class, denoisers)
    attach(scheduler, run)
    hooks = HookSet(_HOOK_NAME, [d.module for d in denoisers])

    def remove() -> None:
        hooks.remove()
        for d in denoisers:
            d.tracker.step_source = None
        run.release()
        detach(scheduler, original_class)

    try:
        for d in denoisers:
            hooks.add(d.module, BottleneckGuardHook(run, d))
            d.tracker.step_source = run.current_step
        hooks.added()
    except BaseException:
        remove()
        raise

    def report() -> dict[str, Any]:
        return {"stages": [list(s) for s in run.summary], "tokens": [t for _, t in run.tokens]}

    return TechniqueHandle(remove=remove, report=report, details=run)
