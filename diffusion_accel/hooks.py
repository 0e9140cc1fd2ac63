"""A thin layer over ``diffusers.hooks``: named hooks and denoising step/branch tracking.

Every denoiser that diffusion-accel accelerates carries a :class:`StepTracker`, a diffusers
``ModelHook`` registered as ``"diffusion_accel.step_tracker"``. For each denoiser call it works
out which denoising **step** the call belongs to and which guidance **branch** it computes, and
publishes it as ``tracker.current`` (a :class:`DenoiserCall`) for the block-level hooks of
every technique to read. ``tracker.history`` lists the calls of the current (or last) pipeline call.

How the step and branch are found:

* the step is ``step_index`` of the cache context when the pipeline sets one (Wan does), else the
  step a technique that drives the schedule publishes (``tracker.step_source``: Bottleneck
  Sampling, whose timesteps rise at its re-noised transitions), otherwise a new step starts
  whenever the timestep changes;
* the branch is the cache-context name the pipeline sets (``"cond"``/``"uncond"`` for Flux and
  Wan, ``"cond_uncond"`` for CogVideoX), otherwise ``"call<k>"`` for the k-th call of the step
  (``"call0"`` for pipelines that batch both guidance branches into one call);
* state resets at the start of every accelerated pipeline call and is released at its end
  (see :func:`pipeline_call_scope`); for denoisers called outside a pipeline it resets whenever
  the step would go backwards (the timestep rose or the step index fell: a new sampling pass),
  and :func:`reset_denoiser_state` releases it on demand.

Under ``torch.compile`` the tracker's bookkeeping runs eagerly (``torch.compiler.disable``): it
reads the timestep as a Python number and keeps Python state, neither of which belongs in a graph.

Example:
    >>> import torch
    >>> from diffusion_accel.hooks import StepTracker
    >>> from diffusion_accel.models import get_model_adapter
    >>> # tracker = StepTracker.attach(pipe.transformer, get_model_adapter(pipe.transformer))
    >>> # pipe(...); [(c.step, c.branch) for c in tracker.history]
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.utils.torch_utils import unwrap_module

from ._diffusers import CacheContextProbe, hook_registry
from .models import ModelAdapter

__all__ = [
    "HOOK_PREFIX",
    "DenoiserCall",
    "StepTracker",
    "Denoiser",
    "add_hook",
    "remove_hook",
    "HookSet",
    "pipeline_call_scope",
    "reset_denoiser_state",
]

HOOK_PREFIX = "diffusion_accel."
TRACKER_HOOK = HOOK_PREFIX + "step_tracker"


def add_hook(module: torch.nn.Module, hook: ModelHook, name: str) -> None:
    """Register ``hook`` on ``module`` under ``name`` (prefixed with ``diffusion_accel.``)."""
    registry = HookRegistry.check_if_exists_or_initialize(module)
    registry.register_hook(hook, _full_name(name))


def remove_hook(module: torch.nn.Module, name: str) -> None:
    """Remove the hook registered by :func:`add_hook` (no-op if absent)."""
    registry = hook_registry(module)
    if registry is not None:
        registry.remove_hook(_full_name(name), recurse=False)


def get_hook(module: torch.nn.Module, name: str) -> ModelHook | None:
    registry = hook_registry(module)
    return None if registry is None else registry.get_hook(_full_name(name))


def invalidate_hook_caches(module: torch.nn.Module) -> None:
    """Tell diffusers that hooks were added to/removed from descendants of ``module``."""
    registry = HookRegistry.check_if_exists_or_initialize(module)
    registry.invalidate_child_registries_cache()


class HookSet:
    """Hooks one technique registers under one name on many submodules of some denoisers.

    ``add`` registers a hook; ``remove`` detaches all of them and refreshes diffusers' cached
    list of child registries on the denoisers.
    """

    def __init__(self, name: str, roots: list[torch.nn.Module]) -> None:
        self.name = name
        self.roots = roots
        self.modules: list[torch.nn.Module] = []

    def add(self, module: torch.nn.Module, hook: ModelHook) -> None:
        add_hook(module, hook, self.name)
        self.modules.append(module)

    def added(self) -> None:
        """Call after the last ``add``: diffusers re-scans the denoisers' hook registries."""
        for root in self.roots:
            invalidate_hook_caches(root)

    def remove(self) -> None:
        for module in self.modules:
            remove_hook(module, self.name)
        self.modules = []
        self.added()


def _full_name(name: str) -> str:
    return name if name.startswith(HOOK_PREFIX) else HOOK_PREFIX + name


@dataclass(frozen=True)
class DenoiserCall:
    """Where one denoiser call sits in the sampling loop.

    Attributes:
        step: denoising step index (0-based).
        branch: guidance branch key (cache-context name, or ``"call<k>"``).
        call_in_step: position of this call among the calls of its step.
        index: position among all denoiser calls since the last reset.
        timestep: the call's timestep (max over batch/tokens), or ``None``.
        batch_size: leading dimension of the first tensor argument.
    """

    step: int
    branch: str
    call_in_step: int
    index: int
    timestep: float | None
    batch_size: int | None


class StepTracker(ModelHook):
    """Tracks (step, branch) of every call of the denoiser it is attached to."""

    _is_stateful = True

    def __init__(self, adapter: ModelAdapter) -> None:
        super().__init__()
        self.adapter = adapter
        self._context_probe = CacheContextProbe()
        self.history: list[DenoiserCall] = []
        self.current: DenoiserCall | None = None
        self.in_pipeline_call = False
        #: identifies the current sampling pass: one object per pipeline call, shared by all the
        #: pipeline's denoisers (set by :func:`pipeline_call_scope`), or a new one for each pass of
        #: a denoiser called outside a pipeline. Per-call statistics restart when it changes.
        self.pass_id: object = object()
        #: ``fn() -> int | None``: the current step, set by a technique that drives the sampling
        #: schedule (consulted when the pipeline sets no cache-context step index).
        self.step_source: Callable[[], int | None] | None = None

    @classmethod
    def attach(cls, module: torch.nn.Module, adapter: ModelAdapter) -> "StepTracker":
        """Attach a tracker to ``module`` (or return the one already attached)."""
        existing = get_hook(module, TRACKER_HOOK)
        if existing is not None:
            return existing
        tracker = cls(adapter)
        add_hook(module, tracker, TRACKER_HOOK)
        return tracker

    @staticmethod
    def get(module: torch.nn.Module) -> "StepTracker | None":
        return get_hook(module, TRACKER_HOOK)

    @torch.compiler.disable
    def pre_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any):
        timestep = self.adapter.timestep_value(module, args, kwargs)
        context = self._context_probe.current()
        context_step = getattr(context, "step_index", None)
        if context_step is None and self.step_source is not None:
            context_step = self.step_source()
        prev = self.current
        if prev is not None and _is_new_pass(prev, timestep, context_step):
            # The sampler started over without a pipeline-call boundary: drop stale state.
            hook_registry(module).reset_stateful_hooks()
            prev = None
        if prev is None:
            self.history = []  # first call after a reset: a new record starts
            if not self.in_pipeline_call:
                self.pass_id = object()
        if context_step is not None:
            step = int(context_step)
        elif prev is None:
            step = 0
        elif timestep != prev.timestep:
            step = prev.step + 1
        else:
            step = prev.step
        call_in_step = prev.call_in_step + 1 if (prev is not None and prev.step == step) else 0
        name = getattr(context, "name", None)
        self.current = DenoiserCall(
            step=step,
            branch=name if name else f"call{call_in_step}",
            call_in_step=call_in_step,
            index=len(self.history),
            timestep=timestep,
            batch_size=_batch_size(args, kwargs),
        )
        self.history.append(self.current)
        return args, kwargs

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        # ``history`` is kept until the next call starts, so it can be read after a pipeline call
        # (diffusers resets stateful hooks at the end of a call).
        self.current = None
        return module

    def steps_seen(self) -> list[tuple[int, str]]:
        """``[(step, branch), ...]`` for the calls since the last reset."""
        return [(c.step, c.branch) for c in self.history]


def _is_new_pass(prev: DenoiserCall, timestep: float | None, context_step: int | None) -> bool:
    if context_step is not None:
        return context_step < prev.step
    return timestep is not None and prev.timestep is not None and timestep > prev.timestep


def _batch_size(args: tuple, kwargs: dict) -> int | None:
    for value in (*args, *kwargs.values()):
        if torch.is_tensor(value) and value.dim() > 0:
            return int(value.shape[0])
    return None


@dataclass
class Denoiser:
    """A denoiser of a pipeline as techniques see it."""

    name: str
    module: torch.nn.Module
    adapter: ModelAdapter
    tracker: StepTracker

    def blocks(self):
        return self.adapter.blocks(self.module)


def reset_denoiser_state(module: torch.nn.Module) -> None:
    """Reset every stateful hook (tracker, caches, ...) on ``module`` and its submodules.

    This releases every tensor a technique keeps between denoiser calls. Accelerated pipelines do
    it at the end of each call; call it yourself after driving a denoiser outside a pipeline
    (e.g. ``reset_denoiser_state(pipe.transformer)``) if its caches must not wait for the next pass.
    """
    module = unwrap_module(module)  # a torch.compile wrapper: the hooks are on the original
    registry = hook_registry(module)
    if registry is not None:
        registry.reset_stateful_hooks(recurse=True)


@contextlib.contextmanager
def pipeline_call_scope(denoisers: list[Denoiser]) -> Iterator[None]:
    """Bracket one pipeline call: reset all per-call state before it, mark it active, and release
    the per-call state (cached tensors) when it ends, however it ends.

    Diffusers resets stateful hooks at the end of a call only for some model families (its
    ``CacheMixin`` models); this releases them for every family. What a technique reports about
    the call (counters, ``tracker.history``) survives the release.
    """
    pass_id = object()
    for d in denoisers:
        reset_denoiser_state(d.module)
        d.tracker.in_pipeline_call = True
        d.tracker.pass_id = pass_id
    try:
        yield
    finally:
        for d in denoisers:
            d.tracker.in_pipeline_call = False
            reset_denoiser_state(d.module)
