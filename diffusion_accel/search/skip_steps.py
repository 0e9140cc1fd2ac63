"""Which steps to skip at a target compute: a measured local search over step-skip sets.

A step-skip schedule reuses every block at the skipped steps (with block residuals, say), so
skipping ``count`` of ``steps`` steps costs ``(steps - count) / steps`` of the full compute -- the
target compute fixes ``count``, and the search only decides *where* the skipped steps go. Step 0
always computes (nothing to reuse yet).

:func:`search_skipped_steps` hill-climbs on a caller's ``score`` (measured quality on calibration
prompts, higher is better; never the prompts the result is reported on):

1. Start from ``start`` (default :func:`spread_skips`: the computed steps spread evenly over
   ``0 .. steps - 1``, first and last included).
2. A round scores every neighbour -- one skipped step moved by ``±1 .. ±reach`` onto a computed
   step -- and moves to the best one if it beats the current set by more than ``min_gain``;
   otherwise the search stops. Scores are memoised, so a set is never measured twice.
3. ``max_evaluations`` bounds the measurements (the start counts as one).

Deterministic: the same ``score`` gives the same path (neighbours in a fixed order, ties to the
first).

Example:
    >>> target = (1, 2, 3, 5)                                 # the best set of this toy score
    >>> found = search_skipped_steps(lambda s: -sum(abs(a - b) for a, b in zip(s, target)), 10, 4)
    >>> found.skipped, found.score
    ((1, 2, 3, 5), 0.0)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["SkipSearchResult", "search_skipped_steps", "spread_skips"]


@dataclass(frozen=True)
class SkipSearchResult:
    """The best set found (sorted skipped steps), its score, and every ``(set, score)`` measured, in order."""

    skipped: tuple[int, ...]
    score: float
    evaluations: tuple[tuple[tuple[int, ...], float], ...]


def _check(steps: int, count: int) -> None:
    for name, value in (("steps", steps), ("count", count)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be an integer, got {value!r}.")
    if steps < 2 or not 0 <= count <= steps - 1:
        raise ValueError(f"count must lie in 0..steps - 1 = 0..{steps - 1} (step 0 always computes) and steps "
                         f"must be >= 2, got steps={steps}, count={count}.")


def spread_skips(steps: int, count: int) -> tuple[int, ...]:
    """The skipped steps when the ``steps - count`` computed steps are spread evenly over
    ``0 .. steps - 1`` (first and last included when two or more compute)."""
    _check(steps, count)
    computed = steps - count
    if computed == 1:
        kept = {0}
    else:
        kept = {int(round(x)) for x in np.linspace(0, steps - 1, computed)}
    return tuple(s for s in range(steps) if s not in kept)


def _neighbours(skipped: tuple[int, ...], steps: int, reach: int) -> list[tuple[int, ...]]:
    taken, out = set(skipped), []
    for i, step in enumerate(skipped):
        for delta in [d for r in range(1, reach + 1) for d in (-r, r)]:
            moved = step + delta
            if 1 <= moved < steps and moved not in taken:
                candidate = tuple(sorted(skipped[:i] + (moved,) + skipped[i + 1:]))
                if candidate not in out:
                    out.append(candidate)
    return out


def search_skipped_steps(score: Callable[[tuple[int, ...]], float], steps: int, count: int, *,
                         start: Sequence[int] | None = None, reach: int = 1, max_evaluations: int = 200,
                         min_gain: float = 0.0) -> SkipSearchResult:
    """Hill-climb over sets of ``count`` skipped steps of ``steps`` (see the module doc)."""
    _check(steps, count)
    if isinstance(reach, bool) or not isinstance(reach, int) or reach < 1:
        raise ValueError(f"reach must be an integer >= 1, got {reach!r}.")
    if isinstance(max_evaluations, bool) or not isinstance(max_evaluations, int) or max_evaluations < 1:
        raise ValueError(f"max_evaluations must be an integer >= 1, got {max_evaluations!r}.")
    current = tuple(sorted(int(s) for s in (spread_skips(steps, count) if start is None else start)))
    if len(set(current)) != count or any(not 1 <= s < steps for s in current):
        raise ValueError(f"start must hold {count} distinct steps in 1..{steps - 1}, got {list(current)}.")
    seen: dict[tuple[int, ...], float] = {}

    def measure(candidate: tuple[int, ...]) -> float:
        if candidate not in seen:
            seen[candidate] = float(score(candidate))
        return seen[candidate]

    best = measure(current)
    while len(seen) < max_evaluations:
        fresh = [c for c in _neighbours(current, steps, reach) if c not in seen]
        if not fresh:
            break
        scored = [(measure(c), c) for c in fresh[: max_evaluations - len(seen)]]
        top_score, top = max(scored, key=lambda item: item[0])  # max keeps the first of equal scores
        if top_score <= best + min_gain:
            break
        best, current = top_score, top
    return SkipSearchResult(current, best, tuple(seen.items()))
