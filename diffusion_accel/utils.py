"""Small shared helpers: atomic file writes and attribute-path lookup."""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

import torch

__all__ = ["atomic_write_text", "atomic_write_json", "atomic_write_bytes", "get_submodule_or_none", "read_json"]


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and ``os.replace``.

    A reader (or a process killed mid-write) sees either the old file or the new one, never
    half of one. The file gets the mode a plain ``open(path, "w")`` would give (``0o666`` minus
    the umask), not ``mkstemp``'s private ``0o600``.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _umask() -> int:
    """The process's file-creation mask (read by setting it and putting it back at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent) + "\n")


def read_json(path: str | os.PathLike, what: str) -> Any:
    """The JSON document at ``path``; a file that is missing, unreadable or not JSON is one ``ValueError``
    naming ``what`` it should hold (``"Cannot read <what> '<path>': <reason>"``)."""
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"Cannot read {what} {os.fspath(path)!r}: {exc}") from exc


def get_submodule_or_none(module: torch.nn.Module, path: str) -> torch.nn.Module | None:
    """``module.get_submodule(path)``, or ``None`` when the path (or a module on it) is missing.

    ``""`` returns ``module`` itself.
    """
    if path == "":
        return module
    current: Any = module
    for part in path.split("."):
        current = getattr(current, part, None)
        if not isinstance(current, torch.nn.Module):
            return None
    return current
