"""DiT (``DiTTransformer2DModel``, ``diffusers.DiTPipeline``): class-conditioned image transformer.

Every block is a ``BasicTransformerBlock`` with ``norm_type="ada_norm_zero"``: the timestep and
class label modulate the block through ``norm1`` (adaLN-Zero), then self-attention ``attn1`` and the
feed-forward ``ff`` run on the image tokens. There is no text and no cross-attention (``attn2`` is
``None``), and each block maps ``hidden_states`` to ``hidden_states``, so whole blocks can be
skipped (``BlockIO()``). The pipeline batches both guidance branches into one call.

This file is the whole of what diffusion-accel knows about DiT; caching, quantization and sparse
attention all work from this declaration (see CONTRIBUTING.md, "Adding a model family").

Example:
    >>> from diffusion_accel.models import adapter_for_class
    >>> from diffusers import DiTTransformer2DModel
    >>> adapter = adapter_for_class(DiTTransformer2DModel)
    >>> adapter.family, adapter.component_names
    ('dit', ('attn1', 'ff'))
"""

from diffusers import DiTTransformer2DModel

from .base import BlockGroup, BlockIO, Component, ModelAdapter, patched_grid_2d
from .registry import register_model_adapter

DIT_ADAPTER = ModelAdapter(
    family="dit",
    groups=(
        BlockGroup(
            "transformer_blocks",
            "transformer_blocks",
            (
                Component("attn1", "attn1", "self_attn"),
                Component("ff", "ff", "ffn"),
            ),
            BlockIO(),
        ),
    ),
    # hidden_states (B, C, H, W) is patched by config.patch_size, as in PixArt.
    token_grid=patched_grid_2d,
)

register_model_adapter(DiTTransformer2DModel, DIT_ADAPTER)
