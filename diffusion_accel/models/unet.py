"""Stable Diffusion 1.x/2.x UNet (``UNet2DConditionModel``): down, mid and up blocks.

Each UNet block is one component (``"block"``): reusing the deep blocks' outputs while the
outermost ones run is DeepCache; reusing the encoder (down + mid) while the decoder runs is
Faster Diffusion's encoder propagation.
"""

from diffusers import UNet2DConditionModel

from .base import BlockGroup, Component, ModelAdapter, forward_argument
from .registry import register_model_adapter

_WHOLE_BLOCK = (Component("block", "", "block"),)



def unet_token_grid(model, args, kwargs):
    """The latent grid ``sample`` ``(B, C, H, W)`` at full resolution; attention at a lower level finds
    its grid by halving (``sparse_attn.context.grid_for_tokens``)."""
    x = forward_argument(model, "sample", args, kwargs)
    return (1, x.shape[-2], x.shape[-1])


UNET_ADAPTER = ModelAdapter(
    family="unet",
    groups=(
        BlockGroup("down_blocks", "down_blocks", _WHOLE_BLOCK),
        BlockGroup("mid_block", "mid_block", _WHOLE_BLOCK),
        BlockGroup("up_blocks", "up_blocks", _WHOLE_BLOCK),
    ),
    token_grid=unet_token_grid,
)

register_model_adapter(UNet2DConditionModel, UNET_ADAPTER)
