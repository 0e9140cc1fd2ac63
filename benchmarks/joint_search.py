"""Joint search benchmark: one NSGA-II over cache x quantization x sparse attention vs caching then W8A8.

One run, one machine, everything measured side by side:

1. **Latency model** (:func:`diffusion_accel.cost.latency.calibrate_latency_model`) calibrated once on
   the bundled model's shapes (float / W8A8 / W4A8 / W8 / W4 linears, dense and block-sparse
   attention at the searched densities); saved in ``--out`` (a ``--resume`` reuses it).
2. **Baseline**: today's cache-only search (``--space cache``, cost = MACs, quality ``--quality``) on
   *train* prompts; W8A8 (dynamic per-token activations) applied afterwards to up to ``--max-points`` of
   its frontier points (spread; the full-compute point gives plain W8A8). The cache-only points without
   W8A8 are reported too.
3. **Joint search**: ``--space cache,quant,attention`` (cost = the latency model's prediction) on the
   same prompts and seeds, its generation 0 seeded with every baseline point, as is and with the
   error-correction gene on (:mod:`diffusion_accel.search.correction`), so it starts from the baseline.
4. **Held-out**: the baseline points and up to ``--max-joint-points`` joint frontier points run on
   held-out prompts and seeds: PSNR of the images against the full-precision, full-compute images, and
   the measured time inside the denoiser (median of ``--runs`` interleaved rounds over a batch of
   ``--timing-batch``); the full model is timed twice per round, and its speed-up against itself is the
   noise floor.
5. **Dominance at matched measured latency**: a baseline point is dominated when a joint point (one that
   does not run a baseline config) has a measured speed-up at least the baseline's within the noise floor
   and a strictly higher held-out PSNR. The noise floor is the larger of the full model against itself
   and the largest spread of one config timed twice (a joint point that is a seed, and its baseline twin).

Split the (niced) search from the timing on a busy machine: ``--searches-only``, then the same command
with ``--resume`` (the searches load from their checkpoints).

    python benchmarks/joint_search.py                  # bundled model (~15 min on a 2-core CPU)
    python benchmarks/joint_search.py --model tiny:pixart-alpha --quick   # plumbing check
    python benchmarks/joint_search.py --model benchmark-video --quick --json ''   # the bundled video model
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
from typing import Any

import numpy as np
import torch
from _common import argument_parser, emit_json, set_threads

from diffusion_accel import AccelerationConfig
from diffusion_accel.assets.bundled import BUNDLED_MODELS
from diffusion_accel.caching import CorrectedCacheConfig
from diffusion_accel.caching.step_correction import supports_step_correction
from diffusion_accel.cost.latency import LatencyModel, calibrate_latency_model
from diffusion_accel.eval.generate import make_items
from diffusion_accel.eval.prompts import load_prompts
from diffusion_accel.quant import QuantConfig
from diffusion_accel.search import CandidateEvaluator, search_schedule
from diffusion_accel.search.frontier import png_plot
from diffusion_accel.search.runner import load_search_pipeline, search_call_kwargs
from diffusion_accel.search.space import ATTENTION_DENSITIES
from diffusion_accel.utils import atomic_write_json, read_json

HERE = os.path.dirname(os.path.abspath(__file__))
W8A8 = QuantConfig(weight_bits=8, act_bits=8, keep_original="memory")


def log(*args: Any) -> None:
    print(f"[{time.strftime('%H:%M:%S')}]", *args, file=sys.stderr, flush=True)


def prompt_set(model: str, split: str) -> str:
    """``<bundled model>:<split>``: a bundled model's own captions (``benchmark-video:train`` for the video
    model), the image model's for any other model."""
    return f"{model if model in BUNDLED_MODELS else 'benchmark'}:{split}"


def run_searches(args: argparse.Namespace, pipe: Any, call: dict[str, Any], latency: Any, out: str) -> dict[str, Any]:
    """The cache-only search, then the joint search seeded with its frontier (spread to ``--max-points``)
    with W8A8, each as is and with the trajectory error correction; same calibration prompts and seeds."""
    common = dict(num_prompts=args.calib_prompts, generations=args.generations, seed=args.seed, call_kwargs=call,
                  batch_size=args.calib_prompts, generalise=False, progress=not args.no_progress, pick_speedups=(),
                  dynamic_seeds=(), granularity=args.granularity, resume=args.resume, quality=args.quality)
    results = {}
    start = time.perf_counter()
    results["cache"] = search_schedule(pipe, prompt_set(args.model, "train"), out=os.path.join(out, "cache"),
                                       space="cache", population=args.cache_population, **common)
    log(f"cache search: {len(results['cache'].frontier)} frontier points of {results['cache'].evaluations} "
        f"evaluated in {time.perf_counter() - start:.0f} s")
    start = time.perf_counter()
    results["joint"] = search_schedule(pipe, prompt_set(args.model, "train"), out=os.path.join(out, "joint"),
                                       space="cache,quant,attention", population=args.population,
                                       latency_model=latency,
                                       seed_configs=seed_configs(results["cache"], args,
                                                                 supports_step_correction(pipe.scheduler)),
                                       **common)
    log(f"joint search: {len(results['joint'].frontier)} frontier points of {results['joint'].evaluations} "
        f"evaluated in {time.perf_counter() - start:.0f} s")
    return results


def baseline_entries(cache_result: Any, args: argparse.Namespace) -> list[dict[str, Any]]:
    """The cache-only frontier points the comparison uses (spread; full compute included: with W8A8 it is
    the plain W8A8 point)."""
    return spread(list(cache_result.frontier), args.max_points)


def with_w8a8(entry: dict[str, Any], corrected: bool = False) -> AccelerationConfig:
    config = AccelerationConfig.from_dict({**entry["config"], "quant": W8A8.to_dict()})
    return dataclasses.replace(config, cache=CorrectedCacheConfig(config.cache)) if corrected else config


def seed_configs(cache_result: Any, args: argparse.Namespace,
                 corrected: bool = True) -> dict[str, AccelerationConfig]:
    """Generation 0 of the joint search: every baseline point (cache-only frontier + W8A8), as is and
    (``corrected``: the pipeline's scheduler allows the error-correction gene) with the gene on (fitted by
    the search)."""
    out = {}
    for entry in baseline_entries(cache_result, args):
        out[f"{entry['name']}+w8a8"] = with_w8a8(entry)
        if corrected:
            out[f"{entry['name']}+w8a8+corr"] = with_w8a8(entry, corrected=True)
    return out


def spread(entries: list[dict[str, Any]], limit: int) -> list[dict[str, Any]]:
    """At most ``limit`` entries spread evenly over the frontier (slowest and fastest kept)."""
    if len(entries) <= limit:
        return list(entries)
    return [entries[int(round(i))] for i in np.linspace(0, len(entries) - 1, limit)]


def points(results: dict[str, Any], args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Name -> {"series", "entry"} of every point evaluated on held-out prompts: the joint frontier (up to
    ``--max-joint-points``, spread), and the baseline points with and without W8A8."""
    out = {}
    joint = [e for e in results["joint"].frontier if e["name"] != "full"]
    for entry in spread(joint, args.max_joint_points):
        out[f"joint/{entry['name']}"] = {"series": "joint", "entry": entry}
    for entry in baseline_entries(results["cache"], args):
        if entry["name"] != "full":  # the plain model is the reference (and the noise floor)
            out[f"cache/{entry['name']}"] = {"series": "cache-only", "entry": entry}
        out[f"cache+w8a8/{entry['name']}"] = {"series": "cache-only + W8A8",
                                              "entry": {**entry, "config": with_w8a8(entry).to_dict()}}
    return out


def heldout(ev: CandidateEvaluator, timer: CandidateEvaluator, chosen: dict[str, dict[str, Any]],
            runs: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """PSNR on the held-out prompts and measured denoiser time (interleaved rounds) of every point; the
    full model is timed twice per round ("full" the reference, "full-again" its noise floor)."""
    configs = {n: AccelerationConfig.from_dict(p["entry"]["config"]) for n, p in chosen.items()}
    records = []
    for name, config in configs.items():
        outputs, _ = ev.run(config)
        p = chosen[name]["entry"]
        records.append({"name": name, "series": chosen[name]["series"], "psnr": ev.score(outputs),
                        "search_speedup": p["speedup"], "macs_ratio": p["macs_ratio"],
                        "latency_model_speedup": p.get("latency_model_speedup"), "config": p["config"]})
        log(f"held-out {name}: {records[-1]['psnr']:.2f} dB")
    samples: dict[str, list[float]] = {n: [] for n in ["full", "full-again", *configs]}
    for name, config in configs.items():  # warm-up
        timer.run(config)
    for k in range(runs):
        samples["full"].append(timer.run(None)[1])
        for name, config in configs.items():
            samples[name].append(timer.run(config)[1])
        samples["full-again"].append(timer.run(None)[1])
        log(f"timing round {k + 1}/{runs} done")
    full = statistics.median(samples["full"])
    for r in records:
        r["seconds"] = statistics.median(samples[r["name"]])
        r["measured_speedup"] = full / r["seconds"]
    again = full / statistics.median(samples["full-again"])
    noise = {"full_seconds": full, "full_against_itself": again, "relative_noise_floor": abs(1.0 - again),
             "samples": samples}
    return records, noise


def config_key(config: dict[str, Any]) -> str:
    """What a config runs (schedule, reuse, corrected or not, quantization, attention), names left out."""
    cache = config.get("cache") or {}
    inner = cache.get("cache", cache)
    return json.dumps([inner.get("schedule", {}).get("compute"), inner.get("reuse"), "step_shift" in cache,
                       config.get("quant"), config.get("attention")], sort_keys=True)


def twin_spread(records: list[dict[str, Any]]) -> float:
    """Largest relative difference of the measured speed-ups of one config timed twice (a joint point that
    is a baseline point, both in the rounds): timing noise per config."""
    by_key: dict[str, list[float]] = {}
    for r in records:
        if r["series"] != "cache-only":
            by_key.setdefault(config_key(r["config"]), []).append(r["measured_speedup"])
    return max((max(v) / min(v) - 1.0 for v in by_key.values() if len(v) > 1), default=0.0)


def dominance(records: list[dict[str, Any]], baseline: str, noise_floor: float) -> dict[str, Any]:
    """For each ``baseline`` point: the best-PSNR joint point -- not one running a baseline config -- whose
    measured speed-up is at least the baseline's within the noise floor (``>= baseline * (1 - noise_floor)``);
    dominated when its held-out PSNR is strictly higher. ``strict`` repeats it without the tolerance."""
    taken = {config_key(r["config"]) for r in records if r["series"] == baseline}
    joint = [r for r in records if r["series"] == "joint" and config_key(r["config"]) not in taken]
    rows = []
    for b in (r for r in records if r["series"] == baseline):
        row = {"baseline": b["name"], "baseline_speedup": b["measured_speedup"], "baseline_psnr": b["psnr"]}
        for label, floor in (("", noise_floor), ("strict_", 0.0)):
            fast = [j for j in joint if j["measured_speedup"] >= b["measured_speedup"] * (1.0 - floor)]
            best = max(fast, key=lambda j: j["psnr"], default=None)
            row.update({f"{label}joint": None if best is None else best["name"],
                        f"{label}joint_speedup": None if best is None else best["measured_speedup"],
                        f"{label}joint_psnr": None if best is None else best["psnr"],
                        f"{label}dominated": best is not None and best["psnr"] > b["psnr"]})
        rows.append(row)
    return {"noise_floor": noise_floor, "points": rows, "dominated": sum(r["dominated"] for r in rows),
            "strictly_dominated": sum(r["strict_dominated"] for r in rows), "of": len(rows)}


def plot(records: list[dict[str, Any]], path: str, model: str = "benchmark") -> None:
    with png_plot(path, title=f"joint search vs caching then W8A8 ({model})",
                  xlabel="measured denoiser speed-up (interleaved runs)",
                  ylabel="held-out PSNR vs full precision (dB, capped at 60)") as ax:
        for series, style in (("joint", "-o"), ("cache-only + W8A8", "-s"), ("cache-only", "--^")):
            pts = sorted((r["measured_speedup"], min(r["psnr"], 60.0)) for r in records if r["series"] == series)
            if pts:
                ax.plot(*zip(*pts), style, ms=4, label=series)


def run(args: argparse.Namespace) -> dict[str, Any]:
    set_threads(args.threads)
    pipe = load_search_pipeline(args.model)
    call = {**search_call_kwargs(args.model), "num_inference_steps": args.steps}
    probe = {**call, "prompt": "a red square", "output_type": "latent", "generator": torch.Generator().manual_seed(0)}
    out = args.out or tempfile.mkdtemp(prefix="joint-search-")
    saved = os.path.join(out, "latency_model.json")
    if args.resume and os.path.exists(saved):  # the model the interrupted run searched with
        latency = LatencyModel.from_dict(read_json(saved, "the latency model"))
    else:
        start = time.perf_counter()
        latency = calibrate_latency_model(pipe, probe, attention=[("block_sparse", d) for d in ATTENTION_DENSITIES],
                                          repeats=args.latency_repeats)
        log(f"latency model calibrated in {time.perf_counter() - start:.0f} s")
        os.makedirs(out, exist_ok=True)
        atomic_write_json(saved, latency.to_dict())
    results = run_searches(args, pipe, call, latency, out)
    if args.searches_only:
        return {"searches": {n: {"evaluations": r.evaluations, "frontier_size": len(r.frontier)}
                             for n, r in results.items()}}
    chosen = points(results, args)
    prompts = load_prompts(prompt_set(args.model, "heldout"), num=args.heldout_prompts, seed=args.seed + 1)
    items = make_items(prompts, seed=args.seed + 1000)
    ev = CandidateEvaluator(pipe, items, call, quality="psnr", batch_size=args.heldout_prompts)
    ev.prepare()
    timer = CandidateEvaluator(pipe, items[:args.timing_batch], call, quality="latent_mse",
                               batch_size=args.timing_batch)
    records, noise = heldout(ev, timer, chosen, args.runs)
    ops = {k: v for k, v in latency.linear_seconds.items()}
    return {
        "benchmark": "joint_search", "model": args.model, "torch": torch.__version__, "threads": args.threads,
        "settings": {k: v for k, v in vars(args).items() if k not in ("json", "out")},
        "latency_model": {"linear_seconds": ops, "attention_seconds": latency.attention_seconds,
                          "call_seconds": latency.call_seconds,
                          "predicted_speedup_w8a8": latency.seconds(None) / latency.seconds(
                              AccelerationConfig(quant=W8A8))},
        "searches": {n: {"evaluations": r.evaluations, "frontier_size": len(r.frontier)} for n, r in results.items()},
        "points": records,
        "timing": {**noise, "same_config_spread": twin_spread(records),
                   "noise_floor_used": max(noise["relative_noise_floor"], twin_spread(records))},
        "dominance_vs_cache_w8a8": dominance(records, "cache-only + W8A8",
                                             max(noise["relative_noise_floor"], twin_spread(records))),
        "dominance_vs_cache_only": dominance(records, "cache-only",
                                             max(noise["relative_noise_floor"], twin_spread(records))),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argument_parser(__doc__)
    parser.add_argument("--model", default="benchmark")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--population", type=int, default=16, help="joint search population")
    parser.add_argument("--cache-population", type=int, default=12, help="cache-only search population")
    parser.add_argument("--generations", type=int, default=5)
    parser.add_argument("--granularity", default="block", choices=["component", "block"])
    parser.add_argument("--calib-prompts", type=int, default=4)
    parser.add_argument("--quality", default="psnr", help="quality objective of both searches (as held out: psnr)")
    parser.add_argument("--heldout-prompts", type=int, default=8)
    parser.add_argument("--timing-batch", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--max-points", type=int, default=7, help="baseline points (cache-only frontier, spread)")
    parser.add_argument("--max-joint-points", type=int, default=14, help="joint frontier points evaluated")
    parser.add_argument("--resume", action="store_true", help="continue (or reuse) the searches in --out")
    parser.add_argument("--searches-only", action="store_true",
                        help="stop after the searches (then rerun with --resume for held-out scores and timing)")
    parser.add_argument("--latency-repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None)
    parser.add_argument("--quick", action="store_true", help="tiny settings (plumbing check)")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--json", default=os.path.join(HERE, "results", "joint_search.json"))
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.population, args.cache_population, args.generations, args.calib_prompts = 4, 8, 4, 1, 2
        args.heldout_prompts, args.max_points, args.max_joint_points, args.runs, args.latency_repeats = 2, 2, 3, 1, 1
    result = run(args)
    if args.searches_only:
        print(result)
        return 0
    emit_json(result, args.json)
    if args.json:
        plot(result["points"], os.path.splitext(args.json)[0] + ".png", args.model)
    return 0


if __name__ == "__main__":
    sys.exit(main())
