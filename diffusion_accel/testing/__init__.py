"""Test helpers: tiny offline pipelines of real diffusers architectures.

Example::

    import torch
    from diffusion_accel.testing import TINY_PIPELINES, tiny_call_kwargs, tiny_pipeline

    for name in TINY_PIPELINES:
        pipe = tiny_pipeline(name, seed=0)
        out = pipe(**tiny_call_kwargs(name), generator=torch.Generator().manual_seed(0))

See :mod:`diffusion_accel.testing.tiny_pipelines` for the table of default call arguments.
"""

from .tiny_pipelines import TINY_PIPELINES, tiny_call_kwargs, tiny_pipeline

__all__ = ["TINY_PIPELINES", "tiny_call_kwargs", "tiny_pipeline"]
