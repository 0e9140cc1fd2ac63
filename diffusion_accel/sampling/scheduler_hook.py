"""A hook on a pipeline's scheduler *instance*: its class is switched to a subclass of its own class.

diffusers' ``HookRegistry`` wraps ``forward`` of a ``torch.nn.Module``; a scheduler is no module, so
Bottleneck Sampling attaches to it the way :func:`diffusion_accel.apply` attaches to a pipeline: the
one instance (never the library class) becomes an instance of a same-named subclass whose
``set_timesteps``, ``scale_model_input`` and ``step`` consult the :class:`~.runtime.BottleneckRun`
stored on the instance, and ``detach`` switches it back. Outside an accelerated call of the pipeline
that owns the run (e.g. a pipeline made with ``from_pipe`` that shares the scheduler) every method is
the original one; the signatures stay the original ones (pipelines inspect ``step`` for ``generator``).

Example:
    >>> from diffusers import FlowMatchEulerDiscreteScheduler
    >>> cls = bottleneck_scheduler_class(FlowMatchEulerDiscreteScheduler)
    >>> cls.__name__, issubclass(cls, FlowMatchEulerDiscreteScheduler)
    ('FlowMatchEulerDiscreteScheduler', True)
"""

from __future__ import annotations

import inspect
from typing import Any

from .runtime import BottleneckRun

__all__ = ["attach", "attached_run", "bottleneck_scheduler_class", "detach"]

_RUN_ATTR = "_diffusion_accel_bottleneck"
_CLASSES: dict[type, type] = {}


def attached_run(scheduler: Any) -> BottleneckRun | None:
    return scheduler.__dict__.get(_RUN_ATTR)


class _BottleneckSchedulerMixin:
    def set_timesteps(self, *args: Any, **kwargs: Any):
        out = super().set_timesteps(*args, **kwargs)
        run = attached_run(self)
        if run is not None and run.active():
            run.plan(self, args, kwargs)
        return out

    def scale_model_input(self, sample: Any, *args: Any, **kwargs: Any):
        run = attached_run(self)
        if run is not None and run.planned():
            return run.scale_model_input(sample, *args, **kwargs)
        return super().scale_model_input(sample, *args, **kwargs)

    def step(self, model_output: Any, timestep: Any, sample: Any, *args: Any, **kwargs: Any):
        run = attached_run(self)
        if run is not None and run.planned():
            return run.step(model_output, timestep, sample, args, kwargs)
        return super().step(model_output, timestep, sample, *args, **kwargs)


def bottleneck_scheduler_class(scheduler_class: type) -> type:
    """The subclass of ``scheduler_class`` (same name) that consults an attached run; made once per class."""
    if scheduler_class not in _CLASSES:
        namespace: dict[str, Any] = {"__module__": scheduler_class.__module__, "__doc__": scheduler_class.__doc__}
        for name in ("set_timesteps", "scale_model_input", "step"):
            original = getattr(scheduler_class, name, None)
            if original is None:  # e.g. flow-matching Euler has no scale_model_input: nothing to consult
                namespace[name] = None
                continue
            mixin_fn = getattr(_BottleneckSchedulerMixin, name)

            def method(self, *args, __fn=mixin_fn, **kwargs):
                return __fn(self, *args, **kwargs)

            method.__name__ = name
            method.__signature__ = inspect.signature(original)
            namespace[name] = method
        missing = [name for name, value in namespace.items() if value is None]
        for name in missing:
            del namespace[name]
        bases = (_BottleneckSchedulerMixin, scheduler_class)
        cls = type(scheduler_class.__name__, bases, namespace)
        for name in missing:  # hide the mixin's method: the original class has none
            setattr(cls, name, _missing_attribute(name))
        _CLASSES[scheduler_class] = cls
    return _CLASSES[scheduler_class]


class _missing_attribute:
    """A descriptor that raises ``AttributeError`` like an attribute the original class lacks."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, owner: type) -> Any:
        raise AttributeError(f"{owner.__name__!r} object has no attribute {self.name!r}")


def attach(scheduler: Any, run: BottleneckRun) -> None:
    """Switch ``scheduler`` to its bottleneck subclass and store ``run`` on it."""
    if attached_run(scheduler) is not None:
        raise ValueError(
            f"This {type(scheduler).__name__} already carries Bottleneck Sampling of another pipeline that shares "
            "it (e.g. made with from_pipe); call diffusion_accel.remove() on that pipeline first."
        )
    scheduler.__dict__[_RUN_ATTR] = run
    scheduler.__class__ = bottleneck_scheduler_class(run.scheduler_class)


def detach(scheduler: Any, original_class: type) -> None:
    """Undo :func:`attach`."""
    scheduler.__class__ = original_class
    scheduler.__dict__.pop(_RUN_ATTR, None)
