"""Default block shape (query x key tokens) per device, chosen from measurement (a table, not code).

``block_sparse_attention``, ``sla_attention`` and ``SparseAttentionConfig`` leave ``block_q`` and
``block_k`` at ``None`` by default, which means: the entry of :data:`DEFAULT_BLOCK_SHAPES` for the
device the tensors are on. Each entry carries the measurement that chose it (see
``docs/sparse_attn.md``, "Defaults per device", and ``benchmarks/sparse_attn.py --sections blocks``).

Device kinds: ``"cuda"``; CPUs by capability, detected at runtime: ``"cpu-amx"`` (AMX tiles),
``"cpu-avx512"``, ``"cpu-avx2"``; ``"cpu"`` for anything else; other devices use ``"default"``.

Example:
    >>> import torch
    >>> from diffusion_accel.sparse_attn.defaults import DEFAULT_BLOCK_SHAPES, resolve_block_shape
    >>> resolve_block_shape(None, None, torch.device("cuda"))
    (128, 64)
    >>> resolve_block_shape(64, None, torch.device("cuda"))     # a given size is kept
    (64, 64)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["DEFAULT_BLOCK_SHAPES", "BlockShape", "default_block_shape", "device_kind", "resolve_block_shape"]


@dataclass(frozen=True)
class BlockShape:
    """A default block shape and the measurement that justified it."""

    block_q: int
    block_k: int
    evidence: str


#: device kind -> default block shape. Measured entries name the run; unmeasured ones say so.
DEFAULT_BLOCK_SHAPES: dict[str, BlockShape] = {
    "cuda": BlockShape(
        128, 64,
        "not measured by this project (no GPU here): the Triton kernel's tile, the block shape "
        "SpargeAttn's GPU kernels use",
    ),
    "cpu-avx2": BlockShape(
        256, 64,
        "AMD EPYC, AVX2 only, 1 thread, torch 2.13, 25 % density, vs SDPA on the same tensors "
        "(process CPU time): fp32 3.4/3.4/3.1x at 8k/16k/32k tokens vs 2.5/2.9/2.4x with 128x64; "
        "bf16 3.6/3.4/3.2x vs 2.8/2.9/2.8x. 512x64 was no faster in fp32 (2.9x vs 3.0x at 8k) and "
        "kept 7-9 points less attention mass on structured inputs, 256x64 1.4-1.7 points less "
        "than 128x64 (benchmarks/results/sparse_attn.json, sections op and blocks)",
    ),
    "cpu-amx": BlockShape(
        256, 64,
        "Intel CPU with AMX, 1 thread, torch 2.13, 25 % density, 4k-16k tokens: 256x64 2.6-3.3x "
        "fp32 / 1.9-2.6x bf16 SDPA vs 2.4-2.8x / 1.6-2.2x with 128x64 (docs/sparse_attn.md, "
        "earlier run)",
    ),
    "cpu-avx512": BlockShape(
        256, 64,
        "AMD EPYC, AVX-512 (VNNI, BF16; no AMX), 1 thread, torch 2.13, 8k tokens, 25 % density, vs SDPA "
        "on the same tensors (process CPU time, min of 4 interleaved runs, machine loaded): fp32 3.40x "
        "vs 2.89x with 128x64, 3.39x with 256x128, 3.50x with 512x64; bf16 3.37x vs 3.06x / 3.45x / "
        "3.61x. 512x64's 3 % is within this machine's noise and costs 5-8 points of attention mass on "
        "structured inputs (benchmarks/results/sparse_attn.json, section blocks)",
    ),
    "cpu": BlockShape(256, 64, "not measured: same as the measured x86 CPUs"),
    "default": BlockShape(128, 64, "not measured: the GPU kernel's tile"),
}


def device_kind(device: torch.device | str) -> str:
    """The :data:`DEFAULT_BLOCK_SHAPES` key of ``device`` (CPU capability detected at runtime)."""
    device = torch.device(device)
    if device.type == "cuda":
        return "cuda"
    if device.type != "cpu":
        return "default"
    cpu = torch.cpu
    for kind, probe in (("cpu-amx", "_is_amx_tile_supported"), ("cpu-avx512", "_is_avx512_supported"),
                        ("cpu-avx2", "_is_avx2_supported")):
        fn = getattr(cpu, probe, None)
        if fn is not None and fn():
            return kind
    return "cpu"


def default_block_shape(device: torch.device | str) -> tuple[int, int]:
    """``(block_q, block_k)`` default for ``device``."""
    entry = DEFAULT_BLOCK_SHAPES.get(device_kind(device), DEFAULT_BLOCK_SHAPES["default"])
    return entry.block_q, entry.block_k


def resolve_block_shape(
    block_q: int | None, block_k: int | None, device: torch.device | str
) -> tuple[int, int]:
    """Fill the sizes left at ``None`` with the device's defaults."""
    if block_q is not None and block_k is not None:
        return block_q, block_k
    dq, dk = default_block_shape(device)
    return (dq if block_q is None else block_q), (dk if block_k is None else block_k)
