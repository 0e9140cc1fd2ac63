"""Calibrate dynamic caching's ``"teacache"`` and ``"magcache"`` policies on your model and prompts.

Both run the pipeline at full compute on the prompts and watch the denoiser's block stack: its
input, the first block's timestep-modulated input (model adapter's ``modulated_input``) and the
stack's **residual** (last block's output − first block's input, the image stream), per guidance
branch and step.

* :func:`calibrate_teacache` fits ``numpy.polyfit`` of degree ``degree`` mapping the relative L1
  change of the modulated input between consecutive steps to that of the residual (one point per
  sample, branch and step after the first) -> ``teacache_coefficients``.
* :func:`calibrate_magcache` records, per step, the mean over tokens, samples, branches and prompt
  batches of ``‖r_t‖ / ‖r_{t-1}‖`` (token-wise L2 norms of the residual; step 0: 1.0)
  -> ``magcache_ratios``.

They return a frozen :class:`~.dynamic.DynamicCacheConfig` (the other fields from ``base``), which
saves with :meth:`diffusion_accel.AccelerationConfig.save` like any config. Calibrate with the step
count you will sample with (MagCache's ratios are resampled linearly for other counts).

Example:
    >>> import diffusion_accel
    >>> from diffusion_accel.testing import tiny_pipeline, tiny_call_kwargs
    >>> pipe = tiny_pipeline("pixart-alpha")
    >>> kwargs = {k: v for k, v in tiny_call_kwargs("pixart-alpha").items() if k != "prompt"}
    >>> cfg = calibrate_magcache(pipe, ["a cat", "a dog"], **kwargs)
    >>> cfg.policy, len(cfg.magcache_ratios) == kwargs["num_inference_steps"]
    ('magcache', True)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..call_inputs import batch_inputs, check_call_inputs, check_item_inputs
from ..hooks import TRACKER_HOOK, Denoiser, pipeline_call_scope, remove_hook
from ..pipeline_state import acceleration_state, tracked_denoisers
from .block_io import block_argument, block_streams
from .dynamic import DynamicCacheConfig

__all__ = ["calibrate_teacache", "calibrate_magcache"]


def calibrate_teacache(pipe: Any, prompts: Sequence[Any], *, degree: int = 4, base: DynamicCacheConfig | None = None,
                       batch_size: int = 8, seed: int = 0, **call_kwargs: Any) -> DynamicCacheConfig:
    """Fit TeaCache's rescaling polynomial on ``pipe`` and ``prompts``; ``policy="teacache"`` config.

    Args:
        pipe: a diffusers pipeline (without a cache applied).
        prompts: prompt strings or mappings of per-item call arguments (e.g. ``{"class_labels": 207}``),
            run ``batch_size`` per call.
        degree: polynomial degree (TeaCache uses 4); needs more than ``degree`` points
            (samples × branches × (steps − 1)).
        base: the config whose other fields (threshold, guards, ``decide_per``) are kept.
        batch_size, seed: prompts per call; seed of the first call's generator (``seed + k`` for the k-th).
        **call_kwargs: the pipeline call's other arguments (``num_inference_steps``, ``guidance_scale``...).
    """
    if isinstance(degree, bool) or not isinstance(degree, int) or degree < 1:
        raise ValueError(f"degree must be an integer >= 1, got {degree!r}.")
    recorders = _record(pipe, prompts, batch_size, seed, call_kwargs, need_modulated=True)
    x = np.concatenate([np.concatenate(r.input_changes) for r in recorders if r.input_changes] or [np.zeros(0)])
    y = np.concatenate([np.concatenate(r.output_changes) for r in recorders if r.output_changes] or [np.zeros(0)])
    if len(x) <= degree:
        raise ValueError(f"calibrate_teacache measured {len(x)} points, too few for a degree-{degree} fit; pass more "
                         "prompts or more num_inference_steps, or a lower degree.")
    coefficients = tuple(float(c) for c in np.polyfit(x, y, degree))
    return dataclasses.replace(base or DynamicCacheConfig(), policy="teacache", teacache_coefficients=coefficients,
                               magcache_ratios=())


def calibrate_magcache(pipe: Any, prompts: Sequence[Any], *, base: DynamicCacheConfig | None = None,
                       batch_size: int = 8, seed: int = 0, **call_kwargs: Any) -> DynamicCacheConfig:
    """Measure MagCache's per-step magnitude ratios on ``pipe`` and ``prompts``; ``policy="magcache"`` config.

    Arguments as :func:`calibrate_teacache` (without ``degree``).
    """
    recorders = _record(pipe, prompts, batch_size, seed, call_kwargs, need_modulated=False)
    sums: dict[int, float] = {}
    counts: dict[int, int] = {}
    for recorder in recorders:
        for step, ratio in recorder.ratios:
            sums[step] = sums.get(step, 0.0) + ratio
            counts[step] = counts.get(step, 0) + 1
    if not sums:
        raise ValueError("calibrate_magcache saw no two consecutive steps; pass num_inference_steps >= 2.")
    steps = max(sums) + 1
    ratios = tuple([1.0] + [sums[s] / counts[s] if s in sums else 1.0 for s in range(1, steps)])
    return dataclasses.replace(base or DynamicCacheConfig(), policy="magcache", magcache_ratios=ratios,
                               teacache_coefficients=())


class _Recorder:
    """Forward hooks on the first and last block of one denoiser; per branch, compares each step with
    the previous one and keeps only per-row numbers (no tensors beyond one step)."""

    def __init__(self, denoiser: Denoiser, need_modulated: bool) -> None:
        adapter = denoiser.adapter
        blocks = adapter.blocks(denoiser.module)
        if len(blocks) < 2 or any(b.group.io is None for b in blocks):
            raise ValueError(f"Calibration needs a transformer whose blocks declare their streams (BlockIO); the "
                             f"{adapter.family} adapter has none. Use DynamicCacheConfig(policy='first_block').")
        if need_modulated and adapter.modulated_input is None:
            raise ValueError(f"calibrate_teacache needs the first block's timestep-modulated input, which the "
                             f"{adapter.family} adapter does not describe (ModelAdapter.modulated_input); use "
                             "calibrate_magcache or policy='first_block'.")
        self.denoiser, self.need_modulated = denoiser, need_modulated
        self.first, self.last = blocks[0], blocks[-1]
        self.input_changes: list[np.ndarray] = []
        self.output_changes: list[np.ndarray] = []
        self.ratios: list[tuple[int, float]] = []  # (step, mean ratio)
        self._entry: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}
        self._previous: dict[str, tuple[int, torch.Tensor | None, torch.Tensor]] = {}
        self._handles = [
            self.first.module.register_forward_pre_hook(self._enter, with_kwargs=True),
            self.last.module.register_forward_hook(self._leave),
        ]

    def _enter(self, module, args, kwargs):
        call = self.denoiser.tracker.current
        if call is not None:
            hidden = block_argument(module, self.first.group.io.hidden_states_arg, args, kwargs)
            modulated = self.denoiser.adapter.modulated_input(module, args, kwargs) if self.need_modulated else None
            self._entry[call.branch] = (hidden.detach(), None if modulated is None else modulated.detach())

    def _leave(self, module, args, output):
        call = self.denoiser.tracker.current
        if call is None or call.branch not in self._entry:
            return
        hidden_in, modulated = self._entry.pop(call.branch)
        residual = (block_streams(self.last.group.io, output)[0] - hidden_in).float()
        previous = self._previous.get(call.branch)
        if previous is not None and previous[0] == call.step - 1 and previous[2].shape == residual.shape:
            _, prev_modulated, prev_residual = previous
            if modulated is not None:
                self.input_changes.append(_relative_l1(prev_modulated.float(), modulated.float()))
            self.output_changes.append(_relative_l1(prev_residual, residual))
            ratio = residual.norm(dim=-1) / prev_residual.norm(dim=-1).clamp_min(1e-12)
            self.ratios.append((call.step, float(ratio.mean())))
        self._previous[call.branch] = (call.step, modulated, residual)

    def start_pass(self) -> None:
        self._entry.clear()
        self._previous.clear()

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()


def _relative_l1(previous: torch.Tensor, current: torch.Tensor) -> np.ndarray:
    """Per row: mean |current − previous| / mean |previous|."""
    change = (current - previous).abs().flatten(1).mean(1) / previous.abs().flatten(1).mean(1).clamp_min(1e-12)
    return change.double().cpu().numpy()


def _denoisers(pipe: Any) -> tuple[list[Denoiser], list[torch.nn.Module]]:
    """The pipeline's denoisers with a step tracker each (attached here if absent: returned to detach)."""
    state = acceleration_state(pipe)
    if state is not None and state.config.cache is not None:
        raise ValueError("Calibrate on a pipeline without a cache: call diffusion_accel.remove(pipe) first "
                         "(quantization or sparse attention may stay applied).")
    denoisers, attached = tracked_denoisers(pipe)
    return denoisers, attached


def _calls(prompts: Sequence[Any], batch_size: int) -> list[dict[str, Any]]:
    """Call arguments of each batch of ``batch_size`` items (prompt strings or per-item argument mappings)."""
    items = check_item_inputs(prompts, "Calibration prompts")
    if not items:
        raise ValueError("Calibration prompts must hold at least one prompt (or mapping of call arguments).")
    return [batch_inputs(items[i:i + batch_size]) for i in range(0, len(items), batch_size)]


def _record(pipe: Any, prompts: Sequence[Any], batch_size: int, seed: int, call_kwargs: dict[str, Any],
            need_modulated: bool) -> list[_Recorder]:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}.")
    calls = _calls(prompts, batch_size)
    check_call_inputs(pipe, {name for call in calls for name in call}, "the calibration prompts")
    denoisers, attached = _denoisers(pipe)
    recorders: list[_Recorder] = []
    try:
        recorders.extend(_Recorder(d, need_modulated) for d in denoisers)
        for k, item in enumerate(calls):
            for recorder in recorders:
                recorder.start_pass()
            kwargs = {**call_kwargs, **item}
            kwargs.setdefault("generator", torch.Generator().manual_seed(seed + k))
            kwargs.setdefault("output_type", "latent")
            with torch.no_grad(), pipeline_call_scope(denoisers):
                pipe(**kwargs)
    finally:
        for recorder in recorders:
            recorder.close()
        for module in attached:
            remove_hook(module, TRACKER_HOOK)
    return recorders
