"""PixArt-α / PixArt-Σ (``PixArtTransformer2DModel``): self-attn, cross-attn, FFN per block."""

from diffusers import PixArtTransformer2DModel

from .base import BlockGroup, BlockIO, Component, LatentLayout, ModelAdapter, patch_size_2d, patched_grid_2d
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
    latent_layout=LatentLayout(
        ndim=4,  # (B, C, H, W)
        patch_size=patch_size_2d,
        positions="2-D sin-cos positions recomputed for any grid, spanning the same range at any size "
        "(grid / (size / base_size) / interpolation_scale): a smaller grid samples the trained range coarsely",
    ),
)

register_model_adapter(PixArtTransformer2DModel, PIXART_ADAPTER)
