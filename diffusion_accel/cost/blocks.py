"""Block computations that really ran, counted the same way for every caching method.

:class:`BlockComputeCounter` forward-hooks the *first inner projection* of each component of each
block the model adapter declares (PixArt: ``attn1.to_q``, ``attn2.to_q``, ``ff.net[0].proj``) and
counts its calls. A component that a cache reuses, skips or forecasts never calls its projection,
whichever library does the caching (ours, cache-dit, diffusers' hooks), so the counts compare
methods on equal terms without knowing how each one works. Compute ratio = baseline total /
accelerated total (:meth:`BlockComputeCounter.ratio`).

Example:
    >>> import torch
    >>> from diffusion_accel.testing import tiny_call_kwargs, tiny_pipeline
    >>> pipe = tiny_pipeline("pixart-alpha")
    >>> kwargs = tiny_call_kwargs("pixart-alpha", num_inference_steps=2)
    >>> with BlockComputeCounter(pipe) as counter:
    ...     _ = pipe(**kwargs, generator=torch.Generator().manual_seed(0))
    >>> counter.total == counter.num_slots * 2  # every (block, component) once per step (CFG batched)
    True
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch

from ..models import get_model_adapter
from ..pipeline_state import find_denoisers

__all__ = ["BlockComputeCounter", "first_projection"]

#: key of one counted slot: (denoiser component name, global block index, component name)
SlotKey = tuple[str, int, str]


def first_projection(component: torch.nn.Module) -> torch.nn.Module:
    """The first submodule (in registration order, the component itself included) that owns a
    weight matrix or convolution kernel: ``to_q`` of an attention, ``net[0].proj`` of a
    feed-forward. A ``ValueError`` if the component has none."""
    for module in component.modules():
        weight = module._parameters.get("weight")
        if weight is not None and weight.dim() >= 2:
            return module
    raise ValueError(
        f"{type(component).__name__} holds no weight matrix to count its computations; describe a "
        "component with a projection (Linear or Conv) in the model adapter."
    )


def _denoisers(target: Any) -> list[tuple[str, torch.nn.Module]]:
    if isinstance(target, torch.nn.Module):
        return [("denoiser", target)]
    return find_denoisers(target)


class BlockComputeCounter:
    """Counts calls of each block component's first inner projection while active.

    Args:
        target: a diffusers pipeline (every denoiser with a model adapter is watched, e.g. both
            transformers of Wan 2.2) or one denoiser module.

    Use as a context manager (hooks are registered on entry and removed on exit) or call
    :meth:`attach` / :meth:`remove`. ``counts`` maps ``(denoiser, block, component)`` to calls;
    ``total`` is their sum; ``num_slots`` the number of watched (block, component) pairs.
    ``token_counts`` / ``token_total``: the same weighted by the token rows each call projected
    (batch x sequence): equal to the calls times a constant unless a method changes the batch or the
    token count (per-sample cache decisions, a lower resolution as in Bottleneck Sampling).
    """

    def __init__(self, target: Any) -> None:
        self._projections: dict[SlotKey, torch.nn.Module] = {}
        for name, module in _denoisers(target):
            adapter = get_model_adapter(module)
            for block in adapter.blocks(module):
                for comp_name, comp in block.components().items():
                    self._projections[(name, block.index, comp_name)] = first_projection(comp)
        self.counts: Counter = Counter()
        self.token_counts: Counter = Counter()
        self._handles: list[Any] = []

    @property
    def num_slots(self) -> int:
        return len(self._projections)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def token_total(self) -> int:
        return sum(self.token_counts.values())

    @property
    def active(self) -> bool:
        return bool(self._handles)

    def attach(self) -> "BlockComputeCounter":
        if self._handles:
            raise ValueError("BlockComputeCounter is already attached; call remove() before attaching again.")
        for key, projection in self._projections.items():
            self._handles.append(projection.register_forward_hook(self._hook(key)))
        return self

    def _hook(self, key: SlotKey):
        def count(module, args, output) -> None:
            self.counts[key] += 1
            if torch.is_tensor(output) and output.dim() >= 1 and output.shape[-1]:
                self.token_counts[key] += output.numel() // output.shape[-1]

        return count

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def reset(self) -> None:
        self.counts = Counter()
        self.token_counts = Counter()

    def __enter__(self) -> "BlockComputeCounter":
        return self.attach()

    def __exit__(self, *exc: Any) -> None:
        self.remove()

    def per_block(self) -> dict[tuple[str, int], int]:
        """Calls summed over the components of each ``(denoiser, block)``."""
        out: Counter = Counter()
        for (name, block, _), n in self.counts.items():
            out[(name, block)] += n
        return dict(out)

    @staticmethod
    def ratio(baseline: "BlockComputeCounter | int", accelerated: "BlockComputeCounter | int") -> float:
        """Compute ratio baseline / accelerated (``inf`` if nothing ran when accelerated)."""
        base = baseline.total if isinstance(baseline, BlockComputeCounter) else int(baseline)
        acc = accelerated.total if isinstance(accelerated, BlockComputeCounter) else int(accelerated)
        if base <= 0:
            raise ValueError("the baseline ran no block computations; count a full-compute call first.")
        return base / acc if acc else float("inf")
