"""The private diffusers (and transformers) internals diffusion-accel relies on, all in this one module.

diffusers has no public accessor for four things the package needs: the hook registry a module
already carries, the cache context a pipeline set, a pipeline's progress-bar settings, and which
submodules ``from_pretrained`` keeps in float32. Each use below names the private attribute it
reads; check them here when diffusers is upgraded.

Example:
    >>> import torch
    >>> hook_registry(torch.nn.Linear(2, 2)) is None     # no hook was ever registered
    True
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
from diffusers.hooks import HookRegistry
from diffusers.hooks.hooks import StateManager

__all__ = ["CacheContextProbe", "fp32_module_names", "hook_registry", "progress_bar_disabled"]


def hook_registry(module: torch.nn.Module) -> HookRegistry | None:
    """The :class:`HookRegistry` already attached to ``module``, or ``None`` (never creates one)."""
    # diffusers stores a module's registry in the private attribute ``_diffusers_hook``;
    # HookRegistry.check_if_exists_or_initialize would create one where there is none.
    return getattr(module, "_diffusers_hook", None)


class _NoState:
    def reset(self) -> None:
        pass


class CacheContextProbe(StateManager):
    """A diffusers ``StateManager`` used only to read the cache context the pipeline set.

    Pipelines that run their guidance branches as separate denoiser calls (Flux, Wan, CogVideoX)
    wrap each call in ``with transformer.cache_context(name)``; diffusers hands that context to every
    ``StateManager`` of the model's hooks.
    """

    def __init__(self) -> None:
        super().__init__(_NoState)

    def current(self) -> Any:
        """The context of the running denoiser call (``.name``, maybe ``.step_index``), or ``None``."""
        # StateManager keeps the context it was given by ``set_context`` in the private ``_context``.
        return self._context


@contextlib.contextmanager
def progress_bar_disabled(pipe: Any) -> Iterator[None]:
    """No per-step progress bar from ``pipe`` inside the block; its own settings are restored after."""
    # DiffusionPipeline.set_progress_bar_config keeps its settings in the private
    # ``_progress_bar_config`` and has no getter: read it there to restore the user's settings.
    old = dict(getattr(pipe, "_progress_bar_config", {}) or {})
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=True)
    try:
        yield
    finally:
        if hasattr(pipe, "_progress_bar_config"):
            # The same private attribute, restored as it was.
            pipe._progress_bar_config = old


def fp32_module_names(module: torch.nn.Module, dtype: torch.dtype) -> set[str]:
    """Names of the submodules ``from_pretrained(torch_dtype=dtype)`` keeps in float32: a diffusers
    model's ``_keep_in_fp32_modules`` (any lower precision); a transformers model's
    ``_keep_in_fp32_modules`` under float16 and ``_keep_in_fp32_modules_strict`` under float16/bfloat16."""
    from diffusers import ModelMixin
    from transformers import PreTrainedModel

    keep: set[str] = set()
    if isinstance(module, ModelMixin) and dtype != torch.float32:
        # Private class attribute of diffusers models, read by their from_pretrained.
        keep |= set(module._keep_in_fp32_modules or ())
    elif isinstance(module, PreTrainedModel):
        if dtype == torch.float16:
            # Private class attribute of transformers models (the same convention).
            keep |= set(module._keep_in_fp32_modules or ())
        if dtype in (torch.float16, torch.bfloat16):
            # Its stricter twin, applied under bfloat16 too.
            keep |= set(module._keep_in_fp32_modules_strict or ())
    return keep
