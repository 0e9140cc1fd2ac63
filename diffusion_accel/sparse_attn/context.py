"""Per-denoiser-call facts the attention processors need: text length and token grid.

A :class:`DenoiserContextHook` (a stateful diffusers ``ModelHook`` on the denoiser) reads the
denoiser's inputs before each call and publishes a :class:`CallContext`: how many text tokens the
call carries (Flux's single-stream blocks see text+image concatenated with no other hint) and the
latent token grid ``(frames, height, width)`` after patching (for PARO). Grid readers are a
registry keyed by adapter family. Resetting the hook (every pipeline call) also resets the
per-layer state of the sparse attention layers (Re-ttention statistics).

Example:
    >>> from diffusion_accel.sparse_attn.context import GRID_READERS
    >>> sorted(GRID_READERS)
    ['cogvideox', 'flux', 'pixart', 'sd3', 'unet', 'wan']
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from diffusers.hooks import ModelHook

__all__ = ["GRID_READERS", "CallContext", "DenoiserContextHook", "grid_for_tokens", "register_grid_reader"]


@dataclass(frozen=True)
class CallContext:
    """``text_tokens``: text tokens in joint attention (or None); ``grid``: latent token grid."""

    text_tokens: int | None = None
    grid: tuple[int, int, int] | None = None


@functools.cache
def _params(model_class: type) -> tuple[str, ...]:
    return tuple(list(inspect.signature(model_class.forward).parameters)[1:])


def _arg(model: torch.nn.Module, args: tuple, kwargs: dict, name: str):
    if name in kwargs:
        return kwargs[name]
    params = _params(type(model))
    if name in params and params.index(name) < len(args):
        return args[params.index(name)]
    return None


def _pair(p) -> tuple[int, int]:
    return (p, p) if isinstance(p, int) else (int(p[0]), int(p[1]))


def _grid_2d(model, args, kwargs):
    x = _arg(model, args, kwargs, "hidden_states")
    ph, pw = _pair(model.config.patch_size)
    return (1, x.shape[-2] // ph, x.shape[-1] // pw)


def _grid_wan(model, args, kwargs):
    x = _arg(model, args, kwargs, "hidden_states")  # (B, C, F, H, W)
    pt, ph, pw = model.config.patch_size
    return (x.shape[2] // pt, x.shape[3] // ph, x.shape[4] // pw)


def _grid_cogvideox(model, args, kwargs):
    x = _arg(model, args, kwargs, "hidden_states")  # (B, F, C, H, W)
    p = model.config.patch_size
    pt = getattr(model.config, "patch_size_t", None) or 1
    return (x.shape[1] // pt, x.shape[3] // p, x.shape[4] // p)


def _grid_flux(model, args, kwargs):
    ids = _arg(model, args, kwargs, "img_ids")
    if ids is None:
        return None
    ids = ids[0] if ids.dim() == 3 else ids
    return (1, int(ids[:, 1].max()) + 1, int(ids[:, 2].max()) + 1)


def _grid_unet(model, args, kwargs):
    x = _arg(model, args, kwargs, "sample")  # (B, C, H, W); levels are found by token count
    return (1, x.shape[-2], x.shape[-1])


#: adapter family -> fn(model, args, kwargs) -> (frames, height, width) or None
GRID_READERS: dict[str, Callable[..., tuple[int, int, int] | None]] = {
    "pixart": _grid_2d,
    "sd3": _grid_2d,
    "unet": _grid_unet,
    "flux": _grid_flux,
    "wan": _grid_wan,
    "cogvideox": _grid_cogvideox,
}


def register_grid_reader(family: str, fn: Callable[..., tuple[int, int, int] | None]) -> None:
    """Tell PARO how to find the token grid of a model family's inputs."""
    GRID_READERS[family] = fn


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

    def __init__(self, family: str, layers: list) -> None:
        super().__init__()
        self.family = family
        self.layers = layers
        self.current = CallContext()

    def pre_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any):
        text = _arg(module, args, kwargs, "encoder_hidden_states")
        reader = GRID_READERS.get(self.family)
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
