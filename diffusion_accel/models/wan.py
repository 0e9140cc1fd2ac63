"""Wan 2.1 / 2.2 (``WanTransformer3DModel``): video self-attn, text cross-attn, FFN per block.

Wan 2.2 pipelines hold a second transformer (``transformer_2``) of the same class for the
low-noise steps; each is tracked and accelerated on its own.
"""

from diffusers import WanTransformer3DModel

from .base import BlockGroup, BlockIO, Component, LatentLayout, ModelAdapter, forward_argument, patch_size_2d
from .registry import register_model_adapter



def wan_token_grid(model, args, kwargs):
    """Video latents ``(B, C, F, H, W)`` patched by ``config.patch_size = (pt, ph, pw)``."""
    x = forward_argument(model, "hidden_states", args, kwargs)
    pt, ph, pw = model.config.patch_size
    return (x.shape[2] // pt, x.shape[3] // ph, x.shape[4] // pw)


WAN_ADAPTER = ModelAdapter(
    family="wan",
    groups=(
        BlockGroup(
            "blocks",
            "blocks",
            (
                Component("attn1", "attn1", "self_attn"),
                Component("attn2", "attn2", "cross_attn"),
                Component("ffn", "ffn", "ffn"),
            ),
            BlockIO(),
        ),
    ),
    token_grid=wan_token_grid,
    latent_layout=LatentLayout(
        ndim=5,  # (B, C, F, H, W): frames kept, height and width resized
        patch_size=patch_size_2d,
        positions="3-D rotary positions by integer patch index, computed from the input's shape on each call",
    ),
)

register_model_adapter(WanTransformer3DModel, WAN_ADAPTER)
