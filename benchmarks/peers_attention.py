"""Peers, attention part: our block-sparse op vs ``flex_attention`` with a block mask, and SDPA.

Every method computes attention over the *same selected blocks* (one block map predicted from the
inputs at ``--attention-density``; mask prediction is not timed), except dense SDPA, the baseline:

* ``sdpa``: dense ``F.scaled_dot_product_attention`` (baseline of every ratio);
* ``sdpa_masked``: SDPA with the block map expanded to a boolean token mask (masked dense: the
  same result as block-sparse, at dense cost);
* ``block_sparse``: ``diffusion_accel.sparse_attn`` on the block map (``backend="auto"``);
* ``flex_eager``: ``torch.nn.attention.flex_attention`` without compile, ``BlockMask`` with the
  block indices and a ``mask_mod`` reading the block map (eager flex applies only the
  ``mask_mod``; without it it computes dense attention). It materializes the full score matrix;
  skipped above ``--attention-eager-max-seq`` tokens;
* ``flex_compiled``: ``torch.compile(flex_attention)`` with the block indices (the kernel skips
  unselected blocks; the compile time is reported apart). Selected blocks are passed as *partial*
  blocks with a no-op ``mask_mod``: in torch 2.13 the CPU template fails to compile with
  ``full_kv_indices`` (``'kv_indices' was not declared``).

Runs are interleaved (one call of each method per round, ``--attention-repeats`` rounds after a
warm-up call of each); reported: min, median and max wall time, the spread ``(max - min) / min``, the speedup
over SDPA from the minima, and the relative error against the masked-dense fp32 reference
(``block_sparse_attention_reference`` on the same, upcast inputs). fp32 and bf16.

Run with the driver: ``python benchmarks/peers.py --parts attention``.
"""

from __future__ import annotations

import functools
import statistics
import time

import torch
import torch.nn.functional as F
from _common import cpu_name, interleaved_times, rel_err

from diffusion_accel.sparse_attn import block_sparse_attention
from diffusion_accel.sparse_attn.defaults import DEFAULT_BLOCK_SHAPES, device_kind, resolve_block_shape
from diffusion_accel.sparse_attn.masks import predict_block_map
from diffusion_accel.sparse_attn.reference import block_sparse_attention_reference

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def add_arguments(parser) -> None:
    group = parser.add_argument_group("attention part")
    group.add_argument("--attention-seq", type=int, default=8192, help="tokens (default 8192)")
    group.add_argument("--attention-heads", type=int, default=2,
                       help="heads (default 2; the ratios are per head)")
    group.add_argument("--attention-head-dim", type=int, default=64)
    group.add_argument("--attention-density", type=float, default=0.25)
    group.add_argument("--attention-block", default=None,
                       help="QxK block shape, e.g. 128x64 (default: this device's default)")
    group.add_argument("--attention-dtypes", default="fp32,bf16")
    group.add_argument("--attention-repeats", type=int, default=3)
    group.add_argument("--attention-threads", type=int, default=1)
    group.add_argument("--attention-eager-max-seq", type=int, default=8192,
                       help="skip eager flex_attention above this many tokens (it materializes S x S scores)")


def flex_block_mask(block_map: torch.Tensor, block_q: int, block_k: int, seq_q: int, seq_k: int, *,
                    mask_mod: bool):
    """A flex ``BlockMask`` selecting exactly the blocks of ``block_map`` ``(B, H, nq, nk)``."""
    from torch.nn.attention.flex_attention import BlockMask

    counts = block_map.sum(-1).to(torch.int32)
    indices = torch.argsort((~block_map).to(torch.int8), dim=-1, stable=True).to(torch.int32)

    def by_block(b, h, q_idx, kv_idx):
        return block_map[b, h, q_idx // block_q, kv_idx // block_k]

    return BlockMask.from_kv_blocks(
        counts, indices, BLOCK_SIZE=(block_q, block_k), mask_mod=by_block if mask_mod else None,
        seq_lengths=(seq_q, seq_k),
    )


@torch.no_grad()
def _run_dtype(dtype_name: str, args, block_q: int, block_k: int) -> dict:
    from torch.nn.attention.flex_attention import flex_attention

    B, H, S, D = 1, args.attention_heads, args.attention_seq, args.attention_head_dim
    g = torch.Generator().manual_seed(S + D)
    q, k, v = (torch.randn(B, H, S, D, generator=g).to(DTYPES[dtype_name]) for _ in range(3))
    block_map = predict_block_map(q, k, density=args.attention_density, block_q=block_q, block_k=block_k)
    token_mask = block_map.repeat_interleave(block_q, -2)[..., :S, :].repeat_interleave(block_k, -1)[..., :S]
    ref = block_sparse_attention_reference(q, k, v, block_map, block_q, block_k)

    fns = {
        "sdpa": functools.partial(F.scaled_dot_product_attention, q, k, v),
        "sdpa_masked": functools.partial(F.scaled_dot_product_attention, q, k, v, attn_mask=token_mask),
        "block_sparse": functools.partial(block_sparse_attention, q, k, v, block_map=block_map,
                                          block_q=block_q, block_k=block_k),
    }
    notes = {}
    if S <= args.attention_eager_max_seq:
        eager_mask = flex_block_mask(block_map, block_q, block_k, S, S, mask_mod=True)
        fns["flex_eager"] = functools.partial(flex_attention, q, k, v, block_mask=eager_mask)
    else:
        notes["flex_eager"] = f"skipped: materializes {S}x{S} scores per head"
    compiled = torch.compile(flex_attention, dynamic=False)
    compiled_mask = flex_block_mask(block_map, block_q, block_k, S, S, mask_mod=False)
    t0 = time.perf_counter()
    compiled(q, k, v, block_mask=compiled_mask)
    compile_s = time.perf_counter() - t0
    fns["flex_compiled"] = functools.partial(compiled, q, k, v, block_mask=compiled_mask)

    fns["sdpa"]()  # warm-up; the error pass below warms up the others
    errors = {name: rel_err(fn(), ref) for name, fn in fns.items() if name != "sdpa"}
    times = {name: clocks["wall"] for name, clocks in interleaved_times(fns, args.attention_repeats).items()}
    base = min(times["sdpa"])
    rows = {}
    for name, ts in times.items():
        rows[name] = {
            "min_s": round(min(ts), 4), "median_s": round(statistics.median(ts), 4),
            "max_s": round(max(ts), 4),
            "spread": round((max(ts) - min(ts)) / min(ts), 3),
            "speedup_vs_sdpa": round(base / min(ts), 2),
        }
        if name in errors:
            rows[name]["rel_err_vs_fp32_masked_reference"] = float(f"{errors[name]:.2e}")
    rows["flex_compiled"]["compile_s"] = round(compile_s, 1)
    for name, note in notes.items():
        rows[name] = {"note": note}
    return {"realised_density": round(float(block_map.float().mean()), 4), "methods": rows}


def run(args) -> dict:
    torch.set_num_threads(args.attention_threads)
    device = torch.device("cpu")
    if args.attention_block:
        block_q, block_k = (int(x) for x in args.attention_block.lower().split("x"))
    else:
        block_q, block_k = resolve_block_shape(None, None, device)
    kind = device_kind(device)
    result = {
        "machine": {"cpu": cpu_name(), "device_kind": kind,
                    "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                    "torch": torch.__version__, "threads": torch.get_num_threads()},
        "shape": {"batch": 1, "heads": args.attention_heads, "seq": args.attention_seq,
                  "head_dim": args.attention_head_dim},
        "density": args.attention_density,
        "block": {"block_q": block_q, "block_k": block_k,
                  "device_default": (block_q, block_k) == resolve_block_shape(None, None, device),
                  "default_evidence": DEFAULT_BLOCK_SHAPES[kind].evidence},
        "timing": "wall clock, interleaved rounds after one warm-up; speedup from the minima",
        "dtypes": {},
    }
    for name in (d.strip() for d in args.attention_dtypes.split(",") if d.strip()):
        result["dtypes"][name] = _run_dtype(name, args, block_q, block_k)
    return result
