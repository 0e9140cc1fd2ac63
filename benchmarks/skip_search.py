"""Step-skip schedules at target compute levels, found by local search on *training* captions.

For each ``--counts`` k (skip k of 20 steps: ``20 / (20 - k)`` compute; every block reused with its
block residual at a skipped step), :func:`diffusion_accel.search.skip_steps.search_skipped_steps`
hill-climbs on the PSNR against full compute of the first ``--prompts`` training captions of the
bundled image model (seeds 0..n-1, one batched call per set), starting from the evenly spread set
or ``--start k=s1/s2/...``. The held-out prompts ``benchmarks/peers_caching.py`` reports are never
scored here. Writes ``benchmarks/results/skip_search.json`` (per k: every set measured, the pick;
after each measurement, so a stopped run keeps what it measured); ``peers_caching.py`` runs the
picks as ``ours skip-search-<k>``. A second run at the same k (say continued from the first one's pick
with ``--start``) keeps the earlier runs under ``earlier_runs``.

    python benchmarks/skip_search.py --counts 13,14 --prompts 8 --max-evaluations 30
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

from _common import log, read_results, write_results

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results", "skip_search.json")


def _starts(text: str) -> dict[int, tuple[int, ...]]:
    out = {}
    for item in filter(None, text.split(",")):
        count, _, steps = item.partition("=")
        out[int(count)] = tuple(int(s) for s in steps.split("/"))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--counts", default="13,14", help="comma-separated numbers of skipped steps")
    parser.add_argument("--prompts", type=int, default=8, help="training captions scored (seeds 0..n-1)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--max-evaluations", type=int, default=30)
    parser.add_argument("--start", default="", help="k=s1/s2/...,... start sets (default: evenly spread)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=RESULTS)
    args = parser.parse_args(argv)
    args.run = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    sys.path.insert(0, HERE)
    import caching as bench
    import peers_caching as peers
    from low_speedup_schedules import skip_schedule

    import diffusion_accel
    from diffusion_accel import AccelerationConfig
    from diffusion_accel.caching import StaticCacheConfig
    from diffusion_accel.cost.blocks import BlockComputeCounter
    from diffusion_accel.eval.metrics import psnr
    from diffusion_accel.search.skip_steps import search_skipped_steps

    torch.set_num_threads(args.threads)
    b = peers._Bench(argparse.Namespace(caching_model="benchmark", caching_prompts=0, caching_steps=args.steps,
                                        caching_timing_prompts=1))
    b.prompts = b.model.prompts("train")[: args.prompts]
    pipe = b.fresh()
    reference = bench.images_of(b.call(pipe))
    starts = _starts(args.start)

    for count in (int(c) for c in args.counts.split(",")):
        measured: list[dict] = []
        started = time.perf_counter()

        def score(skipped, count=count, measured=measured, started=started) -> float:
            config = StaticCacheConfig(skip_schedule(pipe, args.steps, list(skipped)), reuse="block_residual")
            diffusion_accel.apply(pipe, AccelerationConfig(cache=config))
            try:
                with BlockComputeCounter(pipe) as counter:
                    images = bench.images_of(b.call(pipe))
            finally:
                diffusion_accel.remove(pipe)
            value = round(psnr(images, reference), 3)
            measured.append({"skipped": list(skipped), "train_psnr_db": value, "block_computations": counter.total})
            log(f"k={count} {list(skipped)} {value} dB ({len(measured)} measured)")
            _save(args, count, measured, None, started)
            return value

        found = search_skipped_steps(score, args.steps, count, start=starts.get(count),
                                     max_evaluations=args.max_evaluations)
        _save(args, count, measured, found, started)
    return 0


def _save(args, count: int, measured: list[dict], found, started: float) -> None:
    saved = read_results(args.out, {"benchmark": "skip-search", "model": "benchmark", "split": "train",
                                    "reuse": "block_residual", "counts": {}})
    entry = {"prompts": args.prompts, "seeds": "0..prompts-1", "steps": args.steps,
             "compute_ratio": round(args.steps / (args.steps - count), 4), "max_evaluations": args.max_evaluations,
             "start": measured[0]["skipped"] if measured else None, "measured": measured,
             "seconds": round(time.perf_counter() - started), "done": found is not None}
    if found is not None:
        entry["pick"], entry["pick_train_psnr_db"] = list(found.skipped), found.score
    else:  # a stopped run: the best set so far
        best = max(measured, key=lambda r: r["train_psnr_db"])
        entry["pick"], entry["pick_train_psnr_db"] = best["skipped"], best["train_psnr_db"]
    previous = saved["counts"].get(str(count))
    entry["run"] = args.run
    if previous is not None:  # an earlier run at this k (e.g. one continued from its pick) is kept, not replaced
        earlier = previous.pop("earlier_runs", [])
        entry["earlier_runs"] = earlier if previous.get("run") == entry["run"] else earlier + [previous]
    saved["counts"][str(count)] = entry
    write_results(args.out, saved)


if __name__ == "__main__":
    sys.exit(main())
