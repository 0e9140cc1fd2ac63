"""Run each text encoder once per distinct input while a search evaluates many candidates.

Every candidate of a schedule search calls the pipeline on the same calibration prompts, so the
text encoders would recompute identical embeddings hundreds of times. :func:`memoize_text_encoders`
hooks every pipeline component named ``text_encoder*`` (CLIP, T5, UMT5 ...: any pipeline) with a
diffusers ``ModelHook`` whose forward returns the stored output when the inputs (token ids,
attention masks, flags) are identical, and removes the hooks on exit. It works for every pipeline
without knowing how its ``encode_prompt`` is spelled. Outputs are returned as stored: diffusers
pipelines only read them (a test checks that the full schedule still reproduces the un-memoised
outputs bit for bit).

Example:
    >>> import torch
    >>> from diffusion_accel.testing import tiny_pipeline, tiny_call_kwargs
    >>> pipe = tiny_pipeline("pixart-alpha")
    >>> with memoize_text_encoders(pipe) as memo:
    ...     for _ in range(2):
    ...         _ = pipe(**tiny_call_kwargs("pixart-alpha"), generator=torch.Generator().manual_seed(0))
    >>> memo.hits, memo.misses                         # prompt + negative prompt, encoded once each
    (2, 2)
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from typing import Any

import torch
from diffusers.hooks import ModelHook

from ..hooks import add_hook, remove_hook

__all__ = ["TextEncoderMemo", "memoize_text_encoders", "text_encoders"]

_HOOK_NAME = "search_text_encoder_memo"


def text_encoders(pipe: Any) -> list[tuple[str, torch.nn.Module]]:
    """``[(name, module)]`` of the pipeline's components named ``text_encoder*``."""
    components = getattr(pipe, "components", {}) or {}
    return [(n, m) for n, m in components.items() if n.startswith("text_encoder") and isinstance(m, torch.nn.Module)]


def _key(value: Any) -> Any:
    if torch.is_tensor(value):
        data = value.detach().cpu().contiguous()
        digest = hashlib.sha1(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"").hexdigest()
        return ("tensor", str(value.dtype), tuple(value.shape), str(value.device), digest)
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, tuple(_key(v) for v in value))
    if isinstance(value, dict):
        return ("dict", tuple(sorted((k, _key(v)) for k, v in value.items())))
    return ("value", repr(value))


class TextEncoderMemo:
    """Stored outputs of the hooked text encoders, with hit/miss counters."""

    def __init__(self) -> None:
        self.store: dict[Any, Any] = {}
        self.hits = 0
        self.misses = 0


class _MemoHook(ModelHook):
    def __init__(self, memo: TextEncoderMemo, name: str) -> None:
        super().__init__()
        self.memo = memo
        self.name = name

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        key = (self.name, _key(args), _key(kwargs))
        if key in self.memo.store:
            self.memo.hits += 1
            return self.memo.store[key]
        self.memo.misses += 1
        output = self.fn_ref.original_forward(*args, **kwargs)
        self.memo.store[key] = output
        return output


@contextlib.contextmanager
def memoize_text_encoders(pipe: Any, memo: TextEncoderMemo | None = None) -> Iterator[TextEncoderMemo]:
    """Memoise the outputs of ``pipe``'s text encoders inside the ``with`` block (see module doc)."""
    memo = memo if memo is not None else TextEncoderMemo()
    hooked = []
    try:
        for name, module in text_encoders(pipe):
            add_hook(module, _MemoHook(memo, name), _HOOK_NAME)
            hooked.append(module)
        yield memo
    finally:
        for module in hooked:
            remove_hook(module, _HOOK_NAME)
