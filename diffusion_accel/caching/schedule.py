"""`CacheSchedule`: which component of which block runs at which denoising step.

``compute[step, block, component]`` is ``True`` where the component runs and ``False`` where it
reuses its output from the last step at which it ran (separately for each guidance branch).
Blocks are numbered across the model's block groups in execution order; component names come
from the model adapter (e.g. ``("attn1", "attn2", "ff")`` for PixArt). Entries for components a
block does not have (SD3's last block has no ``ff_context``) are ignored and stored as ``True``.

Example:
    >>> from diffusion_accel.caching import CacheSchedule
    >>> from diffusion_accel.testing import tiny_pipeline
    >>> pipe = tiny_pipeline("pixart-alpha")
    >>> fora = CacheSchedule.fora(pipe.transformer, num_steps=10, interval=2)
    >>> fora.compute.shape, round(fora.compute_fraction(), 2)
    ((10, 2, 3), 0.55)
    >>> fora.resample(20).num_steps
    20
"""

from __future__ import annotations

import bisect
import json
import math
import os
from fractions import Fraction
from typing import Any

import numpy as np
import torch
from diffusers.utils.torch_utils import unwrap_module

from ..models import ModelAdapter, get_model_adapter
from ..utils import atomic_write_text, read_json

__all__ = ["CacheSchedule", "resolve_denoiser"]

_FORMAT = "diffusion-accel/cache-schedule"
_VERSION = 1


def resolve_denoiser(model_or_pipe: Any) -> torch.nn.Module:
    """Accept a denoiser module or a pipeline (its ``transformer`` or ``unet``); a ``torch.compile``
    wrapper stands for its original module."""
    if isinstance(model_or_pipe, torch.nn.Module):
        return unwrap_module(model_or_pipe)
    for name in ("transformer", "unet"):
        module = getattr(model_or_pipe, name, None)
        if isinstance(module, torch.nn.Module):
            return unwrap_module(module)
    raise TypeError(
        f"Expected a denoiser module or a pipeline with a transformer/unet, got {type(model_or_pipe).__name__}."
    )


def _resample_column(column: np.ndarray, num_steps: int) -> np.ndarray:
    """One column of :meth:`CacheSchedule.resample` (bool ``(S,)`` -> bool ``(num_steps,)``).

    ``F(x)`` counts the source periods elapsed by source time ``x`` in ``[0, S]`` (linear inside a
    period); ``G(j) = F(j * S / N) * N / S`` counts them in units of the new step count, and new
    step ``j`` computes when an integer lies in ``[G(j), G(j + 1))``. Exact rational arithmetic:
    no rounding decides a compute.
    """
    source_steps = len(column)
    starts = np.flatnonzero(column).tolist()  # compute steps; starts[0] == 0 (step 0 computes)
    periods = np.diff(starts).tolist()
    longest = max(periods, default=1)
    previous = periods[-1] if periods else 1
    periods.append(min(max(source_steps - starts[-1], previous), longest))
    scale = Fraction(num_steps, source_steps)

    def elapsed(j: int) -> Fraction:
        x = Fraction(j * source_steps, num_steps)
        i = bisect.bisect_right(starts, x) - 1
        return (i + min((x - starts[i]) / periods[i], 1)) * scale

    g = [elapsed(j) for j in range(num_steps + 1)]
    out = np.array([math.ceil(g[j]) < g[j + 1] for j in range(num_steps)], dtype=bool)
    out[0] = True
    return out


class CacheSchedule:
    """A boolean ``compute[step, block, component]`` array plus the metadata to check it.

    Args:
        compute: bool array of shape ``(steps, blocks, len(components))``.
        components: component names (from the model adapter).
        family: model family (``adapter.family``) the schedule was made for.
        applicable: optional ``(blocks, components)`` bool mask of components that exist;
            non-applicable entries are forced to ``True``.
        name: a label for reports (``"fora-2"``...).
    """

    def __init__(
        self,
        compute: Any,
        components: tuple[str, ...] | list[str],
        family: str,
        applicable: Any = None,
        name: str = "custom",
    ) -> None:
        compute = np.array(compute, dtype=bool, copy=True)
        components = tuple(components)
        if compute.ndim != 3:
            raise ValueError(
                f"A cache schedule's compute array must be 3-D (steps, blocks, components); got shape "
                f"{compute.shape}."
            )
        if compute.shape[2] != len(components):
            raise ValueError(
                f"compute has {compute.shape[2]} components on its last axis but {len(components)} component "
                f"names were given: {components}."
            )
        if compute.shape[0] < 1 or compute.shape[1] < 1:
            raise ValueError(f"A cache schedule needs at least one step and one block; got shape {compute.shape}.")
        if applicable is not None:
            applicable = np.array(applicable, dtype=bool)
            if applicable.shape != compute.shape[1:]:
                raise ValueError(
                    f"applicable mask has shape {applicable.shape}, expected (blocks, components) = "
                    f"{compute.shape[1:]}."
                )
            compute |= ~applicable[None]
        if not compute[0].all():
            blocks, comps = np.nonzero(~compute[0])
            raise ValueError(
                "Step 0 must compute every component: there is no earlier output to reuse, so a "
                f"reuse at step 0 is impossible (block {int(blocks[0])}, component "
                f"{components[int(comps[0])]!r} is False)."
            )
        compute.setflags(write=False)
        self.compute = compute
        self.components = components
        self.family = str(family)
        self.name = str(name)

    # ------------------------------------------------------------------ shape
    @property
    def num_steps(self) -> int:
        return int(self.compute.shape[0])

    @property
    def num_blocks(self) -> int:
        return int(self.compute.shape[1])

    def compute_fraction(self) -> float:
        """Fraction of (step, block, component) entries that run (ignores MAC weights)."""
        return float(self.compute.mean())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CacheSchedule):
            return NotImplemented
        return (
            self.components == other.components
            and self.family == other.family
            and np.array_equal(self.compute, other.compute)
        )

    def __hash__(self) -> int:
        return hash((self.family, self.components, self.compute.tobytes(), self.compute.shape))

    def __repr__(self) -> str:
        return (
            f"CacheSchedule(name={self.name!r}, family={self.family!r}, steps={self.num_steps}, "
            f"blocks={self.num_blocks}, components={self.components}, "
            f"compute_fraction={self.compute_fraction():.3f})"
        )

    # ------------------------------------------------------------- validation
    def check_model(self, model: torch.nn.Module, adapter: ModelAdapter | None = None) -> None:
        """Raise ``ValueError`` unless the schedule was made for this model's family and layout."""
        adapter = adapter or get_model_adapter(model)
        if adapter.family != self.family:
            raise ValueError(
                f"This cache schedule was made for the {self.family!r} family but the model is "
                f"{type(model).__name__} ({adapter.family!r}). Build a schedule for this model, e.g. "
                "CacheSchedule.fora(pipe.transformer, num_steps, 2)."
            )
        if self.components != adapter.component_names:
            unknown = sorted(set(self.components) - set(adapter.component_names))
            raise ValueError(
                f"Schedule components {self.components} do not match the model's {adapter.component_names}"
                + (f" (unknown: {unknown})" if unknown else "")
                + "."
            )
        blocks = len(adapter.blocks(model))
        if blocks != self.num_blocks:
            raise ValueError(
                f"The schedule has {self.num_blocks} blocks but {type(model).__name__} has {blocks}; "
                "it was made for a model of another depth."
            )

    def check_steps(self, num_steps: int) -> None:
        if num_steps != self.num_steps:
            raise ValueError(
                f"The cache schedule has {self.num_steps} steps but this call runs {num_steps}. Use "
                f"schedule.resample({num_steps}), or StaticCacheConfig(schedule, auto_resample=True) to "
                "resample automatically."
            )

    # ------------------------------------------------------------- transforms
    def resample(self, num_steps: int) -> "CacheSchedule":
        """The same schedule for ``num_steps`` steps, keeping each component's spacing.

        Each (block, component) column is read as a chain of *periods*: a compute and the reuses
        that lean on it. The resampled column runs through the same periods in normalised time,
        each as many steps long as in the source, so FORA-k stays FORA-k and Δ-DiT keeps its gate
        (``fora(m, 20, 2).resample(10) == fora(m, 10, 2)``). Consequences:

        * the compute fraction of every column is kept (within ``1/num_steps + 1/S``, S the
          source's step count): a resampled schedule costs what the source costs per step;
        * no reuse run is longer than the source's longest one, except a final run that lasts to
          the end (a frozen component, e.g. TGATE's cross-attention after its gate), which keeps
          its share of the time;
        * step 0 always computes.

        The last period is cut by the end of sampling: it counts as long as the period before it
        (at most as long as the longest one; beyond that the component is frozen).
        """
        if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
            raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}.")
        if num_steps == self.num_steps:
            return self
        steps, blocks, comps = self.compute.shape
        columns = self.compute.reshape(steps, blocks * comps)
        memo: dict[bytes, np.ndarray] = {}
        out = np.empty((num_steps, blocks * comps), dtype=bool)
        for j in range(blocks * comps):
            key = columns[:, j].tobytes()
            if key not in memo:
                memo[key] = _resample_column(columns[:, j], num_steps)
            out[:, j] = memo[key]
        compute = out.reshape(num_steps, blocks, comps)
        return CacheSchedule(compute, self.components, self.family, name=f"{self.name}@{num_steps}")

    def with_name(self, name: str) -> "CacheSchedule":
        return CacheSchedule(self.compute, self.components, self.family, name=name)

    # ---------------------------------------------------------- serialization
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": _FORMAT,
            "version": _VERSION,
            "name": self.name,
            "family": self.family,
            "steps": self.num_steps,
            "blocks": self.num_blocks,
            "components": list(self.components),
            # one string per step: per block, one character per component ("1" compute, "0" reuse)
            "compute": [
                " ".join("".join("1" if c else "0" for c in block) for block in step) for step in self.compute
            ],
        }

    @classmethod
    def from_dict(cls, data: Any) -> "CacheSchedule":
        if not isinstance(data, dict):
            raise ValueError(f"A cache schedule must be a JSON object, got {type(data).__name__}.")
        if data.get("format", _FORMAT) != _FORMAT:
            raise ValueError(f"Not a cache schedule: format is {data.get('format')!r}, expected {_FORMAT!r}.")
        if data.get("version", _VERSION) > _VERSION:
            raise ValueError(
                f"Cache schedule version {data['version']} is newer than this diffusion-accel reads "
                f"({_VERSION}); upgrade diffusion-accel."
            )
        known = {"format", "version", "name", "family", "steps", "blocks", "components", "compute"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"Unknown field(s) {unknown} in cache schedule; known fields: {sorted(known)}.")
        missing = [k for k in ("family", "components", "compute") if k not in data]
        if missing:
            raise ValueError(f"Cache schedule is missing field(s) {missing}.")
        components = tuple(data["components"])
        rows = data["compute"]
        if not isinstance(rows, list) or not all(isinstance(r, str) for r in rows):
            raise ValueError("Cache schedule 'compute' must be a list of strings, one per step.")
        try:
            compute = np.array(
                [[[ch == "1" for ch in blk] for blk in row.split()] for row in rows], dtype=bool
            )
            bad = {ch for row in rows for ch in row.replace(" ", "")} - {"0", "1"}
        except ValueError as exc:
            raise ValueError(f"Cache schedule 'compute' rows have inconsistent shapes: {exc}") from exc
        if bad:
            raise ValueError(f"Cache schedule 'compute' may hold only '0' and '1', found {sorted(bad)}.")
        if compute.ndim != 3:
            raise ValueError("Cache schedule 'compute' rows must all have the same number of blocks.")
        for key, axis in (("steps", 0), ("blocks", 1)):
            if key in data and data[key] != compute.shape[axis]:
                raise ValueError(f"Cache schedule says {key}={data[key]} but 'compute' has {compute.shape[axis]}.")
        return cls(compute, components, data["family"], name=data.get("name", "custom"))

    def save(self, path: str | os.PathLike) -> None:
        atomic_write_text(path, json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> "CacheSchedule":
        return cls.from_dict(read_json(path, "cache schedule"))

    # -------------------------------------------------------------- factories
    @classmethod
    def from_model(cls, model: Any, compute: Any, name: str = "custom") -> "CacheSchedule":
        """Wrap a compute array for ``model`` (a denoiser or pipeline), checking its shape."""
        model = resolve_denoiser(model)
        adapter = get_model_adapter(model)
        applicable = np.array(adapter.applicable(model), dtype=bool)
        compute = np.asarray(compute, dtype=bool)
        if compute.ndim != 3 or compute.shape[1:] != applicable.shape:
            raise ValueError(
                f"compute must have shape (steps, {applicable.shape[0]}, {applicable.shape[1]}) for "
                f"{type(model).__name__} (blocks x components {adapter.component_names}); got {compute.shape}."
            )
        return cls(compute, adapter.component_names, adapter.family, applicable=applicable, name=name)

    @classmethod
    def full(cls, model: Any, num_steps: int) -> "CacheSchedule":
        """Compute everything at every step: exactly the un-accelerated model."""
        from .heuristics import full_compute

        return full_compute(model, num_steps)

    @classmethod
    def fora(cls, model: Any, num_steps: int, interval: int) -> "CacheSchedule":
        """FORA: every component runs every ``interval`` steps and is reused in between."""
        from .heuristics import fora

        return fora(model, num_steps, interval)

    @classmethod
    def delta_dit(
        cls,
        model: Any,
        num_steps: int,
        interval: int = 2,
        gate_step: int | None = None,
        num_cached_blocks: int | None = None,
    ) -> "CacheSchedule":
        """Δ-DiT: back blocks cached in early steps, front blocks cached in late steps."""
        from .heuristics import delta_dit

        return delta_dit(model, num_steps, interval, gate_step, num_cached_blocks)

    @classmethod
    def tgate(cls, model: Any, num_steps: int, gate_step: int) -> "CacheSchedule":
        """TGATE: cross-attention runs until ``gate_step`` and is frozen afterwards."""
        from .heuristics import tgate

        return tgate(model, num_steps, gate_step)

    @classmethod
    def deepcache(cls, model: Any, num_steps: int, interval: int, depth: int = 1) -> "CacheSchedule":
        """DeepCache (UNet): between key steps only the outermost ``depth`` down/up blocks run."""
        from .heuristics import deepcache

        return deepcache(model, num_steps, interval, depth)

    @classmethod
    def encoder_propagation(
        cls, model: Any, num_steps: int, key_steps: list[int] | tuple[int, ...] | None = None, interval: int = 2
    ) -> "CacheSchedule":
        """Faster Diffusion (UNet): the encoder (down + mid blocks) runs only at key steps."""
        from .heuristics import encoder_propagation

        return encoder_propagation(model, num_steps, key_steps, interval)

    @classmethod
    def random(cls, model: Any, num_steps: int, compute_probability: float = 0.5, seed: int = 0) -> "CacheSchedule":
        """Each entry after step 0 computes with probability ``compute_probability``."""
        from .heuristics import random_schedule

        return random_schedule(model, num_steps, compute_probability, seed)
