"""Drop-in replacements for diffusers pipeline classes: change one import line.

    from diffusion_accel.pipelines import PixArtAlphaPipeline   # was: from diffusers import ...
    pipe = PixArtAlphaPipeline.from_pretrained("PixArt-alpha/PixArt-XL-2-512x512",
                                               acceleration="my-config.json")

Each class subclasses the diffusers class of the same name and only adds
``from_pretrained(..., acceleration=...)``, ``enable_acceleration``, ``disable_acceleration`` and
the ``acceleration`` property. Any other pipeline class can be accelerated in place with
:func:`diffusion_accel.apply`, or wrapped with :func:`accelerated_class_for`.
"""

import diffusers

from ..api import AcceleratedPipelineMixin, accelerated_class_for, register_accelerated_class


class PixArtAlphaPipeline(AcceleratedPipelineMixin, diffusers.PixArtAlphaPipeline):
    __doc__ = diffusers.PixArtAlphaPipeline.__doc__


class PixArtSigmaPipeline(AcceleratedPipelineMixin, diffusers.PixArtSigmaPipeline):
    __doc__ = diffusers.PixArtSigmaPipeline.__doc__


class StableDiffusion3Pipeline(AcceleratedPipelineMixin, diffusers.StableDiffusion3Pipeline):
    __doc__ = diffusers.StableDiffusion3Pipeline.__doc__


class FluxPipeline(AcceleratedPipelineMixin, diffusers.FluxPipeline):
    __doc__ = diffusers.FluxPipeline.__doc__


class CogVideoXPipeline(AcceleratedPipelineMixin, diffusers.CogVideoXPipeline):
    __doc__ = diffusers.CogVideoXPipeline.__doc__


class WanPipeline(AcceleratedPipelineMixin, diffusers.WanPipeline):
    __doc__ = diffusers.WanPipeline.__doc__


class StableDiffusionPipeline(AcceleratedPipelineMixin, diffusers.StableDiffusionPipeline):
    __doc__ = diffusers.StableDiffusionPipeline.__doc__


class DiTPipeline(AcceleratedPipelineMixin, diffusers.DiTPipeline):
    __doc__ = diffusers.DiTPipeline.__doc__


for _cls in (
    PixArtAlphaPipeline,
    PixArtSigmaPipeline,
    StableDiffusion3Pipeline,
    FluxPipeline,
    CogVideoXPipeline,
    WanPipeline,
    StableDiffusionPipeline,
    DiTPipeline,
):
    register_accelerated_class(getattr(diffusers, _cls.__name__), _cls)

__all__ = [
    "AcceleratedPipelineMixin",
    "accelerated_class_for",
    "PixArtAlphaPipeline",
    "PixArtSigmaPipeline",
    "StableDiffusion3Pipeline",
    "FluxPipeline",
    "CogVideoXPipeline",
    "WanPipeline",
    "StableDiffusionPipeline",
    "DiTPipeline",
]
