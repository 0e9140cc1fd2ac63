"""Model adapters: which blocks and components of each denoiser techniques can address.

Example:
    >>> import diffusion_accel.models as models
    >>> "PixArtTransformer2DModel (pixart)" in models.supported_model_classes()
    True
"""

from .base import (
    COMPONENT_KINDS,
    Block,
    BlockGroup,
    BlockIO,
    CallDefaults,
    Component,
    LatentLayout,
    ModelAdapter,
    ModulatedInput,
    TokenGrid,
    forward_argument,
    patch_size_2d,
    map_arguments,
    patched_grid_2d,
)
from .registry import (
    adapter_for_class,
    find_model_adapter,
    get_model_adapter,
    register_model_adapter,
    registered_adapters,
    supported_model_classes,
)

__all__ = [
    "COMPONENT_KINDS",
    "Block",
    "BlockGroup",
    "BlockIO",
    "CallDefaults",
    "Component",
    "LatentLayout",
    "ModelAdapter",
    "ModulatedInput",
    "TokenGrid",
    "adapter_for_class",
    "find_model_adapter",
    "forward_argument",
    "map_arguments",
    "get_model_adapter",
    "patch_size_2d",
    "patched_grid_2d",
    "register_model_adapter",
    "registered_adapters",
    "supported_model_classes",
]
