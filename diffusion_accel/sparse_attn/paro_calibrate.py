"""``calibrate_paro``: measure a pipeline's attention on calibration prompts, write the PARO plans.

The dense model runs on the prompts with every sparsifiable attention layer in recording mode
(dense output; the exact attention mass per block under each axis order is summed over prompts,
steps, guidance branches and batch items, ``paro_plan.accumulate_block_mass``). Then per layer
and head the order whose ``density`` mask captures the most mass and that mask are saved
(``paro_plan.build_plan``) to a safetensors file; the returned config names it. The pipeline is
left as it was.

Example:
    >>> import torch, diffusion_accel
    >>> from diffusion_accel import AccelerationConfig
    >>> from diffusion_accel.sparse_attn import calibrate_paro
    >>> from diffusion_accel.testing import tiny_pipeline, tiny_call_kwargs
    >>> import tempfile, os
    >>> pipe, kw = tiny_pipeline("wan"), tiny_call_kwargs("wan", num_inference_steps=2)
    >>> prompt = kw.pop("prompt")
    >>> path = os.path.join(tempfile.mkdtemp(), "wan.paro.safetensors")
    >>> cfg = calibrate_paro(pipe, [prompt], path, density=0.5, block_q=8, block_k=8, **kw)
    >>> cfg.method, cfg.density, cfg.calibration == path
    ('paro', 0.5, True)
"""

from __future__ import annotations

import os

import torch

from ..hooks import Denoiser
from ..models import find_model_adapter
from ..pipeline_state import acceleration_state, find_denoisers
from ._validate import check_block_size, check_fraction
from .config import SparseAttentionConfig
from .defaults import resolve_block_shape
from .paro_plan import ParoCalibration, build_plan
from .technique import install_sparse_layers

__all__ = ["calibrate_paro"]


def _denoisers(pipe) -> list[Denoiser]:
    return [Denoiser(name, module, find_model_adapter(module), None) for name, module in find_denoisers(pipe)]


@torch.no_grad()
def calibrate_paro(
    pipe,
    prompts: list,
    path: str | os.PathLike,
    *,
    density: float = 0.25,
    block_q: int | None = None,
    block_k: int | None = None,
    int8_qk: bool = False,
    seed: int = 0,
    **call_kwargs,
) -> SparseAttentionConfig:
    """Calibrate PARO on ``prompts`` and write the plans to ``path``; returns the config to apply.

    Args:
        pipe: a diffusers pipeline (not accelerated: ``diffusion_accel.remove(pipe)`` first).
        prompts: calibration prompts (one pipeline call each, generator seeded ``seed + i``); an
            item may be a dict of that call's own arguments instead (e.g. ``{"class_labels": [3]}``
            for class-conditioned DiT).
        path: the safetensors file to write.
        density: fraction of image/video key blocks each query block keeps (the diagonal blocks
            count inside it; text blocks are kept on top).
        block_q, block_k: block sizes (``None`` = the device's default); keep the token count of
            the model call in mind: with fewer tokens than one block nothing is sparse.
        int8_qk: the returned config computes scores from INT8 Q/K.
        call_kwargs: the other pipeline arguments (resolution, frames, steps, ...): the masks fit
            this token grid only.
    """
    check_fraction("density", density)
    if acceleration_state(pipe) is not None:
        raise ValueError("calibrate_paro needs the dense pipeline: call diffusion_accel.remove(pipe) first.")
    if not prompts or isinstance(prompts, str):
        raise ValueError("prompts must be a non-empty list of prompts (or of per-call argument dicts).")
    dens = _denoisers(pipe)
    device = next(dens[0].module.parameters()).device
    block_q, block_k = resolve_block_shape(block_q, block_k, device)
    check_block_size("block_q", block_q)
    check_block_size("block_k", block_k)
    recording = SparseAttentionConfig(method="paro", density=density, block_q=block_q, block_k=block_k)
    handle = install_sparse_layers(recording, dens)
    try:
        for layer in handle.layers:
            layer.paro_recorder = {"block_shape": (block_q, block_k)}
        for i, prompt in enumerate(prompts):
            per_call = prompt if isinstance(prompt, dict) else {"prompt": prompt}
            pipe(**{"generator": torch.Generator().manual_seed(seed + i), **call_kwargs, **per_call})
        plans = []
        for layer in handle.layers:
            sums = layer.paro_recorder.get("mass", {})
            if len(sums) != 1:
                raise ValueError(f"{layer.name}: the calibration calls gave {len(sums)} token grids "
                                 f"({sorted(sums)}); calibrate at one resolution and frame count.")
            (grid, span, seq), mass = next(iter(sums.items()))
            plans.append(build_plan(layer.name, mass, grid, span, seq, block_q, block_k, density))
    finally:
        handle.remove()
    ParoCalibration(block_q, block_k, float(density), plans).save(path)
    return SparseAttentionConfig(method="paro", density=float(density), calibration=os.fspath(path), int8_qk=int8_qk)
