"""PixArt-α / PixArt-Σ (``PixArtTransformer2DModel``): self-attn, cross-attn, FFN per block."""

from diffusers import PixArtTransformer2DModel

from .base import BlockGroup, BlockIO, Component, ModelAdapter, patched_grid_2d
from .registry import register_model_adapter

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
            BlockIO(),
        ),
    ),
    token_grid=patched_grid_2d,
)

register_model_adapter(PixArtTransformer2DModel, PIXART_ADAPTER)
