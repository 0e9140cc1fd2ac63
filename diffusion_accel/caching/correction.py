"""Decoupled per-channel error correction of a cached (and maybe quantized) denoiser (CacheQuant's
correction half).

:class:`CorrectedCacheConfig` wraps a :class:`~.static.StaticCacheConfig` with, for every block, a
per-output-channel affine map of the block's **residual** (hidden-states output minus input: the
block's own contribution to the stream) ``r -> scale * r + shift``, fitted
twice, decoupled by error source: once on the steps where the block **computes** (its error: the
quantization of the weights and activations, plus the drift of its input) and once on the steps where
it **reuses** cached outputs (cache error on top). Correcting the residual, not the stream, keeps
the blocks' corrections from compounding (a shift fitted on block 0's output would reach block 1 again
through the residual stream). The maps are plain tuples of floats (the config
saves to JSON with the rest); an empty tuple is the identity and installs nothing, so a correction
fitted where nothing differs (full compute, no quantization) leaves the outputs bit-identical.

Fit one with :func:`diffusion_accel.error_correction.calibrate_error_correction` (it runs the plain
and the accelerated pipeline; the pure least-squares part is :class:`ChannelFit` here).

Example:
    >>> import diffusion_accel
    >>> from diffusion_accel.caching import CacheSchedule, StaticCacheConfig
    >>> from diffusion_accel.testing import tiny_pipeline
    >>> pipe = tiny_pipeline("pixart-alpha")
    >>> cache = StaticCacheConfig(CacheSchedule.fora(pipe.transformer, 4, 2))
    >>> blocks = cache.schedule.num_blocks
    >>> config = CorrectedCacheConfig(cache, reused_scale=((),) * blocks, reused_shift=((),) * blocks)
    >>> _ = diffusion_accel.apply(pipe, diffusion_accel.AccelerationConfig(cache=config))
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils._pytree import tree_map

from ..hooks import Denoiser
from ..techniques import TechniqueConfig, TechniqueHandle, register_technique, technique_apply_fn
from .block_io import block_argument, block_streams, pack_block_output
from .static import StaticCacheConfig

__all__ = ["ChannelFit", "CorrectedCacheConfig", "BlockOutputRecorder", "MODES", "static_part"]

#: The two decoupled corrections: steps where a block computes, steps where it reuses cached outputs.
MODES = ("computed", "reused")

Table = tuple[tuple[float, ...], ...]  # per block: one float per channel, or () for the identity


@dataclass(frozen=True)
class CorrectedCacheConfig(TechniqueConfig):
    """``cache`` plus a per-block, per-channel affine correction of block outputs (see the module doc).

    Args:
        cache: the static cache (its schedule decides which steps of a block are "reused").
        computed_scale, computed_shift: per block, per channel, on steps where the block computes all
            its components (``()`` = identity for that block; empty = identity everywhere).
        reused_scale, reused_shift: the same on steps where the block reuses some component.
        step_scale, step_shift: per denoising step, per latent channel, a map of the denoiser's data
            prediction (:mod:`.step_correction`; ``()`` = identity for that step; empty = none).
    """

    field_name = "cache"

    cache: StaticCacheConfig = field(metadata={"encode": StaticCacheConfig.to_dict,
                                               "decode": StaticCacheConfig.from_dict})
    computed_scale: Table = ()
    computed_shift: Table = ()
    reused_scale: Table = ()
    reused_shift: Table = ()
    step_scale: Table = ()
    step_shift: Table = ()

    def __post_init__(self) -> None:
        if not isinstance(self.cache, StaticCacheConfig):
            raise ValueError(f"CorrectedCacheConfig corrects a StaticCacheConfig (a schedule says which steps "
                             f"reuse); got {type(self.cache).__name__}.")
        blocks = self.cache.schedule.num_blocks
        for mode in MODES:
            scale, shift = getattr(self, f"{mode}_scale"), getattr(self, f"{mode}_shift")
            for name, table in ((f"{mode}_scale", scale), (f"{mode}_shift", shift)):
                if table and len(table) != blocks:
                    raise ValueError(f"{name} must hold one entry per block ({blocks}) or be empty; got {len(table)}.")
            if scale and shift and any(len(a) != len(b) for a, b in zip(scale, shift)):
                raise ValueError(f"{mode}_scale and {mode}_shift must have the same channels in every block.")
            if bool(scale) != bool(shift):
                raise ValueError(f"give both {mode}_scale and {mode}_shift, or neither.")
        steps = self.cache.schedule.num_steps
        if bool(self.step_scale) != bool(self.step_shift):
            raise ValueError("give both step_scale and step_shift, or neither.")
        if self.step_scale and (len(self.step_scale) != steps or len(self.step_shift) != steps
                                or any(len(a) != len(b) for a, b in zip(self.step_scale, self.step_shift))):
            raise ValueError(f"step_scale and step_shift must hold one entry per step ({steps}), with the same "
                             f"channels; got {len(self.step_scale)} and {len(self.step_shift)}.")

    @property
    def fitted(self) -> bool:
        """Whether any map is set (a config with none is the plain cache: nothing is installed)."""
        return any(getattr(self, f"{mode}_scale") for mode in (*MODES, "step"))

    def check(self, denoisers, num_steps):  # noqa: D102
        self.cache.check(denoisers, num_steps)
        for module, adapter in denoisers:
            if any(b.group.io is None for b in adapter.blocks(module)):
                raise ValueError(f"CorrectedCacheConfig corrects block outputs, which needs blocks with declared "
                                 f"streams (BlockIO); the {adapter.family} adapter has blocks without one. Use "
                                 "StaticCacheConfig alone.")

    def correction(self, mode: str, block: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        scale, shift = getattr(self, f"{mode}_scale"), getattr(self, f"{mode}_shift")
        if not scale or not scale[block]:
            return None
        return torch.tensor(scale[block]), torch.tensor(shift[block])


def static_part(cache: Any) -> StaticCacheConfig | None:
    """The :class:`StaticCacheConfig` that runs ``cache`` (itself, or the one a correction wraps), else ``None``."""
    if isinstance(cache, CorrectedCacheConfig):
        return cache.cache
    return cache if isinstance(cache, StaticCacheConfig) else None


class ChannelFit:
    """Per-channel least squares ``ref ~ scale * acc + shift`` accumulated over batches (float64 sums).

    >>> fit = ChannelFit()
    >>> x = torch.randn(100, 3)
    >>> fit.add(x, 2 * x + 1)
    >>> [round(v, 6) for v in fit.solve()[0]], [round(v, 6) for v in fit.solve()[1]]
    ([2.0, 2.0, 2.0], [1.0, 1.0, 1.0])
    """

    def __init__(self) -> None:
        self.n = 0
        self.sums: list[np.ndarray] | None = None  # Σx, Σy, Σxx, Σxy
        self.exact = True

    def add(self, accelerated: torch.Tensor, reference: torch.Tensor) -> None:
        x = accelerated.detach().double().reshape(-1, accelerated.shape[-1])
        y = reference.detach().double().reshape(-1, reference.shape[-1])
        self.exact = self.exact and torch.equal(x, y)
        parts = [x.sum(0), y.sum(0), (x * x).sum(0), (x * y).sum(0)]
        parts = [p.cpu().numpy() for p in parts]
        self.sums = parts if self.sums is None else [a + b for a, b in zip(self.sums, parts)]
        self.n += x.shape[0]

    def solve(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """``(scale, shift)`` per channel; ``((), ())`` when nothing was seen or nothing differed."""
        if self.sums is None or self.exact:
            return (), ()
        sx, sy, sxx, sxy = self.sums
        mx, my = sx / self.n, sy / self.n
        var, cov = sxx / self.n - mx * mx, sxy / self.n - mx * my
        scale = np.where(var > 1e-12 * np.maximum(1.0, mx * mx), cov / np.maximum(var, 1e-300), 1.0)
        shift = my - scale * mx
        return tuple(float(v) for v in scale), tuple(float(v) for v in shift)

    def solve_shift(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """``(scale = 1, shift = mean(ref - acc))`` per channel: the least-squares shift alone; ``((), ())``
        when nothing was seen or nothing differed."""
        if self.sums is None or self.exact:
            return (), ()
        sx, sy = self.sums[0], self.sums[1]
        return tuple(1.0 for _ in sx), tuple(float(v) for v in (sy - sx) / self.n)


class BlockOutputRecorder:
    """Forward hooks keeping, per ``(branch, step, block)`` of one denoiser, every block's residual
    (hidden-states output - input, float32) and, with ``keep_inputs``, copies of its call arguments
    (to replay the block on the same input later: :meth:`replay`); ``close()`` removes the hooks."""

    def __init__(self, denoiser: Denoiser, keep_inputs: bool = False) -> None:
        self.outputs: dict[tuple[str, int, int], torch.Tensor] = {}
        self.inputs: dict[tuple[str, int, int], tuple[tuple, dict]] = {}
        self.blocks = {block.index: block for block in denoiser.blocks()}
        self._handles = []
        for block in self.blocks.values():
            if block.group.io is None:
                raise ValueError(f"Error correction needs blocks with declared streams (BlockIO); the "
                                 f"{denoiser.adapter.family} adapter has blocks without one.")
            self._handles.append(block.module.register_forward_hook(self._hook(denoiser, block, keep_inputs),
                                                                    with_kwargs=True))

    def _hook(self, denoiser: Denoiser, block, keep_inputs: bool):
        def hook(module, args, kwargs, output):
            call = denoiser.tracker.current
            if call is not None:
                key = (call.branch, call.step, block.index)
                self.outputs[key] = _residual(block, module, args, kwargs, output).detach().clone()
                if keep_inputs:
                    self.inputs[key] = tree_map(_copy, (args, kwargs))
        return hook

    def replay(self) -> dict[tuple[str, int, int], torch.Tensor]:
        """The residuals of the blocks as they are now, run on the recorded inputs."""
        out = {}
        with torch.no_grad():
            for key, (args, kwargs) in self.inputs.items():
                block = self.blocks[key[2]]
                out[key] = _residual(block, block.module, args, kwargs, block.module(*args, **kwargs))
        return out

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()


def _copy(value: Any) -> Any:
    return value.detach().clone() if isinstance(value, torch.Tensor) else value


def _residual(block, module, args, kwargs, output) -> torch.Tensor:
    hidden_in = block_argument(module, block.group.io.hidden_states_arg, args, kwargs)
    return block_streams(block.group.io, output)[0].float() - hidden_in.float()


def _mode(schedule_compute: np.ndarray, step: int, block: int) -> str:
    row = schedule_compute[min(step, schedule_compute.shape[0] - 1), block]
    return "computed" if row.all() else "reused"


@register_technique(CorrectedCacheConfig)
def apply_corrected_cache(pipe: Any, config: CorrectedCacheConfig, denoisers: list[Denoiser]) -> TechniqueHandle:
    inner = technique_apply_fn(config.cache)(pipe, config.cache, denoisers)
    compute = config.cache.schedule.compute
    handles = []
    for d in denoisers:
        for block in d.blocks():
            maps = {mode: config.correction(mode, block.index) for mode in MODES}
            if all(m is None for m in maps.values()):
                continue  # identity: nothing installed, the outputs stay bit-identical
            handles.append(block.module.register_forward_hook(_corrector(d, block, maps, compute), with_kwargs=True))
        if config.step_scale:
            from .step_correction import install_step_correction

            handles.append(install_step_correction(d, pipe.scheduler, config.step_scale, config.step_shift))

    def remove() -> None:
        for handle in handles:
            handle.remove()
        inner.remove()

    def report() -> dict[str, Any]:
        base = inner.report() if inner.report is not None else {}
        return {**base, "corrected_blocks": len(handles)}

    return TechniqueHandle(remove=remove, report=report, details=inner.details)


def _corrector(denoiser: Denoiser, block, maps, compute: np.ndarray):
    def hook(module, args, kwargs, output):
        call = denoiser.tracker.current
        if call is None:
            return output
        pair = maps[_mode(compute, call.step, block.index)]
        if pair is None:
            return output
        hidden, encoder = block_streams(block.group.io, output)
        hidden_in = block_argument(module, block.group.io.hidden_states_arg, args, kwargs)
        scale, shift = (t.to(hidden.device, hidden.dtype) for t in pair)
        corrected = hidden_in + (hidden - hidden_in) * scale + shift
        return pack_block_output(block.group.io, corrected, encoder)
    return hook
