"""Model adapters: which blocks and components of each denoiser techniques can address.

Example:
    >>> import diffusion_accel.models as models
    >>> "PixArtTransformer2DModel (pixart)" in models.supported_model_classes()
    True
"""

from .base import COMPONENT_KINDS, Block, BlockGroup, BlockIO, Component, ModelAdapter
from .registry import (
    adapter_for_class,
    find_model_adapter,
    get_model_adapter,
    register_model_adapter,
    supported_model_classes,
)

__all__ = [
    "COMPONENT_KINDS",
    "Block",
    "BlockGroup",
    "BlockIO",
    "Component",
    "ModelAdapter",
    "adapter_for_class",
    "find_model_adapter",
    "get_model_adapter",
    "register_model_adapter",
    "supported_model_classes",
]
