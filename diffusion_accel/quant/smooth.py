"""Channel balancing (SmoothQuant-style) and static activation scales per timestep range.

For a group of linears reading the same input ``X`` (``K`` channels) with weights ``W_j``, the
balancing factor of channel ``k`` is

    s_k = max|X_k| ** α / max_j max_n |W_j[n, k]| ** (1 - α)

and the layers compute ``(X / s) @ (W * s)^T``: activation outliers move into the weights by the
migration strength ``α`` (0: none, 1: all). ``max|X_k|`` is taken over all calibration calls (the
weights are shared by every timestep). Static activation scales are then computed *per timestep
range* on the balanced input: ``scale_r = max_k(max|X_k|_r / s_k) / 127``.

Example:
    >>> import torch
    >>> act = torch.tensor([[10.0, 0.1]])            # (R=1, K=2) channel absmax
    >>> w = [torch.tensor([[0.1, 1.0]])]
    >>> s = smoothing_factors(act, w, alpha=0.5)
    >>> [round(v, 3) for v in s.tolist()]
    [10.0, 0.316]
    >>> static_scales(act, s).tolist()                 # (R,) per-range scale
    [0.00787...]
"""

from __future__ import annotations

from typing import Sequence

import torch

__all__ = ["smoothing_factors", "static_scales"]

_MIN = 1e-5


def smoothing_factors(channel_absmax: torch.Tensor, weights: Sequence[torch.Tensor], alpha: float) -> torch.Tensor:
    """``(K,)`` float32 factors ``s`` from ``(R, K)`` activation absmax and the group's ``(N_j, K)`` weights."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1]; got {alpha}.")
    if not weights:
        raise ValueError("smoothing_factors needs at least one weight.")
    act = channel_absmax.float().reshape(-1, channel_absmax.shape[-1]).amax(dim=0)
    w = torch.stack([wi.detach().float().abs().amax(dim=0) for wi in weights]).amax(dim=0).to(act.device)
    if w.shape != act.shape:
        raise ValueError(f"weights have {w.shape[0]} input channels, activations {act.shape[0]}.")
    s = act.clamp_min(_MIN).pow(alpha) / w.clamp_min(_MIN).pow(1.0 - alpha)
    s = torch.where((act > 0) & (w > 0), s, torch.ones_like(s))
    return s.clamp(_MIN, 1.0 / _MIN)


def static_scales(channel_absmax: torch.Tensor, smooth: torch.Tensor | None = None, bits: int = 8) -> torch.Tensor:
    """``(R,)`` float32 per-tensor activation scales of the (balanced) input, one per timestep range."""
    act = channel_absmax.float()
    if smooth is not None:
        act = act / smooth.float()
    level = 2 ** (bits - 1) - 1
    return act.amax(dim=-1).clamp_min(1e-8) / level
