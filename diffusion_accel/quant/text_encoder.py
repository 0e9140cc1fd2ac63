"""Text-encoder quantization that keeps the first (BOS) token's path in high precision.

The first token of a text encoder carries outsized activations (CLIP's BOS token is an
attention sink whose features dwarf the others, MixDQ §3): quantizing it with the rest ruins the
text embedding. Here every linear of the encoder gets quantized weights, and the activations of
all tokens **but the first** are quantized to int8; the first token's activations stay in the
model's float dtype (``QuantLinear(fp_tokens=1)``). Pooled 2-D inputs (e.g. a projection head)
are quantized normally.

Example::

    from diffusion_accel.quant.text_encoder import quantize_text_encoder, restore_text_encoder
    records = quantize_text_encoder(pipe.text_encoder, weight_bits=8)
    ...
    restore_text_encoder(pipe.text_encoder, records)
"""

from __future__ import annotations

import torch

from .quantizers import check_bits
from .replace import OriginalStore, Replacement, linear_names, quantize_linears, restore_linears

__all__ = ["quantize_text_encoder", "restore_text_encoder", "TEXT_ENCODER_COMPONENTS"]

#: Pipeline components treated as text encoders.
TEXT_ENCODER_COMPONENTS = ("text_encoder", "text_encoder_2", "text_encoder_3")


def quantize_text_encoder(encoder: torch.nn.Module, weight_bits: int = 8, act_bits: int | None = 8,
                          group_size: int = 128, keep_first_token: bool = True,
                          backend: str = "auto", store: OriginalStore | None = None) -> list[Replacement]:
    """Quantize every linear of ``encoder`` in place; returns the records to undo it (``store``: where
    the original layers wait, see :class:`~diffusion_accel.quant.replace.OriginalStore`)."""
    check_bits(weight_bits, "text encoder weight_bits", allow_none=False)
    if not isinstance(encoder, torch.nn.Module):
        raise TypeError(f"encoder must be a torch.nn.Module, got {type(encoder).__name__}.")
    names = linear_names(encoder)
    if not names:
        raise ValueError(f"{type(encoder).__name__} has no nn.Linear layers to quantize.")
    return quantize_linears(encoder, {n: weight_bits for n in names}, act_bits=act_bits, group_size=group_size,
                            backend=backend, fp_tokens=1 if keep_first_token else 0, store=store)


def restore_text_encoder(encoder: torch.nn.Module, records: list[Replacement]) -> None:
    restore_linears(encoder, records)
