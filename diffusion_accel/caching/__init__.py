"""Feature caching: reuse component outputs across denoising steps.

* :class:`CacheSchedule` — ``compute[step, block, component]`` plus heuristic factories
  (``full``, ``fora``, ``delta_dit``, ``tgate``, ``deepcache``, ``encoder_propagation``).
* :class:`StaticCacheConfig` — follow a schedule; :class:`DynamicCacheConfig` — skip the blocks
  while a policy's signal barely changes (``policy="first_block" | "teacache" | "magcache"``);
  :func:`calibrate_teacache` / :func:`calibrate_magcache` fit the last two on your model.

MAC accounting (:mod:`diffusion_accel.cost`) and the schedule search (:mod:`diffusion_accel.search`)
are tools built on top of this package; their old names here (``search_schedule``, ``pick``,
``macs``, ``profile_macs``, ``denoiser_macs``, ``MacProfile``, ``MacReport``, ``search``) still
resolve for one release, with a ``DeprecationWarning``.

Example:
    >>> import diffusion_accel
    >>> from diffusion_accel.caching import CacheSchedule, StaticCacheConfig
    >>> from diffusion_accel.testing import tiny_pipeline
    >>> pipe = tiny_pipeline("pixart-alpha")
    >>> schedule = CacheSchedule.fora(pipe.transformer, num_steps=3, interval=2)
    >>> pipe = diffusion_accel.apply(pipe, diffusion_accel.AccelerationConfig(cache=StaticCacheConfig(schedule)))
"""

import warnings

from . import heuristics
from .calibrate import calibrate_magcache, calibrate_teacache
from .correction import CorrectedCacheConfig
from .dp import dp_schedule
from .dynamic import DynamicCacheConfig
from .schedule import CacheSchedule
from .static import StaticCacheConfig

__all__ = [
    "CacheSchedule",
    "StaticCacheConfig",
    "DynamicCacheConfig",
    "calibrate_teacache",
    "calibrate_magcache",
    "dp_schedule",
    "CorrectedCacheConfig",
    "heuristics",
]

#: Names that moved out of this package: old name -> (new module, attribute or None for the module).
_MOVED = {
    "search_schedule": ("diffusion_accel.search", "search_schedule"),
    "pick": ("diffusion_accel.search", "pick"),
    "search": ("diffusion_accel.search", None),
    "macs": ("diffusion_accel.cost", "macs"),
    "profile_macs": ("diffusion_accel.cost", "profile_macs"),
    "denoiser_macs": ("diffusion_accel.cost", "denoiser_macs"),
    "MacProfile": ("diffusion_accel.cost", "MacProfile"),
    "MacReport": ("diffusion_accel.cost", "MacReport"),
}


def __getattr__(name: str):
    # Deprecated aliases (removed in the next release): the only imports of a higher layer in the
    # techniques, allowed by name in tests/test_layering.py and run only when an old name is used.
    if name not in _MOVED:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module_name, attribute = _MOVED[name]
    new = f"{module_name}.{attribute}" if attribute else module_name
    warnings.warn(f"diffusion_accel.caching.{name} moved to {new}; import it from there (the old name goes "
                  "away in the next release).", DeprecationWarning, stacklevel=2)
    if module_name == "diffusion_accel.search":
        from .. import search as module
    else:
        from .. import cost as module
    return module if attribute is None else getattr(module, attribute)
