"""Why our first-block dynamic policy scored below diffusers' FirstBlockCache at equal compute.

Both run the first block at every call, score the relative L1 change of its residual
(mean |r - r_ref| / mean |r_ref| over the whole batch) and, when skipping, add the residual of the
remaining blocks cached at the last computed step. They differ in what ``r_ref`` is:

* ours, ``compare_to="previous"`` (the default): the previous *step*'s residual, the relative
  changes summed over the steps skipped since the last computed one; at most
  ``max_consecutive_skips`` (3) skips in a row;
* diffusers' ``FirstBlockCacheConfig``: the residual of the last *computed* step, its relative change
  not summed; no limit on consecutive skips. Ours with ``compare_to="last_computed"`` does the same.

On the first ``--prompts`` held-out prompts of the bundled image model (one batched call, 20 steps,
seeds 0..n-1): each method's compute ratio (block computations that ran, the counter of
``peers_caching.py``), PSNR against full compute, and which steps computed. Writes
``benchmarks/results/first_block_gap.json``.

    python benchmarks/first_block_gap.py --prompts 8
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
RESULTS = os.path.join(HERE, "results", "first_block_gap.json")
THRESHOLDS = (0.1, 0.15, 0.2, 0.25, 0.3, 0.4)


def steps_computed(pipe) -> list[int]:
    """Record, per denoiser call, whether the last block's first projection ran (filled during the call)."""
    computed: list[int] = []
    blocks = pipe.transformer.transformer_blocks
    pipe.transformer.register_forward_pre_hook(lambda m, a: computed.append(0))

    def ran(module, args, output):
        computed[-1] = 1

    blocks[-1].attn1.to_q.register_forward_hook(ran)
    return computed


def methods(steps: int, thresholds=THRESHOLDS) -> list[tuple[str, dict, object]]:
    import caching as bench
    import peers_caching as peers
    from diffusers.hooks import FirstBlockCacheConfig, apply_first_block_cache

    from diffusion_accel import AccelerationConfig
    from diffusion_accel.caching import DynamicCacheConfig

    def fbc(threshold):
        def attach(pipe):
            peers._DenoisingContext(pipe.transformer, steps)
            apply_first_block_cache(pipe.transformer, FirstBlockCacheConfig(threshold=threshold))
        return attach

    def ours(**kw):
        return peers._ours_attach(bench.ours(AccelerationConfig(cache=DynamicCacheConfig(**kw))))

    out = [("full compute", {}, lambda pipe: None)]
    for t in thresholds:
        out.append((f"diffusers FirstBlockCache {t}", {"threshold": t}, fbc(t)))
    for t in thresholds:
        out.append((f"ours first_block previous {t}", {"threshold": t, "compare_to": "previous"}, ours(threshold=t)))
    for cap in (3, steps):
        for t in thresholds:
            kw = {"threshold": t, "compare_to": "last_computed", "max_consecutive_skips": cap}
            out.append((f"ours first_block last_computed max{cap} {t}", kw, ours(**kw)))
    for t in thresholds:
        kw = {"threshold": t, "compare_to": "previous", "max_consecutive_skips": steps}
        out.append((f"ours first_block previous max{steps} {t}", kw, ours(**kw)))
    return out


def measure_row(b, bench, pipe, name: str, settings: dict, reference: tuple | None) -> tuple[dict, tuple]:
    """One call of ``pipe`` on the bench's prompts: ``(row, reference)``. ``reference=None`` makes this
    call the baseline (its images and block computations; ``psnr_db`` None); later rows are scored
    against it (also used by ``low_speedup_dynamic.py``)."""
    from diffusion_accel.cost.blocks import BlockComputeCounter
    from diffusion_accel.eval.metrics import psnr

    computed = steps_computed(pipe)
    with BlockComputeCounter(pipe) as counter:
        images = bench.images_of(b.call(pipe))
    baseline = reference is None
    if baseline:
        reference = (images, counter.total)
    row = {"name": name, "settings": settings,
           "compute_ratio": round(BlockComputeCounter.ratio(reference[1], counter.total), 4),
           "psnr_db": None if baseline else round(psnr(images, reference[0]), 3),
           "steps_computed": [i for i, c in enumerate(computed) if c]}
    return row, reference


def run(args) -> dict:
    sys.path.insert(0, HERE)
    import caching as bench
    import peers_caching as peers

    torch.set_num_threads(args.threads)
    ns = argparse.Namespace(caching_model="benchmark", caching_prompts=args.prompts, caching_steps=args.steps,
                            caching_timing_prompts=1)
    b = peers._Bench(ns)
    rows, reference = [], None
    for name, settings, attach in methods(args.steps, tuple(float(t) for t in args.thresholds.split(","))):
        if args.only and name != "full compute" and not any(name.startswith(p) for p in args.only.split(",")):
            continue
        pipe = b.fresh()
        attach(pipe)
        row, reference = measure_row(b, bench, pipe, name, settings, reference)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return {"benchmark": "first-block-gap", "prompts": args.prompts, "steps": args.steps,
            "prompt_split": "heldout[:prompts], one batched call, seeds 0..prompts-1", "rows": rows}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--thresholds", default=",".join(map(str, THRESHOLDS)))
    parser.add_argument("--only", default="", help="comma-separated name prefixes (the baseline always runs)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    result = run(args)
    result["seconds"] = round(time.perf_counter() - started)
    earlier = read_results(RESULTS) if args.only else None
    if earlier is not None:  # a subset: merged into the earlier rows (same name: replaced)
        result["rows"] = merge_rows(earlier["rows"], result["rows"])
        result["seconds"] = [earlier["seconds"], result["seconds"]]
    write_results(RESULTS, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
