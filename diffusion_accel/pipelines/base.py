"""The accelerated-pipeline mixin and the generic wrapper for any diffusers pipeline class.

They live in :mod:`diffusion_accel.api` (which switches accelerated instances to these classes);
this module keeps their historical import path.

Example:
    >>> import diffusers
    >>> from diffusion_accel.pipelines import accelerated_class_for
    >>> cls = accelerated_class_for(diffusers.PixArtAlphaPipeline)
    >>> cls.__name__, issubclass(cls, diffusers.PixArtAlphaPipeline)
    ('PixArtAlphaPipeline', True)
"""

from ..api import AcceleratedPipelineMixin, accelerated_class_for, as_acceleration_config, register_accelerated_class

__all__ = ["AcceleratedPipelineMixin", "accelerated_class_for", "as_acceleration_config",
           "register_accelerated_class"]
