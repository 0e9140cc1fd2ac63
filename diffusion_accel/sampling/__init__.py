"""Sampling-schedule techniques: Bottleneck Sampling (a high-low-high resolution schedule).

* :class:`BottleneckSamplingConfig` -- the stages (fraction of the steps, downscale factor), the
  re-noise strength at each resolution change, a flow-matching shift per stage;
  ``AccelerationConfig(sampling=BottleneckSamplingConfig(...))``.
* How it attaches: :mod:`.technique` (the pipeline's scheduler instance and a guard hook on each
  denoiser); the stage plan and transitions: :mod:`.runtime`; scheduler facts: :mod:`.schedulers`.

Example:
    >>> import diffusion_accel
    >>> from diffusion_accel.sampling import BottleneckSamplingConfig
    >>> cfg = diffusion_accel.AccelerationConfig(sampling=BottleneckSamplingConfig())
    >>> diffusion_accel.AccelerationConfig.from_json(cfg.to_json()) == cfg
    True
"""

from .config import BottleneckSamplingConfig
from .technique import apply_bottleneck_sampling

__all__ = ["BottleneckSamplingConfig", "apply_bottleneck_sampling"]
