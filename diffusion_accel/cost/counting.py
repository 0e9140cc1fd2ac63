"""MACs of one call, counted with ``torch.utils.flop_counter``'s formulas: :func:`count_macs`.

MACs = FLOPs / 2, in total and inside named modules (e.g. the denoisers). Operators from
non-``aten`` namespaces (custom or Triton kernels, oneDNN int8 GEMMs) have no flop formula unless
their author registered one (``torch.utils.flop_counter.register_flop_formula``); they are listed
in ``uncounted_ops`` so a lower MAC count is never silently an artefact.

Example:
    >>> import torch
    >>> layer = torch.nn.Linear(64, 64)
    >>> count_macs(lambda: layer(torch.randn(8, 64))).total
    32768
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

__all__ = ["MacsResult", "count_macs"]


@dataclass
class MacsResult:
    """Multiply-accumulates of one call: ``total`` and inside the ``modules`` named when counting.

    ``uncounted_ops`` lists operators without a flop formula met anywhere in the call;
    ``uncounted_in_modules`` those met inside the modules. When a list is not empty the matching
    count misses those operators' MACs (treat it as unknown).
    """

    total: int
    modules: int
    uncounted_ops: list[str] = field(default_factory=list)
    uncounted_in_modules: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _MacCounter(torch.utils._python_dispatch.TorchDispatchMode):
    """One dispatch mode that prices every operator with ``torch.utils.flop_counter``'s formula
    registry (the formulas ``FlopCounterMode`` uses), adds the FLOPs to the total and, while a
    watched module runs, to the modules' total, and records operators outside ``aten``/``prims``
    that have no formula. One mode instead of nested ones: counting costs about one more call."""

    def __init__(self, modules: Iterable[torch.nn.Module]) -> None:
        super().__init__()
        self.total = 0
        self.inside_total = 0
        self.depth = 0
        self.names: set[str] = set()
        self.names_inside: set[str] = set()
        self.handles = []
        for m in modules:
            self.handles.append(m.register_forward_pre_hook(self._enter))
            self.handles.append(m.register_forward_hook(self._leave))

    def _enter(self, module, args) -> None:
        self.depth += 1

    def _leave(self, module, args, output) -> None:
        self.depth -= 1

    def remove(self) -> None:
        for h in self.handles:
            h.remove()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        from torch.utils.flop_counter import flop_registry

        kwargs = kwargs or {}
        formula = flop_registry.get(getattr(func, "_overloadpacket", func))
        if formula is None and getattr(func, "namespace", None) == "aten":
            # Under inference_mode composite ops (aten.linear, ...) reach the mode undecomposed:
            # price their decomposition, as FlopCounterMode does.
            with self:
                decomposed = func.decompose(*args, **kwargs)
            if decomposed is not NotImplemented:
                return decomposed
        out = func(*args, **kwargs)
        if formula is not None:
            flops = int(formula(*args, **kwargs, out_val=out))
            self.total += flops
            if self.depth > 0:
                self.inside_total += flops
        elif getattr(func, "namespace", "aten") not in ("aten", "prims"):
            name = f"{func.namespace}::{getattr(func, '_opname', func)}"
            self.names.add(name)
            if self.depth > 0:
                self.names_inside.add(name)
        return out


def count_macs(fn: Callable[[], Any], modules: Iterable[torch.nn.Module] = ()) -> MacsResult:
    """MACs (FLOPs / 2) of one ``fn()`` call, in total and inside ``modules`` (e.g. the denoisers;
    a module that is skipped or not called contributes nothing; nested modules count once)."""
    counter = _MacCounter(modules)
    try:
        with torch.no_grad(), counter:
            fn()
    finally:
        counter.remove()
    return MacsResult(total=counter.total // 2, modules=counter.inside_total // 2,
                      uncounted_ops=sorted(counter.names), uncounted_in_modules=sorted(counter.names_inside))
