"""`apply(pipe, config)` and `remove(pipe)`: accelerate any diffusers pipeline instance.

``apply`` finds the pipeline's denoisers (components with a model adapter: ``transformer``,
``transformer_2``, ``unet``), attaches a step tracker to each, then applies every technique of
the config through the technique registry, in the order quant -> attention -> cache -> sampling. Applying
again first removes the previous acceleration (never stacks). ``remove`` undoes everything, in
reverse order, restoring the exact original behaviour.

The pipeline instance (not its class) is switched to an accelerated subclass of its own class
(same name, same API) whose ``__call__`` resets per-call state (step tracking, caches) before
each call; ``remove`` switches it back. The library class is never modified. That subclass adds
:class:`AcceleratedPipelineMixin` (``enable_acceleration``, ``disable_acceleration``,
``acceleration``, ``from_pretrained(..., acceleration=...)``); the drop-in classes of
:mod:`diffusion_accel.pipelines` are made with it too.

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

import contextlib
import os
from typing import Any, Iterator

from .config import AccelerationConfig
from .hooks import TRACKER_HOOK, Denoiser, StepTracker, pipeline_call_scope, remove_hook, reset_denoiser_state
from .models import find_model_adapter
from .pipeline_state import (
    AccelerationState,
    acceleration_state,
    clear_acceleration_state,
    find_denoisers,
    set_acceleration_state,
    with_call_defaults,
)
from .techniques import technique_apply_fn

__all__ = [
    "AcceleratedPipelineMixin",
    "AccelerationState",
    "accelerated_class_for",
    "acceleration_restored",
    "acceleration_state",
    "apply",
    "as_acceleration_config",
    "check_config",
    "find_denoisers",
    "register_accelerated_class",
    "remove",
]


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
    set_acceleration_state(pipe, state)
    try:
        for field_name, technique_config in config.techniques():
            handle = technique_apply_fn(technique_config)(pipe, technique_config, denoisers)
            state.handles.append((field_name, handle))
    except BaseException:
        remove(pipe)
        raise
    _use_accelerated_class(pipe, state)
    return pipe


def check_config(pipe: Any, config: AccelerationConfig, num_steps: int | None = None) -> None:
    """Raise the ``ValueError`` that ``apply(pipe, config)`` -- or its first call of ``num_steps``
    denoising steps (``None``: not checked) -- would raise for a config made for another model (a
    schedule of another family, depth or step count), without applying anything.

    Example:
        >>> from diffusion_accel.caching import CacheSchedule, StaticCacheConfig
        >>> from diffusion_accel.testing import tiny_pipeline
        >>> pipe = tiny_pipeline("pixart-alpha")
        >>> config = AccelerationConfig(cache=StaticCacheConfig(CacheSchedule.fora(pipe.transformer, 4, 2)))
        >>> check_config(pipe, config, num_steps=4)   # fine; num_steps=8 raises
    """
    if not isinstance(config, AccelerationConfig):
        raise TypeError(f"check_config() takes an AccelerationConfig, got {type(config).__name__}.")
    techniques = list(config.techniques())
    if not techniques:
        return
    denoisers = [(module, find_model_adapter(module)) for _, module in find_denoisers(pipe)]
    for _, technique in techniques:
        technique.check(denoisers, num_steps)


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
    clear_acceleration_state(pipe)
    return pipe


@contextlib.contextmanager
def acceleration_restored(pipe: Any) -> Iterator[AccelerationConfig | None]:
    """Run a block that may apply, replace or remove ``pipe``'s acceleration; afterwards ``pipe`` has
    the acceleration it had before (re-applied if the block changed it). Yields that config (or ``None``).

    Example:
        >>> from diffusion_accel.testing import tiny_pipeline
        >>> pipe = apply(tiny_pipeline("pixart-alpha"), AccelerationConfig())
        >>> with acceleration_restored(pipe):
        ...     _ = remove(pipe)                     # e.g. measure the plain model
        >>> acceleration_state(pipe).config == AccelerationConfig()
        True
    """
    before = acceleration_state(pipe)
    try:
        yield None if before is None else before.config
    finally:
        if acceleration_state(pipe) is not before:
            remove(pipe)
            if before is not None:
                apply(pipe, before.config)


def _use_accelerated_class(pipe: Any, state: AccelerationState) -> None:
    if isinstance(pipe, AcceleratedPipelineMixin):
        return
    state.original_class = type(pipe)
    pipe.__class__ = accelerated_class_for(type(pipe))


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
    """Mixin placed before a diffusers pipeline class: acceleration methods and per-call state resets.

    Adds ``from_pretrained(..., acceleration=config)``, ``enable_acceleration(config)``,
    ``disable_acceleration()`` and ``acceleration``, and brackets every call so that per-call state
    (step tracking, caches) starts fresh. A call gets the arguments the checkpoint needs that it does
    not set (:func:`~diffusion_accel.pipeline_state.with_call_defaults`; e.g. a PixArt checkpoint whose
    sample size has no aspect-ratio bins runs with ``use_resolution_binning=False``, with a logged
    note). Everything else (components, ``from_pipe``, callbacks, ``save_pretrained``) is the
    diffusers class's own.
    """

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
        # Arguments the checkpoint needs (e.g. no resolution binning for a PixArt sample size without bins).
        kwargs = with_call_defaults(self, kwargs)
        state = acceleration_state(self)
        if state is None:
            return super().__call__(*args, **kwargs)
        with pipeline_call_scope(state.denoisers):
            return super().__call__(*args, **kwargs)


_CLASSES: dict[type, type] = {}


def register_accelerated_class(diffusers_class: type, accelerated_class: type) -> None:
    """Use ``accelerated_class`` (a drop-in subclass) when ``diffusers_class`` instances are accelerated."""
    _CLASSES[diffusers_class] = accelerated_class


def accelerated_class_for(pipeline_class: type) -> type:
    """The accelerated subclass of ``pipeline_class`` (same name), created once per class.

    Example:
        >>> import diffusers
        >>> cls = accelerated_class_for(diffusers.PixArtAlphaPipeline)
        >>> cls.__name__, issubclass(cls, diffusers.PixArtAlphaPipeline)
        ('PixArtAlphaPipeline', True)
    """
    if issubclass(pipeline_class, AcceleratedPipelineMixin):
        return pipeline_class
    if pipeline_class not in _CLASSES:
        _CLASSES[pipeline_class] = type(
            pipeline_class.__name__,
            (AcceleratedPipelineMixin, pipeline_class),
            {"__module__": "diffusion_accel.pipelines.base", "__doc__": pipeline_class.__doc__},
        )
    return _CLASSES[pipeline_class]
