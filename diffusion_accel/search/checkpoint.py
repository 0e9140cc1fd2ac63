"""The search checkpoint: ``<out>/checkpoint.json``, rewritten atomically after every generation.

Contents::

    {"format": "diffusion-accel/search-checkpoint", "version": 1,
     "settings": {...},           # everything the result depends on (see search_schedule)
     "completed": 3,              # rounds done: generations told (1 = the initial population), then
                                  # refinement rounds (settings["refine"])
     "nsga": {...},               # NsgaDriver.state(): population, objectives, rank, crowding, RNG
     "archive": {"0110...": {"cost", "quality", "objective", "macs_ratio", "denoiser_seconds",
                             "generation", "name", "process", ["origin"]}},   # every candidate evaluated
     "history": [{"generation": 0, "population": ["0110...", ...]}]}

A resumed search must have the same settings, except ``generations`` (a search may be extended,
until its refinement rounds have begun).
:func:`check_compatible` compares them and raises one ``ValueError`` naming the differences; a
different search space (another model or step count: another number of schedule bits) gets its
own message. Nothing is written before that check, so a refused resume leaves the file untouched.

Example:
    >>> import tempfile
    >>> out = tempfile.mkdtemp()
    >>> save_checkpoint(out, {"settings": {"seed": 0}, "completed": 1})
    >>> load_checkpoint(out)["completed"]
    1
"""

from __future__ import annotations

import os
from typing import Any

from ..utils import atomic_write_json, read_json

__all__ = ["CHECKPOINT", "RESUMABLE_CHANGES", "check_compatible", "load_checkpoint", "save_checkpoint"]

CHECKPOINT = "checkpoint.json"
_FORMAT = "diffusion-accel/search-checkpoint"
_VERSION = 1

#: settings that may differ between a checkpoint and the resumed search.
RESUMABLE_CHANGES = ("generations",)


def checkpoint_path(out: str | os.PathLike) -> str:
    return os.path.join(os.fspath(out), CHECKPOINT)


def save_checkpoint(out: str | os.PathLike, data: dict[str, Any]) -> None:
    """Write ``data`` (plus format and version) to ``<out>/checkpoint.json`` atomically."""
    atomic_write_json(checkpoint_path(out), {"format": _FORMAT, "version": _VERSION, **data}, indent=None)


def load_checkpoint(out: str | os.PathLike) -> dict[str, Any] | None:
    """The checkpoint in ``out``, or ``None`` when there is none."""
    path = checkpoint_path(out)
    if not os.path.exists(path):
        return None
    data = read_json(path, "the search checkpoint")
    if not isinstance(data, dict) or data.get("format") != _FORMAT:
        raise ValueError(f"{path!r} is not a schedule-search checkpoint.")
    if data.get("version", 0) > _VERSION:
        raise ValueError(f"{path!r} was written by a newer diffusion-accel (version {data['version']}); upgrade.")
    return data


def check_compatible(saved: dict[str, Any], current: dict[str, Any], out: str | os.PathLike) -> None:
    """Raise ``ValueError`` unless a search with ``current`` settings may resume ``saved``."""
    where = checkpoint_path(out)
    old, new = saved.get("reuse"), current.get("reuse")
    if old != new and (isinstance(old, list) or isinstance(new, list)):
        # a reuse gene (.reuse) on either side: its choices change the layout, say so plainly
        flag = ",".join(old) if isinstance(old, list) else old
        raise ValueError(f"Cannot resume {where}: it searched reuse {old!r} but this search asks for {new!r}. "
                         f"Resume with --reuse {flag} (the same reuse choices), or search into a new --out.")
    old_space, new_space = saved.get("search_space", {}), current.get("search_space", {})
    if old_space != new_space:
        raise ValueError(
            f"Cannot resume {where}: its schedules have {old_space.get('num_bits')} bits "
            f"({_describe(old_space)}) but this model and step count give {new_space.get('num_bits')} bits "
            f"({_describe(new_space)}). Resume with the same model and --steps, or search into a new --out."
        )
    keys = sorted((set(saved) | set(current)) - set(RESUMABLE_CHANGES) - {"search_space"})
    differing = [k for k in keys if saved.get(k) != current.get(k)]
    if differing:
        details = "; ".join(f"{k}: {saved.get(k)!r:.80} -> {current.get(k)!r:.80}" for k in differing)
        raise ValueError(
            f"Cannot resume {where}: settings differ from the checkpoint ({details}). Resume with the same "
            "settings (only --generations may change), or search into a new --out."
        )


def _describe(space: dict[str, Any]) -> str:
    if not space:
        return "unknown layout"
    return (f"{space.get('family')}, {space.get('steps')} steps x {space.get('blocks')} blocks x "
            f"components {space.get('components')}")
