"""PixArt-α / PixArt-Σ (``PixArtTransformer2DModel``): self-attn, cross-attn, FFN per block."""

from diffusers import PixArtTransformer2DModel

from .base import BlockGroup, BlockIO, Component, ModelAdapter, forward_argument, patched_grid_2d
from .registry import register_model_adapter


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
    modulated_input=pixart_modulated_input,
)

register_model_adapter(PixArtTransformer2DModel, PIXART_ADAPTER)
