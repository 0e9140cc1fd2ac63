"""Per-branch output caches and their statistics, shared by the cache techniques."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["CacheStats", "BranchCache", "tensor_bytes"]


def tensor_bytes(value: Any) -> int:
    """Bytes held by the tensors in ``value`` (a tensor or nested tuple/list/dict of them)."""
    if torch.is_tensor(value):
        return value.numel() * value.element_size()
    if isinstance(value, (tuple, list)):
        return sum(tensor_bytes(v) for v in value)
    if isinstance(value, dict):
        return sum(tensor_bytes(v) for v in value.values())
    return 0


@dataclass
class CacheStats:
    """Counts of computed/reused component calls and the bytes held by caches.

    ``computed``/``reused`` are keyed by ``(denoiser, block, component)`` and count every call
    since the technique was applied. ``bytes`` is what the caches hold now (0 between pipeline
    calls: they are released at the end of each call); ``peak_bytes`` is the most they held at
    once during the last sampling pass (pipeline call), which is the memory caching costs.
    """

    computed: Counter = field(default_factory=Counter)
    reused: Counter = field(default_factory=Counter)
    bytes: int = 0
    peak_bytes: int = 0
    _pass_id: Any = field(default=None, repr=False)

    def start_pass(self, pass_id: Any) -> None:
        """Restart ``peak_bytes`` when a new sampling pass (``StepTracker.pass_id``) begins."""
        if pass_id is not self._pass_id:
            self._pass_id = pass_id
            self.peak_bytes = self.bytes

    def add_bytes(self, delta: int) -> None:
        self.bytes += delta
        self.peak_bytes = max(self.peak_bytes, self.bytes)

    def report(self) -> dict[str, Any]:
        computed, reused = sum(self.computed.values()), sum(self.reused.values())
        return {
            "component_calls_computed": computed,
            "component_calls_reused": reused,
            "cache_bytes": self.bytes,
            "peak_cache_bytes": self.peak_bytes,
        }


class BranchCache:
    """One cached value per guidance branch, with byte accounting into a :class:`CacheStats`."""

    def __init__(self, stats: CacheStats) -> None:
        self._stats = stats
        self._values: dict[str, Any] = {}

    def get(self, branch: str) -> Any:
        return self._values.get(branch)

    def __contains__(self, branch: str) -> bool:
        return branch in self._values

    def put(self, branch: str, value: Any) -> None:
        self._stats.add_bytes(tensor_bytes(value) - tensor_bytes(self._values.get(branch)))
        self._values[branch] = value

    def drop(self, branch: str) -> None:
        if branch in self._values:
            self._stats.add_bytes(-tensor_bytes(self._values.pop(branch)))

    def clear(self) -> None:
        for branch in list(self._values):
            self.drop(branch)
