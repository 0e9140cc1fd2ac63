"""The accelerated-pipeline mixin and the generic wrapper for any diffusers pipeline class.

:class:`AcceleratedPipelineMixin` adds ``from_pretrained(..., acceleration=config)``,
``enable_acceleration(config)``, ``disable_acceleration()`` and ``acceleration`` to a diffusers
pipeline class and brackets every call so that per-call state (step tracking, caches) starts
fresh. Everything else (components, ``from_pipe``, callbacks, ``save_pretrained``) is the
diffusers class's own.

Example:
    >>> import diffusers
    >>> from diffusion_accel.pipelines import accelerated_class_for
    >>> cls = accelerated_class_for(diffusers.PixArtAlphaPipeline)
    >>> cls.__name__, issubclass(cls, diffusers.PixArtAlphaPipeline)
    ('PixArtAlphaPipeline', True)
"""

from __future__ import annotations

import os
from typing import Any

from ..api import acceleration_state, apply, remove
from ..config import AccelerationConfig
from ..hooks import pipeline_call_scope

__all__ = ["AcceleratedPipelineMixin", "accelerated_class_for", "as_acceleration_config"]


def as_acceleration_config(config: AccelerationConfig | str | os.PathLike) -> AccelerationConfig:
    """Accept a config object or the path of a config JSON file."""
    if isinstance(config, AccelerationConfig):
        return config
    if isinstance(config, (str, os.PathLike)):
        return AccelerationConfig.load(config)
    raise TypeError(
        f"acceleration must be an AccelerationConfig or the path of its JSON file, got {type(config).__name__}."
    )


class AcceleratedPipelineMixin:
    """Mixin placed before a diffusers pipeline class (see module docstring)."""

    @classmethod
    def from_pretrained(cls, *args: Any, acceleration: AccelerationConfig | str | None = None, **kwargs: Any):
        """diffusers' ``from_pretrained``, then :meth:`enable_acceleration` if ``acceleration`` is given."""
        pipe = super().from_pretrained(*args, **kwargs)
        if acceleration is not None:
            pipe.enable_acceleration(acceleration)
        return pipe

    def enable_acceleration(self, config: AccelerationConfig | str | os.PathLike):
        """Apply ``config`` (replacing any previous acceleration); returns ``self``."""
        return apply(self, as_acceleration_config(config))

    def disable_acceleration(self):
        """Remove the acceleration, restoring the exact diffusers behaviour; returns ``self``."""
        remove(self)
        return self

    @property
    def acceleration(self) -> AccelerationConfig | None:
        """The applied config, or ``None``."""
        state = acceleration_state(self)
        return None if state is None else state.config

    def __call__(self, *args: Any, **kwargs: Any):
        state = acceleration_state(self)
        if state is None:
            return super().__call__(*args, **kwargs)
        with pipeline_call_scope(state.denoisers):
            return super().__call__(*args, **kwargs)


_CLASSES: dict[type, type] = {}


def register_accelerated_class(diffusers_class: type, accelerated_class: type) -> None:
    _CLASSES[diffusers_class] = accelerated_class


def accelerated_class_for(pipeline_class: type) -> type:
    """The accelerated subclass of ``pipeline_class`` (same name), created once per class."""
    if issubclass(pipeline_class, AcceleratedPipelineMixin):
        return pipeline_class
    if pipeline_class not in _CLASSES:
        _CLASSES[pipeline_class] = type(
            pipeline_class.__name__,
            (AcceleratedPipelineMixin, pipeline_class),
            {"__module__": __name__, "__doc__": pipeline_class.__doc__},
        )
    return _CLASSES[pipeline_class]
