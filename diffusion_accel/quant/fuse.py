"""Fuse an activation into the epilogue of the quantized linear that feeds it.

A diffusers ``GELU`` module is ``gelu(proj(x))``: once ``proj`` is a :class:`QuantLinear`, the
GELU can run inside the GEMM's rescale step (one pass over the output instead of two): the module
is swapped for a :class:`FusedActivation` that calls the QuantLinear with ``activation`` set.
Which module classes can be fused is a registry (:data:`FUSABLE_ACTIVATIONS`).

Example:
    >>> import torch
    >>> from diffusers.models.activations import GELU
    >>> from diffusion_accel.quant.replace import quantize_linears
    >>> model = torch.nn.Sequential(GELU(16, 32, approximate="tanh"), torch.nn.Linear(32, 4))
    >>> records = quantize_linears(model, {"0.proj": 8, "1": 8})
    >>> fused = fuse_activations(model, records)
    >>> type(model[0]).__name__, model[0].proj.activation
    ('FusedActivation', 'tanh')
    >>> unfuse_activations(model, fused); type(model[0]).__name__
    'GELU'
"""

from __future__ import annotations

from typing import Callable

import torch

from .linear import QuantLinear
from .replace import Replacement, set_submodule

__all__ = ["FUSABLE_ACTIVATIONS", "FusedActivation", "register_fusable_activation", "fuse_activations",
           "unfuse_activations"]

#: module class -> function returning the GELU ``approximate`` mode ("none" | "tanh") of an instance
FUSABLE_ACTIVATIONS: dict[type, Callable[[torch.nn.Module], str]] = {}


def register_fusable_activation(module_class: type, approximate: Callable[[torch.nn.Module], str]) -> None:
    """Declare that ``module_class`` computes ``gelu(self.proj(x), approximate=approximate(module))``."""
    FUSABLE_ACTIVATIONS[module_class] = approximate


def _register_builtin() -> None:
    from diffusers.models.activations import GELU

    register_fusable_activation(GELU, lambda m: m.approximate)


_register_builtin()


class FusedActivation(torch.nn.Module):
    """``proj(x)`` with the activation computed in ``proj``'s epilogue (``proj.activation``)."""

    def __init__(self, proj: QuantLinear) -> None:
        super().__init__()
        self.proj = proj

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return self.proj(hidden_states)


def fuse_activations(root: torch.nn.Module, records: list[Replacement]) -> list[Replacement]:
    """Swap fusable activation modules whose ``proj`` was quantized; returns records to undo it."""
    modules = dict(root.named_modules())
    fused = []
    for rec in records:
        parent_name, _, child = rec.name.rpartition(".")
        parent = modules.get(parent_name)
        mode = FUSABLE_ACTIVATIONS.get(type(parent))
        if child != "proj" or mode is None or parent.proj is not rec.quantized or not parent_name:
            continue
        approximate = mode(parent)
        if approximate not in ("none", "tanh"):
            continue
        rec.quantized.activation = approximate
        wrapper = FusedActivation(rec.quantized)
        set_submodule(root, parent_name, wrapper)
        fused.append(Replacement(parent_name, parent, wrapper))
    return fused


def unfuse_activations(root: torch.nn.Module, fused: list[Replacement]) -> None:
    """Put the original activation modules back (their ``proj`` is whatever it was before)."""
    for rec in reversed(fused):
        rec.quantized.proj.activation = None
        set_submodule(root, rec.name, rec.original)
