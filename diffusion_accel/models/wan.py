"""Wan 2.1 / 2.2 (``WanTransformer3DModel``): video self-attn, text cross-attn, FFN per block.

Wan 2.2 pipelines hold a second transformer (``transformer_2``) of the same class for the
low-noise steps; each is tracked and accelerated on its own.
"""

from diffusers import WanTransformer3DModel

from .base import BlockGroup, BlockIO, Component, ModelAdapter
from .registry import register_model_adapter

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
)

register_model_adapter(WanTransformer3DModel, WAN_ADAPTER)
