"""Generate held-out prompts with and without acceleration on the bundled benchmark model and
print one table: speed-up (wall clock, same run), MAC ratio, CLIP score, FID on the domain and
PSNR against the un-accelerated images of the same seeds. The table is written to
``<out>/table.txt``; image grids, ``results.json``, ``results.csv``, ``pareto.png`` and
``report.md`` to ``<out>/eval/``.

``diffusion-accel demo --video`` does the same on the bundled video model (a small Wan): per-frame
CLIP score, PSNR per video, frame consistency, flicker and temporal error against the full-compute
clips (no FID: there are no real videos to compare with), and one animated GIF grid per variant in
``<out>/grids/``."""

from __future__ import annotations

import argparse
import math
import os
from typing import Any

from .config import AccelerationConfig

__all__ = ["demo_cache_config", "demo_configs", "run_demo", "format_table", "write_gif_grids", "add_arguments", "run"]

#: Columns of the demo table: (title, record key, format); the video columns only for videos.
TABLE_COLUMNS = (
    ("variant", "name", "{}"),
    ("speedup", "speedup", "{:.2f}x"),
    ("MAC ratio", "macs_ratio", "{:.2f}x"),
    ("CLIP score", "clip_score", "{:.2f}"),
    ("FID", "fid", "{:.4f}"),
    ("PSNR dB", "psnr", "{:.1f}"),
)
VIDEO_TABLE_COLUMNS = (
    ("frame consistency", "frame_consistency", "{:.3f}"),
    ("flicker", "flicker", "{:.4f}"),
    ("temporal error", "temporal_error", "{:.4f}"),
)


def demo_configs(model: Any, num_steps: int) -> list[tuple[str, AccelerationConfig]]:
    """The accelerations the demo compares, built for ``model`` (a denoiser or pipeline).

    The cache schedule is the one the schedule search found for the bundled model
    (:func:`diffusion_accel.assets.benchmark_search_config`, resampled to each call's step
    count) when it fits ``model``; FORA with interval 2 otherwise.
    """
    from .caching import DynamicCacheConfig
    from .quant import QuantConfig

    cache = demo_cache_config(model, num_steps)
    w8a8 = QuantConfig(weight_bits=8, act_bits=8)
    return [
        (f"cache-{cache.schedule.name}", AccelerationConfig(cache=cache)),
        ("cache-dynamic", AccelerationConfig(cache=DynamicCacheConfig(threshold=0.3))),
        ("quant-w8a8", AccelerationConfig(quant=w8a8)),
        (f"cache-{cache.schedule.name}-w8a8", AccelerationConfig(cache=cache, quant=w8a8)),
    ]


def demo_cache_config(model: Any, num_steps: int):
    """The bundled searched cache config if it fits ``model``, else FORA(2); resampled automatically."""
    import dataclasses

    from .assets import benchmark_search_config
    from .caching import CacheSchedule, StaticCacheConfig
    from .caching.schedule import resolve_denoiser

    denoiser = resolve_denoiser(model)
    try:
        cache = benchmark_search_config().cache
        cache.schedule.check_model(denoiser)
    except (FileNotFoundError, ValueError, AttributeError):
        return StaticCacheConfig(CacheSchedule.fora(denoiser, num_steps, 2), auto_resample=True)
    return dataclasses.replace(cache, auto_resample=True)


def format_table(records: list[dict[str, Any]]) -> str:
    """A fixed-width text table of the demo's records."""
    columns = list(TABLE_COLUMNS)
    if any(r.get(key) is not None for r in records for _, key, _ in VIDEO_TABLE_COLUMNS):
        columns += VIDEO_TABLE_COLUMNS

    def cell(record, key, fmt):
        value = record.get(key)
        if value is None:
            return "-"
        if isinstance(value, float) and math.isinf(value):
            return "inf"
        return fmt.format(value)

    rows = [[title for title, _, _ in columns]]
    rows += [[cell(r, key, fmt) for _, key, fmt in columns] for r in records]
    widths = [max(len(row[i]) for row in rows) for i in range(len(columns))]
    lines = ["  ".join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(row, widths))) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def run_demo(
    out: str = "demo-output",
    num_prompts: int = 16,
    num_steps: int = 20,
    model: Any = "benchmark",
    latency_runs: int = 3,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Run the demo on a bundled model (``"benchmark"`` or ``"benchmark-video"``); returns the
    evaluation records (baseline first)."""
    from .assets.bundled import bundled_model
    from .eval.sweep import default_call_kwargs, evaluate, load_pipeline
    from .utils import atomic_write_text

    bundled = bundled_model(model)
    if bundled is None:
        raise ValueError(f"The demo runs on a bundled model ('benchmark' or 'benchmark-video'), not {model!r}; "
                         "use `diffusion-accel eval --model ...` for other models.")
    _claim_demo_folder(out)
    pipe = load_pipeline(model)
    call_kwargs = {**default_call_kwargs(model), "num_inference_steps": num_steps}
    configs = demo_configs(pipe.transformer if hasattr(pipe, "transformer") else pipe, num_steps)
    records = evaluate(
        pipe,
        prompts=f"{bundled.name}:heldout",
        configs=configs,
        out=os.path.join(out, "eval"),
        num_prompts=num_prompts,
        batch_size=num_prompts,
        call_kwargs=call_kwargs,
        clip=bundled.clip,
        reference=f"{bundled.fid_reference}:heldout" if bundled.fid_reference else None,
        latency_runs=latency_runs,
        warmup=0,  # the generation pass before the timed rounds warms every variant up
        measure=("macs",),
        progress=progress,
    )
    table = format_table(records)
    atomic_write_text(os.path.join(out, "table.txt"), table + "\n")
    if bundled.kind == "video":
        write_gif_grids(os.path.join(out, "eval"), [r["name"] for r in records], os.path.join(out, "grids"))
    return records


def write_gif_grids(eval_out: str, names: list[str], folder: str, columns: int = 4, scale: int = 3) -> list[str]:
    """One animated GIF per variant: its videos (``<eval_out>/<name>/images/*.npy``, ``(F, H, W, 3)``
    uint8) tiled ``columns`` wide and scaled ``scale``x; returns the written paths."""
    import glob

    import numpy as np
    from PIL import Image

    os.makedirs(folder, exist_ok=True)
    paths = []
    for name in names:
        files = sorted(glob.glob(os.path.join(eval_out, name, "images", "*.npy")))
        if not files:
            continue
        clips = np.stack([np.load(f) for f in files])  # (N, F, H, W, 3)
        n, f, h, w, c = clips.shape
        rows = -(-n // columns)
        tiles = np.zeros((rows * columns, f, h, w, c), dtype=np.uint8)
        tiles[:n] = clips
        grid = tiles.reshape(rows, columns, f, h, w, c).transpose(2, 0, 3, 1, 4, 5).reshape(f, rows * h, columns * w, c)
        grid = grid.repeat(scale, axis=1).repeat(scale, axis=2)
        frames = [Image.fromarray(frame) for frame in grid]
        path = os.path.join(folder, f"{name}.gif")
        frames[0].save(path, save_all=True, append_images=frames[1:], duration=125, loop=0)
        paths.append(path)
    return paths


_MARKER = ".diffusion-accel-demo"


def _claim_demo_folder(out: str) -> None:
    """Start from an empty ``out``: a previous demo's folder is replaced, anything else refused."""
    import shutil

    if os.path.isdir(out) and os.listdir(out):
        if not os.path.exists(os.path.join(out, _MARKER)):
            raise ValueError(f"{out!r} exists and is not a demo output folder; choose another --out.")
        shutil.rmtree(out)
    os.makedirs(out, exist_ok=True)
    open(os.path.join(out, _MARKER), "w").close()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="demo-output", help="output folder (default: demo-output)")
    parser.add_argument("--num-prompts", type=int, default=16, help="held-out prompts to generate (default 16)")
    parser.add_argument("--steps", type=int, default=20, help="denoising steps (default 20)")
    parser.add_argument("--latency-runs", type=int, default=3, help="timed calls per variant (default 3)")
    parser.add_argument("--quick", action="store_true", help="a reduced run (4 prompts, 1 timed call)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--video", action="store_true",
                        help="run on the bundled video model (a small Wan) instead of the image model")


def run(args: argparse.Namespace) -> int:
    num_prompts, steps, runs = args.num_prompts, args.steps, args.latency_runs
    if args.quick:
        num_prompts, runs = 4, 1
    if num_prompts < 2:
        raise ValueError("--num-prompts must be at least 2 (FID needs two images).")
    model = "benchmark-video" if args.video else "benchmark"
    records = run_demo(args.out, num_prompts, steps, model=model, latency_runs=runs, progress=not args.no_progress)
    print(format_table(records))
    print(f"\nTable: {os.path.abspath(os.path.join(args.out, 'table.txt'))}; grids, results.json and "
          f"report.md: {os.path.abspath(os.path.join(args.out, 'eval'))}")
    return 0
