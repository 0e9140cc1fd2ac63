"""Benchmark sparse and linear attention against dense SDPA measured in the same run; prints JSON.

Sections:
  * ``op``: ``block_sparse_attention`` (torch backend, mask prediction included) at seq
    4096/8192/16384, 16 heads, head_dim 64 and 72, density 0.5/0.25/0.1, fp32 and bf16, blocks
    128x64 and 256x64 (query x key), vs
    ``F.scaled_dot_product_attention`` on the same tensors. Runs are interleaved (dense, sparse,
    dense, ...) and the ratio is taken from the minimum (and the median) of each.
  * ``linear``: ``linear_attention`` at 32k tokens vs SDPA.
  * ``end_to_end``: a tiny Wan pipeline (4 layers, 8 heads x 64, random weights; --quick: 2 layers,
    4 heads) at 4096 video
    tokens: pipeline latency (incl. text encoder and VAE) and transformer latency, dense vs each
    sparse method, and the PSNR of the decoded frames against the dense output.

Usage:
    python benchmarks/sparse_attn.py --quick            # a few minutes
    python benchmarks/sparse_attn.py --out results.json # the full grid (tens of minutes on 1 thread)
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from diffusion_accel.sparse_attn import block_sparse_attention, linear_attention
from diffusion_accel.sparse_attn.reference import block_sparse_attention_reference

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def interleaved(fns: dict, repeats: int, warmup: int = 1) -> dict:
    """Time each fn ``repeats`` times, round-robin.

    Returns ``{name: {"min", "median", "cpu_min", "cpu_median"}}`` in seconds: wall-clock time and
    the process's CPU time. With one torch thread the CPU time excludes the time the process
    waits for a core, so on a shared machine it is the steadier of the two.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    wall = {name: [] for name in fns}
    cpu = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            c0, t0 = time.process_time(), time.perf_counter()
            fn()
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    return {
        name: {"min": min(wall[name]), "median": statistics.median(wall[name]),
               "cpu_min": min(cpu[name]), "cpu_median": statistics.median(cpu[name])}
        for name in fns
    }


def ratios(base: dict, other: dict) -> dict:
    """Speedups of ``other`` over ``base`` from wall and CPU time (min and median)."""
    return {
        "speedup_min": round(base["min"] / other["min"], 2),
        "speedup_median": round(base["median"] / other["median"], 2),
        "speedup_cpu_min": round(base["cpu_min"] / other["cpu_min"], 2),
        "speedup_cpu_median": round(base["cpu_median"] / other["cpu_median"], 2),
    }


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


@torch.no_grad()
def bench_op(seqs, head_dims, densities, dtypes, heads, repeats, shapes, error_seq) -> list:
    rows = []
    for dtype_name in dtypes:
        for d in head_dims:
            for seq in seqs:
                g = torch.Generator().manual_seed(seq + d)
                q, k, v = (torch.randn(1, heads, seq, d, generator=g).to(DTYPES[dtype_name]) for _ in range(3))
                fns = {"sdpa": functools.partial(F.scaled_dot_product_attention, q, k, v)}
                for block_q, block_k in shapes:
                    for dens in densities:
                        fns[(block_q, block_k, dens)] = functools.partial(
                            block_sparse_attention, q, k, v, density=dens, block_q=block_q, block_k=block_k,
                            backend="torch",
                        )
                warmup = 1 if seq <= 8192 else 0
                t = interleaved(fns, repeats, warmup=warmup)
                for block_q, block_k, dens in [key for key in fns if key != "sdpa"]:
                    s = t[(block_q, block_k, dens)]
                    row = {
                        "seq": seq, "heads": heads, "head_dim": d, "dtype": dtype_name, "density": dens,
                        "block_q": block_q, "block_k": block_k,
                        "sdpa_s": round(t["sdpa"]["min"], 4), "sparse_s": round(s["min"], 4),
                        "sdpa_cpu_s": round(t["sdpa"]["cpu_min"], 4), "sparse_cpu_s": round(s["cpu_min"], 4),
                        **ratios(t["sdpa"], s),
                    }
                    if seq <= error_seq:
                        res = block_sparse_attention(q, k, v, density=dens, block_q=block_q, block_k=block_k,
                                                     backend="torch", return_block_map=True)
                        ref = block_sparse_attention_reference(q, k, v, res.block_map, block_q, block_k)
                        row["rel_err_vs_fp32_masked_reference"] = float(f"{rel_err(res.output, ref):.2e}")
                        row["realised_density"] = round(res.density, 4)
                    rows.append(row)
                    log(json.dumps(row))
    return rows


@torch.no_grad()
def bench_linear(seq, heads, head_dim, dtypes, repeats) -> list:
    rows = []
    for dtype_name in dtypes:
        g = torch.Generator().manual_seed(1)
        q, k, v = (torch.randn(1, heads, seq, head_dim, generator=g).to(DTYPES[dtype_name]) for _ in range(3))
        t = interleaved(
            {"sdpa": functools.partial(F.scaled_dot_product_attention, q, k, v),
             "linear": functools.partial(linear_attention, q, k, v)},
            repeats, warmup=0,
        )
        row = {
            "seq": seq, "heads": heads, "head_dim": head_dim, "dtype": dtype_name,
            "sdpa_s": round(t["sdpa"]["min"], 4), "linear_s": round(t["linear"]["min"], 4),
            "sdpa_cpu_s": round(t["sdpa"]["cpu_min"], 4), "linear_cpu_s": round(t["linear"]["cpu_min"], 4),
            **ratios(t["sdpa"], t["linear"]),
        }
        rows.append(row)
        log(json.dumps(row))
    return rows


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float((a.double() - b.double()).square().mean())
    return float("inf") if mse == 0 else 10 * torch.log10(torch.tensor(1.0 / mse)).item()


def _wan_pipeline(heads: int, head_dim: int, layers: int):
    from diffusers import WanTransformer3DModel

    from diffusion_accel.testing import tiny_pipeline

    pipe = tiny_pipeline("wan", seed=0)
    torch.manual_seed(0)
    pipe.transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=heads, attention_head_dim=head_dim, in_channels=16,
        out_channels=16, text_dim=32, freq_dim=256, ffn_dim=2 * heads * head_dim, num_layers=layers,
        cross_attn_norm=True, qk_norm="rms_norm_across_heads",
    ).eval()
    return pipe


@torch.no_grad()
def bench_end_to_end(height, width, frames, steps, repeats, heads, head_dim, layers, methods) -> dict:
    import diffusion_accel
    from diffusion_accel import AccelerationConfig
    from diffusion_accel.sparse_attn import SparseAttentionConfig
    from diffusion_accel.testing import tiny_call_kwargs

    pipe = _wan_pipeline(heads, head_dim, layers)
    kwargs = tiny_call_kwargs("wan", height=height, width=width, num_frames=frames, num_inference_steps=steps)
    tokens = ((frames - 1) // 4 + 1) * (height // 16) * (width // 16)

    clock = {"wall": 0.0, "cpu": 0.0, "start": (0.0, 0.0)}

    def _start(module, args, kwargs):
        clock["start"] = (time.perf_counter(), time.process_time())

    def _stop(module, args, kwargs, output):
        clock["wall"] += time.perf_counter() - clock["start"][0]
        clock["cpu"] += time.process_time() - clock["start"][1]

    pipe.transformer.register_forward_pre_hook(_start, with_kwargs=True)
    pipe.transformer.register_forward_hook(_stop, with_kwargs=True)

    def call():
        clock["wall"] = clock["cpu"] = 0.0
        t0, c0 = time.perf_counter(), time.process_time()
        out = pipe(**kwargs, generator=torch.Generator().manual_seed(0)).frames
        return out, {"pipeline_s": time.perf_counter() - t0, "pipeline_cpu_s": time.process_time() - c0,
                     "transformer_s": clock["wall"], "transformer_cpu_s": clock["cpu"]}

    def measure():
        runs = [call() for _ in range(repeats)]
        return runs[0][0], {key: round(min(r[1][key] for r in runs), 3) for key in runs[0][1]}

    log(f"end_to_end: {tokens} tokens, {steps} steps, measuring dense")
    dense_out, dense_t = measure()
    results = {"model": f"tiny Wan ({layers} layers, {heads} heads x {head_dim}, random weights)",
               "tokens": tokens, "height": height, "width": width, "frames": frames, "steps": steps,
               "guidance_calls_per_step": 2, "dense": dense_t, "methods": {}}
    for name, cfg in methods.items():
        diffusion_accel.apply(pipe, AccelerationConfig(attention=SparseAttentionConfig(**cfg)))
        out, t = measure()
        report = diffusion_accel.api.acceleration_state(pipe).report()["attention"]
        diffusion_accel.remove(pipe)
        row = {"config": cfg, **t,
               **{key.replace("_s", "_speedup"): round(dense_t[key] / t[key], 2) for key in t},
               "psnr_db_vs_dense": round(_psnr(out, dense_out), 2), "mean_density": report["mean_density"]}
        results["methods"][name] = row
        log(f"end_to_end {name}: {json.dumps(row)}")
    return results


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a short run: fewer shapes and repeats")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1, as in the CPU notes)")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--sections", default="op,linear,end_to_end")
    p.add_argument("--out", default=None, help="also write the JSON here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    repeats = args.repeats or (2 if args.quick else 3)
    sections = set(args.sections.split(","))
    result = {
        "benchmark": "sparse_attn", "torch": torch.__version__, "threads": torch.get_num_threads(),
        "quick": args.quick, "repeats": repeats,
        "timing": "interleaved runs in one process; speedup_* = SDPA time / method time (wall and process "
                  "CPU time, min and median); end_to_end: one run each, wall and CPU time",
    }
    if "op" in sections:
        if args.quick:
            result["op"] = bench_op([4096, 8192], [64], [0.25], ["fp32", "bf16"], 16, repeats,
                                    [(128, 64), (256, 64)], 4096)
        else:
            result["op"] = bench_op([4096, 8192, 16384], [64, 72], [0.5, 0.25, 0.1], ["fp32", "bf16"], 16,
                                    repeats, [(128, 64), (256, 64)], 4096)
    if "linear" in sections:
        result["linear"] = bench_linear(32768, 4 if args.quick else 16, 64, ["fp32"] if args.quick else ["fp32", "bf16"],
                                        1 if args.quick else 2)
    if "end_to_end" in sections:
        methods = {
            "block_sparse_0.25": {"density": 0.25, "dense_steps": 1},
            "block_sparse_0.25_256x64": {"density": 0.25, "dense_steps": 1, "block_q": 256},
            "paro_0.25": {"density": 0.25, "dense_steps": 1, "reorder": "paro"},
            "rettention_0.25": {"method": "rettention", "density": 0.25, "dense_steps": 1},
        }
        if not args.quick:
            methods["block_sparse_0.1"] = {"density": 0.1, "dense_steps": 1}
            methods["rettention_0.1"] = {"method": "rettention", "density": 0.1, "dense_steps": 1}
        result["end_to_end"] = bench_end_to_end(512, 512, 13, 4 if args.quick else 6, 1,
                                                4 if args.quick else 8, 64, 2 if args.quick else 4, methods)
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            fh.write(text + "\n")
    return result


if __name__ == "__main__":
    main()
