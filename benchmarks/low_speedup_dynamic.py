"""Dynamic caching for 1.5-2.1x on the bundled image model: forecast reuse, last-computed scoring, caps.

Each variant is a ``DynamicCacheConfig`` (first-block or TeaCache rule, ``compare_to``, ``reuse=
"forecast"`` of order 1/2, ``forecast_until``, ``final_steps``, ``max_consecutive_skips``), plus
static step-skip sets with forecast or block-residual reuse (``st-*``). On the
first ``--prompts`` prompts of ``--split`` (``train``: the training captions, to choose on;
``heldout``: to validate), one batched call of 20 steps, seeds 0..n-1, each variant on a fresh
pipeline: compute ratio (block computations that ran, the counter of ``peers_caching.py``), PSNR
against full compute and the steps that computed. Writes ``benchmarks/results/low_speedup_dynamic.json``
(rows of a split merged by name, so splits and subsets can be run one at a time).

    python benchmarks/low_speedup_dynamic.py --split train --prompts 8
    python benchmarks/low_speedup_dynamic.py --split heldout --prompts 16 --only "fb-fc1"
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

from _common import merge_rows, read_results, write_results

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results", "low_speedup_dynamic.json")


def variants(steps: int) -> dict[str, dict]:
    """Name -> DynamicCacheConfig fields (TeaCache coefficients added when run)."""
    out: dict[str, dict] = {}
    nocap = {"max_consecutive_skips": steps, "compare_to": "last_computed"}
    for t in (0.12, 0.15, 0.2, 0.25, 0.3):
        out[f"fb-res-{t}"] = {"threshold": t, **nocap}
        for order in (1, 2):
            out[f"fb-fc{order}-{t}"] = {"threshold": t, **nocap, "reuse": "forecast", "forecast_order": order}
        out[f"fb-fc1-f2-{t}"] = {"threshold": t, **nocap, "reuse": "forecast", "final_steps": 2}
        out[f"fb-fc1-cap2-{t}"] = {"threshold": t, "compare_to": "last_computed", "max_consecutive_skips": 2,
                                   "reuse": "forecast"}
    for t in (0.11, 0.15, 0.2, 0.25, 0.3):
        for order in (1, 2):
            out[f"tc-fc{order}-{t}"] = {"threshold": t, "policy": "teacache", "reuse": "forecast",
                                        "forecast_order": order}
        out[f"tc-last-fc1-{t}"] = {"threshold": t, "policy": "teacache", "reuse": "forecast",
                                   "compare_to": "last_computed"}
    # forecast in the middle stretch only: the last ``final`` steps always compute (forecasting across the
    # last steps lost on the training captions)
    for final in (3, 4, 5):
        for t in (0.12, 0.15, 0.2, 0.25, 0.3):
            out[f"fb-fc1-F{final}-{t}"] = {"threshold": t, **nocap, "reuse": "forecast", "final_steps": final}
            out[f"fb-fc1-cap2-F{final}-{t}"] = {"threshold": t, "compare_to": "last_computed",
                                                "max_consecutive_skips": 2, "reuse": "forecast",
                                                "final_steps": final}
        for t in (0.11, 0.15, 0.2, 0.25, 0.3):
            out[f"tc-fc1-F{final}-{t}"] = {"threshold": t, "policy": "teacache", "reuse": "forecast",
                                           "final_steps": final}
    # at most one skip in a row: alternate at most, placed by the rule
    for t in (0.15, 0.2, 0.3, 0.5):
        out[f"tc-fc1-cap1-{t}"] = {"threshold": t, "policy": "teacache", "reuse": "forecast",
                                   "max_consecutive_skips": 1}
        out[f"fb-fc1-cap1-{t}"] = {"threshold": t, "compare_to": "last_computed", "reuse": "forecast",
                                   "max_consecutive_skips": 1}
    # forecast in the first part of the pass only, plain residual reuse after it (forecast_until)
    for until in (0.5, 0.65, 0.8):
        for t in (0.15, 0.2, 0.25, 0.3):
            fc = {"reuse": "forecast", "forecast_until": until}
            out[f"tc-fc1-U{until}-{t}"] = {"threshold": t, "policy": "teacache", **fc}
            out[f"fb-fc1-U{until}-{t}"] = {"threshold": t, **nocap, **fc}
        out[f"tc-fc1-U{until}-cap1-0.5"] = {"threshold": 0.5, "policy": "teacache", "max_consecutive_skips": 1, **fc}
    # 2-2.2x: forecast early and at most two skips in a row, or alternate at lower thresholds
    for until in (0.35, 0.5, 0.65):
        fc = {"reuse": "forecast", "forecast_until": until}
        for t in (0.2, 0.22, 0.24, 0.26, 0.3, 0.5):
            out[f"tc-fc1-U{until}-cap2-{t}"] = {"threshold": t, "policy": "teacache", "max_consecutive_skips": 2, **fc}
            out[f"tc-fc1-U{until}-cap1-{t}"] = {"threshold": t, "policy": "teacache", "max_consecutive_skips": 1, **fc}
    return out


#: static step-skip sets (skipped steps) run with forecast and with block-residual reuse ("st-" variants)
STATIC_SKIPS = {
    "odd": (1, 3, 5, 7, 9, 11, 13, 15, 17, 19),
    "12even": (1, 2, 4, 6, 8, 10, 12, 14, 16, 18),
    "12even17": (1, 2, 4, 6, 8, 10, 12, 14, 16, 17),
    "12even-9": (1, 2, 4, 6, 8, 10, 12, 14, 16),
    "12even-11": (1, 2, 4, 6, 8, 10, 11, 13, 15, 17, 18),
    "odd-11": (1, 2, 3, 5, 7, 9, 11, 13, 15, 17, 19),
    "odd-11b": (1, 3, 5, 7, 8, 10, 12, 14, 16, 17, 19),
    "odd-11c": (1, 2, 3, 4, 5, 7, 9, 11, 13, 15, 17),
    "odd-11d": (1, 2, 3, 5, 7, 9, 11, 13, 15, 17, 18),
    "odd-11e": (1, 2, 4, 5, 7, 9, 11, 13, 15, 17, 19),
    "odd-11f": (1, 2, 3, 5, 7, 9, 11, 13, 15, 16, 18),
    "odd-10e": (1, 2, 4, 5, 7, 9, 11, 13, 15, 17),
    "odd-10f": (1, 2, 4, 5, 7, 9, 11, 13, 15, 19),
    "odd-10g": (1, 2, 4, 5, 7, 9, 11, 13, 16, 18),
    "odd-10h": (1, 2, 4, 6, 8, 10, 12, 14, 16, 18),
    "odd-10i": (1, 2, 4, 5, 7, 9, 11, 13, 15, 18),
    "odd-10j": (1, 2, 4, 5, 7, 8, 10, 12, 14, 16),
    "odd-10k": (1, 2, 3, 5, 6, 8, 10, 12, 14, 16),
    "odd-10l": (1, 2, 4, 5, 7, 9, 11, 12, 14, 16),
}


def _static_attach(pipe, steps: int, name: str):
    """``st-<reuse>-<set>``: a StaticCacheConfig skipping ``STATIC_SKIPS[set]`` with that reuse."""
    from diffusion_accel import AccelerationConfig
    from diffusion_accel.caching import StaticCacheConfig
    from low_speedup_schedules import skip_schedule

    _, reuse, key = name.split("-", 2)
    reuse = {"fc1": "forecast", "res": "block_residual"}[reuse]
    return AccelerationConfig(cache=StaticCacheConfig(skip_schedule(pipe, steps, list(STATIC_SKIPS[key])),
                                                      reuse=reuse))


def run(args) -> dict:
    sys.path.insert(0, HERE)
    import caching as bench
    import peers_caching as peers
    from first_block_gap import measure_row

    from diffusion_accel import AccelerationConfig
    from diffusion_accel.caching import DynamicCacheConfig

    torch.set_num_threads(args.threads)
    ns = argparse.Namespace(caching_model="benchmark", caching_prompts=0, caching_steps=args.steps,
                            caching_timing_prompts=1)
    b = peers._Bench(ns)
    b.prompts = b.model.prompts(args.split)[: args.prompts]
    with open(os.path.join(HERE, "results", "dynamic_policies.json"), encoding="utf-8") as fh:
        coefficients = tuple(json.load(fh)["calibration"]["teacache_coefficients"])
    table = dict(variants(args.steps))
    table.update({f"st-{reuse}-{key}": {"static": f"{reuse} {list(skips)}"}
                  for key, skips in STATIC_SKIPS.items() for reuse in ("fc1", "res")})
    chosen = [("full compute", {})] + [
        (name, kw) for name, kw in table.items()
        if not args.only or any(name.startswith(p) for p in args.only.split(","))]
    rows, reference = [], None
    for name, kw in chosen:
        pipe = b.fresh()
        if "static" in kw:
            bench.ours(_static_attach(pipe, args.steps, name))(pipe)
        elif kw:
            extra = {"teacache_coefficients": coefficients} if kw.get("policy") == "teacache" else {}
            bench.ours(AccelerationConfig(cache=DynamicCacheConfig(**kw, **extra)))(pipe)
        row, reference = measure_row(b, bench, pipe, name, kw, reference)
        rows.append(row)
        print(json.dumps({k: row[k] for k in ("name", "compute_ratio", "psnr_db")}), flush=True)
    return {"split": args.split, "prompts": len(b.prompts), "steps": args.steps, "rows": rows}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", default="train", choices=["train", "heldout"])
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", default="", help="comma-separated name prefixes (the baseline always runs)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    result = run(args)
    saved = read_results(RESULTS, {})
    key = f"{args.split}-{args.prompts}"
    result["rows"] = merge_rows(saved.get(key, {}).get("rows", []), result["rows"])
    result["seconds"] = round(time.perf_counter() - started)
    saved[key] = result
    write_results(RESULTS, saved)
    return 0


if __name__ == "__main__":
    sys.exit(main())
