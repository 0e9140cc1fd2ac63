"""CogVideoX (``CogVideoXTransformer3DModel``): ``attn1`` is joint attention over text tokens
followed by video tokens; ``ff`` runs on the concatenated sequence."""

from diffusers import CogVideoXTransformer3DModel

from .base import BlockGroup, BlockIO, Component, ModelAdapter, forward_argument
from .registry import register_model_adapter



def cogvideox_token_grid(model, args, kwargs):
    """Video latents ``(B, F, C, H, W)`` patched by ``config.patch_size`` (and ``patch_size_t``, 1.5 only)."""
    x = forward_argument(model, "hidden_states", args, kwargs)
    p = model.config.patch_size
    pt = getattr(model.config, "patch_size_t", None) or 1
    return (x.shape[1] // pt, x.shape[3] // p, x.shape[4] // p)


def cogvideox_modulated_input(block, args, kwargs):
    """Video-stream input of a CogVideoX block's attention: the first output of its
    ``norm1(hidden_states, encoder_hidden_states, temb)`` (``CogVideoXLayerNormZero``). ``(B, tokens, dim)``."""
    hidden = forward_argument(block, "hidden_states", args, kwargs)
    encoder = forward_argument(block, "encoder_hidden_states", args, kwargs)
    temb = forward_argument(block, "temb", args, kwargs)
    return block.norm1(hidden, encoder, temb)[0]


COGVIDEOX_ADAPTER = ModelAdapter(
    family="cogvideox",
    groups=(
        BlockGroup(
            "transformer_blocks",
            "transformer_blocks",
            (
                Component("attn1", "attn1", "joint_attn"),
                Component("ff", "ff", "ffn"),
            ),
            BlockIO(
                encoder_hidden_states_arg="encoder_hidden_states",
                output_hidden_states_index=0,
                output_encoder_hidden_states_index=1,
            ),
        ),
    ),
    text_tokens_first=True,
    token_grid=cogvideox_token_grid,
    latent_layout_note="the pipeline computes the rotary position embeddings from the call's height and "
    "width once, before the loop",
    modulated_input=cogvideox_modulated_input,
)

register_model_adapter(CogVideoXTransformer3DModel, COGVIDEOX_ADAPTER)
