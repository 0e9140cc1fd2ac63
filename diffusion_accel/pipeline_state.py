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

from dataclasses import dataclass, field
from typing import Any

import torch

from .hooks import Denoiser
from .models import find_model_adapter, supported_model_classes

__all__ = ["AccelerationState", "acceleration_state", "clear_acceleration_state", "find_denoisers",
           "set_acceleration_state"]

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


def find_denoisers(pipe: Any) -> list[tuple[str, torch.nn.Module]]:
    """The pipeline's components that have a model adapter, as ``(name, module)``."""
    components = getattr(pipe, "components", None)
    if not isinstance(components, dict):
        raise TypeError(
            f"Expected a diffusers pipeline (with .components), got {type(pipe).__name__}."
        )
    found = [
        (name, module)
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


def set_acceleration_state(pipe: Any, state: AccelerationState) -> None:
    pipe.__dict__[_STATE_ATTR] = state


def clear_acceleration_state(pipe: Any) -> None:
    pipe.__dict__.pop(_STATE_ATTR, None)
