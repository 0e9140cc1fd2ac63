"""Every sparse/linear method on the bundled video model: quality against dense, same prompts and seeds.

Methods: offline PARO (and INT8 Q/K), block-sparse (and online PARO reorder), VMoBA (two partition
cycles), SLA (projections fitted in closed form with ``fit_sla_projections`` on the calibration
prompts) and Re-ttention at each density; linear attention in all 4 layers and in 2 of them.

PARO is calibrated once (``calibrate_paro``) on ``--calib-prompts`` training prompts per density,
then every method generates the first ``--prompts`` held-out prompts with the same seeds; each
clip is compared with the dense clip of the same prompt and seed (PSNR per video on uint8 frames,
SSIM, temporal error: ``diffusion_accel.eval.video_metrics.TemporalSums``). The model's token grid
is (5, 8, 8) = 320 tokens per call; all methods use blocks of 16 tokens (block-sparse and PARO
16x16; VMoBA 1d = one frame of 64 tokens, 2d = 2x2 tiles through the 5 frames (20 tokens), 3d =
1x4x4 cubes (16 tokens), cycled 1d/2d/3d over the 4 layers as by default, and a 2d/3d cycle: at
25 % a 1d layer keeps only its own frame of the 5); the config defaults (256x64 / 8x8 tiles) would leave one block, i.e. dense.
No dense warm-up steps for any method (Re-ttention's first call of each guidance branch is dense by
construction: it has no statistics yet). The calibration files are written to a temporary folder.

Usage:
    python benchmarks/paro.py --out benchmarks/results/paro.json
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time

import numpy as np
import torch
from _common import argument_parser, emit_json, set_threads

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results", "paro.json")
BLOCK = 16
VMOBA_BLOCKS = {"block_frames": 1, "block_spatial": (2, 2), "block_cube": (1, 4, 4)}


def _clips(output) -> np.ndarray:
    return (np.clip(np.asarray(output.frames), 0, 1) * 255).round().astype(np.uint8)


def methods(density: float, calib_dir: str, pipe, calib_prompts, call_kwargs) -> dict:
    """name -> SparseAttentionConfig at ``density`` (PARO calibrated here)."""
    from diffusion_accel.sparse_attn import SparseAttentionConfig, calibrate_paro

    start = time.perf_counter()
    paro = calibrate_paro(pipe, calib_prompts, os.path.join(calib_dir, f"paro_{density}.safetensors"),
                          density=density, block_q=BLOCK, block_k=BLOCK, **call_kwargs)
    print(f"[paro] calibrated at density {density} in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    blocks = {"block_q": BLOCK, "block_k": BLOCK}
    return {
        f"paro {density:.0%}": paro,
        f"paro int8-qk {density:.0%}": SparseAttentionConfig(**{**paro.__dict__, "int8_qk": True}),
        f"block-sparse {density:.0%}": SparseAttentionConfig(method="block_sparse", density=density, **blocks),
        f"block-sparse + online paro reorder {density:.0%}": SparseAttentionConfig(
            method="block_sparse", density=density, reorder="paro", **blocks),
        f"vmoba {density:.0%}": SparseAttentionConfig(method="vmoba", density=density, **VMOBA_BLOCKS),
        f"vmoba 2d/3d cycle {density:.0%}": SparseAttentionConfig(method="vmoba", density=density,
                                                                 partitions=("2d", "3d"), **VMOBA_BLOCKS),
        f"sla fitted proj {density:.0%}": SparseAttentionConfig(method="sla", density=density, **blocks),
        f"rettention {density:.0%}": SparseAttentionConfig(method="rettention", density=density, **blocks),
    }


def linear_methods() -> dict:
    """Linear attention (no density): in every layer, and in half of the 4 layers."""
    from diffusion_accel.sparse_attn import SparseAttentionConfig

    return {
        "linear, all 4 layers": SparseAttentionConfig(method="linear"),
        "linear, layers 0-1": SparseAttentionConfig(method="linear", blocks=(0, 1)),
        "linear, layers 2-3": SparseAttentionConfig(method="linear", blocks=(2, 3)),
    }


def run_row(pipe, name: str, cfg, call, dense, density, fit_sla) -> dict:
    """Apply ``cfg``, generate the held-out clips, score them against ``dense``."""
    import diffusion_accel
    from diffusion_accel import AccelerationConfig
    from diffusion_accel.api import acceleration_state
    from diffusion_accel.eval.video_metrics import TemporalSums

    diffusion_accel.apply(pipe, AccelerationConfig(attention=cfg))
    try:
        if cfg.method == "sla":
            fit_sla(pipe)
        clips = call()
        report = acceleration_state(pipe).report()["attention"]
    finally:
        diffusion_accel.remove(pipe)
    sums = TemporalSums()
    sums.update(clips, dense)
    scores = sums.compute()
    mean_density = report.get("mean_density")
    return {"name": name, "method": cfg.method, "density": density, "int8_qk": cfg.int8_qk,
            "blocks": list(cfg.blocks) if cfg.blocks is not None else None,
            "mean_density": None if mean_density is None else round(mean_density, 3),
            "psnr_db_vs_dense": round(scores["psnr_per_video"], 2),
            "ssim_vs_dense": round(scores["ssim_per_video"], 4),
            "temporal_error": scores["temporal_error"]}


def main(argv=None) -> int:
    p = argument_parser(__doc__)
    p.add_argument("--prompts", type=int, default=4, help="held-out prompts")
    p.add_argument("--calib-prompts", type=int, default=4, help="training prompts for the PARO calibration and the SLA fit")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--densities", default="0.5,0.25")
    p.add_argument("--out", default=RESULTS)
    args = p.parse_args(argv)
    from diffusion_accel.assets.bundled import BUNDLED_MODELS
    from diffusion_accel.eval.sweep import load_pipeline
    from diffusion_accel.sparse_attn import fit_sla_projections

    set_threads(args.threads)
    model = BUNDLED_MODELS["benchmark-video"]
    prompts = model.prompts("heldout")[: args.prompts]
    calib_prompts = model.prompts("train")[: args.calib_prompts]
    call_kwargs = {**model.generation_kwargs(), "num_inference_steps": args.steps, "output_type": "np"}
    calib_kwargs = {k: v for k, v in call_kwargs.items() if k != "output_type"}
    pipe = load_pipeline(model.name)
    pipe.set_progress_bar_config(disable=True)
    start = time.perf_counter()

    def call():
        return _clips(pipe(prompts, generator=[torch.Generator().manual_seed(i) for i in range(len(prompts))],
                           **call_kwargs))

    def fit_sla(p):  # closed-form SLA projections from the calibration prompts (not the held-out ones)
        fit_sla_projections(p, prompt=calib_prompts, generator=[torch.Generator().manual_seed(100 + i)
                                                                 for i in range(len(calib_prompts))], **calib_kwargs)

    dense = call()
    result = {"benchmark": "paro", "model": model.name, "prompts": len(prompts), "calibration_prompts": len(calib_prompts),
              "steps": args.steps, "threads": args.threads, "token_grid": [5, 8, 8], "block_tokens": BLOCK,
              "torch": torch.__version__,
              "metric": "quality of each method's clips against the dense clips of the same prompts and seeds",
              "rows": []}
    with tempfile.TemporaryDirectory() as calib_dir:
        groups = [(float(d), methods(float(d), calib_dir, pipe, calib_prompts, calib_kwargs))
                  for d in args.densities.split(",")]
        groups.append((None, linear_methods()))
        for density, configs in groups:
            for name, cfg in configs.items():
                row = run_row(pipe, name, cfg, call, dense, density, fit_sla)
                result["rows"].append(row)
                print(f"[paro] {json.dumps(row)}", file=sys.stderr)
    result["wall_minutes"] = round((time.perf_counter() - start) / 60, 2)
    emit_json(result, args.out, default=float)
    return 0


if __name__ == "__main__":
    sys.exit(main())
