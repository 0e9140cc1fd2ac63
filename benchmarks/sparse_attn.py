"""Benchmark sparse and linear attention against dense SDPA measured in the same run; prints JSON.

Sections:
  * ``op``: ``block_sparse_attention`` (torch backend, mask prediction included) at seq
    8192/16384/32768 (``--heads`` at 8k, half at 16k, a quarter at 32k: the work of one head
    does not depend on the others, so the ratio is per head), head_dim 64 (and 72 at 8k), density
    0.5/0.25/0.1 (16k and 32k: 0.25), fp32 and bf16, with this device's default block
    shape and with 128x64 (query x key), vs ``F.scaled_dot_product_attention`` on the same
    tensors. Runs are interleaved (dense, sparse, dense, ...) and the ratio is taken from the
    minimum (and the median) of each.
  * ``blocks``: the measurement that chooses the default block shape of this device kind: speed
    vs SDPA at 25 % density for each candidate shape, and mask quality on structured inputs
    (tokens on a video grid whose attention is local with per-head length scales): the fraction
    of the exact softmax mass inside the selected blocks (``exp(lse_sparse - lse_dense)``, mean
    over queries), at two concentrations of attention.
  * ``recall``: mask recall (as in ``blocks``) of query blocks of 128-1024 tokens (key blocks of 64)
    on structured inputs of larger video grids (``--recall-grids``): what a token-count-dependent
    default block shape would cost.
  * ``linear``: ``linear_attention`` at 32k tokens vs SDPA.
  * ``end_to_end``: a tiny Wan pipeline (4 layers, 8 heads x 64, random weights; --quick: 2 layers,
    4 heads) at 4096 video
    tokens: pipeline latency (incl. text encoder and VAE) and transformer latency, dense vs each
    sparse method, and the PSNR of the decoded frames against the dense output.

Usage:
    python benchmarks/sparse_attn.py --quick            # a few minutes
    python benchmarks/sparse_attn.py --out results.json # the full grid (tens of minutes on 1 thread)
    # the speed goal of issue #22: defaults, 50 / 25 % at 8k-32k, fp32 and bf16
    python benchmarks/sparse_attn.py --sections op --op-seqs 8192,16384,32768 --op-densities 0.5,0.25 \
        --op-default-only --out benchmarks/results/sparse_attn_defaults.json
    # its session-5 re-run (2 threads; the same with --threads 1 for the 1-thread file)
    python benchmarks/sparse_attn.py --sections op --op-seqs 8192,16384,32768 --op-densities 0.5,0.25 \
        --op-default-only --heads 8 --repeats 7 --threads 2 --out benchmarks/results/sparse_attn_defaults_s5.json
    # larger query blocks: speed, and mask recall on larger video grids
    python benchmarks/sparse_attn.py --sections op --op-seqs 8192,16384,32768 --op-densities 0.25 \
        --op-shapes 512x64,1024x64 --heads 8 --repeats 5 --threads 2 --dtypes fp32 \
        --out benchmarks/results/sparse_attn_block_q_s5.json
    python benchmarks/sparse_attn.py --sections recall --recall-grids 8x32x32,8x32x64,8x64x64 --threads 2 \
        --out benchmarks/results/sparse_attn_recall_s5.json
"""

from __future__ import annotations

import functools
import json
import math
import statistics
import time

import torch
import torch.nn.functional as F
from _common import argument_parser, emit_json, interleaved_times, log, rel_err, set_threads

from diffusion_accel.sparse_attn import block_sparse_attention, linear_attention
from diffusion_accel.sparse_attn.cpu import attention_with_lse, block_sparse_attention_torch
from diffusion_accel.sparse_attn.defaults import DEFAULT_BLOCK_SHAPES, device_kind, resolve_block_shape
from diffusion_accel.sparse_attn.masks import predict_block_map
from diffusion_accel.sparse_attn.reference import block_sparse_attention_reference

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def interleaved(fns: dict, repeats: int, warmup: int = 1) -> dict:
    """Time each fn ``repeats`` times, round-robin.

    Returns ``{name: {"min", "median", "cpu_min", "cpu_median", "wall", "cpu"}}`` in seconds:
    wall-clock time and the process's CPU time (min, median, and every round's time). With one
    torch thread the CPU time excludes the time the process waits for a core, so on a shared
    machine it is the steadier of the two.
    """
    times = interleaved_times(fns, repeats, warmup)
    return {
        name: {"min": min(t["wall"]), "median": statistics.median(t["wall"]),
               "cpu_min": min(t["cpu"]), "cpu_median": statistics.median(t["cpu"]),
               "wall": t["wall"], "cpu": t["cpu"]}
        for name, t in times.items()
    }


def ratios(base: dict, other: dict) -> dict:
    """Speedups of ``other`` over ``base`` from wall and CPU time (min and median).

    With per-round times (``interleaved``): also the speedup of each round (same-round times,
    CPU) and the spread of each side's CPU times (``max / min - 1``, in %).
    """
    row = {
        "speedup_min": round(base["min"] / other["min"], 2),
        "speedup_median": round(base["median"] / other["median"], 2),
        "speedup_cpu_min": round(base["cpu_min"] / other["cpu_min"], 2),
        "speedup_cpu_median": round(base["cpu_median"] / other["cpu_median"], 2),
    }
    if "cpu" in base and "cpu" in other:
        row["speedup_cpu_per_round"] = [round(b / o, 2) for b, o in zip(base["cpu"], other["cpu"])]
        row["spread_cpu_pct"] = {
            "sdpa": round(100 * (max(base["cpu"]) / min(base["cpu"]) - 1), 1),
            "method": round(100 * (max(other["cpu"]) / min(other["cpu"]) - 1), 1),
        }
    return row


@torch.no_grad()
def bench_op(seqs, head_dims, densities, dtypes, heads, repeats, shapes, error_seq) -> list:
    """``densities``/``heads``: lists, or callables of the sequence length."""
    densities_for = densities if callable(densities) else (lambda seq: densities)
    heads_for = heads if callable(heads) else (lambda seq: heads)
    rows = []
    for dtype_name in dtypes:
        for d in head_dims:
            for seq in seqs:
                if d != head_dims[0] and seq != min(seqs):
                    continue  # other head dims only at the shortest sequence
                g = torch.Generator().manual_seed(seq + d)
                q, k, v = (torch.randn(1, heads_for(seq), seq, d, generator=g).to(DTYPES[dtype_name])
                           for _ in range(3))
                fns = {"sdpa": functools.partial(F.scaled_dot_product_attention, q, k, v)}
                for shape in shapes:  # None: the device default (block_q=block_k=None)
                    block_q, block_k = shape or (None, None)
                    for dens in densities_for(seq):
                        fns[(shape, dens)] = functools.partial(
                            block_sparse_attention, q, k, v, density=dens, block_q=block_q, block_k=block_k,
                            backend="torch",
                        )
                warmup = 1 if seq <= 8192 else 0
                t = interleaved(fns, repeats, warmup=warmup)
                for shape, dens in [key for key in fns if key != "sdpa"]:
                    s = t[(shape, dens)]
                    block_q, block_k = resolve_block_shape(*(shape or (None, None)), q.device)
                    row = {
                        "seq": seq, "heads": heads_for(seq), "head_dim": d, "dtype": dtype_name,
                        "density": dens, "block_q": block_q, "block_k": block_k, "device_default": shape is None,
                        "sdpa_s": round(t["sdpa"]["min"], 4), "sparse_s": round(s["min"], 4),
                        "sdpa_cpu_s": round(t["sdpa"]["cpu_min"], 4), "sparse_cpu_s": round(s["cpu_min"], 4),
                        **ratios(t["sdpa"], s),
                    }
                    if seq <= error_seq and dens == 0.25:
                        res = block_sparse_attention(q, k, v, density=dens, block_q=block_q, block_k=block_k,
                                                     backend="torch", return_block_map=True)
                        ref = block_sparse_attention_reference(q, k, v, res.block_map, block_q, block_k)
                        row["rel_err_vs_fp32_masked_reference"] = float(f"{rel_err(res.output, ref):.2e}")
                        row["realised_density"] = round(res.density, 4)
                    rows.append(row)
                    log(json.dumps(row))
    return rows


def structured_qkv(grid=(8, 32, 32), heads=8, head_dim=64, concentration=1.0, seed=0):
    """q, k, v ``(1, heads, F*H*W, head_dim)`` fp32 for tokens on a video grid, raster order.

    Each head's q and k are random Fourier features of the token position with its own length
    scales along (frames, height, width) (local, temporal or spatial heads) plus noise, scaled by
    ``concentration`` (higher: attention concentrated on fewer tokens); v is random.
    """
    g = torch.Generator().manual_seed(seed)
    f, h, w = torch.meshgrid(*(torch.arange(n) for n in grid), indexing="ij")
    pos = torch.stack([f, h, w], -1).reshape(-1, 3).float()
    qs, ks = [], []
    for _ in range(heads):
        length = torch.tensor([2.0, 4.0, 4.0]) * torch.exp(0.7 * torch.randn(3, generator=g))
        freqs = torch.randn(head_dim // 2, 3, generator=g) / length
        phase = 2 * math.pi * torch.rand(head_dim // 2, generator=g)
        angle = pos @ freqs.T + phase
        feat = torch.cat([angle.cos(), angle.sin()], -1) * concentration * (1 + torch.rand(1, generator=g))
        qs.append(feat + 0.3 * torch.randn(feat.shape, generator=g))
        ks.append(feat + 0.3 * torch.randn(feat.shape, generator=g))
    v = torch.randn(1, heads, pos.shape[0], head_dim, generator=g)
    return torch.stack(qs)[None], torch.stack(ks)[None], v


@torch.no_grad()
def mask_recall(q, k, v, density, block_q, block_k) -> float:
    """Mean over queries of the exact softmax mass inside the predicted blocks."""
    _, lse = attention_with_lse(q, k, v)
    block_map = predict_block_map(q, k, density=density, block_q=block_q, block_k=block_k)
    _, lse_sparse = block_sparse_attention_torch(q, k, v, block_map, block_q, block_k, return_lse=True)
    return float(torch.exp(lse_sparse - lse).mean())


@torch.no_grad()
def bench_blocks(seq, heads, dtypes, shapes, repeats, density=0.25, concentrations=(0.8, 1.2)) -> dict:
    """Speed (vs SDPA) and mask recall of each candidate block shape: what chooses the default."""
    kind = device_kind("cpu")
    rows = []
    for dtype_name in dtypes:
        g = torch.Generator().manual_seed(seq)
        q, k, v = (torch.randn(1, heads, seq, 64, generator=g).to(DTYPES[dtype_name]) for _ in range(3))
        fns = {"sdpa": functools.partial(F.scaled_dot_product_attention, q, k, v)}
        for bq, bk in shapes:
            fns[(bq, bk)] = functools.partial(block_sparse_attention, q, k, v, density=density, block_q=bq,
                                              block_k=bk, backend="torch")
        t = interleaved(fns, repeats)
        for bq, bk in shapes:
            row = {"dtype": dtype_name, "seq": seq, "heads": heads, "block_q": bq, "block_k": bk,
                   "density": density, **ratios(t["sdpa"], t[(bq, bk)])}
            rows.append(row)
            log(json.dumps(row))
    recall = {}
    for conc in concentrations:
        q, k, v = structured_qkv(concentration=conc)
        recall[str(conc)] = {
            f"{bq}x{bk}": round(mask_recall(q, k, v, density, bq, bk), 4) for bq, bk in shapes
        }
        log(f"recall at concentration {conc}: {recall[str(conc)]}")
    default = DEFAULT_BLOCK_SHAPES.get(kind, DEFAULT_BLOCK_SHAPES["default"])
    return {"device_kind": kind, "default": [default.block_q, default.block_k], "evidence": default.evidence,
            "speed": rows, "structured_inputs": "8x32x32 video grid, 8 heads x 64",
            "mask_recall": recall}


@torch.no_grad()
def bench_recall(grids, block_qs, block_k, density=0.25, heads=8, concentrations=(0.8, 1.2)) -> list:
    """Mask recall of each query block size on structured inputs of each video grid (token count)."""
    rows = []
    for grid in grids:
        for conc in concentrations:
            q, k, v = structured_qkv(grid=grid, heads=heads, concentration=conc)
            row = {"grid": list(grid), "tokens": q.shape[2], "heads": heads, "concentration": conc,
                   "density": density, "block_k": block_k,
                   "recall": {f"{bq}x{block_k}": round(mask_recall(q, k, v, density, bq, block_k), 4)
                              for bq in block_qs}}
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
    p = argument_parser(__doc__)
    p.add_argument("--quick", action="store_true", help="a short run: fewer shapes and repeats")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1, as in the CPU notes)")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--sections", default="op,blocks,linear,end_to_end")
    p.add_argument("--dtypes", default="fp32,bf16")
    p.add_argument("--heads", type=int, default=16, help="heads at 8k tokens in the op section")
    p.add_argument("--op-seqs", default=None,
                   help="op section: comma-separated sequence lengths, e.g. 8192,16384,32768 (with --op-densities: "
                        "every density at every length; default: the grid described above)")
    p.add_argument("--op-densities", default=None, help="op section: comma-separated densities, e.g. 0.5,0.25")
    p.add_argument("--op-shapes", default=None,
                   help="op section: other block shapes (query x key) to time beside the default, e.g. 512x64,1024x64 "
                        "(replaces 128x64)")
    p.add_argument("--recall-grids", default=None,
                   help="recall section: video grids (frames x height x width), e.g. 8x32x32,8x64x64: mask recall of "
                        "block_q 128-1024 (block_k 64) at 25 %% density on structured inputs of each grid")
    p.add_argument("--op-default-only", action="store_true",
                   help="op section: only the device default block shape (not 128x64 too)")
    p.add_argument("--out", default=None, help="also write the JSON here")
    args = p.parse_args(argv)
    threads = set_threads(args.threads)
    repeats = args.repeats or (2 if args.quick else 3)
    sections = set(args.sections.split(","))
    dtypes = args.dtypes.split(",")
    result = {
        "benchmark": "sparse_attn", "torch": torch.__version__, "threads": threads,
        "device_kind": device_kind("cpu"), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "quick": args.quick, "repeats": repeats,
        "timing": "interleaved runs in one process; speedup_* = SDPA time / method time (wall and process "
                  "CPU time, min and median); end_to_end: one run each, wall and CPU time",
    }
    if "op" in sections:
        shapes = [None] if args.op_default_only else [None, (128, 64)]  # device default, former default
        if args.op_shapes:
            shapes = [None] + [tuple(int(x) for x in shape.split("x")) for shape in args.op_shapes.split(",")]
        if args.op_seqs or args.op_densities:
            seqs = [int(x) for x in (args.op_seqs or "8192").split(",")]
            densities = [float(x) for x in (args.op_densities or "0.25").split(",")]
            result["op"] = bench_op(seqs, [64], densities, dtypes, lambda seq: max(1, args.heads * 8192 // seq),
                                    repeats, shapes, 8192)
        elif args.quick:
            result["op"] = bench_op([8192], [64], [0.25], dtypes, args.heads, repeats, shapes, 8192)
        else:
            result["op"] = bench_op(
                [8192, 16384, 32768], [64, 72], lambda seq: [0.25] if seq > 8192 else [0.5, 0.25, 0.1],
                dtypes, lambda seq: args.heads * 8192 // seq, repeats, shapes, 8192,
            )
    if "blocks" in sections:
        shapes = [(128, 64), (128, 128), (256, 64), (256, 128), (512, 64)]
        result["blocks"] = bench_blocks(8192, max(1, args.heads // 2), dtypes, shapes, repeats)
    if "recall" in sections:
        grids = [tuple(int(x) for x in grid.split("x")) for grid in (args.recall_grids or "8x32x32").split(",")]
        result["recall"] = bench_recall(grids, [128, 256, 512, 1024], 64)
    if "linear" in sections:
        result["linear"] = bench_linear(32768, 4 if args.quick else 16, 64, ["fp32"] if args.quick else ["fp32", "bf16"],
                                        1 if args.quick else 2)
    if "end_to_end" in sections:
        methods = {
            "block_sparse_0.25": {"density": 0.25, "dense_steps": 1},
            "block_sparse_0.25_128x64": {"density": 0.25, "dense_steps": 1, "block_q": 128, "block_k": 64},
            "paro_0.25": {"density": 0.25, "dense_steps": 1, "reorder": "paro"},
            "rettention_0.25": {"method": "rettention", "density": 0.25, "dense_steps": 1},
        }
        if not args.quick:
            methods["block_sparse_0.1"] = {"density": 0.1, "dense_steps": 1}
            methods["rettention_0.1"] = {"method": "rettention", "density": 0.1, "dense_steps": 1}
        result["end_to_end"] = bench_end_to_end(512, 512, 13, 4 if args.quick else 6, 1,
                                                4 if args.quick else 8, 64, 2 if args.quick else 4, methods)
    emit_json(result, args.out)
    return result


if __name__ == "__main__":
    main()
