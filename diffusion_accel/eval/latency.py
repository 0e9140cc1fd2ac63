"""Cost of a callable (one pipeline call): latency, MACs, peak memory and an operator breakdown.

* :func:`measure_latency`: warm-up runs, then ``runs`` timed runs (``time.perf_counter``,
  synchronising the accelerator before and after each run); median, spread (IQR, std, min, max).
* :func:`count_macs`: the FLOP formulas of ``torch.utils.flop_counter`` around one call; MACs = FLOPs / 2,
  in total and inside the named denoiser modules. Operators from non-``aten`` namespaces (custom
  or Triton kernels, oneDNN int8 GEMMs) have no flop formula unless their author registered one
  (``torch.utils.flop_counter.register_flop_formula``); they are listed in ``uncounted_ops`` so a
  lower MAC count is never silently an artefact.
* :func:`peak_memory`: CUDA/XPU: peak allocator bytes during the call (``max_memory_allocated``);
  CPU: peak resident set size of the process sampled every millisecond during the call.
* :func:`operator_breakdown`: ``torch.profiler`` over one call; the time of each top-level ``aten``
  operator is assigned to ``attention``, ``linear``, ``convolution`` or ``other`` by
  :data:`OPERATOR_CATEGORIES`; returns each category's share of the operator time.

Example:
    >>> import torch
    >>> layer = torch.nn.Linear(64, 64)
    >>> x = torch.randn(8, 64)
    >>> measure_latency(lambda: layer(x), warmup=1, runs=3).runs
    3
    >>> count_macs(lambda: layer(x)).total
    32768
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

__all__ = [
    "OPERATOR_CATEGORIES",
    "LatencyResult",
    "MacsResult",
    "count_macs",
    "measure_latency",
    "operator_breakdown",
    "peak_memory",
    "summarize_times",
    "synchronize",
    "time_call",
]


def synchronize(device: torch.device | str | None) -> None:
    """Wait for queued work on ``device`` (no-op on CPU)."""
    if device is None:
        return
    device = torch.device(device)
    module = getattr(torch, device.type, None)
    if device.type != "cpu" and module is not None and hasattr(module, "synchronize"):
        module.synchronize(device)


@dataclass
class LatencyResult:
    """Seconds per call: ``median_s`` is the headline; ``times_s`` are the timed runs in order."""

    median_s: float
    mean_s: float
    std_s: float
    iqr_s: float
    min_s: float
    max_s: float
    runs: int
    warmup: int
    times_s: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def measure_latency(fn: Callable[[], Any], *, warmup: int = 1, runs: int = 5,
                    device: torch.device | str | None = None) -> LatencyResult:
    """Time ``fn()``: ``warmup`` untimed calls, then ``runs`` timed calls."""
    if not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup must be a non-negative integer, got {warmup!r}.")
    if not isinstance(runs, int) or runs < 1:
        raise ValueError(f"runs must be a positive integer, got {runs!r}.")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        times.append(time_call(fn, device))
    return summarize_times(times, warmup)


def time_call(fn: Callable[[], Any], device: torch.device | str | None = None) -> float:
    """Seconds of one ``fn()`` call, the accelerator synchronised before and after."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def summarize_times(times: list[float], warmup: int = 0) -> LatencyResult:
    """Median, mean, spread of timed runs (seconds)."""
    if not times:
        raise ValueError("summarize_times needs at least one timed run.")
    runs = len(times)
    quartiles = statistics.quantiles(times, n=4, method="inclusive") if runs > 1 else [times[0]] * 3
    return LatencyResult(
        median_s=statistics.median(times),
        mean_s=statistics.fmean(times),
        std_s=statistics.stdev(times) if runs > 1 else 0.0,
        iqr_s=quartiles[2] - quartiles[0],
        min_s=min(times),
        max_s=max(times),
        runs=runs,
        warmup=warmup,
        times_s=list(times),
    )


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


def peak_memory(fn: Callable[[], Any], device: torch.device | str | None = None) -> tuple[int, str]:
    """Peak memory of one ``fn()`` call: ``(bytes, source)`` with source ``"<device> allocator"``
    (peak allocated bytes on an accelerator) or ``"process RSS"`` (CPU: peak resident set of the whole
    process, weights included, sampled every millisecond)."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    module = getattr(torch, device.type, None)
    if device.type != "cpu" and module is not None and hasattr(module, "max_memory_allocated"):
        synchronize(device)
        module.reset_peak_memory_stats(device)
        fn()
        synchronize(device)
        return int(module.max_memory_allocated(device)), f"{device.type} allocator"
    import psutil

    proc = psutil.Process()
    peak = proc.memory_info().rss
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, proc.memory_info().rss)
            stop.wait(0.001)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        fn()
    finally:
        stop.set()
        thread.join()
    return int(max(peak, proc.memory_info().rss)), "process RSS"


#: Operator category -> substrings of top-level ``aten`` operator names (first match wins, in
#: this order). Operators that match none are ``other``.
OPERATOR_CATEGORIES: dict[str, tuple[str, ...]] = {
    "attention": ("scaled_dot_product", "flash_attention", "efficient_attention", "aten::bmm",
                  "aten::baddbmm", "softmax"),
    "linear": ("aten::linear", "aten::addmm", "aten::mm", "aten::matmul", "_int_mm", "qlinear"),
    "convolution": ("conv",),
}


def _category(name: str, categories: dict[str, tuple[str, ...]]) -> str:
    for category, patterns in categories.items():
        if any(p in name for p in patterns):
            return category
    return "other"


def operator_breakdown(fn: Callable[[], Any], device: torch.device | str | None = None,
                       categories: dict[str, tuple[str, ...]] | None = None) -> dict[str, float]:
    """Share of operator time per category over one ``fn()`` call (shares sum to 1).

    Only outermost operators are counted (an ``aten::linear`` includes the ``aten::addmm`` it
    calls), using CPU time on CPU and device time on accelerators.
    """
    from torch.profiler import ProfilerActivity, profile

    categories = OPERATOR_CATEGORIES if categories is None else categories
    device = torch.device(device) if device is not None else torch.device("cpu")
    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        fn()
        synchronize(device)
    totals = {name: 0.0 for name in (*categories, "other")}
    for event in prof.events():
        if not _is_outermost_op(event):
            continue
        if device.type == "cpu":
            spent = event.cpu_time_total
        else:
            spent = getattr(event, "device_time_total", 0.0) or getattr(event, "cuda_time_total", 0.0)
        totals[_category(event.name, categories)] += float(spent)
    whole = sum(totals.values())
    return {k: (v / whole if whole > 0 else 0.0) for k, v in totals.items()}


def _is_outermost_op(event: Any) -> bool:
    if not _is_op(event.name):
        return False
    parent = event.cpu_parent
    while parent is not None:
        if _is_op(parent.name):
            return False
        parent = parent.cpu_parent
    return True


def _is_op(name: str) -> bool:
    return "::" in name and not name.startswith("autograd::")
