"""Reading and writing the hidden-state streams of a block (its :class:`~diffusion_accel.models.BlockIO`),
for techniques that skip whole blocks: dynamic caching and block-residual static caching.

Example:
    >>> import torch
    >>> from diffusion_accel.models import BlockIO
    >>> io = BlockIO(encoder_hidden_states_arg="encoder_hidden_states", output_hidden_states_index=1,
    ...              output_encoder_hidden_states_index=0)
    >>> hidden, encoder = block_streams(io, (torch.zeros(1), torch.ones(1)))
    >>> pack_block_output(io, hidden, encoder)
    (tensor([0.]), tensor([1.]))
"""

from __future__ import annotations

from typing import Any

import torch

from ..models import BlockIO, forward_argument

__all__ = ["add_stream", "block_argument", "block_streams", "pack_block_output", "sub_stream"]


def block_argument(module: torch.nn.Module, name: str | None, args: tuple, kwargs: dict) -> Any:
    return None if name is None else forward_argument(module, name, args, kwargs)


def block_streams(io: BlockIO, output: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(hidden_states, encoder_hidden_states or None) from a block's output."""
    if io.output_hidden_states_index is None:
        return output, None
    enc = None if io.output_encoder_hidden_states_index is None else output[io.output_encoder_hidden_states_index]
    return output[io.output_hidden_states_index], enc


def pack_block_output(io: BlockIO, hidden: torch.Tensor, encoder: torch.Tensor | None) -> Any:
    if io.output_hidden_states_index is None:
        return hidden
    out: list[Any] = [None, None]
    out[io.output_hidden_states_index] = hidden
    out[io.output_encoder_hidden_states_index] = encoder
    return tuple(out)


def sub_stream(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    return None if a is None or b is None else a - b


def add_stream(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    return a if a is None or b is None else a + b
