"""FLUX.1 (``FluxTransformer2DModel``): double-stream MMDiT blocks, then single-stream blocks.

Double-stream blocks: joint attention ``attn`` (text tokens first), image FFN ``ff``, text FFN
``ff_context``. Single-stream blocks run attention and an MLP in parallel on the concatenated
sequence: ``attn`` and ``mlp`` (the MLP's input projection ``proj_mlp``, the bulk of its cost;
the shared output projection mixes both and is always computed).
"""

from diffusers import FluxTransformer2DModel

from .base import BlockGroup, BlockIO, Component, ModelAdapter, forward_argument
from .registry import register_model_adapter

_STREAMS = BlockIO(
    encoder_hidden_states_arg="encoder_hidden_states",
    output_hidden_states_index=1,
    output_encoder_hidden_states_index=0,
    batch_args=("hidden_states", "encoder_hidden_states", "temb"),  # image_rotary_emb is shared
)



def flux_token_grid(model, args, kwargs):
    """Flux packs latents into a sequence; the grid is read from the image position ids ``img_ids``
    ``(tokens, 3)`` (or ``(B, tokens, 3)``): ``(1, max row + 1, max column + 1)``."""
    ids = forward_argument(model, "img_ids", args, kwargs)
    if ids is None:
        return None
    ids = ids[0] if ids.dim() == 3 else ids
    return (1, int(ids[:, 1].max()) + 1, int(ids[:, 2].max()) + 1)


def flux_modulated_input(block, args, kwargs):
    """Image-stream input of a Flux block's attention: its adaLN-Zero ``norm1(hidden_states, emb=temb)`` (the
    first output; double-stream blocks' ``AdaLayerNormZero`` and single-stream blocks'
    ``AdaLayerNormZeroSingle`` both return it first). ``(B, tokens, dim)``."""
    hidden = forward_argument(block, "hidden_states", args, kwargs)
    temb = forward_argument(block, "temb", args, kwargs)
    norm = block.norm1 if hasattr(block, "norm1") else block.norm
    return norm(hidden, emb=temb)[0]


FLUX_ADAPTER = ModelAdapter(
    family="flux",
    groups=(
        BlockGroup(
            "transformer_blocks",
            "transformer_blocks",
            (
                Component("attn", "attn", "joint_attn"),
                Component("ff", "ff", "ffn"),
                Component("ff_context", "ff_context", "ffn_context"),
            ),
            _STREAMS,
        ),
        BlockGroup(
            "single_transformer_blocks",
            "single_transformer_blocks",
            (
                Component("attn", "attn", "joint_attn"),
                Component("mlp", "proj_mlp", "mlp"),
            ),
            _STREAMS,
        ),
    ),
    text_tokens_first=True,
    timestep_scale=1e-3,  # the pipelines pass t / 1000; the model multiplies by 1000
    token_grid=flux_token_grid,
    latent_layout_note="the pipeline packs latents into a sequence of 2x2 patches (B, H*W/4, 4C) and builds "
    "the image position ids from the call's height and width before the loop",
    modulated_input=flux_modulated_input,
)

register_model_adapter(FluxTransformer2DModel, FLUX_ADAPTER)
