"""Cost of a callable (one pipeline call): latency, MACs, peak memory and an operator breakdown.

* :func:`measure_latency`: warm-up runs, then ``runs`` timed runs (``time.perf_counter``,
  synchronising the accelerator before and after each run); median, spread (IQR, std, min, max).
* :func:`count_macs` (from :mod:`diffusion_accel.cost.counting`, where the schedule search uses it
  too): MACs of one call, in total and inside the named denoiser modules.
* :func:`peak_memory`: CUDA/XPU: peak allocator bytes during the call (``max_memory_allocated``);
  CPU: peak resident set size of the process sampled every millisecond during the call.
* :func:`machine_environment`: CPU model, threads, torch version and device a latency was measured on.
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
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from ..cost.counting import MacsResult, count_macs

__all__ = [
    "OPERATOR_CATEGORIES",
    "LatencyResult",
    "MacsResult",
    "count_macs",
    "machine_environment",
    "measure_latency",
    "operator_breakdown",
    "peak_memory",
    "release_memory",
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


def release_memory(device: torch.device | str | None = None) -> None:
    """Collect garbage and return freed memory to the system (glibc's ``malloc_trim``; the accelerator's
    cache), so that a peak measured next starts from the memory that is really in use."""
    import ctypes
    import gc

    gc.collect()
    device = torch.device(device) if device is not None else torch.device("cpu")
    module = getattr(torch, device.type, None)
    if device.type != "cpu" and module is not None and hasattr(module, "empty_cache"):
        module.empty_cache()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


def machine_environment(device: torch.device | str | None = None) -> dict[str, Any]:
    """What a latency depends on besides the model: ``cpu`` (model name), ``cpu_count``,
    ``torch_threads``, ``torch`` (version), ``device`` (and ``device_name`` for an accelerator),
    ``python``, ``platform``."""
    import os
    import platform

    device = torch.device(device) if device is not None else torch.device("cpu")
    env: dict[str, Any] = {"cpu": _cpu_model() or platform.processor() or platform.machine(),
                           "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                           "torch": torch.__version__, "device": str(device)}
    module = getattr(torch, device.type, None)
    if device.type != "cpu" and module is not None and hasattr(module, "get_device_name"):
        env["device_name"] = module.get_device_name(device)
    env.update(python=platform.python_version(), platform=platform.platform())
    return env


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None
