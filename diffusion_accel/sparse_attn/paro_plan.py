"""PARO calibration data: per (layer, head) a token order and a static block mask, on disk as safetensors.

A :class:`ParoPlan` holds one attention layer's calibration: the token grid it was measured on,
the per-head axis order (an index into :func:`~diffusion_accel.sparse_attn.paro.axis_orders`) and
the bool block mask ``(heads, nq, nk)`` over the *reordered* tokens. A :class:`ParoCalibration` is
the plans of every sparsified layer plus the block sizes and density; it is written as one
safetensors file (tensors ``"<i>.orders"``, ``"<i>.mask"``; the rest as JSON in the header's
metadata) that ``SparseAttentionConfig(method="paro", calibration=path)`` names.

The mask is built from the block attention mass accumulated over the calibration prompts
(:func:`accumulate_block_mass`): per head and candidate order, :func:`build_plan` keeps the
diagonal blocks and the text blocks (outside the budget, as every method does) and then the
``density`` fraction of image/video key blocks carrying the most mass; the order whose mask
captures the most mass wins (the first order on ties).

Example:
    >>> import torch
    >>> from diffusion_accel.sparse_attn.paro_plan import accumulate_block_mass, build_plan
    >>> q = k = torch.randn(1, 2, 2 * 4 * 4, 8)
    >>> mass = accumulate_block_mass(q, k, (2, 4, 4), (0, 32), 8, 8)
    >>> plan = build_plan("attn", mass, (2, 4, 4), (0, 32), 32, 8, 8, density=0.5)
    >>> plan.mask.shape, plan.mask.sum(-1).unique().tolist()
    (torch.Size([2, 4, 4]), [2])
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass

import torch

from .masks import block_density, diagonal_blocks, forced_blocks, num_blocks, select_blocks
from .paro import axis_orders, head_permutation, order_index

__all__ = ["FORMAT", "ParoCalibration", "ParoPlan", "accumulate_block_mass", "attach_calibration", "build_plan"]

FORMAT = "diffusion-accel/paro-calibration"
VERSION = 1


@dataclass
class ParoPlan:
    """One layer's calibration (see the module docstring); ``span`` = the image/video tokens."""

    name: str
    grid: tuple[int, int, int]
    span: tuple[int, int]
    seq: int
    orders: torch.Tensor  #: long ``(heads,)``
    mask: torch.Tensor  #: bool ``(heads, nq, nk)`` over the reordered tokens

    @property
    def heads(self) -> int:
        return int(self.orders.numel())

    def permutation(self, device) -> torch.Tensor:
        """``(heads, seq)``: new position -> old token, per head (text tokens stay in place)."""
        return head_permutation(self.orders, self.grid, self.seq, self.span, device)

    def check_call(self, q: torch.Tensor, grid, span) -> None:
        """ValueError naming the fix when an attention call does not match this calibration."""
        got = (q.shape[1], q.shape[2], tuple(grid) if grid else None, tuple(span))
        want = (self.heads, self.seq, tuple(self.grid), tuple(self.span))
        if got != want:
            raise ValueError(
                f"{self.name}: the PARO calibration was made for {want[0]} heads, {want[1]} tokens "
                f"(grid {want[2]}, image/video tokens {want[3]}), but this call has {got[0]} heads, "
                f"{got[1]} tokens (grid {got[2]}, span {got[3]}). Recalibrate at this resolution and "
                "frame count: calibrate_paro(pipe, prompts, path, ...) with the same call arguments."
            )


@dataclass
class ParoCalibration:
    """Every sparsified layer's :class:`ParoPlan` plus the block shape and density."""

    block_q: int
    block_k: int
    density: float
    plans: list[ParoPlan]

    def save(self, path: str | os.PathLike) -> None:
        from safetensors.torch import save_file

        tensors, layers = {}, []
        for i, plan in enumerate(self.plans):
            tensors[f"{i}.orders"] = plan.orders.to(torch.int64).contiguous().cpu()
            tensors[f"{i}.mask"] = plan.mask.to(torch.uint8).contiguous().cpu()
            layers.append({"name": plan.name, "grid": list(plan.grid), "span": list(plan.span), "seq": plan.seq})
        meta = {"block_q": self.block_q, "block_k": self.block_k, "density": self.density, "layers": layers}
        os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
        save_file(tensors, os.fspath(path), metadata={"format": FORMAT, "version": str(VERSION),
                                                      "meta": json.dumps(meta)})

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ParoCalibration":
        from safetensors import safe_open

        path = os.fspath(path)
        if not os.path.isfile(path):
            raise ValueError(f"PARO calibration file {path!r} does not exist; run "
                             "diffusion_accel.sparse_attn.calibrate_paro(pipe, prompts, path) to make it.")
        with safe_open(path, framework="pt") as fh:
            header = fh.metadata() or {}
            if header.get("format") != FORMAT:
                raise ValueError(f"{path!r} is not a PARO calibration (format {header.get('format')!r}); "
                                 "make one with calibrate_paro(pipe, prompts, path).")
            if int(header.get("version", "0")) > VERSION:
                raise ValueError(f"{path!r} has PARO calibration version {header['version']}; upgrade diffusion-accel.")
            meta = json.loads(header["meta"])
            plans = [
                ParoPlan(layer["name"], tuple(layer["grid"]), tuple(layer["span"]), int(layer["seq"]),
                         fh.get_tensor(f"{i}.orders").long(), fh.get_tensor(f"{i}.mask").bool())
                for i, layer in enumerate(meta["layers"])
            ]
        return cls(int(meta["block_q"]), int(meta["block_k"]), float(meta["density"]), plans)


def _positions(grid, span, seq: int, device) -> torch.Tensor:
    """``(orders, seq)``: old token -> new position under each axis order (text stays in place)."""
    start, stop = span
    out = torch.arange(seq, device=device).repeat(len(axis_orders()), 1)
    for i, order in enumerate(axis_orders()):
        idx = order_index(grid, order).to(device) + start  # new position -> old token
        out[i, idx] = torch.arange(start, stop, device=device)
    return out


@torch.no_grad()
def accumulate_block_mass(q, k, grid, span, block_q: int, block_k: int, rows: int = 256) -> torch.Tensor:
    """Exact softmax attention mass per (order, head, query block, key block), summed over the batch.

    q ``(B, H, S, D)``, k ``(B, H, S, D)`` (self-attention); returns fp64 ``(orders, H, nq, nk)``:
    the attention of the tokens each order puts in query block ``i`` to those it puts in key block
    ``j`` (rows of the exact attention map summed, computed ``rows`` queries at a time).
    """
    seq, heads = q.shape[2], q.shape[1]
    nq, nk = num_blocks(seq, block_q), num_blocks(seq, block_k)
    pos = _positions(grid, span, seq, q.device)
    qb, kb = pos // block_q, pos // block_k
    scale = 1.0 / math.sqrt(q.shape[-1])
    mass = torch.zeros(pos.shape[0], heads, nq, nk, dtype=torch.float64, device=q.device)
    kf = k.float()
    for start in range(0, seq, rows):
        p = ((q[:, :, start:start + rows].float() @ kf.transpose(-1, -2)) * scale).softmax(-1).sum(0)  # (H, r, S)
        for o in range(pos.shape[0]):
            per_key = torch.zeros(heads, p.shape[1], nk, device=q.device).index_add_(-1, kb[o], p)
            mass[o].index_add_(1, qb[o, start:start + rows], per_key.double())
    return mass


def build_plan(name, mass, grid, span, seq: int, block_q: int, block_k: int, density: float) -> ParoPlan:
    """Choose each head's order and static mask from ``mass`` ``(orders, H, nq, nk)`` (module docstring)."""
    start, stop = span
    text = [r for r in ((0, start), (stop, seq)) if r[1] > r[0]]
    dense_rows = forced_blocks(seq, block_q, text, mass.device)
    dense_cols = forced_blocks(seq, block_k, text, mass.device)
    keep = diagonal_blocks(seq, block_q, block_k, mass.device)
    scores = (mass / mass.sum(-1, keepdim=True).clamp_min(1e-30)).float()
    masks = select_blocks(scores, density=density, keep=keep, dense_rows=dense_rows, dense_cols=dense_cols)
    captured = (mass * masks).sum((-1, -2)) / mass.sum((-1, -2)).clamp_min(1e-30)  # (orders, H)
    best = captured.max(0).values
    orders = (captured >= best - 1e-9).float().argmax(0)  # first order on ties
    mask = masks[orders, torch.arange(mass.shape[1], device=mass.device)]
    return ParoPlan(name, tuple(grid), tuple(span), seq, orders.cpu(), mask.cpu())


def attach_calibration(layers: list, heads: list[int], config) -> None:
    """Give each :class:`~diffusion_accel.sparse_attn.layer.SparseLayer` of a ``method="paro"``
    config its plan; ValueError naming the fix when the calibration does not fit the model."""
    if config.calibration is None:
        raise ValueError("SparseAttentionConfig(method='paro') needs calibration=path: run "
                         "diffusion_accel.sparse_attn.calibrate_paro(pipe, prompts, path) once and use the "
                         "config it returns (or AccelerationConfig.load of a saved one).")
    calib = ParoCalibration.load(config.calibration)
    names = [layer.name for layer in layers]
    fix = "Recalibrate this model with calibrate_paro(pipe, prompts, path)."
    if len(calib.plans) != len(layers):
        raise ValueError(f"The PARO calibration {config.calibration!r} has {len(calib.plans)} attention layers, "
                         f"this model {len(layers)}: it was made for another model. {fix}")
    for layer, n_heads, plan in zip(layers, heads, calib.plans):
        if plan.name != layer.name or plan.heads != n_heads:
            raise ValueError(f"The PARO calibration {config.calibration!r} does not match this model: layer "
                             f"{plan.name!r} with {plan.heads} heads where the model has {layer.name!r} with "
                             f"{n_heads} heads. {fix}")
    if config.density is not None and abs(config.density - calib.density) > 1e-9:
        raise ValueError(f"The PARO calibration {config.calibration!r} holds masks at density {calib.density}, "
                         f"the config asks for {config.density}: set density={calib.density} or recalibrate "
                         "at the new density with calibrate_paro(..., density=...).")
    for name in ("block_q", "block_k"):
        if getattr(config, name) not in (None, getattr(calib, name)):
            raise ValueError(f"The PARO calibration uses {name}={getattr(calib, name)}, the config "
                             f"{getattr(config, name)}: leave {name}=None or recalibrate with that block size.")
    for layer, plan in zip(layers, calib.plans):
        layer.paro_plan = plan
        layer.paro_block_shape = (calib.block_q, calib.block_k)
        text = [r for r in ((0, plan.span[0]), (plan.span[1], plan.seq)) if r[1] > r[0]]
        rows = forced_blocks(plan.seq, calib.block_q, text, "cpu")
        cols = forced_blocks(plan.seq, calib.block_k, text, "cpu")
        layer.paro_density = block_density(plan.mask, rows, cols)
