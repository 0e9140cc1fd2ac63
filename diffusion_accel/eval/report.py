"""Results files and reports of a sweep: ``results.json``, ``results.csv``, ``pareto.png``, ``report.md``.

JSON has no infinity: non-finite floats (e.g. the PSNR of identical images, ``inf``) are written
as the strings ``"inf"``, ``"-inf"`` and ``"nan"``; :func:`load_results` turns them back into floats.
The CSV writes them the same way and JSON-encodes nested values (``config``, ``latency``, ...).

The Pareto plot has one panel per available quality metric (``fid``, ``clip_score``, ``psnr``,
``ssim``; videos add ``frame_consistency``, ``fvd`` -- or ``fvd_vs_baseline`` when there are no
reference clips -- and ``temporal_error``) against the speed-up; the non-dominated
configurations (no other one is at least as fast and at least as good, and strictly better in
one) are joined by a line and ringed. Videos are shown in report.md as animated GIF previews
(Pillow), linked to their ``.npy``.

Example:
    >>> pareto_front([1.0, 2.0, 3.0], [30.0, 25.0, 26.0], higher_is_better=True)
    [0, 2]
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..utils import atomic_write_bytes, atomic_write_json, atomic_write_text

__all__ = [
    "QUALITY_METRICS",
    "decode_json_value",
    "encode_json_value",
    "load_results",
    "pareto_front",
    "plot_pareto",
    "write_report",
    "write_results",
]

#: Quality metric -> whether higher is better.
QUALITY_METRICS: dict[str, bool] = {"fid": False, "clip_score": True, "psnr": True, "ssim": True,
                                    "frame_consistency": True, "fvd": False, "fvd_vs_baseline": False,
                                    "temporal_error": False, "fid_vs_baseline": False}
#: Video metrics shown in report.md's table when a record has them.
VIDEO_COLUMNS = ("frame_consistency", "fvd", "fvd_vs_baseline", "flicker", "temporal_error", "psnr_per_video",
                 "ssim_per_video")
#: Folder of a variant's animated previews of its videos (``<out>/<name>/previews/<key>.gif``).
PREVIEWS_DIR = "previews"
_NONFINITE = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}


def encode_json_value(value: Any) -> Any:
    """Recursively replace non-finite floats by ``"inf"``/``"-inf"``/``"nan"``."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: encode_json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [encode_json_value(v) for v in value]
    return value


def decode_json_value(value: Any) -> Any:
    """Inverse of :func:`encode_json_value` (any string ``"inf"``, ``"-inf"``, ``"nan"`` becomes a float)."""
    if isinstance(value, str) and value in _NONFINITE:
        return _NONFINITE[value]
    if isinstance(value, dict):
        return {k: decode_json_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [decode_json_value(v) for v in value]
    return value


def load_results(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read ``results.json`` (a file or the folder holding it), with non-finite floats restored."""
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, "results.json")
    with open(path, encoding="utf-8") as fh:
        return decode_json_value(json.load(fh))


_CSV_FIRST = ["name", "speedup", "macs_ratio", "latency_s", "peak_memory_bytes", "clip_score", "fid", "psnr",
              "ssim", "lpips", "fid_vs_baseline", "max_abs_error", "mean_abs_error", "wasserstein"]


def write_results(records: Sequence[dict[str, Any]], out_dir: str | os.PathLike) -> None:
    """Write ``results.json`` (list of records) and ``results.csv`` (one row per record) atomically."""
    out_dir = os.fspath(out_dir)
    atomic_write_json(os.path.join(out_dir, "results.json"), encode_json_value(list(records)))
    columns = [c for c in _CSV_FIRST if any(c in r for r in records)]
    columns += sorted({k for r in records for k in r} - set(columns))
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for r in records:
        row = []
        for c in columns:
            v = encode_json_value(r.get(c))
            row.append("" if v is None else json.dumps(v) if isinstance(v, (dict, list)) else v)
        writer.writerow(row)
    atomic_write_text(os.path.join(out_dir, "results.csv"), buf.getvalue())


def pareto_front(speedups: Sequence[float], quality: Sequence[float], higher_is_better: bool) -> list[int]:
    """Indices (sorted by speed-up) of the points no other point dominates (pymoo's non-dominated
    sorting; equal points are all kept). ``quality = inf`` in its better direction counts as the best
    possible (e.g. ``psnr = inf`` for the exact baseline); a NaN quality is compared with nothing and
    is always kept."""
    from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting

    q = np.array([float(v) for v in quality], dtype=float)
    # Minimised objectives: slower and worse are larger.
    F = np.column_stack([-np.asarray(speedups, dtype=float), -q if higher_is_better else q])
    comparable = np.flatnonzero(~np.isnan(F).any(axis=1))
    front = set(np.flatnonzero(np.isnan(F).any(axis=1)).tolist())
    if len(comparable):
        front.update(comparable[NonDominatedSorting().do(F[comparable], only_non_dominated_front=True)].tolist())
    return sorted(sorted(front), key=lambda i: speedups[i])


def plot_pareto(records: Sequence[dict[str, Any]], path: str | os.PathLike) -> list[str]:
    """Write the quality-vs-speed-up figure (PNG); returns the metrics plotted."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    def available(metric: str) -> bool:
        return any(_is_number(r.get(metric)) for r in records)

    # The distances to the baseline's own outputs are plotted only for videos without reference clips.
    metrics = [m for m in QUALITY_METRICS if available(m) and m != "fid_vs_baseline"
               and not (m == "fvd_vs_baseline" and available("fvd"))]
    fig = Figure(figsize=(4.2 * max(1, len(metrics)), 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    if not metrics:
        ax = fig.add_subplot(1, 1, 1)
        ax.text(0.5, 0.5, "no quality metric available", ha="center", va="center")
        ax.set_axis_off()
    for k, metric in enumerate(metrics):
        ax = fig.add_subplot(1, len(metrics), k + 1)
        rows = [r for r in records if _is_number(r.get(metric)) and _is_number(r.get("speedup"))]
        finite = [r for r in rows if math.isfinite(r[metric])]
        higher = QUALITY_METRICS[metric]
        top = max((r[metric] for r in finite), default=1.0)
        bottom = min((r[metric] for r in finite), default=0.0)
        span = (top - bottom) or 1.0
        # Non-finite values (PSNR of identical outputs) are drawn just above the finite ones.
        y = [r[metric] if math.isfinite(r[metric]) else (top + 0.15 * span if higher else bottom - 0.15 * span)
             for r in rows]
        x = [r["speedup"] for r in rows]
        ax.scatter(x, y, color="tab:blue", zorder=3)
        for r, xi, yi in zip(rows, x, y):
            label = r["name"] + ("" if math.isfinite(r[metric]) else f" ({r[metric]})")
            ax.annotate(label, (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=7)
        front = pareto_front(x, [r[metric] for r in rows], higher_is_better=higher)
        if front:
            ax.plot([x[i] for i in front], [y[i] for i in front], color="tab:red", zorder=2,
                    label="Pareto front")
            ax.scatter([x[i] for i in front], [y[i] for i in front], s=120, facecolors="none",
                       edgecolors="tab:red", zorder=4)
            ax.legend(fontsize=7, loc="best")
        ax.set_xlabel("speed-up vs baseline (x)")
        ax.set_ylabel(f"{metric} ({'higher' if higher else 'lower'} is better)")
        ax.grid(alpha=0.3)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    atomic_write_bytes(path, buf.getvalue())
    return metrics


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and not (isinstance(v, float) and math.isnan(v))


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return f"{v:.{digits}g}"
    return str(v)


def _grid_png(records: Sequence[dict[str, Any]], out_dir: str, keys: list[str], path: str,
              min_cell: int = 128) -> None:
    from PIL import Image

    from .generate import load_item_array, read_manifest

    manifests = {r["name"]: read_manifest(os.path.join(out_dir, r["name"])) for r in records}
    cells = []
    for key in keys:
        row = []
        for r in records:
            record = manifests[r["name"]].get(key)
            arr = load_item_array(os.path.join(out_dir, r["name"], record["file"])) if record else None
            if arr is not None and arr.ndim == 4:  # video: first, middle and last frame side by side
                arr = np.concatenate([arr[0], arr[len(arr) // 2], arr[-1]], axis=1)
            row.append(arr)
        cells.append(row)
    shapes = [a.shape for row in cells for a in row if a is not None]
    if not shapes:
        return
    h, w = max(s[0] for s in shapes), max(s[1] for s in shapes)
    scale = max(1, math.ceil(min_cell / max(h, 1)))
    pad = 4
    H, W = h * scale, w * scale
    grid = Image.new("RGB", (len(records) * (W + pad) + pad, len(keys) * (H + pad) + pad), (255, 255, 255))
    for i, row in enumerate(cells):
        for j, arr in enumerate(row):
            if arr is None:
                continue
            img = Image.fromarray(arr).resize((arr.shape[1] * scale, arr.shape[0] * scale), Image.NEAREST)
            grid.paste(img, (pad + j * (W + pad), pad + i * (H + pad)))
    buf = io.BytesIO()
    grid.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def write_report(records: Sequence[dict[str, Any]], out_dir: str | os.PathLike, items: Sequence[Any],
                 max_rows: int = 8) -> None:
    """Write ``pareto.png``, ``grid.png`` (rows: items, columns: variants) and ``report.md``; a video
    shown in the report gets an animated GIF preview (``<name>/previews/<key>.gif``)."""
    out_dir = os.fspath(out_dir)
    plotted = plot_pareto(records, os.path.join(out_dir, "pareto.png"))
    shown = list(items)[:max_rows]
    keys = [it.key for it in shown]
    _grid_png(records, out_dir, keys, os.path.join(out_dir, "grid.png"))

    lines = ["# Acceleration evaluation", ""]
    lines += [("Speed-up and MACs are relative to the baseline (full compute, same seeds); `macs_ratio` "
               "2.0 means half the denoising MACs. PSNR, SSIM, LPIPS and the deviations compare each "
               "configuration with the baseline's outputs of the same items; `inf` PSNR means identical "
               "outputs. FID uses the reference images; `fid_vs_baseline` uses the baseline's outputs "
               "as reference."), ""]
    if any("temporal_error" in r for r in records):
        lines += [("Videos: `clip_score` is per frame; `fvd` is the Fréchet video distance (clip-level features) "
                   "to the reference clips and `fvd_vs_baseline` to the full-compute clips; `flicker` is the mean "
                   "change between consecutive frames, `temporal_error` how far the frame-to-frame changes differ "
                   "from the baseline's (frozen or invented motion); `psnr_per_video` / `ssim_per_video` average "
                   "each video's own score."), ""]
    header = ["name", "speedup", "latency_s", "spread", "macs_ratio", "peak_memory_MB", "clip_score", "fid",
              "fid_vs_baseline", "psnr", "ssim", "lpips", "max_abs_error", "wasserstein"]
    header += [c for c in VIDEO_COLUMNS if any(c in r for r in records)]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    for r in records:
        values = dict(r)
        mem = r.get("peak_memory_bytes")
        values["peak_memory_MB"] = None if mem is None else mem / 2**20
        spread = r.get("latency_spread")
        values["spread"] = None if spread is None else f"±{100 * spread:.0f}%"
        row = [_fmt(values.get(h)) for h in header]
        if r.get("speedup_noisy"):
            row[1] += " ⚠"
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "![quality vs speed-up](pareto.png)" if plotted else "", ""]
    lines += _timing_notes(records)

    lines += ["## Time by operator", "", "| name | " + " | ".join(_op_columns(records)) + " |",
              "|" + "---|" * (1 + len(_op_columns(records)))]
    for r in records:
        shares = r.get("operator_shares") or {}
        lines.append(f"| {r['name']} | " + " | ".join(f"{100 * shares.get(c, 0.0):.1f}%"
                                                      for c in _op_columns(records)) + " |")
    lines += ["", "## Outputs side by side", "",
              "Rows are prompts (same seed in every column); columns: " + ", ".join(
                  f"`{r['name']}`" for r in records) + ".", "", "![grid](grid.png)", ""]
    lines.append("| prompt | " + " | ".join(r["name"] for r in records) + " |")
    lines.append("|" + "---|" * (1 + len(records)))
    from .generate import read_manifest

    manifests = {r["name"]: read_manifest(os.path.join(out_dir, r["name"])) for r in records}
    for it in shown:
        cells = []
        for r in records:
            rec = manifests[r["name"]].get(it.key)
            if rec is None:
                cells.append("–")
            elif rec["file"].endswith(".png"):
                cells.append(f'<img src="{r["name"]}/{rec["file"]}" width="128">')
            else:
                gif = _video_preview(out_dir, r["name"], rec)
                cells.append(f'[<img src="{gif}" width="128">]({r["name"]}/{rec["file"]})')
        lines.append(f"| {_escape(it.prompt)} | " + " | ".join(cells) + " |")
    notes = sorted({n for r in records for n in r.get("notes", [])})
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    atomic_write_text(os.path.join(out_dir, "report.md"), "\n".join(lines) + "\n")


def _timing_notes(records: Sequence[dict[str, Any]]) -> list[str]:
    """The machine the latencies were timed on, and a warning for each noisy speed-up."""
    lines = []
    env = next((r["environment"] for r in records if r.get("environment")), None)
    if env:
        device = env.get("device_name") or env.get("device")
        lines += [f"Timed on {env.get('cpu')} ({env.get('cpu_count')} CPUs, {env.get('torch_threads')} torch "
                  f"threads), torch {env.get('torch')}, device {device}. `spread`: how far the timed runs lie "
                  "from their median (±).", ""]
    noisy = [r["name"] for r in records if r.get("speedup_noisy")]
    if noisy:
        lines += [f"⚠ Noisy speed-up ({', '.join(f'`{n}`' for n in noisy)}): its runs or the baseline's spread "
                  "more than ±10 % around the median, so the speed-up is uncertain; rerun with more "
                  "`--latency-runs` on a quiet machine.", ""]
    return lines


def _video_preview(out_dir: str, name: str, record: dict[str, Any], min_size: int = 128,
                   fps: float = 8.0) -> str:
    """Write the animated GIF preview of one stored video (``(F, H, W, 3)`` ``.npy``, upscaled to at
    least ``min_size`` pixels); returns its path relative to ``out_dir``."""
    from PIL import Image

    from .generate import load_item_array

    rel = f"{name}/{PREVIEWS_DIR}/{os.path.splitext(os.path.basename(record['file']))[0]}.gif"
    frames = load_item_array(os.path.join(out_dir, name, record["file"]))
    scale = max(1, math.ceil(min_size / max(1, frames.shape[1])))
    images = [Image.fromarray(f).resize((f.shape[1] * scale, f.shape[0] * scale), Image.NEAREST) for f in frames]
    buf = io.BytesIO()
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)
    atomic_write_bytes(os.path.join(out_dir, rel), buf.getvalue())
    return rel


def _op_columns(records: Sequence[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(c for r in records for c in (r.get("operator_shares") or {})))


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
