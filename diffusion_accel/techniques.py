"""Registry of acceleration techniques: config type -> the function that applies it.

A technique is a frozen, JSON-serializable config class (a subclass of
:class:`TechniqueConfig`) plus an ``apply`` function registered for that class. The
``apply`` function receives the pipeline, the config and the pipeline's denoisers
(:class:`~diffusion_accel.hooks.Denoiser`) and returns a :class:`TechniqueHandle` whose
``remove()`` undoes exactly what ``apply`` did. :func:`diffusion_accel.apply` never needs to
know which techniques exist.

The built-in techniques (``caching``, ``quant``, ``sparse_attn``, ``sampling``) register themselves when their
packages are imported; :mod:`diffusion_accel.config`, one layer up, imports them, so they are
registered whenever ``diffusion_accel`` is. This module imports none of them.

Example (a technique that does nothing, registered for the ``cache`` field):

    >>> from dataclasses import dataclass
    >>> @dataclass(frozen=True)
    ... class NoOpCache(TechniqueConfig):
    ...     field_name = "cache"
    >>> @register_technique(NoOpCache)
    ... def _apply_noop(pipe, config, denoisers):
    ...     return TechniqueHandle(remove=lambda: None)
    >>> technique_config_type("NoOpCache") is NoOpCache
    True
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Callable, ClassVar

from .serialization import dataclass_from_dict, dataclass_to_dict

if TYPE_CHECKING:
    from .hooks import Denoiser

__all__ = [
    "FIELDS",
    "TechniqueConfig",
    "TechniqueHandle",
    "register_technique",
    "technique_apply_fn",
    "technique_config_type",
    "registered_techniques",
]

#: The fields of :class:`~diffusion_accel.AccelerationConfig`, in the order techniques are applied
#: (quantization first so that sparse attention and caching see the quantized modules; caching
#: outermost of the denoiser hooks; the sampling schedule, which drives the scheduler, last).
FIELDS = ("quant", "attention", "cache", "sampling")


class TechniqueConfig:
    """Base class of technique configs (subclasses are frozen dataclasses).

    Subclasses set the class attribute ``field_name`` to ``"cache"``, ``"quant"``, ``"attention"``
    or ``"sampling"``: the :class:`~diffusion_accel.AccelerationConfig` field they belong in.
    Bump ``version`` when the meaning of a field changes.
    """

    field_name: ClassVar[str] = ""
    version: ClassVar[int] = 1

    def check(self, denoisers: Sequence[tuple[Any, Any]], num_steps: int | None) -> None:
        """Raise a ``ValueError`` naming the fix when this config cannot run on ``denoisers``
        (``(module, adapter)`` pairs) in pipeline calls of ``num_steps`` denoising steps (``None``:
        not known), without changing anything. Tools call it (through
        :func:`diffusion_accel.api.check_config`) before any work, so that a config made for another
        model fails before the first image. The default checks nothing; ``apply`` checks again."""

    def with_files_saved(self, json_path: str) -> "TechniqueConfig":
        """The config to write into the JSON file ``json_path``, after copying any data file it
        names beside that file (default: itself; ``AccelerationConfig.save`` calls it)."""
        return self

    def with_files_resolved(self, directory: str) -> "TechniqueConfig":
        """The config read from a JSON file in ``directory`` with its data-file paths resolved
        against that directory (default: itself; ``AccelerationConfig.load`` calls it)."""
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form: ``{"type": <class name>, "version": ..., <fields>}``."""
        return {"type": type(self).__name__, "version": self.version, **dataclass_to_dict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TechniqueConfig":
        """Inverse of :meth:`to_dict`; checks field names and types."""
        if not isinstance(data, dict):
            raise ValueError(f"{cls.__name__}: expected a JSON object, got {type(data).__name__}.")
        data = dict(data)
        name = data.pop("type", cls.__name__)
        if name != cls.__name__:
            raise ValueError(f"{cls.__name__}.from_dict got a config of type {name!r}.")
        version = data.pop("version", cls.version)
        if not isinstance(version, int) or version > cls.version:
            raise ValueError(
                f"{cls.__name__} version {version!r} is newer than this diffusion-accel supports "
                f"({cls.version}); upgrade diffusion-accel to load it."
            )
        return dataclass_from_dict(cls, data)


@dataclasses.dataclass
class TechniqueHandle:
    """What an applied technique returns: how to undo it and what it can report.

    ``remove`` undoes the technique; ``report`` (optional) returns JSON-friendly statistics,
    e.g. the bytes held by a cache; ``details`` (optional) is any object the technique exposes
    for programmatic inspection (e.g. per-component call counters).
    """

    remove: Callable[[], None]
    report: Callable[[], dict[str, Any]] | None = None
    details: Any = None


_APPLY_FNS: dict[type, Callable[..., TechniqueHandle]] = {}
_BY_NAME: dict[str, type] = {}


def register_technique(config_type: type) -> Callable:
    """Decorator registering ``apply_fn(pipe, config, denoisers) -> TechniqueHandle`` for a config type."""
    if not (isinstance(config_type, type) and issubclass(config_type, TechniqueConfig)):
        raise TypeError(f"{config_type!r} must be a subclass of TechniqueConfig.")
    if config_type.field_name not in FIELDS:
        raise ValueError(
            f"{config_type.__name__}.field_name must be one of {FIELDS}, got {config_type.field_name!r}."
        )
    if not dataclasses.is_dataclass(config_type):
        raise TypeError(f"{config_type.__name__} must be a (frozen) dataclass.")

    def decorator(apply_fn: Callable[..., TechniqueHandle]) -> Callable[..., TechniqueHandle]:
        _APPLY_FNS[config_type] = apply_fn
        _BY_NAME[config_type.__name__] = config_type
        return apply_fn

    return decorator


def registered_techniques(field_name: str | None = None) -> list[type]:
    """Registered config types, optionally only those for one field."""
    return [t for t in _APPLY_FNS if field_name is None or t.field_name == field_name]


def technique_apply_fn(config: TechniqueConfig) -> Callable[..., TechniqueHandle]:
    """The apply function registered for ``type(config)`` (or one of its bases)."""
    for klass in type(config).__mro__:
        if klass in _APPLY_FNS:
            return _APPLY_FNS[klass]
    raise TypeError(
        f"No technique is registered for {type(config).__name__}. Register it with "
        "@diffusion_accel.techniques.register_technique(YourConfig)."
    )


def technique_config_type(name: str) -> type:
    """Config class from its serialized ``type`` name."""
    if name not in _BY_NAME:
        raise ValueError(
            f"Unknown technique config type {name!r}. Known types: {sorted(_BY_NAME)}. "
            "If it comes from a plug-in, import that plug-in before loading the config."
        )
    return _BY_NAME[name]
