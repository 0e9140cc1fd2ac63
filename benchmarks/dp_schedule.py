"""DP cache schedules (``diffusion_accel.caching.dp_schedule``) vs FORA and Δ-DiT at the same compute,
and the decoupled error correction (``diffusion_accel.error_correction``) on top of cache + W8A8.

The reuse errors are measured once on calibration prompts (the bundled model's train captions); every
schedule then runs on held-out prompts with the same seeds. For each heuristic the DP schedule gets
the heuristic's compute (the share of (step, block) pairs that run), at both granularities. Printed:
compute share, analytic MAC ratio (full / accelerated) and PSNR against the full-compute images of the
same call. Then: FORA-2 / DP with W8A8, uncorrected vs corrected (fitted on the calibration prompts).

    python benchmarks/dp_schedule.py                       # bundled model, 20 steps
    python benchmarks/dp_schedule.py --model tiny:pixart-alpha --steps 6 --batch 2 --calibration 2
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

import diffusion_accel
from diffusion_accel import AccelerationConfig
from diffusion_accel.caching import CacheSchedule, StaticCacheConfig
from diffusion_accel.caching.dp import reuse_errors, schedule_from_errors
from diffusion_accel.cost import macs
from diffusion_accel.error_correction import calibrate_error_correction
from diffusion_accel.eval.metrics import psnr
from diffusion_accel.quant import QuantConfig

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from caching import images_of, load  # noqa: E402  (benchmarks/caching.py)


def run(pipe, kwargs, config: AccelerationConfig | None, seed: int) -> np.ndarray:
    diffusion_accel.remove(pipe)
    if config is not None:
        diffusion_accel.apply(pipe, config)
    out = images_of(pipe(**kwargs, generator=torch.Generator().manual_seed(seed)))
    diffusion_accel.remove(pipe)
    return out


def calibration_prompts(model: str, count: int) -> list[str]:
    if model.startswith("tiny:"):
        return [f"a calibration photo {i}" for i in range(count)]
    from diffusion_accel.assets import benchmark_prompts

    return benchmark_prompts("train")[:count]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="benchmark")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=8, help="held-out prompts (one call)")
    parser.add_argument("--calibration", type=int, default=8, help="calibration prompts")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "dp_schedule.json"))
    args = parser.parse_args()
    torch.manual_seed(0)
    pipe, kwargs = load(args.model, args.batch, args.steps)
    call = {k: v for k, v in kwargs.items() if k not in ("prompt", "output_type")}
    calibration = calibration_prompts(args.model, args.calibration)
    start = time.perf_counter()
    errors = reuse_errors(pipe, calibration, seed=1000, **call)
    measure_seconds = time.perf_counter() - start
    reference = run(pipe, kwargs, None, args.seed)

    def score(schedule: CacheSchedule, quant=None) -> dict:
        config = AccelerationConfig(cache=StaticCacheConfig(schedule), quant=quant)
        report = macs(pipe, schedule, **{k: v for k, v in kwargs.items() if k != "output_type"})
        share = float(schedule.compute.all(axis=2).mean())
        return {"name": schedule.name, "compute_share": round(share, 4), "macs_ratio": round(report.ratio, 4),
                "psnr_db": round(psnr(run(pipe, kwargs, config, args.seed), reference), 3)}

    rows = []
    heuristics = [CacheSchedule.fora(pipe, args.steps, 2), CacheSchedule.fora(pipe, args.steps, 3),
                  CacheSchedule.delta_dit(pipe, args.steps, 2), CacheSchedule.delta_dit(pipe, args.steps, 3)]
    for heuristic in heuristics:
        share = float(heuristic.compute.all(axis=2).mean())
        row = {"baseline": score(heuristic)}
        for granularity in ("step", "block"):
            dp = schedule_from_errors(pipe, errors, share, granularity, name=f"dp-{granularity}@{heuristic.name}")
            row[f"dp_{granularity}"] = score(dp)
        rows.append(row)
        print(json.dumps(row), flush=True)

    corrections = []
    quant = QuantConfig(weight_bits=8, act_bits=8)
    fora2 = heuristics[0]
    for schedule in (fora2, schedule_from_errors(pipe, errors, float(fora2.compute.all(axis=2).mean()), "block",
                                                 name="dp-block@fora-2")):
        config = AccelerationConfig(cache=StaticCacheConfig(schedule), quant=quant)
        corrected = calibrate_error_correction(pipe, calibration, config, seed=1000, method="block_residual",
                                               **call)  # the method results/dp_schedule.json was measured with
        entry = {"schedule": schedule.name, "quant": "W8A8",
                 "psnr_db": round(psnr(run(pipe, kwargs, config, args.seed), reference), 3),
                 "psnr_db_corrected": round(psnr(run(pipe, kwargs, corrected, args.seed), reference), 3)}
        corrections.append(entry)
        print(json.dumps(entry), flush=True)

    result = {"benchmark": "dp_schedule", "model": args.model, "steps": args.steps, "held_out_prompts": args.batch,
              "calibration_prompts": len(calibration), "reuse_error_seconds": round(measure_seconds, 2),
              "metric": "PSNR (dB) vs full compute, same prompts and seeds; compute_share = share of (step, block) "
                        "pairs computed; macs_ratio = full / accelerated (analytic)",
              "schedules": rows, "error_correction": corrections, "torch": torch.__version__}
    print(json.dumps(result, indent=2))
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as fh:
        json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()
