"""Stage arithmetic and latent resizing for Bottleneck Sampling (pure functions).

Example:
    >>> stage_step_counts((0.25, 0.5, 0.25), 10)
    [3, 5, 2]
    >>> import torch
    >>> resize_latents(torch.ones(1, 4, 16, 16), (8, 8)).shape
    torch.Size([1, 4, 8, 8])
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["resize_latents", "stage_step_counts", "subsample_noise"]


def stage_step_counts(fractions: tuple[float, ...], num_steps: int) -> list[int]:
    """Split ``num_steps`` by ``fractions`` (largest remainder; every stage gets at least one step)."""
    if num_steps < len(fractions):
        raise ValueError(
            f"Bottleneck Sampling with {len(fractions)} stages needs at least {len(fractions)} steps, got "
            f"num_inference_steps={num_steps}; use more steps or fewer stages."
        )
    raw = [f * num_steps for f in fractions]
    counts = [max(1, math.floor(r)) for r in raw]
    order = sorted(range(len(raw)), key=lambda i: (counts[i] - raw[i], i))
    k = 0
    while sum(counts) < num_steps:
        counts[order[k % len(order)]] += 1
        k += 1
    while sum(counts) > num_steps:  # the minimum of one step pushed the total over
        i = max((j for j in range(len(counts)) if counts[j] > 1), key=lambda j: (counts[j] - raw[j], -j))
        counts[i] -= 1
    return counts


def resize_latents(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize the last two (spatial) dimensions of ``x`` to ``size``: area averaging down,
    bilinear up; every other dimension (batch, channels, frames) is kept. Computed in float32."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    lead = x.shape[:-2]
    flat = x.reshape(-1, 1, *x.shape[-2:]).to(torch.float32)
    down = size[0] <= x.shape[-2] and size[1] <= x.shape[-1]
    if down:
        out = F.interpolate(flat, size=size, mode="area")
    else:
        out = F.interpolate(flat, size=size, mode="bilinear", align_corners=False)
    return out.reshape(*lead, *size).to(x.dtype)


def subsample_noise(noise: torch.Tensor, factor: int) -> torch.Tensor:
    """Every ``factor``-th value of the last two dimensions: i.i.d. unit Gaussian noise stays so
    (averaging would shrink its variance)."""
    return noise if factor == 1 else noise[..., ::factor, ::factor].contiguous()
