"""What the benchmark scripts share: their parser, thread set-up, interleaved timing and JSON output.

Imported by the scripts in this folder (``python benchmarks/<name>.py`` puts the folder on
``sys.path``); never by the package.

Example::

    >>> from _common import interleaved_times
    >>> times = interleaved_times({"a": lambda: None, "b": lambda: None}, repeats=3)
    >>> sorted(times), len(times["a"]["wall"]), len(times["a"]["cpu"])
    (['a', 'b'], 3, 3)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable

import torch


def argument_parser(doc: str | None) -> argparse.ArgumentParser:
    """A parser whose ``--help`` shows the script's docstring ``doc`` as written."""
    return argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def add_model_arguments(parser: argparse.ArgumentParser, *, steps: int, batch: int,
                        steps_help: str | None = None, batch_help: str = "prompts per call") -> None:
    """``--model`` (``benchmark`` or ``tiny:<name>``, read by ``caching.load``), ``--steps``, ``--batch``."""
    parser.add_argument("--model", default="benchmark", help="'benchmark' or 'tiny:<name>'")
    parser.add_argument("--steps", type=int, default=steps, help=steps_help)
    parser.add_argument("--batch", type=int, default=batch, help=batch_help)


def set_threads(threads: int) -> int:
    """Use ``threads`` torch threads; returns the count torch reports (what a result records)."""
    torch.set_num_threads(threads)
    return torch.get_num_threads()


def log(message: str) -> None:
    """A progress line on stderr (stdout carries the JSON)."""
    print(message, file=sys.stderr, flush=True)


def cpu_name() -> str:
    """The CPU's model name from ``/proc/cpuinfo``, else ``platform.processor()``, else ``"unknown"``."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def interleaved_times(fns: dict[object, Callable[[], object]], repeats: int, warmup: int = 0) -> dict:
    """Run every fn once per round, ``repeats`` rounds after ``warmup`` untimed rounds.

    Returns ``{name: {"wall": [s, ...], "cpu": [s, ...]}}``: wall-clock seconds and the process's
    CPU seconds of each call. With one torch thread the CPU time leaves out the time the process
    waits for a core, so on a shared machine it is the steadier of the two.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {name: {"wall": [], "cpu": []} for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            c0, t0 = time.process_time(), time.perf_counter()
            fn()
            times[name]["wall"].append(time.perf_counter() - t0)
            times[name]["cpu"].append(time.process_time() - c0)
    return times


def run_accelerated(pipe, config, call: Callable[[], object], report_field: str | None = None) -> tuple:
    """``call()`` with the ``AccelerationConfig`` ``config`` applied to ``pipe``, removed afterwards (also
    on error). Returns ``(output, report)``: ``report_field``'s part of the acceleration report (None
    without ``report_field``)."""
    import diffusion_accel
    from diffusion_accel.api import acceleration_state

    diffusion_accel.apply(pipe, config)
    try:
        output = call()
        report = acceleration_state(pipe).report()[report_field] if report_field else None
    finally:
        diffusion_accel.remove(pipe)
    return output, report


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """``||out - ref|| / ||ref||`` in float64."""
    return float((out.double() - ref.double()).norm() / ref.double().norm())


def emit_json(result, out: str | None = None, *, indent: int = 1, default: Callable | None = None) -> str:
    """Print ``result`` as JSON on stdout and, with ``out``, also write it there (folders created)."""
    text = json.dumps(result, indent=indent, default=default)
    print(text)
    if out:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        with open(out, "w", encoding="utf-8") as fh:
            fh.write(text + "\n")
    return text


def merge_rows(earlier: list[dict], new: list[dict]) -> list[dict]:
    """``earlier`` rows whose ``name`` is not in ``new``, then ``new`` (a re-run row replaces its old one).

    >>> merge_rows([{"name": "a", "v": 1}, {"name": "b", "v": 1}], [{"name": "a", "v": 2}])
    [{'name': 'b', 'v': 1}, {'name': 'a', 'v': 2}]
    """
    names = {row["name"] for row in new}
    return [row for row in earlier if row["name"] not in names] + list(new)


def read_results(path: str, default=None):
    """The JSON results file at ``path``, or ``default`` when it does not exist yet."""
    if not os.path.exists(path):
        return default
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def write_results(path: str, result) -> None:
    """Write ``result`` as indented JSON to ``path`` (folders created)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(result, fh, indent=1)
        fh.write("\n")
