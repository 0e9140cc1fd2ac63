"""Feature caching: reuse component outputs across denoising steps.

* :class:`CacheSchedule` — ``compute[step, block, component]`` plus heuristic factories
  (``full``, ``fora``, ``delta_dit``, ``tgate``, ``deepcache``, ``encoder_propagation``).
* :class:`StaticCacheConfig` — follow a schedule; :class:`DynamicCacheConfig` — skip the deep
  blocks while the first block's residual barely changes.
* :func:`macs` / :func:`profile_macs` — MAC accounting of the denoising loop.
* :func:`search_schedule` / :func:`pick` — evolutionary (NSGA-II) search for a Pareto frontier of
  schedules, and picking the best one at a target speed-up (:mod:`.search`).

Example:
    >>> import diffusion_accel
    >>> from diffusion_accel.caching import CacheSchedule, StaticCacheConfig
    >>> from diffusion_accel.testing import tiny_pipeline
    >>> pipe = tiny_pipeline("pixart-alpha")
    >>> schedule = CacheSchedule.fora(pipe.transformer, num_steps=3, interval=2)
    >>> pipe = diffusion_accel.apply(pipe, diffusion_accel.AccelerationConfig(cache=StaticCacheConfig(schedule)))
"""

from . import heuristics
from .dynamic import DynamicCacheConfig
from .macs import MacProfile, MacReport, denoiser_macs, macs, profile_macs
from .schedule import CacheSchedule
from .search import pick, search_schedule
from .static import StaticCacheConfig

__all__ = [
    "CacheSchedule",
    "StaticCacheConfig",
    "DynamicCacheConfig",
    "MacProfile",
    "MacReport",
    "macs",
    "profile_macs",
    "denoiser_macs",
    "heuristics",
    "search_schedule",
    "pick",
]
