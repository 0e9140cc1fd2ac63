"""The Pareto frontier of a search: non-dominated schedules, ``frontier.json``, ``pick``, plots.

A frontier entry is a JSON object::

    {"name": "search-g3-4951b7", "origin": "search" | "refine" | "heuristic" | "random",
     "config": {AccelerationConfig},
     "speedup": 2.4,        # 1 / cost: the MAC ratio (cost "macs") or the latency ratio ("latency")
     "macs_ratio": 2.4, "cost": 0.417, "quality": 0.0123, "objectives": [cost, minimised quality],
     "compute_fraction": 0.41, "generation": 5}

A joint search (``space="cache,quant,attention"``) adds ``"latency_model_speedup"`` (full / predicted
seconds of the calibrated latency model, its cost objective) next to ``macs_ratio``, and
``frontier.json`` gets ``"wall_clock": {name: {"seconds", "reference_seconds", "speedup"}}``: the
measured time inside the denoiser of every pick against the reference, interleaved.

``frontier.json`` holds ``{"format", "version", "metric", "cost", "settings", "frontier": [...],
"generalisation": [...]}`` and, when the search validated its picks (:mod:`.validation`),
``"validation": {"prompts", "top", "entries": [...]}`` -- entries as above plus
``validation_quality``, ``validation_objective`` and ``targets`` (the speed-ups they competed for).
:func:`diffusion_accel.eval.sweep.load_configs` reads it directly (each entry's ``config`` and
``name``). :func:`pick` returns the best-quality schedule whose speed-up is at least the target, as
a ready :class:`~diffusion_accel.AccelerationConfig`: at a validated target the best on the
validation prompts, elsewhere the frontier's best on the calibration prompts.

Example:
    >>> import numpy as np
    >>> F = np.array([[1.0, 0.0], [0.5, 0.2], [0.5, 0.3], [0.3, 0.5]])
    >>> non_dominated(F).tolist()
    [0, 1, 3]
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from ..config import AccelerationConfig
from ..utils import atomic_write_json, read_json

__all__ = [
    "FRONTIER_FORMAT",
    "load_frontier",
    "load_validation",
    "non_dominated",
    "pick",
    "pick_entry",
    "plot_frontier",
    "png_plot",
    "save_frontier",
]

FRONTIER_FORMAT = "diffusion-accel/search-frontier"
FRONTIER_VERSION = 1


def non_dominated(F: Any) -> np.ndarray:
    """Indices of the rows of ``F`` ``(n, k)`` (minimised) that no other row dominates (pymoo's
    non-dominated sorting).

    Of rows with identical objectives only the first is kept. Indices are in input order.
    """
    from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting

    F = np.asarray(F, dtype=float)
    if F.ndim != 2:
        raise ValueError(f"Objectives must be a 2-D array (candidates, objectives), got shape {F.shape}.")
    if not len(F):
        return np.zeros(0, dtype=int)
    front = np.sort(NonDominatedSorting().do(F, only_non_dominated_front=True))
    _, first = np.unique(F[front], axis=0, return_index=True)  # first of each group of equal rows
    return front[np.sort(first)].astype(int)


def _read(source: Any) -> Any:
    """A ``frontier.json`` path (or its folder) -> the parsed document; anything else unchanged."""
    if not isinstance(source, (str, os.PathLike)):
        return source
    path = os.fspath(source)
    if os.path.isdir(path):
        path = os.path.join(path, "frontier.json")
    return read_json(path, "frontier file")


def load_validation(source: Any) -> list[dict[str, Any]]:
    """Validated entries (see the module doc) of a ``frontier.json`` path, dict or search result; ``[]``
    when the search did not validate (or ``source`` is a plain list of entries)."""
    source = _read(source)
    if hasattr(source, "validated") and not isinstance(source, dict):
        return list(source.validated)
    if isinstance(source, dict):
        return list((source.get("validation") or {}).get("entries", []))
    return []


def load_frontier(source: Any) -> list[dict[str, Any]]:
    """Frontier entries from a ``frontier.json`` path, a frontier dict, a search result or a list."""
    if hasattr(source, "frontier") and not isinstance(source, dict):
        source = source.frontier
    source = _read(source)
    if isinstance(source, dict):
        if source.get("format") != FRONTIER_FORMAT or "frontier" not in source:
            raise ValueError(f"Not a search frontier (format {source.get('format')!r}, expected {FRONTIER_FORMAT!r}).")
        source = source["frontier"]
    if not isinstance(source, list) or not source:
        raise ValueError("A frontier must be a non-empty list of entries.")
    for i, entry in enumerate(source):
        if not isinstance(entry, dict) or not {"config", "speedup", "objectives"} <= set(entry):
            raise ValueError(f"Frontier entry {i} lacks 'config', 'speedup' or 'objectives'.")
    return source


def pick_entry(frontier: Any, speedup: float) -> dict[str, Any]:
    """The entry to use at ``speedup``: if the search validated that target, the validated entry with
    the best validation quality; otherwise the frontier entry with the best (lowest minimised)
    calibration quality among those with ``speedup >= speedup``."""
    source = _read(frontier)
    entries = load_frontier(source)
    if not isinstance(speedup, (int, float)) or not speedup > 0:
        raise ValueError(f"The target speed-up must be a positive number, got {speedup!r}.")
    validated = [e for e in load_validation(source)
                 if any(abs(t - speedup) <= 1e-9 * speedup for t in e.get("targets", ()))]
    if validated:
        return min(validated, key=lambda e: (e["validation_objective"], -e["speedup"]))
    fast = [e for e in entries if e["speedup"] >= speedup * (1 - 1e-9)]
    if not fast:
        best = max(e["speedup"] for e in entries)
        raise ValueError(
            f"No schedule on the frontier reaches a {speedup:g}x speed-up (the fastest is {best:.3g}x); "
            "pick a lower target or search longer."
        )
    return min(fast, key=lambda e: (e["objectives"][1], -e["speedup"]))


def pick(frontier: Any, speedup: float) -> AccelerationConfig:
    """The best-quality schedule with at least ``speedup`` (``frontier.json`` path, dict, result or list;
    see :func:`pick_entry` for how validated targets are chosen).

    Raises:
        ValueError: no entry reaches the target (the message names the fastest one).
    """
    return AccelerationConfig.from_dict(pick_entry(frontier, speedup)["config"])


def save_frontier(path: str | os.PathLike, entries: Sequence[dict[str, Any]], **extra: Any) -> None:
    """Write ``frontier.json`` atomically (``extra``: ``metric``, ``cost``, ``settings``, ...)."""
    atomic_write_json(path, {"format": FRONTIER_FORMAT, "version": FRONTIER_VERSION, **extra,
                             "frontier": list(entries)})


@contextmanager
def png_plot(path: str | os.PathLike, *, title: str, xlabel: str, ylabel: str) -> Iterator[Any]:
    """Matplotlib axes of a 6 x 4.2 in plot on the Agg canvas (no pyplot state); on leaving the block the
    labels, title, legend and grid are set and the PNG is written to ``path`` atomically.

    >>> with png_plot("/tmp/plot.png", title="t", xlabel="speed-up", ylabel="PSNR") as ax:  # doctest: +SKIP
    ...     ax.plot([1, 2], [30, 25], "-o", label="search")
    """
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from ..utils import atomic_write_bytes

    fig = Figure(figsize=(6, 4.2), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    yield ax
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write_bytes(path, buf.getvalue())


def plot_frontier(path: str | os.PathLike, all_points: np.ndarray, population: np.ndarray,
                  frontier: np.ndarray, heuristics: dict[str, tuple[float, float]], *, metric: str,
                  title: str) -> None:
    """A Pareto plot (speed-up vs quality) as PNG, drawn on matplotlib's Agg canvas (no pyplot state).

    ``all_points``, ``population``, ``frontier``: ``(n, 2)`` arrays of (speed-up, quality value);
    ``heuristics``: name -> (speed-up, quality value), annotated.
    """
    with png_plot(path, title=title, xlabel="speed-up (full / accelerated cost)", ylabel=metric) as ax:
        if len(all_points):
            ax.scatter(all_points[:, 0], all_points[:, 1], s=8, c="#bbbbbb", label="evaluated")
        if len(population):
            ax.scatter(population[:, 0], population[:, 1], s=14, c="#4477aa", label="population")
        if len(frontier):
            order = np.argsort(frontier[:, 0])
            ax.plot(frontier[order, 0], frontier[order, 1], "-o", c="#cc3311", ms=4, label="frontier")
        for name, (x, y) in heuristics.items():
            ax.scatter([x], [y], marker="x", c="k", s=25)
            ax.annotate(name, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        if metric in ("latent_mse", "fid"):
            positive = [a[:, 1][a[:, 1] > 0] for a in (all_points, frontier) if len(a)]
            if any(len(p) for p in positive):
                ax.set_yscale("symlog", linthresh=float(min(p.min() for p in positive if len(p))))
