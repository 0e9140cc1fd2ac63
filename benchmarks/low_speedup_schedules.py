"""Greedy step-skip schedules for low speed-ups (1.3-2.3x compute), chosen on *training* prompts.

NSGA-II spreads its population over the whole cost axis and the bundled searched schedule sits at
3.2x; below 2x our fixed schedules were FORA-2 and Δ-DiT only. This script builds a nested family
of step-level schedules with block-residual reuse by greedy forward selection, measured, not
predicted: starting from full compute, each round tries reusing (skipping every block at) each step
not yet skipped and keeps the step whose addition loses the least PSNR against the full-compute
images. Round ``k`` gives a schedule skipping ``k`` of the ``steps`` steps (compute ratio
``steps / (steps - k)``). The first round tries every step; later rounds try only the
``--candidates`` steps that did best in the round before (a lazy greedy: a step that hurt much
alone rarely becomes the cheapest later), which keeps a run to about 85 pipeline calls.

Chosen on ``--prompts`` training captions of the bundled model (seeds ``1000 + i``), never on the
held-out prompts that ``benchmarks/peers_caching.py`` scores them on. Writes
``benchmarks/results/low_speedup_schedules.json``: the skipped steps in the order chosen and each
round's training PSNR; ``peers_caching.py`` reads it.

    python benchmarks/low_speedup_schedules.py --prompts 2 --rounds 12 --candidates 6
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


def skip_schedule(pipe, steps: int, skipped) -> "object":
    """A :class:`CacheSchedule` reusing every block at the ``skipped`` steps (block residuals)."""
    from diffusion_accel.caching import CacheSchedule

    compute = np.array(CacheSchedule.full(pipe, steps).compute)
    for step in skipped:
        if not 0 < step < steps:
            raise ValueError(f"skipped step {step} is outside 1..{steps - 1} (step 0 always computes).")
        compute[step] = False
    return CacheSchedule.from_model(pipe, compute, name=f"skip-{len(skipped)}")


def skip_config(pipe, steps: int, skipped):
    from diffusion_accel import AccelerationConfig
    from diffusion_accel.caching import StaticCacheConfig

    return AccelerationConfig(cache=StaticCacheConfig(skip_schedule(pipe, steps, skipped), reuse="block_residual"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=2, help="training captions to choose on")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=12, help="steps to skip at most")
    parser.add_argument("--candidates", type=int, default=6,
                        help="after the first round, try only this many steps: the best of the previous round")
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

    torch.set_num_threads(args.threads)
    model = BUNDLED_MODELS["benchmark"]
    prompts = model.prompts("train")[: args.prompts]
    kwargs = {**model.generation_kwargs(), "num_inference_steps": args.steps, "output_type": "np"}
    pipe = load_pipeline(model.name)
    pipe.set_progress_bar_config(disable=True)

    def call():
        generators = [torch.Generator().manual_seed(1000 + i) for i in range(len(prompts))]
        with BlockComputeCounter(pipe) as counter:
            output = pipe(prompts, generator=generators, **kwargs)
        return bench.images_of(output), counter.total

    reference, full = call()
    started = time.perf_counter()
    chosen: list[int] = []
    rounds = []
    result = {"benchmark": "low-speedup-schedules", "model": model.name, "split": "train",
              "prompts": len(prompts), "seeds": "1000 + i", "steps": args.steps, "reuse": "block_residual",
              "selection": "greedy forward selection of whole skipped steps by measured PSNR vs full compute; "
                           f"after round 1 only the {args.candidates} best steps of the previous round are tried",
              "order": chosen, "rounds": rounds}
    candidates = list(range(1, args.steps))
    for _ in range(args.rounds):
        tried = {}
        for step in candidates:
            diffusion_accel.apply(pipe, skip_config(pipe, args.steps, chosen + [step]))
            try:
                images, computed = call()
            finally:
                diffusion_accel.remove(pipe)
            tried[step] = psnr(images, reference)
        best = max(tried, key=tried.get)
        chosen.append(best)
        candidates = sorted((k for k in tried if k != best), key=tried.get, reverse=True)[: args.candidates]
        rounds.append({"skipped": sorted(chosen), "compute_ratio": round(full / computed, 4),
                       "train_psnr_db": round(tried[best], 3),
                       "tried_psnr_db": {str(k): round(v, 3) for k, v in tried.items()}})
        print(json.dumps({k: v for k, v in rounds[-1].items() if k != "tried_psnr_db"}), flush=True)
        result["seconds"] = round(time.perf_counter() - started)
        _write(args.out, result)  # after every round: a stopped run keeps its rounds
    return 0


def _write(path: str, result: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(result, fh, indent=2)
        fh.write("\n")


if __name__ == "__main__":
    sys.exit(main())
