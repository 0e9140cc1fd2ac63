"""Resampled vs native cache schedules: does a schedule made for S steps work at N steps?

For each heuristic (FORA 2/3, Δ-DiT 2/3) this builds the schedule natively at ``--steps`` and
at ``--source-steps``, resamples the latter with ``CacheSchedule.resample`` and with the former
nearest-step rule (``legacy``: new step j copied old step ``round(j (S-1)/(N-1))``), and runs all
of them on the same prompts and seeds. Printed per policy: MAC ratio (full / accelerated,
analytic), PSNR against the full-compute images of the same call, and the longest reuse run of
any component. The bundled searched schedule is resampled the same way.

    python benchmarks/resample.py                         # bundled model, 20 -> 10 steps
    python benchmarks/resample.py --source-steps 5        # upsampling 5 -> 10
    python benchmarks/resample.py --model tiny:pixart-alpha --batch 2
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

import numpy as np
import torch

from diffusion_accel import AccelerationConfig
from diffusion_accel.caching import CacheSchedule, StaticCacheConfig
from diffusion_accel.cost import profile_macs
from diffusion_accel.eval.metrics import psnr

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import add_model_arguments, argument_parser, emit_json, run_accelerated, set_threads  # noqa: E402
from caching import images_of, load  # noqa: E402  (benchmarks/caching.py)


def legacy_resample(schedule: CacheSchedule, num_steps: int) -> CacheSchedule:
    """The nearest-step rule ``CacheSchedule.resample`` used before (for comparison only)."""
    old = schedule.num_steps
    source = np.rint(np.arange(num_steps) * (old - 1) / max(num_steps - 1, 1)).astype(int)
    compute = schedule.compute[source].copy()
    compute[0] = True
    name = f"{schedule.name}@{num_steps}-legacy"
    return CacheSchedule(compute, schedule.components, schedule.family, name=name)


def longest_reuse_run(schedule: CacheSchedule) -> int:
    longest = 0
    for column in schedule.compute.reshape(schedule.num_steps, -1).T:
        run = 0
        for computes in column:
            run = 0 if computes else run + 1
            longest = max(longest, run)
    return longest


def schedules(pipe: Any, steps: int, source_steps: int) -> dict[str, CacheSchedule]:
    out: dict[str, CacheSchedule] = {}
    makers = {
        "fora-2": lambda n: CacheSchedule.fora(pipe, n, 2),
        "fora-3": lambda n: CacheSchedule.fora(pipe, n, 3),
        "delta-dit-2": lambda n: CacheSchedule.delta_dit(pipe, n, interval=2),
        "delta-dit-3": lambda n: CacheSchedule.delta_dit(pipe, n, interval=3),
    }
    for name, make in makers.items():
        source = make(source_steps)
        out[f"{name} native@{steps}"] = make(steps)
        out[f"{name} {source_steps}->{steps} resample"] = source.resample(steps)
        out[f"{name} {source_steps}->{steps} legacy"] = legacy_resample(source, steps)
    try:
        from diffusion_accel.assets import benchmark_search_config

        searched = benchmark_search_config().cache.schedule
        searched.check_model(pipe.transformer)
        if searched.num_steps != steps:
            out[f"searched {searched.num_steps}->{steps} resample"] = searched.resample(steps)
            out[f"searched {searched.num_steps}->{steps} legacy"] = legacy_resample(searched, steps)
    except (FileNotFoundError, ValueError):
        pass
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    set_threads(args.threads)
    pipe, call_kwargs = load(args.model, args.batch, args.steps)

    def call():
        return images_of(pipe(**call_kwargs, generator=torch.Generator().manual_seed(args.seed)))

    profile = profile_macs(pipe, **call_kwargs)
    reference = call()
    results = []
    for name, schedule in schedules(pipe, args.steps, args.source_steps).items():
        start = time.perf_counter()
        images, _ = run_accelerated(pipe, AccelerationConfig(cache=StaticCacheConfig(schedule)), call)
        results.append({
            "name": name,
            "macs_ratio": profile.full_macs() / profile.schedule_macs(schedule),
            "psnr_db": psnr(images, reference),
            "longest_reuse_run": longest_reuse_run(schedule),
            "seconds": time.perf_counter() - start,
        })
    return {
        "benchmark": "resample",
        "model": args.model,
        "steps": args.steps,
        "source_steps": args.source_steps,
        "batch": args.batch,
        "seed": args.seed,
        "results": results,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argument_parser(__doc__)
    add_model_arguments(parser, steps=10, batch=16, steps_help="steps of the calls (the target)")
    parser.add_argument("--source-steps", type=int, default=20,
                        help="steps the resampled schedules are made for")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    emit_json(run(args), indent=2, default=float)
    return 0


if __name__ == "__main__":
    sys.exit(main())
