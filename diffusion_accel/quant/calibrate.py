"""Activation calibration: run the pipeline on prompts and record each linear's input statistics.

For every target linear layer and every denoiser call, the per-input-channel absolute maximum of
its input is recorded together with the call's timestep (read from the denoiser's step tracker,
``denoiser.tracker.current.timestep``). Layers that receive the *same tensor* within a call (e.g.
``to_q``/``to_k``/``to_v`` of a self-attention) are put in one **input group**: they must share
channel-balancing factors and activation scales so the input is quantized once.

:func:`bucket_by_timestep` turns the per-call records into ``R`` timestep ranges with an equal
number of calibration calls each.

Example::

    from diffusion_accel.quant.calibrate import calibrate
    result = calibrate(pipe, ["a red 3 on the left"], num_inference_steps=10, timestep_ranges=2)
    stats = result.channel_absmax["transformer_blocks.0.attn1.to_q"]   # (2, K)
    # a pipeline without a text prompt (DiT) takes per-item call arguments instead:
    calibrate(dit_pipe, [{"class_labels": 207}, {"class_labels": 360}], num_inference_steps=10)
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch

from ..call_inputs import batch_inputs, check_call_inputs, check_item_inputs, item_inputs
from ..hooks import TRACKER_HOOK, Denoiser, pipeline_call_scope, remove_hook
from ..pipeline_state import tracked_denoisers
from .runtime import tensor_version

__all__ = ["CalibrationResult", "calibrate", "calibrate_denoisers", "collect_statistics", "bucket_by_timestep", "run_prompts"]


@dataclass
class CalibrationResult:
    """Activation statistics of one denoiser's linear layers.

    Attributes:
        channel_absmax: name -> float32 ``(R, K)`` per-channel input absmax per timestep range.
        edges: ``R - 1`` ascending timestep boundaries (range ``i``: ``(edges[i-1], edges[i]]``).
        groups: name -> input-group name (layers sharing one input tensor share a group).
        calls: number of denoiser calls observed.
    """

    channel_absmax: dict[str, torch.Tensor]
    edges: list[float]
    groups: dict[str, str]
    calls: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class _Recorder:
    """Forward pre-hooks on linears recording ``(timestep, channel absmax)`` per call."""

    def __init__(self, denoiser: Denoiser, names: Iterable[str]) -> None:
        self.denoiser = denoiser
        self.names = list(names)
        self.records: dict[str, list[tuple[float, torch.Tensor]]] = {n: [] for n in self.names}
        self.parent = {n: n for n in self.names}
        self._recent: list[tuple[Any, int, str]] = []
        self._last_index = None
        self.calls = 0
        self.handles = []
        modules = dict(denoiser.module.named_modules())
        for name in self.names:
            self.handles.append(modules[name].register_forward_pre_hook(self._hook(name)))

    def _hook(self, name: str):
        def hook(module, args):
            x = args[0]
            current = self.denoiser.tracker.current
            index = None if current is None else current.index
            if index != self._last_index:
                self._recent = []
                self._last_index = index
                self.calls += 1
            timestep = float("nan") if current is None or current.timestep is None else float(current.timestep)
            amax = x.detach().reshape(-1, x.shape[-1]).abs().amax(dim=0).float().cpu()
            self.records[name].append((timestep, amax))
            # an inference tensor has no version: grouping then goes by identity alone (a wrong group
            # costs precision, never correctness: each layer's weight absorbs the group's balancing)
            version = tensor_version(x)
            for ref, last_version, other in self._recent:
                if ref() is x and version == last_version:
                    self._union(name, other)
                    break
            self._recent.append((weakref.ref(x), version, name))
            del self._recent[:-16]
        return hook

    def _find(self, n: str) -> str:
        while self.parent[n] != n:
            self.parent[n] = self.parent[self.parent[n]]
            n = self.parent[n]
        return n

    def _union(self, a: str, b: str) -> None:
        ra, rb = self._find(a), self._find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def groups(self) -> dict[str, str]:
        return {n: self._find(n) for n in self.names}

    def close(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []


def bucket_by_timestep(records: dict[str, list[tuple[float, torch.Tensor]]], ranges: int
                       ) -> tuple[dict[str, torch.Tensor], list[float]]:
    """Per-range channel absmax ``(R, K)`` and the ``R - 1`` timestep edges (equal-count ranges)."""
    timesteps = sorted({t for recs in records.values() for t, _ in recs if t == t})
    ranges = max(1, min(ranges, len(timesteps))) if timesteps else 1
    edges = []
    for i in range(1, ranges):
        edges.append(timesteps[(i * len(timesteps)) // ranges - 1])
    out = {}
    for name, recs in records.items():
        if not recs:
            continue
        k = recs[0][1].numel()
        table = torch.zeros(ranges, k)
        seen = torch.zeros(ranges, dtype=torch.bool)
        for t, amax in recs:
            r = 0 if t != t else sum(1 for e in edges if t > e)
            table[r] = torch.maximum(table[r], amax)
            seen[r] = True
        overall = table.amax(dim=0)
        table[~seen] = overall  # a range this layer never saw falls back to all calls
        out[name] = table
    return out, edges


def run_prompts(pipe, prompts: Sequence[str | Mapping[str, Any]], num_inference_steps: int | None = None,
                call_kwargs: dict[str, Any] | None = None, batch_size: int = 4, seed: int = 0,
                output_type: str = "latent"):
    """Run ``pipe`` on ``prompts`` (batched, seeded); returns the list of outputs per batch.

    A prompt is a string (``prompt=``) or a mapping of per-item call arguments, e.g.
    ``{"class_labels": 207}`` for a class-conditioned DiT (:mod:`diffusion_accel.call_inputs`).
    """
    check_call_inputs(pipe, {n for p in prompts for n in item_inputs(p)}, "the calibration prompts")
    outputs = []
    for start in range(0, len(prompts), batch_size):
        kwargs = dict(call_kwargs or {})
        kwargs.update(batch_inputs(prompts[start:start + batch_size]))
        if num_inference_steps is not None:
            kwargs["num_inference_steps"] = num_inference_steps
        kwargs.setdefault("output_type", output_type)
        kwargs["generator"] = torch.Generator().manual_seed(seed + start)
        with torch.no_grad():
            outputs.append(pipe(**kwargs))
    return outputs


def collect_statistics(denoisers: list[Denoiser], names: dict[str, list[str]], run: Callable[[], Any],
                       timestep_ranges: int = 1) -> dict[str, CalibrationResult]:
    """Record the inputs of ``names[denoiser.name]`` while ``run()`` drives the denoisers.

    ``run`` may call a pipeline or the denoisers directly; each denoiser needs its step tracker
    (``denoiser.tracker``) so calls are bucketed by timestep.
    """
    recorders = {d.name: _Recorder(d, names.get(d.name, [])) for d in denoisers}
    try:
        with torch.no_grad():
            run()
    finally:
        for rec in recorders.values():
            rec.close()
    results = {}
    for d in denoisers:
        rec = recorders[d.name]
        if rec.calls == 0 and rec.names:
            raise ValueError(f"Calibration never called the denoiser {d.name!r}; check the calibration inputs.")
        table, edges = bucket_by_timestep(rec.records, timestep_ranges)
        results[d.name] = CalibrationResult(table, edges, rec.groups(), rec.calls)
    return results


def calibrate_denoisers(pipe, denoisers: list[Denoiser], names: dict[str, list[str]], prompts: Sequence[str],
                        num_inference_steps: int | None = None, timestep_ranges: int = 1,
                        call_kwargs: dict[str, Any] | None = None) -> dict[str, CalibrationResult]:
    """Calibrate the given layers (``names[denoiser.name]``) of already-tracked denoisers."""
    prompts = _check_prompts(prompts)

    def run() -> None:
        for prompt_batch in _batches(prompts, 4):
            with pipeline_call_scope(denoisers):
                run_prompts(pipe, prompt_batch, num_inference_steps, call_kwargs)

    return collect_statistics(denoisers, names, run, timestep_ranges)


def calibrate(pipe, prompts: Sequence[str], num_inference_steps: int | None = None, timestep_ranges: int = 1,
              call_kwargs: dict[str, Any] | None = None) -> dict[str, CalibrationResult]:
    """Calibrate every linear layer of every denoiser of ``pipe`` (see the module docstring).

    Raises:
        ValueError: ``prompts`` is empty.
    """
    prompts = _check_prompts(prompts)
    denoisers, attached = tracked_denoisers(pipe)
    try:
        names = {d.name: [n for n, m in d.module.named_modules() if isinstance(m, torch.nn.Linear)]
                 for d in denoisers}
        return calibrate_denoisers(pipe, denoisers, names, prompts, num_inference_steps, timestep_ranges,
                                   call_kwargs)
    finally:
        for module in attached:
            remove_hook(module, TRACKER_HOOK)


def _check_prompts(prompts) -> list[str | dict[str, Any]]:
    if isinstance(prompts, str):
        raise ValueError("Calibration prompts must be a list of strings, not one string.")
    prompts = check_item_inputs(prompts or [], "Calibration prompts")
    if not prompts:
        raise ValueError("Calibration needs at least one prompt; got none. Pass a few prompts of your domain "
                         "(or per-item call arguments such as {'class_labels': 207} for a class-conditioned model).")
    return prompts


def _batches(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i:i + size]
