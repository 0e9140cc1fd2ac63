"""Plain-JSON (de)serialization of frozen dataclass configs, with type checks.

Every technique config is a frozen dataclass whose fields are JSON scalars, lists/tuples,
dicts with string keys, ``None``/``Optional`` or other such dataclasses. A field that needs a
custom encoding (for example a :class:`~diffusion_accel.caching.CacheSchedule`) declares it
in its dataclass field metadata::

    schedule: CacheSchedule = field(metadata={"encode": CacheSchedule.to_dict,
                                              "decode": CacheSchedule.from_dict})

Example:
    >>> from dataclasses import dataclass
    >>> @dataclass(frozen=True)
    ... class Demo:
    ...     threshold: float = 0.1
    ...     names: tuple[str, ...] = ()
    >>> dataclass_from_dict(Demo, {"threshold": 0.2, "names": ["a"]})
    Demo(threshold=0.2, names=('a',))
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Union

__all__ = ["dataclass_to_dict", "dataclass_from_dict", "check_value"]


def dataclass_to_dict(obj: Any) -> dict[str, Any]:
    """Encode a dataclass instance's fields into JSON-compatible values."""
    out = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        encode = f.metadata.get("encode")
        out[f.name] = encode(value) if (encode is not None and value is not None) else _encode(value)
    return out


def _encode(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        if hasattr(value, "to_dict"):
            return value.to_dict()
        return dataclass_to_dict(value)
    if isinstance(value, (list, tuple)):
        return [_encode(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _encode(v) for k, v in value.items()}
    return value


def dataclass_from_dict(cls: type, data: Any, *, where: str | None = None) -> Any:
    """Build ``cls`` from a JSON dict, rejecting unknown fields and values of the wrong type.

    Raises:
        ValueError: ``data`` is not a dict or holds a field ``cls`` does not have.
        TypeError: a value has the wrong type for its field.
    """
    where = where or cls.__name__
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(data).__name__}.")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(
            f"{where}: unknown field(s) {unknown}. Known fields are {sorted(fields)}; "
            "remove the unknown ones or check their spelling."
        )
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        f = fields[name]
        decode = f.metadata.get("decode")
        if decode is not None and value is not None:
            kwargs[name] = decode(value)
        else:
            kwargs[name] = check_value(value, hints[name], f"{where}.{name}")
    return cls(**kwargs)


def check_value(value: Any, annotation: Any, where: str) -> Any:
    """Check a decoded JSON ``value`` against a type ``annotation``; convert lists to tuples."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin in (Union, types.UnionType):
        errors = []
        for option in args:
            try:
                return check_value(value, option, where)
            except (TypeError, ValueError) as exc:
                errors.append(str(exc))
        raise TypeError(f"{where}: {value!r} matches none of {_type_name(annotation)}.")
    if annotation is type(None):
        if value is not None:
            raise TypeError(f"{where}: expected null, got {value!r}.")
        return None
    if origin is typing.Literal:
        if value not in args:
            raise TypeError(f"{where}: expected one of {list(args)}, got {value!r}.")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"{where}: expected a list, got {type(value).__name__} {value!r}.")
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            items = [check_value(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
        elif origin is tuple and args:
            if len(args) != len(value):
                raise TypeError(f"{where}: expected {len(args)} items, got {len(value)}.")
            items = [check_value(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args))]
        else:
            inner = args[0] if args else Any
            items = [check_value(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise TypeError(f"{where}: expected an object, got {type(value).__name__} {value!r}.")
        key_t, val_t = args if args else (str, Any)
        return {
            check_value(k, key_t, f"{where} key"): check_value(v, val_t, f"{where}[{k!r}]")
            for k, v in value.items()
        }
    if dataclasses.is_dataclass(annotation):
        if hasattr(annotation, "from_dict"):
            return annotation.from_dict(value)
        return dataclass_from_dict(annotation, value, where=where)
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{where}: expected a number, got {type(value).__name__} {value!r}.")
        return float(value)
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{where}: expected an integer, got {type(value).__name__} {value!r}.")
        return value
    if annotation in (str, bool):
        if not isinstance(value, annotation):
            raise TypeError(
                f"{where}: expected {annotation.__name__}, got {type(value).__name__} {value!r}."
            )
        return value
    if isinstance(annotation, type):
        if not isinstance(value, annotation):
            raise TypeError(f"{where}: expected {annotation.__name__}, got {type(value).__name__}.")
        return value
    return value


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")
