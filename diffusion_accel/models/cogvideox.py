"""CogVideoX (``CogVideoXTransformer3DModel``): ``attn1`` is joint attention over text tokens
followed by video tokens; ``ff`` runs on the concatenated sequence."""

from diffusers import CogVideoXTransformer3DModel

from .base import BlockGroup, BlockIO, Component, ModelAdapter
from .registry import register_model_adapter

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
)

register_model_adapter(CogVideoXTransformer3DModel, COGVIDEOX_ADAPTER)
