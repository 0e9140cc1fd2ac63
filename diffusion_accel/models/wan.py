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


def wan_modulated_input(block, args, kwargs):
    """Input of a Wan block's self-attention: ``norm1(x) * (1 + scale_msa) + shift_msa`` with shift/scale from
    the block's ``scale_shift_table`` plus its ``temb`` argument (the projected timestep embedding,
    ``(B, 6, dim)``, or ``(B, tokens, 6, dim)`` for Wan 2.2 TI2V). ``(B, tokens, dim)``."""
    hidden = forward_argument(block, "hidden_states", args, kwargs)
    temb = forward_argument(block, "temb", args, kwargs)
    if temb.ndim == 4:
        shift, scale = (block.scale_shift_table.unsqueeze(0) + temb.float()).chunk(6, dim=2)[:2]
        shift, scale = shift.squeeze(2), scale.squeeze(2)
    else:
        shift, scale = (block.scale_shift_table + temb.float()).chunk(6, dim=1)[:2]
    return (block.norm1(hidden.float()) * (1 + scale) + shift).type_as(hidden)


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
            BlockIO(batch_args=("hidden_states", "encoder_hidden_states", "temb")),  # rotary_emb is shared
        ),
    ),
    token_grid=wan_token_grid,
    latent_layout=LatentLayout(
        ndim=5,  # (B, C, F, H, W): frames kept, height and width resized
        patch_size=patch_size_2d,
        positions="3-D rotary positions by integer patch index, computed from the input's shape on each call",
    ),
    modulated_input=wan_modulated_input,
)

register_model_adapter(WanTransformer3DModel, WAN_ADAPTER)
