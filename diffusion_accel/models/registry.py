"""Registry of model adapters, keyed by denoiser class (subclasses found through the MRO).

Example:
    >>> from diffusers import PixArtTransformer2DModel
    >>> from diffusion_accel.models import adapter_for_class
    >>> adapter_for_class(PixArtTransformer2DModel).family
    'pixart'
"""

from __future__ import annotations

import torch

from .base import ModelAdapter

__all__ = ["register_model_adapter", "get_model_adapter", "adapter_for_class", "find_model_adapter",
           "registered_adapters", "supported_model_classes"]

_ADAPTERS: dict[type, ModelAdapter] = {}


def register_model_adapter(model_class: type, adapter: ModelAdapter) -> None:
    """Describe a denoiser class (and its subclasses) to every technique.

    Registering a class that already has an adapter replaces it.
    """
    if not isinstance(model_class, type) or not issubclass(model_class, torch.nn.Module):
        raise TypeError(f"model_class must be a torch.nn.Module subclass, got {model_class!r}.")
    if not isinstance(adapter, ModelAdapter):
        raise TypeError(f"adapter must be a ModelAdapter, got {type(adapter).__name__}.")
    _ADAPTERS[model_class] = adapter


def _ensure_builtin() -> None:
    from . import families  # noqa: F401  (registers the built-in adapters)


def adapter_for_class(model_class: type) -> ModelAdapter | None:
    """The adapter of ``model_class`` or of its nearest registered base class, else ``None``."""
    _ensure_builtin()
    for klass in model_class.__mro__:
        if klass in _ADAPTERS:
            return _ADAPTERS[klass]
    return None


def find_model_adapter(model: torch.nn.Module) -> ModelAdapter | None:
    """Like :func:`get_model_adapter` but returns ``None`` for unsupported models."""
    return adapter_for_class(type(model))


def get_model_adapter(model: torch.nn.Module) -> ModelAdapter:
    """The adapter describing ``model``; a ``ValueError`` naming the fix if there is none."""
    adapter = find_model_adapter(model)
    if adapter is None:
        raise ValueError(
            f"diffusion-accel has no model adapter for {type(model).__name__}. Supported denoisers: "
            f"{', '.join(supported_model_classes())}. To describe your own model, call "
            "diffusion_accel.models.register_model_adapter(YourModelClass, ModelAdapter(family=..., "
            "groups=(BlockGroup(name, path_to_block_list, components),)))."
        )
    return adapter


def registered_adapters() -> dict[type, ModelAdapter]:
    """A copy of the registry: model class -> adapter (built-in families included)."""
    _ensure_builtin()
    return dict(_ADAPTERS)


def supported_model_classes() -> list[str]:
    _ensure_builtin()
    return sorted(f"{cls.__name__} ({a.family})" for cls, a in _ADAPTERS.items())
