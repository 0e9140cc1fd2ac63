"""Stable Diffusion 3 / 3.5 (``SD3Transformer2DModel``): MMDiT joint blocks.

``attn`` is joint attention over image then text tokens (it returns both streams); ``attn2``
is SD3.5's extra image self-attention (absent in SD3); ``ff_context`` is the text stream's
FFN (absent in the last, context-pre-only block).
"""

from diffusers import SD3Transformer2DModel

from .base import (
    BlockGroup,
    BlockIO,
    Component,
    LatentLayout,
    ModelAdapter,
    forward_argument,
    patch_size_2d,
    patched_grid_2d,
)
from .registry import register_model_adapter


def sd3_modulated_input(block, args, kwargs):
    """Image-stream input of an SD3 block's joint attention: its adaLN-Zero ``norm1(hidden_states, emb=temb)``
    (first output; also for SD3.5's ``SD35AdaLayerNormZeroX``). ``(B, tokens, dim)``."""
    hidden = forward_argument(block, "hidden_states", args, kwargs)
    temb = forward_argument(block, "temb", args, kwargs)
    return block.norm1(hidden, emb=temb)[0]


SD3_ADAPTER = ModelAdapter(
    family="sd3",
    groups=(
        BlockGroup(
            "transformer_blocks",
            "transformer_blocks",
            (
                Component("attn", "attn", "joint_attn"),
                Component("attn2", "attn2", "self_attn"),
                Component("ff", "ff", "ffn"),
                Component("ff_context", "ff_context", "ffn_context"),
            ),
            BlockIO(
                encoder_hidden_states_arg="encoder_hidden_states",
                output_hidden_states_index=1,
                output_encoder_hidden_states_index=0,
            ),
        ),
    ),
    text_tokens_first=False,
    token_grid=patched_grid_2d,
    latent_layout=LatentLayout(
        ndim=4,  # (B, C, H, W)
        patch_size=patch_size_2d,
        positions="sin-cos positions cropped from the centre of a pos_embed_max_size grid: a smaller "
        "grid gets the central positions, with the trained spacing",
    ),
    modulated_input=sd3_modulated_input,
)

register_model_adapter(SD3Transformer2DModel, SD3_ADAPTER)
