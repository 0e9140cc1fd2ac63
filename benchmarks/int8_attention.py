"""INT8 Q·Kᵀ attention (``SparseAttentionConfig(method="int8")``) vs SDPA: speed and error per token count.

For each sequence length, fp32 SDPA and ``int8_attention`` run on the same random q, k, v
(q scaled by ``--peak`` for peakier scores), interleaved ``--repeats`` rounds in one process; the
speed-up is the ratio of min process CPU times (one thread by default: steadier on a shared
machine). Error: SQNR of the int8 output against exact SDPA. JSON to stdout and
``benchmarks/results/int8_attention.json``.

Usage::

    python benchmarks/int8_attention.py --seqs 128,256,512,1024,4096 --heads 16 --head-dim 72
"""

from __future__ import annotations

import json
import os
import sys

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)
from _common import argument_parser, cpu_name, interleaved_times, set_threads, write_results  # noqa: E402


def measure(seq: int, args) -> dict:
    from diffusion_accel.sparse_attn import int8_attention
    from diffusion_accel.quant.quantizers import sqnr_db
    from diffusion_accel.sparse_attn.int8_attention import pv_dtype

    g = torch.Generator().manual_seed(seq)
    shape = (args.batch, args.heads, seq, args.head_dim)
    q = torch.randn(shape, generator=g) * args.peak
    k, v = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    fns = {"sdpa_fp32": lambda: F.scaled_dot_product_attention(q, k, v), "int8": lambda: int8_attention(q, k, v)}
    with torch.no_grad():
        error = sqnr_db(F.scaled_dot_product_attention(q, k, v), int8_attention(q, k, v))
        times = interleaved_times(fns, args.repeats, warmup=1)
    best = {name: min(t["cpu"]) for name, t in times.items()}
    return {"seq": seq, "sdpa_ms": round(best["sdpa_fp32"] * 1e3, 2), "int8_ms": round(best["int8"] * 1e3, 2),
            "speedup_cpu": round(best["sdpa_fp32"] / best["int8"], 3), "sqnr_db_vs_exact": round(error, 2),
            "pv_dtype": str(pv_dtype(q.device)).replace("torch.", "")}


def main(argv=None) -> dict:
    parser = argument_parser(__doc__)
    parser.add_argument("--seqs", default="128,256,512,1024,4096")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--head-dim", type=int, default=72)
    parser.add_argument("--peak", type=float, default=2.0, help="q multiplier (sharper softmax)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=os.path.join(HERE, "results", "int8_attention.json"))
    args = parser.parse_args(argv)
    seqs = [int(s) for s in args.seqs.split(",") if s.strip()]
    if not seqs or min(seqs) < 1:
        raise ValueError(f"--seqs must list positive token counts, got {args.seqs!r}")
    threads = set_threads(args.threads)
    result = {"cpu": cpu_name(), "threads": threads, "batch": args.batch, "heads": args.heads,
              "head_dim": args.head_dim, "peak": args.peak, "repeats": args.repeats,
              "load_average_start": [round(x, 2) for x in os.getloadavg()],
              "rows": [measure(seq, args) for seq in seqs],
              "load_average_end": [round(x, 2) for x in os.getloadavg()]}
    print(json.dumps(result, indent=1))
    write_results(args.out, result)
    return result


if __name__ == "__main__":
    main()
