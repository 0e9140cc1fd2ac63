"""MAC accounting shared by the schedule search and the evaluation harness (a tool above the api).

* :func:`count_macs` -- MACs of any call, in total and inside named modules (:mod:`.counting`).
* :func:`profile_macs` / :class:`MacProfile` -- per-(block, component) MACs of one denoising step,
  which price any cache schedule analytically; :func:`macs` -- full vs accelerated MACs of a
  pipeline call; :func:`denoiser_macs` -- MACs the denoisers execute in one call (:mod:`.macs`).

Example:
    >>> from diffusion_accel.caching import CacheSchedule
    >>> from diffusion_accel.cost import macs
    >>> from diffusion_accel.testing import tiny_pipeline, tiny_call_kwargs
    >>> pipe, kwargs = tiny_pipeline("pixart-alpha"), tiny_call_kwargs("pixart-alpha")
    >>> macs(pipe, CacheSchedule.fora(pipe.transformer, kwargs["num_inference_steps"], 2), **kwargs).ratio > 1
    True
"""

from .counting import MacsResult, count_macs
from .macs import MacProfile, MacReport, denoiser_macs, macs, profile_macs

__all__ = ["MacProfile", "MacReport", "MacsResult", "count_macs", "denoiser_macs", "macs", "profile_macs"]
