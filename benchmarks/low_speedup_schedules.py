"""Step-skip schedules for low speed-ups (1.5-2.2x compute), chosen on *training* prompts.

Below 2x our fixed schedules were FORA-2 and Δ-DiT only, and the bundled searched schedule sits at
3.2x. Here a schedule reuses whole steps (every block, block residuals) and is picked per target
from a short list of candidates, measured, not predicted:

1. ``--profile``: the PSNR loss of skipping each single step (against the full-compute images) on
   the training captions. On the bundled model, 20 steps: steps 1-3 cost least (65.6-66.9 dB),
   the middle steps 59.8-62.7 dB, the last two most (54.1 and 51.6 dB) -- FORA-2 skips step 19.
2. The candidates (:data:`CANDIDATES`) follow that profile: skip steps 1-3 back to back, then
   every other step or so through the middle, never the last two (FORA-2 is among them).
3. For each number of skipped steps ``k`` (compute ratio ``steps / (steps - k)``), the candidate with
   the best training PSNR is picked.

Chosen on ``--prompts`` training captions of the bundled model (seeds ``1000 + i``), never on the
held-out prompts that ``benchmarks/peers_caching.py`` scores them on. Writes
``benchmarks/results/low_speedup_schedules.json`` (every candidate's PSNR and the picks, after
each candidate); ``peers_caching.py`` reads the picks.

Outcome (16 held-out prompts, ``benchmarks/results/peers.json``): the picks beat FORA-2 by 1.8-6.1 dB
on the two training captions but lose 2.2-2.8 dB to it on the held-out prompts -- two captions are too
few to choose steps on; choose on >= 8 captions and validate on others before trusting a pick.

    python benchmarks/low_speedup_schedules.py --prompts 2 [--profile]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results", "low_speedup_schedules.json")

#: skipped steps of each candidate (20 steps), grouped by how many steps they skip
CANDIDATES: dict[int, tuple[tuple[int, ...], ...]] = {
    7: ((1, 3, 6, 8, 10, 12, 15), (1, 2, 3, 6, 8, 12, 15), (1, 2, 3, 5, 7, 9, 11)),
    8: ((1, 3, 6, 8, 10, 12, 14, 16), (1, 2, 3, 6, 8, 10, 12, 15)),
    9: ((1, 2, 3, 5, 8, 10, 12, 14, 16), (1, 2, 3, 6, 8, 10, 12, 14, 16)),
    10: ((1, 3, 5, 7, 9, 11, 13, 15, 17, 19), (1, 2, 3, 5, 7, 9, 11, 13, 15, 17)),
    11: ((1, 2, 3, 4, 5, 7, 9, 11, 13, 15, 17), (1, 2, 3, 4, 6, 8, 10, 12, 14, 16, 17)),
}


def skip_schedule(pipe, steps: int, skipped):
    """A :class:`CacheSchedule` reusing every block at the ``skipped`` steps."""
    from diffusion_accel.caching import CacheSchedule

    compute = np.array(CacheSchedule.full(pipe, steps).compute)
    for step in skipped:
        if not 0 < step < steps:
            raise ValueError(f"skipped step {step} is outside 1..{steps - 1} (step 0 always computes).")
        compute[step] = False
    return CacheSchedule.from_model(pipe, compute, name=f"skip-{len(skipped)}")


def _config(pipe, steps: int, skipped):
    from diffusion_accel import AccelerationConfig
    from diffusion_accel.caching import StaticCacheConfig

    return AccelerationConfig(cache=StaticCacheConfig(skip_schedule(pipe, steps, skipped), reuse="block_residual"))


def _write(path: str, result: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(result, fh, indent=2)
        fh.write("\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=2, help="training captions to choose on")
    parser.add_argument("--profile", action="store_true", help="also measure every single-step skip")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=RESULTS)
    args = parser.parse_args(argv)
    sys.path.insert(0, HERE)
    import caching as bench  # benchmarks/caching.py

    import diffusion_accel
    from diffusion_accel.assets.bundled import BUNDLED_MODELS
    from diffusion_accel.cost.blocks import BlockComputeCounter
    from diffusion_accel.eval.metrics import psnr
    from diffusion_accel.eval.sweep import load_pipeline

    steps = 20
    torch.set_num_threads(args.threads)
    model = BUNDLED_MODELS["benchmark"]
    prompts = model.prompts("train")[: args.prompts]
    kwargs = {**model.generation_kwargs(), "num_inference_steps": steps, "output_type": "np"}
    pipe = load_pipeline(model.name)
    pipe.set_progress_bar_config(disable=True)

    def call():
        generators = [torch.Generator().manual_seed(1000 + i) for i in range(len(prompts))]
        with BlockComputeCounter(pipe) as counter:
            output = pipe(prompts, generator=generators, **kwargs)
        return bench.images_of(output), counter.total

    reference, full = call()

    def score(skipped) -> dict:
        diffusion_accel.apply(pipe, _config(pipe, steps, skipped))
        try:
            images, computed = call()
        finally:
            diffusion_accel.remove(pipe)
        row = {"skipped": list(skipped), "compute_ratio": round(full / computed, 4),
               "train_psnr_db": round(psnr(images, reference), 3)}
        print(json.dumps(row), flush=True)
        return row

    started = time.perf_counter()
    result = {"benchmark": "low-speedup-schedules", "model": model.name, "split": "train", "prompts": len(prompts),
              "seeds": "1000 + i", "steps": steps, "reuse": "block_residual", "candidates": [], "picks": {}}
    if args.profile:
        result["profile"] = [score((s,)) for s in range(1, steps)]
    for k, candidates in CANDIDATES.items():
        for skipped in candidates:
            result["candidates"].append(score(skipped))
            rows = [r for r in result["candidates"] if len(r["skipped"]) == k]
            result["picks"][str(k)] = max(rows, key=lambda r: r["train_psnr_db"])["skipped"]
            result["seconds"] = round(time.perf_counter() - started)
            _write(args.out, result)  # after every candidate: a stopped run keeps what it measured
    return 0


if __name__ == "__main__":
    sys.exit(main())
