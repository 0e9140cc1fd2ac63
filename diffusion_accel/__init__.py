"""diffusion-accel: faster, leaner diffusers pipelines without retraining.

Example:
    >>> import diffusion_accel
    >>> from diffusion_accel import AccelerationConfig
    >>> config = AccelerationConfig()          # add cache=..., quant=..., attention=...
    >>> # diffusion_accel.apply(pipe, config); pipe(...); diffusion_accel.remove(pipe)
"""

from .api import apply, remove
from .config import AccelerationConfig

__version__ = "0.1.0"
__all__ = ["AccelerationConfig", "apply", "remove", "__version__"]
