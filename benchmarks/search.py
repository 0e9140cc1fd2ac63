"""Schedule-search benchmark: the NSGA-II frontier vs hand-made caching on held-out prompts.

One run, one machine, baselines measured alongside:

1. **Search** (:func:`diffusion_accel.search.search_schedule`) on *train* (calibration) prompts of
   the bundled benchmark model: quality = PSNR of the images against the full-compute images of
   the same seeds (``--quality``; the held-out comparison's metric), cost = MACs; genes switch
   whole blocks (``--granularity``); the picks are chosen on other *train* prompts
   (``--validation-prompts``), never on held-out ones.
2. **Held-out evaluation** on other prompts and seeds (``benchmark:heldout``), for the full
   schedule, the frontier schedules (up to ``--max-frontier``, spread over the speed-ups, the picks
   always included), and grids of FORA (intervals), Δ-DiT (interval x cached blocks), TGATE (gate
   step) and dynamic caching (threshold):
   ``macs_ratio`` (full / accelerated denoiser MACs: analytic for schedules, counted during the
   held-out run for dynamic caching), ``psnr`` and ``ssim`` of the images against the full-compute
   images of the same seeds (the headline quality), and the CLIP score of the bundled CLIP.
3. **Matched speed-ups** (2x, 2.5x, 3x): the searched schedule is the search's pick
   (``pick(frontier, speedup)``) -- by validation (or calibration) quality, never by held-out results -- and
   compared with each heuristic family's best held-out PSNR among its members reaching the same
   MAC ratio (generous to the baselines).
4. **Dominance**: for every heuristic configuration, whether some frontier schedule is at least as
   fast (MAC ratio) and at least as good (held-out PSNR).
5. **Wall-clock**: median denoiser time of interleaved runs (one batch) of the full model, the picked
   schedules and the matched heuristics: measured denoiser speed-up next to the MAC ratio.
6. **Generalisation**: the picked schedules and the matched FORA resampled to other step counts and
   run at a resolution the search never used, on held-out prompts (PSNR against full compute of
   that setting).

    python benchmarks/search.py                        # bundled model (~30 min on 2 free CPU cores)
    python benchmarks/search.py --quick                # smaller search and held-out set
    python benchmarks/search.py --model tiny:pixart-alpha --quick   # plumbing check, random weights
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

from diffusion_accel import AccelerationConfig
from diffusion_accel.api import find_denoisers
from diffusion_accel.caching import CacheSchedule, DynamicCacheConfig, StaticCacheConfig
from diffusion_accel.search import CandidateEvaluator, pick_entry, search_schedule
from diffusion_accel.search.runner import load_search_pipeline, search_call_kwargs
from diffusion_accel.eval import metrics as M
from diffusion_accel.eval.generate import make_items, to_uint8
from diffusion_accel.eval.latency import count_macs
from diffusion_accel.eval.prompts import load_prompts

TARGETS = (2.0, 2.5, 3.0)


def log(*args: Any) -> None:
    print(*args, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Baseline grids


def heuristic_grid(pipe: Any, steps: int, quick: bool) -> dict[str, tuple[str, AccelerationConfig]]:
    """name -> (family, config) of the hand-made policies, each family spanning the target speed-ups.

    Every static heuristic runs in both reuse modes (component outputs, as FORA and TGATE define
    it, and block residuals, as Δ-DiT's Δ-cache does; ``-res`` names): the comparison takes each
    family's best, so the baselines get the better engine too.
    """
    grid: dict[str, tuple[str, AccelerationConfig]] = {}

    def add(name: str, family: str, schedule: CacheSchedule) -> None:
        grid[name] = (family, AccelerationConfig(cache=StaticCacheConfig(schedule)))
        grid[f"{name}-res"] = (family, AccelerationConfig(cache=StaticCacheConfig(schedule, reuse="block_residual")))

    blocks = len(CacheSchedule.full(pipe, steps).compute[0])
    for interval in (2, 3, 4) if quick else (2, 3, 4, 5):
        add(f"fora-{interval}", "fora", CacheSchedule.fora(pipe, steps, interval))
    cached_options = sorted({max(1, blocks // 2), max(1, (3 * blocks) // 4), max(1, blocks - 1)})
    for interval in (2, 3, 4):
        for cached in cached_options:
            add(f"delta-dit-{interval}-b{cached}", "delta_dit",
                CacheSchedule.delta_dit(pipe, steps, interval=interval, num_cached_blocks=cached))
    for gate in sorted({max(1, steps // 4), max(1, steps // 2), max(1, (3 * steps) // 4)}):
        try:
            add(f"tgate-{gate}", "tgate", CacheSchedule.tgate(pipe, steps, gate))
        except ValueError:
            pass
    for threshold in (0.1, 0.3, 0.6) if quick else (0.1, 0.2, 0.3, 0.5, 0.8):
        grid[f"dynamic-{threshold}"] = ("dynamic", AccelerationConfig(cache=DynamicCacheConfig(threshold=threshold)))
    return grid


# ---------------------------------------------------------------------------------------------
# Measurements


def denoiser_macs_of(pipe: Any, fn: Any) -> tuple[Any, float]:
    """``(fn(), MACs executed inside the pipeline's denoisers during it)``."""
    result: list[Any] = []
    counted = count_macs(lambda: result.append(fn()), [m for _, m in find_denoisers(pipe)])
    return result[0], float(counted.modules)


def heldout_record(ev: CandidateEvaluator, name: str, family: str, config: AccelerationConfig | None,
                   full_macs: float, clip: Any) -> dict[str, Any]:
    """Quality (vs full compute, same seeds) and MAC ratio of ``config`` on the held-out items."""
    cache = config.cache if config is not None else None
    if cache is None or isinstance(cache, StaticCacheConfig):
        outputs, _ = ev.run(config)
        ratio = 1.0 if cache is None else ev.macs_ratio(cache.schedule)
    else:  # data-dependent: count what the denoiser really executes over the whole held-out set
        (outputs, _), macs = denoiser_macs_of(ev.pipe, lambda: ev.run(config))
        ratio = full_macs / macs
    images, reference = to_uint8(outputs), to_uint8(ev.reference)
    record = {"name": name, "family": family, "macs_ratio": ratio, "psnr": M.psnr(images, reference),
              "ssim": M.ssim(images, reference)}
    if clip is not None:
        record["clip_score"] = M.clip_score(images, ev.prompts, clip)
    if config is not None:
        record["config"] = config.to_dict()
    return record


def denoiser_times(pipe: Any, configs: dict[str, AccelerationConfig | None], ev: CandidateEvaluator,
                   runs: int, timing_batch: int) -> dict[str, float]:
    """Median seconds inside the denoiser for one batch (``timing_batch`` of ``ev``'s items), runs interleaved."""
    times: dict[str, list[float]] = {name: [] for name in configs}
    batch = ev.items[:timing_batch]
    batch_ev = CandidateEvaluator(pipe, batch, ev.call_kwargs, quality="psnr", batch_size=len(batch), memo=ev.memo)
    for r in range(runs + 1):  # the first round warms up
        for name, config in configs.items():
            _, seconds = batch_ev.run(config)
            if r:
                times[name].append(seconds)
    return {name: statistics.median(t) for name, t in times.items()}


# ---------------------------------------------------------------------------------------------
# The run


def reachable(frontier: list[dict[str, Any]], target: float) -> bool:
    return any(e["speedup"] >= target * (1 - 1e-9) for e in frontier)


def spread(entries: list[dict[str, Any]], limit: int, keep: set[str]) -> list[dict[str, Any]]:
    """At most ``limit`` entries evenly spaced in speed-up (always those named in ``keep``)."""
    if len(entries) <= limit:
        return entries
    chosen = {e["name"] for e in entries if e["name"] in keep}
    for i in np.linspace(0, len(entries) - 1, max(0, limit - len(chosen))).round().astype(int):
        chosen.add(entries[int(i)]["name"])
    return [e for e in entries if e["name"] in chosen]


def best_at(records: list[dict[str, Any]], target: float) -> dict[str, Any] | None:
    ok = [r for r in records if r["macs_ratio"] >= target * (1 - 1e-9)]
    return max(ok, key=lambda r: r["psnr"]) if ok else None


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    out = args.out or tempfile.mkdtemp(prefix="search-bench-")
    benchmark = args.model == "benchmark" or os.path.isdir(args.model)  # the bundled model (or a copy of it)
    call = search_call_kwargs("benchmark" if benchmark else args.model)
    call["num_inference_steps"] = args.steps
    if not benchmark:
        call.update(height=32, width=32)
    train = "benchmark:train" if benchmark else ["a red cat", "a blue dog", "a green tree", "a yellow car"]
    if not benchmark:  # four fixed calibration prompts: none to spare for validation
        args.validation_prompts = 0
    heldout = "benchmark:heldout" if benchmark else ["a white bird", "a black horse", "a pink flower", "a grey boat"]

    pick_speedups = sorted({*TARGETS, *args.pick_speedups})

    # 1. Search on calibration prompts.
    log(f"search: {args.population} x {args.generations} generations, {args.calib_prompts} train prompts")
    t0 = time.perf_counter()
    result = search_schedule(
        args.model, train, out=os.path.join(out, "search"), num_steps=args.steps, population=args.population,
        generations=args.generations, seed=args.seed, num_prompts=args.calib_prompts if benchmark else None,
        batch_size=args.batch, call_kwargs=call, pick_speedups=pick_speedups,
        generalise=True, resume=args.resume,
        progress=not args.no_progress, quality=args.quality, granularity=args.granularity,
        validation_prompts=args.validation_prompts, validate_top=args.validate_top,
        refine_rounds=args.refine_rounds)
    search_s = time.perf_counter() - t0

    # 2. Held-out evaluation.
    pipe = load_search_pipeline(args.model)
    items = make_items(load_prompts(heldout, num=args.heldout_prompts if benchmark else None, seed=args.seed + 1),
                       seed=args.seed + 1)
    ev = CandidateEvaluator(pipe, items, call, quality="psnr", batch_size=args.batch)
    ev.prepare()
    _, full_macs = denoiser_macs_of(pipe, lambda: ev.run(None))
    clip = M.load_clip(args.clip) if benchmark else None
    records = [heldout_record(ev, "full", "full", None, full_macs, clip)]
    picks = {t: pick_entry(result, t) for t in TARGETS if reachable(result.frontier, t)}
    frontier = spread([e for e in result.frontier if e["speedup"] > 1.0], args.max_frontier,
                      keep={e["name"] for e in picks.values()})
    frontier += [e for e in {e["name"]: e for e in picks.values()}.values()  # validated picks off the frontier
                 if e["name"] not in {f["name"] for f in frontier}]
    log(f"held-out: {len(frontier)} searched schedules")
    searched = []
    for entry in frontier:
        rec = heldout_record(ev, entry["name"], "search", AccelerationConfig.from_dict(entry["config"]),
                             full_macs, clip)
        rec["calibration_quality"] = entry["quality"]
        if "validation_quality" in entry:
            rec["validation_quality"] = entry["validation_quality"]
        searched.append(rec)
    grid = heuristic_grid(pipe, args.steps, args.quick)
    log(f"held-out: {len(grid)} heuristic configurations")
    baselines = [heldout_record(ev, name, family, config, full_macs, clip) for name, (family, config) in grid.items()]
    records += searched + baselines
    families = sorted({r["family"] for r in baselines})

    # 3. Matched speed-ups.
    matched = []
    for target in TARGETS:
        row: dict[str, Any] = {"target_speedup": target}
        if target in picks:
            rec = next(r for r in searched if r["name"] == picks[target]["name"])
            row["search"] = {k: rec[k] for k in ("name", "macs_ratio", "psnr", "ssim", "clip_score") if k in rec}
        else:
            row["search"] = None
        for family in families:
            best = best_at([r for r in baselines if r["family"] == family], target)
            row[family] = None if best is None else {k: best[k] for k in ("name", "macs_ratio", "psnr", "ssim",
                                                                        "clip_score") if k in best}
        rivals = [row[f]["psnr"] for f in families if row[f] is not None]
        row["search_beats_all_heuristics"] = (row["search"] is not None and bool(rivals)
                                             and all(row["search"]["psnr"] > q for q in rivals))
        matched.append(row)

    # 4. Dominance.
    not_dominated = [r["name"] for r in baselines
                     if not any(s["macs_ratio"] >= r["macs_ratio"] * (1 - 1e-9) and s["psnr"] >= r["psnr"]
                                for s in searched + records[:1])]

    # 5. Wall-clock (one batch, interleaved).
    timed: dict[str, AccelerationConfig | None] = {"full": None}
    for row in matched:
        for key in ["search", *families]:
            if row.get(key):
                name = row[key]["name"]
                timed[name] = next(AccelerationConfig.from_dict(r["config"]) for r in records[1:] if r["name"] == name)
    log(f"timing {len(timed)} configurations x {args.runs} runs")
    seconds = denoiser_times(pipe, timed, ev, args.runs, args.timing_batch)
    wall = {name: {"denoiser_s": s, "denoiser_speedup": seconds["full"] / s} for name, s in seconds.items()}
    for row in matched:
        for key in ["search", *families]:
            if row.get(key):
                row[key]["denoiser_speedup"] = wall[row[key]["name"]]["denoiser_speedup"]

    # 6. Generalisation on held-out prompts.
    general = []
    settings = [{"label": f"steps={s}", "num_inference_steps": s} for s in (args.steps // 2, args.steps * 3 // 2)]
    size = call.get("height") or 32
    settings.append({"label": f"{size * 3 // 2}x{size * 3 // 2}", "height": size * 3 // 2, "width": size * 3 // 2})
    chosen: dict[str, StaticCacheConfig] = {}
    for row in matched:
        for key in ("search", "fora"):
            if row.get(key):
                chosen[row[key]["name"]] = timed[row[key]["name"]].cache
    for setting in settings:
        extra = {k: v for k, v in setting.items() if k != "label"}
        sev = CandidateEvaluator(pipe, items, {**call, **extra}, quality="psnr", batch_size=args.batch, memo=ev.memo)
        sev.prepare()
        for name, cache in chosen.items():
            s = cache.schedule.resample(sev.profile.num_steps)
            outputs, _ = sev.run(AccelerationConfig(cache=dataclasses.replace(cache, schedule=s)))
            general.append({"setting": setting["label"], "name": name, "macs_ratio": sev.macs_ratio(s),
                            "psnr": M.psnr(to_uint8(outputs), to_uint8(sev.reference))})

    return {
        "benchmark": "search",
        "model": args.model,
        "steps": args.steps,
        "threads": args.threads,
        "search": {"population": args.population, "generations": args.generations, "calib_prompts": args.calib_prompts,
                   "granularity": args.granularity, "validation_prompts": args.validation_prompts,
                   "validate_top": args.validate_top, "refine_rounds": args.refine_rounds,
                   "pick_speedups": pick_speedups,
                   "validated": len(result.validated),
                   "evaluations": result.evaluations, "seconds": search_s, "frontier_size": len(result.frontier),
                   "out": os.path.join(out, "search"), "objective": f"{args.quality} vs full compute, cost = MACs"},
        "heldout_prompts": len(items),
        "speedup_definition": "macs_ratio = full / accelerated denoiser MACs; denoiser_speedup = measured wall-clock",
        "matched": matched,
        "heuristics_not_dominated_by_frontier": not_dominated,
        "frontier_dominates_every_heuristic": not not_dominated,
        "generalisation_heldout": general,
        "generalisation_calibration": result.generalisation,
        "wall_clock": wall,
        "heldout": records,
        "total_seconds": time.perf_counter() - started,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="benchmark",
                        help="'benchmark', a folder holding a copy of it, or 'tiny:<name>' (plumbing only)")
    parser.add_argument("--clip", default="benchmark", help="CLIP for the CLIP score (default: the bundled one)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--population", type=int, default=24)
    parser.add_argument("--generations", type=int, default=10)
    parser.add_argument("--refine-rounds", type=int, default=6,
                        help="refinement rounds at the pick speed-ups after the generations (0: none)")
    parser.add_argument("--pick-speedups", type=float, nargs="*", default=[],
                        help="further speed-ups the search picks (and refines) at, besides the compared 2, 2.5, 3")
    parser.add_argument("--calib-prompts", type=int, default=24, help="train prompts the search scores on")
    parser.add_argument("--granularity", default="block", choices=["component", "block"],
                        help="what a gene switches (default block: whole blocks per step)")
    parser.add_argument("--validation-prompts", type=int, default=24,
                        help="train prompts (not calibration, not held-out) the picks are chosen on (0: none)")
    parser.add_argument("--validate-top", type=int, default=6, help="candidates validated per target speed-up")
    parser.add_argument("--quality", default="psnr",
                        help="search objective (default psnr: the metric of the held-out comparison)")
    parser.add_argument("--heldout-prompts", type=int, default=24, help="held-out prompts of the comparison")
    parser.add_argument("--batch", type=int, default=12, help="prompts per pipeline call")
    parser.add_argument("--runs", type=int, default=3, help="timed runs per configuration")
    parser.add_argument("--timing-batch", type=int, default=8, help="held-out prompts per timed call")
    parser.add_argument("--max-frontier", type=int, default=40, help="frontier schedules evaluated on held-out")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="folder of the search (default: a temporary one)")
    parser.add_argument("--resume", action="store_true", help="resume the search in --out")
    parser.add_argument("--quick", action="store_true", help="smaller search, held-out set and grids")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--json", default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    if args.quick:
        args.population, args.generations = min(args.population, 10), min(args.generations, 5)
        args.refine_rounds = min(args.refine_rounds, 1)
        args.calib_prompts, args.heldout_prompts = min(args.calib_prompts, 4), min(args.heldout_prompts, 16)
        args.validation_prompts = min(args.validation_prompts, 4)
        args.runs, args.max_frontier = min(args.runs, 2), min(args.max_frontier, 8)
        if args.model != "benchmark":
            args.steps = min(args.steps, 8)
        args.batch = min(args.batch, args.heldout_prompts)
    report = run(args)
    text = json.dumps(report, indent=2, default=float)
    if args.json:
        from diffusion_accel.utils import atomic_write_text

        atomic_write_text(args.json, text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
