"""Reuse choices of a search: one reuse mode for every candidate, or a gene choosing it per candidate.

``--reuse`` (``reuse=`` of :func:`~.runner.search_schedule`) takes ``"auto"``, one choice, or several
choices (a comma list or a sequence) that become one categorical gene of the cache space
(:class:`~.space.CacheSpace`). A choice names a :attr:`StaticCacheConfig.reuse` mode and, for
forecasts, the order: ``"outputs"``, ``"block_residual"``, ``"forecast"`` (order 1; ``"forecast1"``
is the same choice) and ``"forecast2"`` (order 2).

Example:
    >>> parse_reuse("block_residual,forecast1,forecast2")
    ('block_residual', 'forecast', 'forecast2')
    >>> parse_reuse("auto"), parse_reuse(["forecast2"])
    ('auto', 'forecast2')
    >>> reuse_kwargs("forecast2")
    {'reuse': 'forecast', 'forecast_order': 2}
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["REUSE_GENE_CHOICES", "parse_reuse", "reuse_choices", "reuse_kwargs", "reuse_token"]

#: the choices of the reuse gene, in gene-value order of a full list; "forecast1" is an alias of "forecast".
REUSE_GENE_CHOICES = ("outputs", "block_residual", "forecast", "forecast2")
_ALIASES = {"forecast1": "forecast"}


def _error(value: Any, why: str) -> ValueError:
    return ValueError(f"reuse must be 'auto' or one of outputs, block_residual, forecast (= forecast1), forecast2, "
                      f"or several of them comma-separated (e.g. --reuse block_residual,forecast1,forecast2); "
                      f"got {value!r} ({why}).")


def parse_reuse(value: Any) -> str | tuple[str, ...]:
    """``--reuse`` / ``reuse=`` -> ``"auto"``, one choice (a string), or a tuple of two or more choices
    (in the order given; they are the reuse gene's values).

    Raises:
        ValueError: an empty, unknown or repeated choice, or ``"auto"`` in a list (the message lists
            the valid ones).
    """
    if isinstance(value, str):
        names = [n.strip() for n in value.split(",")]
    elif isinstance(value, Sequence):
        names = [n.strip() if isinstance(n, str) else n for n in value]
    else:
        names = [value]
    if not names or any(not isinstance(n, str) or not n for n in names):
        raise _error(value, "an empty or non-text choice")
    if names == ["auto"]:
        return "auto"
    bad = [n for n in names if _ALIASES.get(n, n) not in REUSE_GENE_CHOICES]
    if bad:
        raise _error(value, f"unknown choice {bad[0]!r}" + (": 'auto' stands alone" if bad[0] == "auto" else ""))
    choices = tuple(_ALIASES.get(n, n) for n in names)
    if len(set(choices)) != len(choices):
        raise _error(value, "a choice named twice; forecast1 is forecast")
    return choices[0] if len(choices) == 1 else choices


def reuse_choices(reuse: str | Sequence[str]) -> tuple[str, ...]:
    """A resolved ``reuse`` (one choice or several, not ``"auto"``) as a tuple of choices."""
    return (reuse,) if isinstance(reuse, str) else tuple(reuse)


def reuse_kwargs(choice: str) -> dict[str, Any]:
    """One choice -> the ``reuse`` and ``forecast_order`` arguments of :class:`StaticCacheConfig`."""
    if choice == "forecast2":
        return {"reuse": "forecast", "forecast_order": 2}
    return {"reuse": _ALIASES.get(choice, choice), "forecast_order": 1}


def reuse_token(config: Any) -> str:
    """A :class:`StaticCacheConfig`'s choice (inverse of :func:`reuse_kwargs`)."""
    return "forecast2" if config.reuse == "forecast" and config.forecast_order == 2 else config.reuse
