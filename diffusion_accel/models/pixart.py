"""PixArt-α / PixArt-Σ (``PixArtTransformer2DModel``): self-attn, cross-attn, FFN per block.

PixArt pipelines snap the requested size to an aspect-ratio bin of the checkpoint's resolution
(``use_resolution_binning=True`` by default), and diffusers has bins only for some transformer
sample sizes: any other checkpoint (a small one such as the bundled benchmark model) fails with
"Invalid sample size". The adapter's ``call_defaults`` turns binning off for those, with a note (and
caption cleaning when its packages are missing, instead of diffusers' warning at every call).
"""

from __future__ import annotations

from typing import Any

import diffusers
import torch
from diffusers import PixArtTransformer2DModel

from ..call_inputs import call_argument_default
from .base import (BlockGroup, BlockIO, Component, LatentLayout, ModelAdapter, forward_argument, patch_size_2d,
                   patched_grid_2d)
from .registry import register_model_adapter

#: Transformer sample sizes (latent pixels) with aspect-ratio bins, per pipeline (diffusers' own tables).
BINNED_SAMPLE_SIZES = {diffusers.PixArtAlphaPipeline: (32, 64, 128), diffusers.PixArtSigmaPipeline: (32, 64, 128, 256)}


def pixart_call_defaults(pipe: Any, transformer: torch.nn.Module) -> dict[str, tuple[Any, str]]:
    """The adapter's ``call_defaults``: :func:`resolution_binning_defaults` and :func:`caption_cleaning_defaults`."""
    return {**resolution_binning_defaults(pipe, transformer), **caption_cleaning_defaults(pipe, transformer)}


def caption_cleaning_defaults(pipe: Any, transformer: torch.nn.Module) -> dict[str, tuple[Any, str]]:
    """``{"clean_caption": (False, note)}`` when ``pipe`` cleans captions by default but beautifulsoup4 or
    ftfy is missing (diffusers then turns cleaning off itself, with a warning at every call)."""
    from diffusers.utils import is_bs4_available, is_ftfy_available

    if call_argument_default(pipe, "clean_caption") is not True or (is_bs4_available() and is_ftfy_available()):
        return {}
    return {"clean_caption": (False, f"{type(pipe).__name__}: caption cleaning needs beautifulsoup4 and ftfy, "
                                     "which are not installed, so clean_caption=False.")}


def resolution_binning_defaults(pipe: Any, transformer: torch.nn.Module) -> dict[str, tuple[Any, str]]:
    """``{"use_resolution_binning": (False, note)}`` when ``pipe`` bins by default and ``transformer``'s
    sample size has no aspect-ratio bins; ``{}`` otherwise (or for pipelines without binning)."""
    if call_argument_default(pipe, "use_resolution_binning") is not True:
        return {}
    binned = next((sizes for cls, sizes in BINNED_SAMPLE_SIZES.items() if isinstance(pipe, cls)), None)
    sample_size = getattr(getattr(transformer, "config", None), "sample_size", None)
    if binned is None or sample_size in binned:
        return {}
    note = (f"{type(pipe).__name__}: the transformer's sample size {sample_size} has no aspect-ratio bins "
            f"(bins exist for {list(binned)}), so use_resolution_binning=False (images are made at the "
            "requested height and width).")
    return {"use_resolution_binning": (False, note)}


def pixart_modulated_input(block, args, kwargs):
    """Input of a PixArt block's self-attention: ``norm1(x) * (1 + scale_msa) + shift_msa``, the adaLN-single
    modulation whose shift/scale are the block's ``scale_shift_table`` plus its ``timestep`` argument
    (the transformer's ``adaln_single`` embedding, ``(B, 6 * dim)``). ``(B, tokens, dim)``."""
    hidden = forward_argument(block, "hidden_states", args, kwargs)
    timestep = forward_argument(block, "timestep", args, kwargs)
    shift, scale = (block.scale_shift_table[None] + timestep.reshape(hidden.shape[0], 6, -1)).chunk(6, dim=1)[:2]
    return block.norm1(hidden) * (1 + scale) + shift


PIXART_ADAPTER = ModelAdapter(
    family="pixart",
    groups=(
        BlockGroup(
            "transformer_blocks",
            "transformer_blocks",
            (
                Component("attn1", "attn1", "self_attn"),
                Component("attn2", "attn2", "cross_attn"),
                Component("ff", "ff", "ffn"),
            ),
            BlockIO(batch_args=("hidden_states", "attention_mask", "encoder_hidden_states",
                                "encoder_attention_mask", "timestep")),
        ),
    ),
    token_grid=patched_grid_2d,
    latent_layout=LatentLayout(
        ndim=4,  # (B, C, H, W)
        patch_size=patch_size_2d,
        positions="2-D sin-cos positions recomputed for any grid, spanning the same range at any size "
        "(grid / (size / base_size) / interpolation_scale): a smaller grid samples the trained range coarsely",
    ),
    call_defaults=pixart_call_defaults,
    modulated_input=pixart_modulated_input,
)

register_model_adapter(PixArtTransformer2DModel, PIXART_ADAPTER)
