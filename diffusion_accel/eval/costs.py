"""The measured cost of every variant of an evaluation run: MACs, peak memory, operator shares, latency.

After generation, the main process alone measures one batch per variant (:func:`measure_costs`,
cached per variant in ``<out>/<name>/cost.json``) and then times every variant in interleaved
rounds (:func:`interleaved_latency`, cached in ``<out>/latency.json``; the machine's CPU, threads,
torch version and device in ``<out>/environment.json``).

Peak memory is measured for every variant first -- each from a clean state (garbage collected,
freed memory returned to the system: :func:`~.latency.release_memory`) -- and only then are MACs
counted and operators profiled, so that no variant's profiler run inflates another's peak and
identical configs report the same memory whatever their order.

Example:
    >>> # costs = measure_costs(pipe, [("baseline", AccelerationConfig())], batch, {}, "eval-out", "cpu")
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator
from typing import Any

import torch

from .._diffusers import progress_bar_disabled
from ..api import apply, find_denoisers, remove
from ..config import AccelerationConfig
from ..utils import atomic_write_json
from .generate import item_call_inputs
from .latency import (
    MacsResult,
    count_macs,
    machine_environment,
    operator_breakdown,
    peak_memory,
    release_memory,
    summarize_times,
    time_call,
)
from .settings import COST_MEASURES

__all__ = ["BASELINE", "COST_FILE", "ENVIRONMENT_FILE", "LATENCY_FILE", "batch_call", "interleaved_latency",
           "latency_environment", "macs_counter", "measure_costs", "use_variant"]

BASELINE = "baseline"
COST_FILE = "cost.json"
LATENCY_FILE = "latency.json"
ENVIRONMENT_FILE = "environment.json"


def use_variant(pipe: Any, name: str, config: AccelerationConfig) -> None:
    """Give ``pipe`` the acceleration of variant ``name`` (none for the baseline)."""
    remove(pipe)
    if name != BASELINE:
        apply(pipe, config)


def batch_call(pipe: Any, batch: list, call_kwargs: dict[str, Any]) -> Callable[[], Any]:
    """One pipeline call of ``batch`` (its items' seeds), as the generation makes it."""
    def call() -> Any:
        generators = [torch.Generator("cpu").manual_seed(it.seed) for it in batch]
        with torch.no_grad():
            return pipe(**item_call_inputs(batch), generator=generators, output_type="np", **call_kwargs)

    return call


def macs_counter(pipe: Any, counted: dict[str, MacsResult], name: str) -> Callable[[Callable[[], Any]], Any]:
    """A ``wrap_first_batch`` for :func:`~.generate.generate_images` that stores the call's MACs in ``counted[name]``."""
    def count(run: Callable[[], Any]) -> Any:
        output: list[Any] = []
        counted[name] = count_macs(lambda: output.append(run()), [m for _, m in find_denoisers(pipe)])
        return output[0]

    return count


@contextlib.contextmanager
def _bar(show: bool, **kwargs: Any) -> Iterator[Any]:
    """A tqdm progress bar (disabled unless ``show``), closed on exit."""
    from tqdm.auto import tqdm

    bar = tqdm(disable=not show, dynamic_ncols=True, **kwargs)
    try:
        yield bar
    finally:
        bar.close()


def _read_json(path: str) -> Any:
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def measure_costs(pipe: Any, variants: list[tuple[str, AccelerationConfig]], batch: list,
                  call_kwargs: dict[str, Any], out: str, device: torch.device | str,
                  measure: tuple[str, ...] = COST_MEASURES, counted: dict[str, MacsResult] | None = None,
                  progress: bool = False) -> dict[str, dict[str, Any]]:
    """name -> the ``measure`` costs (MACs, peak memory, operator shares) of one call of ``batch``
    (cached in ``<out>/<name>/cost.json``); measures left out are ``None``. ``counted``: MACs already
    counted per variant (while generating). ``progress``: a tqdm bar (one step per measurement, with
    the time left)."""
    costs = {name: _read_json(os.path.join(out, name, COST_FILE)) for name, _ in variants}
    todo = [(name, config) for name, config in variants if costs[name] is None]
    for name, _ in todo:
        costs[name] = {"peak_memory_bytes": None, "peak_memory_source": None, "operator_shares": None,
                       "macs": None, "pipeline_macs": None, "uncounted_ops": [], "batch_size": len(batch)}
    call = batch_call(pipe, batch, call_kwargs)
    counted = counted or {}
    # Memory first: nothing measured before it (a profiler run, a MAC count) can inflate a peak.
    passes = [what for what in ("memory", "macs", "operators") if what in measure]
    steps = sum(1 for what in passes for name, _ in todo if not (what == "macs" and name in counted))
    with progress_bar_disabled(pipe), _bar(progress, total=steps, desc="cost", unit="call") as bar:
        for what in passes:
            for name, config in todo:
                if what == "macs" and name in counted:
                    _set_macs(costs[name], counted[name])
                    continue
                bar.set_postfix_str(f"{what} of {name}", refresh=False)
                use_variant(pipe, name, config)
                if what == "memory":
                    release_memory(device)
                    costs[name]["peak_memory_bytes"], costs[name]["peak_memory_source"] = peak_memory(call, device)
                elif what == "macs":
                    _set_macs(costs[name], count_macs(call, [m for _, m in find_denoisers(pipe)]))
                else:
                    costs[name]["operator_shares"] = operator_breakdown(call, device)
                bar.update(1)
    for name, _ in todo:
        atomic_write_json(os.path.join(out, name, COST_FILE), costs[name])
    return costs


def _set_macs(cost: dict[str, Any], macs: MacsResult) -> None:
    # A count that missed operators without a flop formula is unknown, not small.
    cost.update(macs=None if macs.uncounted_in_modules else macs.modules,
                pipeline_macs=None if macs.uncounted_ops else macs.total, uncounted_ops=macs.uncounted_ops)


def interleaved_latency(pipe: Any, variants: list[tuple[str, AccelerationConfig]], batch: list,
                        call_kwargs: dict[str, Any], out: str, runs: int, warmup: int,
                        device: torch.device | str, progress: bool = False) -> dict[str, dict[str, Any]]:
    """Latency of every variant, timed in ``runs`` rounds that each time every variant once (after
    ``warmup`` calls), so a drift in machine load affects all variants alike (cached in ``latency.json``).
    A cache lacking a variant (a config added to the run) is measured again for all variants, so
    that every speed-up comes from the same rounds. ``progress``: a tqdm bar (one step per call,
    warm-up included, with the time left)."""
    path = os.path.join(out, LATENCY_FILE)
    cached = _read_json(path)
    if cached is not None and all(name in cached for name, _ in variants):
        return cached
    times: dict[str, list[float]] = {name: [] for name, _ in variants}
    call = batch_call(pipe, batch, call_kwargs)
    total = runs * len(variants) * (1 + warmup)
    with progress_bar_disabled(pipe), _bar(progress, total=total, desc="latency", unit="call") as bar:
        for _ in range(runs):
            for name, config in variants:
                use_variant(pipe, name, config)
                bar.set_postfix_str(name, refresh=False)
                for _ in range(warmup):
                    call()
                    bar.update(1)
                times[name].append(time_call(call, device))
                bar.update(1)
    latencies = {name: summarize_times(t, warmup).to_dict() for name, t in times.items()}
    atomic_write_json(os.path.join(out, ENVIRONMENT_FILE), machine_environment(device))
    atomic_write_json(path, latencies)
    return latencies


def latency_environment(out: str) -> dict[str, Any] | None:
    """The machine the latencies of ``out`` were timed on (:func:`~.latency.machine_environment`),
    ``None`` for a run timed before it was recorded."""
    return _read_json(os.path.join(out, ENVIRONMENT_FILE))
