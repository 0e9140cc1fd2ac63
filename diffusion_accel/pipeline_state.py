"""A pipeline's denoisers and its current acceleration: what every layer may ask about a pipeline.

:func:`find_denoisers` lists the components that have a model adapter; :func:`acceleration_state`
returns what :func:`diffusion_accel.apply` did to a pipeline (kept on the instance so that
:func:`diffusion_accel.remove` can undo it), or ``None``. Both sit below the techniques, so a
technique can read them without importing the api that calls it.

Example:
    >>> from diffusion_accel.testing import tiny_pipeline
    >>> pipe = tiny_pipeline("pixart-alpha")
    >>> [name for name, _ in find_denoisers(pipe)], acceleration_state(pipe)
    (['transformer'], None)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers.utils.torch_utils import unwrap_module

from .hooks import Denoiser, StepTracker
from .models import find_model_adapter, supported_model_classes

__all__ = ["AccelerationState", "acceleration_state", "call_defaults", "clear_acceleration_state", "find_denoisers", "tracked_denoisers",
           "set_acceleration_state", "with_call_defaults"]

logger = logging.getLogger(__name__)
_NOTED_ATTR = "_diffusion_accel_call_notes"

_STATE_ATTR = "_diffusion_accel_state"


@dataclass
class AccelerationState:
    """What ``apply`` did to one pipeline.

    Attributes:
        config: the applied :class:`~diffusion_accel.AccelerationConfig`.
        denoisers: the tracked denoisers.
        handles: ``(field, TechniqueHandle)`` of every applied technique, in application order.
        original_class: the pipeline's class before ``apply`` switched it (``None``: not switched).
    """

    config: Any
    denoisers: list[Denoiser]
    handles: list[tuple[str, Any]] = field(default_factory=list)
    original_class: type | None = None

    def report(self) -> dict[str, Any]:
        """Statistics reported by the applied techniques, by field."""
        return {name: h.report() for name, h in self.handles if h.report is not None}


def tracked_denoisers(pipe: Any) -> tuple[list[Denoiser], list[torch.nn.Module]]:
    """The pipeline's denoisers, each with a :class:`StepTracker` (attached here where absent), and the
    modules that got one here (the caller detaches those when done, e.g. with ``remove_hook``).

    Calibration helpers use it to follow steps without applying an acceleration.
    """
    denoisers, attached = [], []
    for name, module in find_denoisers(pipe):
        adapter = find_model_adapter(module)
        tracker = StepTracker.get(module)
        if tracker is None:
            tracker = StepTracker.attach(module, adapter)
            attached.append(module)
        denoisers.append(Denoiser(name, module, adapter, tracker))
    return denoisers, attached


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
        denoiser = components.get("transformer")
        denoiser = components.get("unet") if denoiser is None else denoiser  # (no bool() of a module)
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


def set_acceleration_state(pipe: Any, state: AccelerationState) -> None:
    pipe.__dict__[_STATE_ATTR] = state


def clear_acceleration_state(pipe: Any) -> None:
    pipe.__dict__.pop(_STATE_ATTR, None)


def call_defaults(pipe: Any) -> dict[str, tuple[Any, str]]:
    """Pipeline-call arguments ``pipe``'s checkpoint needs unless the caller sets them, with a note each:
    ``{argument: (value, reason)}`` from the model adapters' ``call_defaults`` (``{}`` for a pipeline
    without a known denoiser)."""
    components = getattr(pipe, "components", None)
    out: dict[str, tuple[Any, str]] = {}
    for module in (components.values() if isinstance(components, dict) else ()):
        if not isinstance(module, torch.nn.Module):
            continue
        adapter = find_model_adapter(module)
        if adapter is not None and adapter.call_defaults is not None:
            out.update(adapter.call_defaults(pipe, unwrap_module(module)))
    return out


def with_call_defaults(pipe: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` with the :func:`call_defaults` it does not set added; each note is logged once per pipeline.

    Example:
        >>> from diffusion_accel.testing import tiny_pipeline
        >>> kwargs = with_call_defaults(tiny_pipeline("pixart-alpha"), {"height": 32})   # sample size 8: no bins
        >>> kwargs["height"], kwargs["use_resolution_binning"]
        (32, False)
    """
    missing = {name: default for name, default in call_defaults(pipe).items() if name not in kwargs}
    if not missing:
        return kwargs
    noted = getattr(pipe, _NOTED_ATTR, None)
    if noted is None:
        noted = set()
        object.__setattr__(pipe, _NOTED_ATTR, noted)
    for name, (_, note) in missing.items():
        if note not in noted:
            noted.add(note)
            logger.warning(note)
    return {**kwargs, **{name: value for name, (value, _) in missing.items()}}
