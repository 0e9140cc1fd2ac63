"""Dynamic caching policies side by side: first_block vs teacache vs magcache at matched compute.

On the bundled model (or a tiny pipeline), against the full-compute images of the same prompts and
seeds measured in the same run:

* ``teacache`` and ``magcache`` are calibrated first (``calibrate_teacache`` / ``calibrate_magcache``)
  on prompts disjoint from the evaluation prompts (the bundled ``train`` captions);
* every policy runs at a few thresholds, per batch and (``*-sample``) with ``decide_per="sample"``;
  ``compute_ratio`` = block computations of the full run / block computations that really ran
  (rows through each block's first linear, ``attn1.to_q`` for PixArt: the peers' measure, per
  row), ``psnr_db`` against the full-compute images;
* ``psnr_at_compute`` interpolates each policy's PSNR (linearly in compute ratio) at common
  compute ratios, where its points bracket them.

    python benchmarks/dynamic_policies.py                         # bundled model, 8 held-out prompts, 20 steps
    python benchmarks/dynamic_policies.py --model tiny:pixart-alpha --steps 6 --batch 2
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import time
from typing import Any

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import add_model_arguments, argument_parser, emit_json, set_threads  # noqa: E402
from caching import images_of, load  # noqa: E402  (the caching benchmark's loaders)

import diffusion_accel  # noqa: E402
from diffusion_accel import AccelerationConfig  # noqa: E402
from diffusion_accel.caching import DynamicCacheConfig, calibrate_magcache, calibrate_teacache  # noqa: E402
from diffusion_accel.caching.policies import magcache_ratio_at  # noqa: E402
from diffusion_accel.eval.metrics import psnr  # noqa: E402
from diffusion_accel.models import get_model_adapter  # noqa: E402


class BlockCounter:
    """Counts the rows that went through the first linear of every block's first component (a block that
    ran, per sample: per-sample decisions may run a block on some rows of the batch)."""

    def __init__(self, denoiser: torch.nn.Module) -> None:
        self.calls = 0
        self._handles = []
        for block in get_model_adapter(denoiser).blocks(denoiser):
            component = next(iter(block.components().values()))  # not the adaLN modulation teacache reads
            first_linear = next(m for m in component.modules() if isinstance(m, torch.nn.Linear))
            self._handles.append(first_linear.register_forward_hook(self._count))

    def _count(self, module, args, output) -> None:
        self.calls += args[0].shape[0]

    def close(self) -> None:
        for h in self._handles:
            h.remove()


def magcache_skips(config: DynamicCacheConfig, steps: int) -> int:
    """Steps MagCache skips at ``steps`` steps (its decisions depend on the step only): picks thresholds."""
    ratio, error, run, skips = 1.0, 0.0, 0, 0
    for step in range(config.warmup_steps, steps - config.final_steps):
        candidate = ratio * magcache_ratio_at(config.magcache_ratios, step, steps)
        if run < config.max_consecutive_skips and error + abs(1 - candidate) <= config.threshold:
            ratio, error, run, skips = candidate, error + abs(1 - candidate), run + 1, skips + 1
        else:
            ratio, error, run = 1.0, 0.0, 0
    return skips


def magcache_thresholds(config: DynamicCacheConfig, steps: int, skip_targets: list[int]) -> list[float]:
    """The smallest threshold reaching each number of skipped steps (a fine grid; duplicates dropped)."""
    grid = np.geomspace(1e-3, 2.0, 400)
    counts = [magcache_skips(dataclasses.replace(config, threshold=float(t)), steps) for t in grid]
    out = []
    for target in skip_targets:
        hits = [float(t) for t, c in zip(grid, counts) if c >= target]
        threshold = math.ceil(hits[0] * 1e4) / 1e4 if hits else None  # rounded up: still reaches the target
        if threshold is not None and threshold not in out:
            out.append(threshold)
    return out


def measure(pipe: Any, call: Any, config: DynamicCacheConfig | None, reference: np.ndarray | None,
            full_blocks: int | None) -> dict[str, Any]:
    if config is not None:
        diffusion_accel.apply(pipe, AccelerationConfig(cache=config))
    counter = BlockCounter(pipe.transformer)
    start = time.perf_counter()
    try:
        images = images_of(call())
        report = diffusion_accel.api.acceleration_state(pipe).report()["cache"] if config is not None else {}
    finally:
        counter.close()
        if config is not None:
            diffusion_accel.remove(pipe)
    out = {"images": images, "blocks": counter.calls, "seconds": time.perf_counter() - start,
           "steps_skipped": report.get("steps_skipped", 0)}
    if reference is not None:
        out.update(compute_ratio=full_blocks / counter.calls, psnr_db=psnr(images, reference))
    return out


def psnr_at(points: list[dict[str, Any]], compute: float) -> float | None:
    points = sorted(points, key=lambda p: p["compute_ratio"])
    xs = [p["compute_ratio"] for p in points]
    if not xs or compute < xs[0] or compute > xs[-1]:
        return None
    return float(np.interp(compute, xs, [min(p["psnr_db"], 100.0) for p in points]))


def run(args: argparse.Namespace) -> dict[str, Any]:
    set_threads(args.threads)
    pipe, call_kwargs = load(args.model, args.batch, args.steps)
    if args.model == "benchmark":
        from diffusion_accel.assets import benchmark_prompts

        calibration_prompts = benchmark_prompts("train")[: args.batch]
    else:
        calibration_prompts = [f"a calibration photo {i}" for i in range(args.batch)]

    def call():
        return pipe(**call_kwargs, generator=torch.Generator().manual_seed(0))

    log = lambda *a: print(*a, file=sys.stderr, flush=True)  # noqa: E731
    full = measure(pipe, call, None, None, None)
    log("full", full["blocks"], f"{full['seconds']:.0f}s")
    base = DynamicCacheConfig(max_consecutive_skips=args.max_skips, warmup_steps=args.warmup_steps)
    other = {k: v for k, v in call_kwargs.items() if k not in ("prompt", "output_type")}
    start = time.perf_counter()
    teacache = calibrate_teacache(pipe, calibration_prompts, degree=args.degree, base=base, batch_size=args.batch,
                                  seed=1, **other)
    magcache = calibrate_magcache(pipe, calibration_prompts, base=base, batch_size=args.batch, seed=1, **other)
    calibration_s = time.perf_counter() - start
    log("calibrated", teacache.teacache_coefficients, magcache.magcache_ratios)
    configs = {
        "first_block": [dataclasses.replace(base, threshold=t) for t in args.first_block],
        "teacache": [dataclasses.replace(teacache, threshold=t) for t in args.teacache],
        "magcache": [dataclasses.replace(magcache, threshold=t)
                     for t in magcache_thresholds(magcache, args.steps, args.magcache_skips)],
        "first_block-sample": [dataclasses.replace(base, threshold=t, decide_per="sample")
                               for t in args.sample_first_block],
        "teacache-sample": [dataclasses.replace(teacache, threshold=t, decide_per="sample")
                            for t in args.sample_teacache],
    }
    results: dict[str, list[dict[str, Any]]] = {}
    for policy, cfgs in configs.items():
        for cfg in cfgs:
            point = measure(pipe, call, cfg, full["images"], full["blocks"])
            point.pop("images")
            point["psnr_db"] = min(point["psnr_db"], 100.0)  # identical images: inf (JSON has no infinity)
            results.setdefault(policy, []).append({"threshold": cfg.threshold, **point})
            log(policy, cfg.threshold, f"{point['compute_ratio']:.2f}x", f"{point['psnr_db']:.2f} dB")
    return {
        "benchmark": "dynamic_policies",
        "model": args.model,
        "steps": args.steps,
        "prompts": args.batch,
        "max_consecutive_skips": args.max_skips,
        "warmup_steps": args.warmup_steps,
        "baseline": {"blocks": full["blocks"], "seconds": full["seconds"]},
        "calibration": {"seconds": calibration_s, "prompts": len(calibration_prompts),
                        "teacache_coefficients": teacache.teacache_coefficients,
                        "magcache_ratios": magcache.magcache_ratios},
        "results": results,
        "psnr_at_compute": {f"{c}x": {p: psnr_at(points, c) for p, points in results.items()} for c in args.match},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argument_parser(__doc__)
    add_model_arguments(parser, steps=20, batch=8, batch_help="prompts per call (evaluation and calibration)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--degree", type=int, default=4, help="TeaCache polynomial degree")
    parser.add_argument("--max-skips", type=int, default=3, help="max_consecutive_skips of every policy")
    parser.add_argument("--warmup-steps", type=int, default=1, help="warmup_steps of every policy")
    parser.add_argument("--first-block", type=float, nargs="*", default=[0.1, 0.2, 0.3, 0.4])
    parser.add_argument("--teacache", type=float, nargs="*", default=[0.1, 0.15, 0.2, 0.25, 0.35])
    parser.add_argument("--magcache-skips", type=int, nargs="*", default=[6, 9, 10, 11, 12],
                        help="pick MagCache thresholds that skip this many steps")
    parser.add_argument("--sample-first-block", type=float, nargs="*", default=[0.2, 0.3],
                        help="first_block thresholds with decide_per='sample'")
    parser.add_argument("--sample-teacache", type=float, nargs="*", default=[0.15, 0.2, 0.25],
                        help="teacache thresholds with decide_per='sample'")
    parser.add_argument("--match", type=float, nargs="+", default=[1.5, 2.0, 2.5], help="compute ratios to compare at")
    args = parser.parse_args(argv)
    emit_json(run(args), indent=2, default=float)
    return 0


if __name__ == "__main__":
    sys.exit(main())
