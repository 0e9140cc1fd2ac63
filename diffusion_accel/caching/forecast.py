"""Forecast reuse (TaylorSeer): extrapolate a skipped output from its last computed values.

Where plain reuse returns a component's (or a block residual's) value from the last step it
ran, :class:`ForecastCache` keeps the last ``order + 1`` computed values per guidance branch and
predicts the value at the current step with the Newton polynomial through them (finite
differences in step index, as TaylorSeer's Taylor expansion): order 1 continues the last change
linearly, order 2 also its curvature. With fewer stored values than ``order + 1`` it uses the
highest order they allow (one value: plain reuse).

Example:
    >>> import torch
    >>> from diffusion_accel.caching.state import CacheStats
    >>> cache = ForecastCache(CacheStats(), order=1)
    >>> cache.add("cond", 0, torch.tensor([1.0])); cache.add("cond", 3, torch.tensor([4.0]))
    >>> cache.predict("cond", 5)
    tensor([6.])
"""

from __future__ import annotations

from typing import Any

import torch

from .state import CacheStats, tensor_bytes

__all__ = ["ForecastCache", "newton_extrapolate"]


def _map(fn, values: list[Any]) -> Any:
    """Apply ``fn`` to the lists of matching tensors in the same-structured ``values``; a non-tensor
    leaf (e.g. ``None``) is taken from the latest value."""
    latest = values[-1]
    if torch.is_tensor(latest):
        return fn(values)
    if isinstance(latest, (tuple, list)):
        return type(latest)(_map(fn, [v[i] for v in values]) for i in range(len(latest)))
    if isinstance(latest, dict):
        return {key: _map(fn, [v[key] for v in values]) for key in latest}
    return latest


def newton_extrapolate(steps: list[int], values: list[torch.Tensor], step: int) -> torch.Tensor:
    """Value at ``step`` of the polynomial through ``(steps[i], values[i])`` (``steps`` ascending).

    Divided differences are taken in float32 at least (fp16/bf16 differences of close values
    would round away) and the result is cast back to the values' dtype.
    """
    dtype = values[-1].dtype
    work = torch.promote_types(dtype, torch.float32)
    table = [v.to(work) for v in values]  # the running column of divided differences
    result = table[-1].clone()
    factor = 1.0
    for order in range(1, len(values)):
        table = [(table[i + 1] - table[i]) / (steps[i + order] - steps[i]) for i in range(len(table) - 1)]
        factor *= step - steps[len(steps) - order]
        result = result + factor * table[-1]
    return result.to(dtype)


class ForecastCache:
    """Per guidance branch, the last ``order + 1`` computed ``(step, value)`` pairs, with byte
    accounting into a :class:`~.state.CacheStats`; ``predict`` extrapolates to a later step."""

    def __init__(self, stats: CacheStats, order: int = 1) -> None:
        if order not in (1, 2):
            raise ValueError(f"forecast order must be 1 or 2, got {order!r}.")
        self._stats = stats
        self.order = order
        self._history: dict[str, list[tuple[int, Any]]] = {}

    def __contains__(self, branch: str) -> bool:
        return branch in self._history

    def add(self, branch: str, step: int, value: Any) -> None:
        """Record the value computed at ``step`` (after every earlier one), keeping ``order + 1``."""
        if branch in self._history and step <= self._history[branch][-1][0]:
            self.drop(branch)  # a new sampling pass started: earlier values are from another trajectory
        history = self._history.setdefault(branch, [])
        while len(history) > self.order:  # forget the oldest first: the peak never holds order + 2
            self._stats.add_bytes(-tensor_bytes(history.pop(0)[1]))
        history.append((step, value))
        self._stats.add_bytes(tensor_bytes(value))

    def predict(self, branch: str, step: int) -> Any:
        history = self._history[branch]
        steps = [s for s, _ in history]
        return _map(lambda values: newton_extrapolate(steps, values, step), [v for _, v in history])

    def drop(self, branch: str) -> None:
        for _, value in self._history.pop(branch, []):
            self._stats.add_bytes(-tensor_bytes(value))

    def clear(self) -> None:
        for branch in list(self._history):
            self.drop(branch)
