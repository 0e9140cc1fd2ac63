"""Fine-tune sparse attention on the bundled video model by distilling from its dense self; prints JSON.

The bundled Wan (``diffusion_accel.assets.benchmark_video_model_dir()``, 320 video tokens per call)
is accelerated with ``SparseAttentionConfig(method=..., density=...)`` in every block, then
``finetune_sparse`` records the dense model's own sampling trajectories on training captions,
trains (``--trainable``) for ``--minutes`` of wall clock, and reports the PSNR of the decoded clips
against the dense pipeline's on held-out captions (same seeds) and the held-out distillation loss,
before and after. Everything (teacher trajectories, both evaluations, training) fits in the
``--budget-minutes`` total the script checks at the end.

Usage:
    nice -n 10 python benchmarks/sparse_finetune.py --minutes 14 --out benchmarks/results/sparse_finetune.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", default="sla", choices=("sla", "block_sparse"))
    ap.add_argument("--density", type=float, default=0.25)
    ap.add_argument("--block", type=int, default=32, help="block_q = block_k (320 tokens per call)")
    ap.add_argument("--trainable", default="attention", choices=("proj", "attention"))
    ap.add_argument("--minutes", type=float, default=14.0, help="distillation loop wall clock")
    ap.add_argument("--budget-minutes", type=float, default=20.0, help="the whole run must fit in this")
    ap.add_argument("--train-prompts", type=int, default=24)
    ap.add_argument("--heldout-prompts", type=int, default=8)
    ap.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model's reference call)")
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--save-dir", default=None, help="also write the trained tensors + config here")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from diffusers import WanPipeline

    import diffusion_accel
    from diffusion_accel import AccelerationConfig
    from diffusion_accel.assets import (
        BENCHMARK_VIDEO_GENERATION_KWARGS,
        benchmark_video_model_dir,
        benchmark_video_prompts,
    )
    from diffusion_accel.sparse_attn import FinetuneConfig, SparseAttentionConfig, finetune_sparse

    start = time.monotonic()
    pipe = WanPipeline.from_pretrained(benchmark_video_model_dir())
    pipe.set_progress_bar_config(disable=True)
    sparse = SparseAttentionConfig(method=args.method, density=args.density, block_q=args.block, block_k=args.block)
    pipe = diffusion_accel.apply(pipe, AccelerationConfig(attention=sparse))
    call = dict(BENCHMARK_VIDEO_GENERATION_KWARGS)
    if args.steps is not None:
        call["num_inference_steps"] = args.steps
    config = FinetuneConfig(trainable=args.trainable, minutes=args.minutes, lr=args.lr, batch=args.batch)
    result = finetune_sparse(
        pipe, benchmark_video_prompts("train")[: args.train_prompts],
        benchmark_video_prompts("heldout")[: args.heldout_prompts], config,
        call_kwargs=call, out_dir=args.save_dir,
    )
    total = (time.monotonic() - start) / 60
    out = {
        "model": "bundled video Wan (4 layers, 4 heads x 32, 320 tokens per call)",
        "call_kwargs": call,
        "threads": args.threads,
        "total_minutes": round(total, 2),
        "within_budget": total <= args.budget_minutes,
        **result.report,
    }
    text = json.dumps(out, indent=1)
    print(text)
    if args.out:
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return 0 if out["within_budget"] else 1


if __name__ == "__main__":
    sys.exit(main())
