"""Bottleneck Sampling benchmark: MAC ratio and fidelity of high-low-high resolution schedules.

Measured in one run against the un-accelerated pipeline (same prompts, same seeds):

* ``macs_ratio``       full / accelerated MACs inside the denoiser (counted during the real call);
* ``denoiser_speedup`` baseline / accelerated time inside the denoiser (one timed call each, after
                       a warm-up; small models on CPU are overhead-bound, read it as indicative);
* ``psnr_db``, ``ssim`` against the full-compute images; ``clip_score`` with the bundled CLIP.

Besides the bottleneck settings it measures plain sampling with fewer steps (``steps-K``): the
simplest way to spend the same compute, which any step-saving technique has to beat.

    python benchmarks/sampling.py                      # bundled benchmark model, 16 held-out prompts
    python benchmarks/sampling.py --model tiny:pixart-alpha --quick
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from typing import Any

import torch

import diffusion_accel
from diffusion_accel import AccelerationConfig
from diffusion_accel.cost import denoiser_macs
from diffusion_accel.eval.metrics import psnr, ssim
from diffusion_accel.sampling import BottleneckSamplingConfig

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from caching import DenoiserTimer, images_of, load  # noqa: E402  (same folder)

SHAPES = {
    "30-40-30": ((0.3, 1), (0.4, 2), (0.3, 1)),
    "20-60-20": ((0.2, 1), (0.6, 2), (0.2, 1)),
    "40-20-40": ((0.4, 1), (0.2, 2), (0.4, 1)),
}


def settings(quick: bool) -> dict[str, BottleneckSamplingConfig]:
    """Named settings: ``bottleneck-<stage %>-r<renoise>[-initial]``."""
    if quick:
        return {"bottleneck-30-40-30-r0.3": BottleneckSamplingConfig(stages=SHAPES["30-40-30"], renoise=0.3)}
    grid = [(shape, r, "fresh") for shape in ("30-40-30", "20-60-20") for r in (0.0, 0.15, 0.3, 0.5)]
    grid += [("30-40-30", 0.7, "fresh"), ("30-40-30", (0.0, 0.5), "fresh"), ("40-20-40", 0.3, "fresh"),
             ("40-20-40", 0.5, "fresh")]
    grid += [(shape, r, "initial") for shape in ("30-40-30", "20-60-20", "40-20-40") for r in (0.15, 0.3, 0.5)]
    out = {}
    for shape, renoise, noise in grid:
        label = renoise if isinstance(renoise, float) else "-".join(map(str, renoise))
        name = f"bottleneck-{shape}-r{label}" + ("-initial" if noise == "initial" else "")
        out[name] = BottleneckSamplingConfig(stages=SHAPES[shape], renoise=renoise, noise=noise)
    return out


def run(pipe: Any, kwargs: dict, config: AccelerationConfig | None, steps: int | None = None) -> dict:
    call = dict(kwargs)
    if steps is not None:
        call["num_inference_steps"] = steps
    gens = lambda: [torch.Generator().manual_seed(i) for i in range(len(call["prompt"]))]  # noqa: E731
    if config is not None:
        diffusion_accel.apply(pipe, config)
    try:
        macs = denoiser_macs(pipe, **call, generator=gens())
        pipe(**{**call, "prompt": call["prompt"][:1]}, generator=gens()[:1])  # warm-up
        timer = DenoiserTimer(pipe)
        images = images_of(pipe(**call, generator=gens()))
        timer.close()
        report = {}
        state = diffusion_accel.api.acceleration_state(pipe)
        if state is not None:
            report = state.report().get("sampling", {})
    finally:
        diffusion_accel.remove(pipe)
    return {"macs": macs, "denoiser_s": timer.total, "images": images, "report": report}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="benchmark")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", default=None, help="regular expression: run the settings whose name matches")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    pipe, kwargs = load(args.model, 4 if args.quick else args.batch, args.steps)
    clip = None
    if args.model == "benchmark":
        from diffusion_accel.eval.metrics import clip_score, load_clip

        clip = load_clip("benchmark")
    base = run(pipe, kwargs, None)
    rows = {}

    def record(name: str, result: dict) -> None:
        row = {
            "macs_ratio": round(base["macs"] / result["macs"], 3),
            "denoiser_speedup": round(base["denoiser_s"] / max(result["denoiser_s"], 1e-9), 3),
            "psnr_db": round(psnr(result["images"], base["images"]), 2),
            "ssim": round(ssim(result["images"], base["images"]), 4),
        }
        if clip is not None:
            row["clip_score"] = round(clip_score(result["images"], kwargs["prompt"], clip), 4)
        if result["report"]:
            row["stages"] = result["report"].get("stages")
        rows[name] = row
        print(json.dumps({name: row}), file=sys.stderr, flush=True)

    if clip is not None:
        rows["full"] = {"clip_score": round(clip_score(base["images"], kwargs["prompt"], clip), 4)}
    wanted = (lambda name: re.search(args.only, name) is not None) if args.only else (lambda name: True)
    for name, cfg in settings(args.quick).items():
        if wanted(name):
            record(name, run(pipe, kwargs, AccelerationConfig(sampling=cfg)))
    for steps in ((14,) if args.quick else (10, 12, 14, 16)):
        if wanted(f"steps-{steps}"):
            record(f"steps-{steps}", run(pipe, kwargs, None, steps=steps))
    out = {"model": args.model, "batch": len(kwargs["prompt"]), "steps": args.steps, "results": rows}
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
