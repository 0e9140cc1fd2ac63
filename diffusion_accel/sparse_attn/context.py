"""Per-denoiser-call facts the attention processors need: text length and token grid.

A :class:`DenoiserContextHook` (a stateful diffusers ``ModelHook`` on the denoiser) reads the
denoiser's inputs before each call and publishes a :class:`CallContext`: how many text tokens the
call carries (Flux's single-stream blocks see text+image concatenated with no other hint) and the
latent token grid ``(frames, height, width)`` after patching (for PARO), read by the model adapter's
``token_grid`` (each family declares it in its adapter file). Resetting the hook (every pipeline
call) also resets the per-layer state of the sparse attention layers (Re-ttention statistics).

Example:
    >>> grid_for_tokens((1, 8, 8), 16)     # a UNet level at a quarter of the latent resolution
    (1, 4, 4)
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from diffusers.hooks import ModelHook

from ..models import ModelAdapter, forward_argument, register_model_adapter
from ..models import registered_adapters

__all__ = ["CallContext", "DenoiserContextHook", "grid_for_tokens", "register_grid_reader"]


@dataclass(frozen=True)
class CallContext:
    """``text_tokens``: text tokens in joint attention (or None); ``grid``: latent token grid."""

    text_tokens: int | None = None
    grid: tuple[int, int, int] | None = None


def register_grid_reader(family: str, fn: Callable[..., tuple[int, int, int] | None]) -> None:
    """Deprecated: declare ``token_grid=fn`` in the family's :class:`~diffusion_accel.models.ModelAdapter`.

    Sets ``token_grid`` of every registered adapter of ``family`` (for one more release).
    """
    warnings.warn("register_grid_reader is deprecated: pass token_grid=fn to the family's ModelAdapter "
                  "(diffusion_accel.models.register_model_adapter).", DeprecationWarning, stacklevel=2)
    matched = [(cls, a) for cls, a in registered_adapters().items() if a.family == family]
    if not matched:
        raise ValueError(f"No model adapter of family {family!r} is registered; register one with "
                         "diffusion_accel.models.register_model_adapter(cls, ModelAdapter(..., token_grid=fn)).")
    for cls, adapter in matched:
        register_model_adapter(cls, dataclasses.replace(adapter, token_grid=fn))


def grid_for_tokens(grid: tuple[int, int, int] | None, tokens: int) -> tuple[int, int, int] | None:
    """The grid matching ``tokens``: ``grid`` itself, or its spatial dims halved k times (UNet levels)."""
    if grid is None:
        return None
    f, h, w = grid
    for _ in range(8):
        if f * h * w == tokens:
            return (f, h, w)
        if h < 2 or w < 2:
            break
        h, w = math.ceil(h / 2), math.ceil(w / 2)
    return None


class DenoiserContextHook(ModelHook):
    """Publishes the :class:`CallContext` of each denoiser call; resets layer state on reset."""

    _is_stateful = True

    def __init__(self, adapter: ModelAdapter, layers: list) -> None:
        super().__init__()
        self.adapter = adapter
        self.layers = layers
        self.current = CallContext()

    def pre_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any):
        text = forward_argument(module, "encoder_hidden_states", args, kwargs)
        reader = self.adapter.token_grid
        grid = reader(module, args, kwargs) if reader is not None else None
        self.current = CallContext(
            text_tokens=int(text.shape[1]) if torch.is_tensor(text) and text.dim() == 3 else None,
            grid=grid,
        )
        return args, kwargs

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        self.current = CallContext()
        for layer in self.layers:
            layer.reset()
        return module
