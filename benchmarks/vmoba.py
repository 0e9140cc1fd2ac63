"""Benchmark VMoBA against dense SDPA and block_sparse, measured in the same run; prints JSON.

Sections:
  * ``op``: ``vmoba_attention`` (torch backend, block selection included) on a (8, 32, 32) grid =
    8192 tokens, fp32, 1 thread, each partition at density 0.5/0.25, vs ``F.scaled_dot_product_attention``
    and ``block_sparse_attention`` (device default blocks) on the same tensors, interleaved; plus
    the relative error of each output against dense attention on structured inputs (tokens on the
    grid with local attention, ``benchmarks/sparse_attn.py: structured_qkv``).
  * ``quality``: a tiny random Wan (2 layers, 4 heads x 64; ``sparse_attn.py: _wan_pipeline``) at
    4096 video tokens (512x512, 13 frames), PSNR of the decoded frames against the dense output for
    block_sparse and VMoBA at several densities (first step dense for every method).
  * ``partitions``: the same model with VMoBA restricted to the 3d partition (two cube sizes), and
    threshold selection with and without a density cap.

Usage:
    python benchmarks/vmoba.py --out benchmarks/results/vmoba.json
"""

from __future__ import annotations

import functools
import json
import sys

import torch
import torch.nn.functional as F
from _common import argument_parser, emit_json, log, rel_err, run_accelerated, set_threads

from sparse_attn import _psnr, _wan_pipeline, interleaved, ratios, structured_qkv

from diffusion_accel.sparse_attn import block_sparse_attention, vmoba_attention
from diffusion_accel.sparse_attn.defaults import device_kind

GRID = (8, 32, 32)
BLOCKS = {"block_frames": 1, "block_spatial": (8, 8), "block_cube": (4, 8, 8)}  # the config defaults


@torch.no_grad()
def bench_op(heads: int, repeats: int, densities=(0.5, 0.25)) -> list:
    q, k, v = (torch.randn(1, heads, 8192, 64, generator=torch.Generator().manual_seed(i)) for i in range(3))
    sq, sk, sv = structured_qkv(GRID, heads=heads, head_dim=64)
    fns = {"sdpa": functools.partial(F.scaled_dot_product_attention, q, k, v)}
    calls = {}
    for dens in densities:
        calls[("block_sparse", dens)] = functools.partial(block_sparse_attention, density=dens, backend="torch")
        for kind in ("1d", "2d", "3d"):
            calls[(f"vmoba_{kind}", dens)] = functools.partial(
                vmoba_attention, grid=GRID, partition=kind, density=dens, scope="head", backend="torch", **BLOCKS)
    for key, fn in calls.items():
        fns[key] = functools.partial(fn, q, k, v)
    t = interleaved(fns, repeats)
    dense_structured = F.scaled_dot_product_attention(sq, sk, sv)
    rows = []
    for (name, dens), fn in calls.items():
        row = {"method": name, "density": dens, "seq": 8192, "heads": heads, "head_dim": 64, "dtype": "fp32",
               "sdpa_s": round(t["sdpa"]["min"], 4), "method_s": round(t[(name, dens)]["min"], 4),
               **ratios(t["sdpa"], t[(name, dens)]),
               "rel_err_vs_dense_structured": round(rel_err(fn(sq, sk, sv), dense_structured), 4)}
        rows.append(row)
        log(json.dumps(row))
    return rows


@torch.no_grad()
def bench_quality(methods: dict, steps: int) -> dict:
    from diffusion_accel import AccelerationConfig
    from diffusion_accel.sparse_attn import SparseAttentionConfig
    from diffusion_accel.testing import tiny_call_kwargs

    pipe = _wan_pipeline(4, 64, 2)
    kwargs = tiny_call_kwargs("wan", height=512, width=512, num_frames=13, num_inference_steps=steps)

    def call():
        return pipe(**kwargs, generator=torch.Generator().manual_seed(0)).frames

    dense = call()
    out = {"model": "tiny Wan (2 layers, 4 heads x 64, random weights)", "tokens": 4 * 32 * 32,
           "grid": [4, 32, 32], "steps": steps, "methods": {}}
    for name, cfg in methods.items():
        frames, report = run_accelerated(pipe, AccelerationConfig(attention=SparseAttentionConfig(**cfg)), call,
                                         "attention")
        out["methods"][name] = {"config": cfg, "psnr_db_vs_dense": round(_psnr(frames, dense), 2),
                                "max_abs_diff": round(float((frames - dense).abs().max()), 4),
                                "mean_density": round(report["mean_density"], 3)}
        log(f"quality {name}: {json.dumps(out['methods'][name])}")
    return out


def main(argv=None) -> dict:
    p = argument_parser(__doc__)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--sections", default="op,quality")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    threads = set_threads(args.threads)
    sections = set(args.sections.split(","))
    result = {"benchmark": "vmoba", "torch": torch.__version__, "threads": threads,
              "device_kind": device_kind("cpu"), "repeats": args.repeats,
              "timing": "interleaved runs in one process; speedup_* = SDPA time / method time"}
    if "op" in sections:
        result["op"] = bench_op(args.heads, args.repeats)
    if "quality" in sections:
        methods = {}
        for dens in (0.5, 0.25):
            methods[f"block_sparse_{dens}"] = {"density": dens, "dense_steps": 1}
            for scope in ("query", "head", "heads"):
                methods[f"vmoba_{scope}_{dens}"] = {"method": "vmoba", "density": dens, "dense_steps": 1,
                                                    "selection_scope": scope}
        methods["vmoba_head_cdf0.9"] = {"method": "vmoba", "cdf_threshold": 0.9, "dense_steps": 1}
        result["quality"] = bench_quality(methods, args.steps)
    if "partitions" in sections:  # the 2-layer model sees only 1d and 2d under the default cycle
        base = {"method": "vmoba", "dense_steps": 1}
        methods = {}
        for dens in (0.5, 0.25):
            # on this 4-frame grid the default cube (4, 8, 8) is the 2d tile (8, 8) through all frames
            methods[f"vmoba_3d_{dens}"] = {**base, "density": dens, "partitions": ("3d",)}
            methods[f"vmoba_3d_2x8x8_{dens}"] = {**base, "density": dens, "partitions": ("3d",),
                                                 "block_cube": (2, 8, 8)}
        methods["vmoba_3d_2x8x8_query_0.25"] = {**base, "density": 0.25, "partitions": ("3d",),
                                                "block_cube": (2, 8, 8), "selection_scope": "query"}
        methods["vmoba_head_cdf0.5"] = {**base, "cdf_threshold": 0.5}
        methods["vmoba_head_cdf0.9_cap0.25"] = {**base, "cdf_threshold": 0.9, "density": 0.25}
        result["partitions"] = bench_quality(methods, args.steps)
    emit_json(result, args.out)
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
