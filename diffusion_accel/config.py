"""`AccelerationConfig`: which cache, quantization, attention and sampling technique to apply.

The config is frozen data: it never changes when applied, and it round-trips through plain
JSON (``save``/``load``), versioned so that files written by a newer release are refused
with a clear message instead of being misread.

Example:
    >>> from diffusion_accel import AccelerationConfig
    >>> cfg = AccelerationConfig()
    >>> AccelerationConfig.from_json(cfg.to_json()) == cfg
    True
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, ClassVar, Iterator

# The built-in techniques register their config types (by name, for loading JSON) when imported.
from . import caching, quant, sampling, sparse_attn  # noqa: F401
from .techniques import FIELDS, TechniqueConfig, registered_techniques, technique_config_type

__all__ = ["AccelerationConfig"]

_FORMAT = "diffusion-accel/acceleration-config"


@dataclass(frozen=True)
class AccelerationConfig:
    """The acceleration of one pipeline: at most one technique per field.

    Args:
        cache: a cache config (e.g. ``StaticCacheConfig``, ``DynamicCacheConfig``) or ``None``.
        quant: a quantization config (e.g. ``QuantConfig``) or ``None``.
        attention: an attention config (e.g. ``SparseAttentionConfig``) or ``None``.
        sampling: a sampling-schedule config (``BottleneckSamplingConfig``) or ``None``.

    ``AccelerationConfig()`` applies nothing: the pipeline's outputs stay bit-identical.
    """

    cache: TechniqueConfig | None = None
    quant: TechniqueConfig | None = None
    attention: TechniqueConfig | None = None
    sampling: TechniqueConfig | None = None

    version: ClassVar[int] = 1

    def __post_init__(self) -> None:
        for name in FIELDS:
            value = getattr(self, name)
            if value is None:
                continue
            if not isinstance(value, TechniqueConfig):
                raise TypeError(
                    f"AccelerationConfig.{name} must be a technique config or None, got "
                    f"{type(value).__name__}. Use one of: {_names(name)}."
                )
            if value.field_name != name:
                raise TypeError(
                    f"{type(value).__name__} is a {value.field_name!r} technique and cannot go in "
                    f"AccelerationConfig.{name}; pass it as AccelerationConfig({value.field_name}=...). "
                    f"Valid {name!r} configs: {_names(name)}."
                )

    def techniques(self) -> Iterator[tuple[str, TechniqueConfig]]:
        """The non-empty fields as ``(field, config)``, in application order."""
        for name in FIELDS:
            value = getattr(self, name)
            if value is not None:
                yield name, value

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"format": _FORMAT, "version": self.version}
        for name in ("cache", "quant", "attention"):
            value = getattr(self, name)
            out[name] = None if value is None else value.to_dict()
        if self.sampling is not None:  # written only when set: configs without it keep their exact JSON
            out["sampling"] = self.sampling.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: Any) -> "AccelerationConfig":
        if not isinstance(data, dict):
            raise ValueError(f"An acceleration config must be a JSON object, got {type(data).__name__}.")
        data = dict(data)
        fmt = data.pop("format", _FORMAT)
        if fmt != _FORMAT:
            raise ValueError(f"Not an acceleration config: format is {fmt!r}, expected {_FORMAT!r}.")
        version = data.pop("version", cls.version)
        if not isinstance(version, int) or version > cls.version:
            raise ValueError(
                f"This acceleration config has version {version!r}; this diffusion-accel reads up to "
                f"version {cls.version}. Upgrade diffusion-accel to load it."
            )
        unknown = sorted(set(data) - set(FIELDS))
        if unknown:
            raise ValueError(
                f"Unknown field(s) {unknown} in acceleration config; the fields are {sorted(FIELDS)}."
            )
        kwargs = {}
        for name, value in data.items():
            if value is None:
                continue
            if not isinstance(value, dict) or "type" not in value:
                raise ValueError(
                    f"AccelerationConfig.{name} must be null or an object with a 'type' key "
                    f"(one of {_names(name)}), got {value!r}."
                )
            kwargs[name] = technique_config_type(value["type"]).from_dict(value)
        return cls(**kwargs)

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_json(cls, text: str) -> "AccelerationConfig":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"Acceleration config is not valid JSON: {exc}") from exc
        return cls.from_dict(data)

    def save(self, path: str | os.PathLike) -> None:
        """Write the config as JSON (atomically: a crash never leaves half a file). Data files a
        technique names (a PARO calibration) are copied beside it and named relative to it."""
        from .utils import atomic_write_text

        saved = {name: value.with_files_saved(os.fspath(path)) for name, value in self.techniques()}
        atomic_write_text(path, AccelerationConfig(**saved).to_json() + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> "AccelerationConfig":
        try:
            with open(path, encoding="utf-8") as fh:
                text = fh.read()
        except OSError as exc:
            raise ValueError(f"Cannot read acceleration config {os.fspath(path)!r}: {exc}") from exc
        try:
            config = cls.from_json(text)
        except (ValueError, TypeError) as exc:
            raise type(exc)(f"{os.fspath(path)}: {exc}") from exc
        directory = os.path.dirname(os.path.abspath(path))
        return cls(**{name: value.with_files_resolved(directory) for name, value in config.techniques()})


def _names(field_name: str) -> str:
    names = sorted(t.__name__ for t in registered_techniques(field_name))
    return ", ".join(names) if names else "(none registered yet)"
