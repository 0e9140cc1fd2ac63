"""`apply(pipe, config)` and `remove(pipe)`: accelerate any diffusers pipeline instance.

``apply`` finds the pipeline's denoisers (components with a model adapter: ``transformer``,
``transformer_2``, ``unet``), attaches a step tracker to each, then applies every technique of
the config through the technique registry, in the order quant -> attention -> cache. Applying
again first removes the previous acceleration (never stacks). ``remove`` undoes everything, in
reverse order, restoring the exact original behaviour.

The pipeline instance (not its class) is switched to an accelerated subclass of its own class
(same name, same API) whose ``__call__`` resets per-call state (step tracking, caches) before
each call; ``remove`` switches it back. The library class is never modified.

Example:
    >>> import torch, diffusion_accel
    >>> from diffusion_accel.testing import tiny_pipeline, tiny_call_kwargs
    >>> pipe = tiny_pipeline("pixart-alpha")
    >>> pipe = diffusion_accel.apply(pipe, diffusion_accel.AccelerationConfig())
    >>> image = pipe(**tiny_call_kwargs("pixart-alpha"), generator=torch.Generator().manual_seed(0))
    >>> diffusion_accel.remove(pipe) is pipe
    True
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers.utils.torch_utils import unwrap_module

from .config import AccelerationConfig
from .hooks import TRACKER_HOOK, Denoiser, StepTracker, remove_hook, reset_denoiser_state
from .models import find_model_adapter, supported_model_classes
from .techniques import TechniqueHandle, technique_apply_fn

__all__ = ["apply", "remove", "acceleration_state", "find_denoisers", "AccelerationState"]

_STATE_ATTR = "_diffusion_accel_state"


@dataclass
class AccelerationState:
    """What ``apply`` did to one pipeline, kept on the instance so ``remove`` can undo it."""

    config: AccelerationConfig
    denoisers: list[Denoiser]
    handles: list[tuple[str, TechniqueHandle]] = field(default_factory=list)
    original_class: type | None = None

    def report(self) -> dict[str, Any]:
        """Statistics reported by the applied techniques, by field."""
        return {name: h.report() for name, h in self.handles if h.report is not None}


def find_denoisers(pipe: Any) -> list[tuple[str, torch.nn.Module]]:
    """The pipeline's components that have a model adapter, as ``(name, module)``.

    A component compiled with ``torch.compile`` is returned as its original module (``_orig_mod``),
    where hooks belong: the compiled wrapper calls it.
    """
    components = getattr(pipe, "components", None)
    if not isinstance(components, dict):
        raise TypeError(
            f"Expected a diffusers pipeline (with .components), got {type(pipe).__name__}."
        )
    found = [
        (name, unwrap_module(module))
        for name, module in components.items()
        if isinstance(module, torch.nn.Module) and find_model_adapter(module) is not None
    ]
    if not found:
        denoiser = components.get("transformer") or components.get("unet")
        what = type(denoiser).__name__ if denoiser is not None else "no transformer/unet component"
        raise ValueError(
            f"{type(pipe).__name__} has no denoiser diffusion-accel knows ({what}). Supported denoisers: "
            f"{', '.join(supported_model_classes())}. Describe your model with "
            "diffusion_accel.models.register_model_adapter(YourModelClass, ModelAdapter(...))."
        )
    return found


def acceleration_state(pipe: Any) -> AccelerationState | None:
    """The pipeline's current acceleration, or ``None``."""
    return pipe.__dict__.get(_STATE_ATTR)


def apply(pipe: Any, config: AccelerationConfig) -> Any:
    """Accelerate ``pipe`` in place with ``config``; returns ``pipe``.

    Raises:
        TypeError: ``config`` is not an :class:`AccelerationConfig`.
        ValueError: the pipeline has no supported denoiser, or a technique rejects the model.
    """
    if not isinstance(config, AccelerationConfig):
        raise TypeError(
            f"apply() takes an AccelerationConfig, got {type(config).__name__}; wrap technique configs, "
            "e.g. AccelerationConfig(cache=StaticCacheConfig(schedule))."
        )
    if acceleration_state(pipe) is not None:
        remove(pipe)
    denoisers = []
    for name, module in find_denoisers(pipe):
        if StepTracker.get(module) is not None:
            raise ValueError(
                f"{type(pipe).__name__}.{name} is already accelerated through another pipeline that shares "
                "it (e.g. made with from_pipe). Call diffusion_accel.remove() on that pipeline first."
            )
        adapter = find_model_adapter(module)
        denoisers.append(Denoiser(name, module, adapter, StepTracker.attach(module, adapter)))

    state = AccelerationState(config=config, denoisers=denoisers)
    pipe.__dict__[_STATE_ATTR] = state
    try:
        for field_name, technique_config in config.techniques():
            handle = technique_apply_fn(technique_config)(pipe, technique_config, denoisers)
            state.handles.append((field_name, handle))
    except BaseException:
        remove(pipe)
        raise
    _use_accelerated_class(pipe, state)
    return pipe


def remove(pipe: Any) -> Any:
    """Undo :func:`apply` (no-op on a pipeline that is not accelerated); returns ``pipe``."""
    state = acceleration_state(pipe)
    if state is None:
        return pipe
    for _, handle in reversed(state.handles):
        handle.remove()
    for denoiser in state.denoisers:
        reset_denoiser_state(denoiser.module)
        remove_hook(denoiser.module, TRACKER_HOOK)
    if state.original_class is not None:
        pipe.__class__ = state.original_class
    del pipe.__dict__[_STATE_ATTR]
    return pipe


def _use_accelerated_class(pipe: Any, state: AccelerationState) -> None:
    from .pipelines.base import AcceleratedPipelineMixin, accelerated_class_for

    if isinstance(pipe, AcceleratedPipelineMixin):
        return
    state.original_class = type(pipe)
    pipe.__class__ = accelerated_class_for(type(pipe))
