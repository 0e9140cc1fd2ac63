"""What Bottleneck Sampling needs to know about a diffusers scheduler, read from its config.

* the noise level of a step: ``x_t = alpha * x0 + sigma * noise`` with ``(alpha, sigma)`` from the
  scheduler's ``sigmas`` -- flow matching (``FlowMatchEulerDiscreteScheduler``, or UniPC/DPM-Solver
  with ``use_flow_sigmas``): ``alpha = 1 - s, sigma = s``; variance preserving (``alphas_cumprod``
  schedules): ``s = sqrt((1 - abar) / abar)``, ``alpha = 1 / sqrt(1 + s^2)``, ``sigma = s * alpha``;
* the clean-sample estimate of a model output (flow velocity, epsilon, v or sample prediction);
* which config key holds a flow-matching shift (``shift`` or ``flow_shift``), if any;
* a stage's schedule: a fresh scheduler of the same class, ``set_timesteps(M)``, started at index
  ``b`` (``set_begin_index``, as img2img does) so that ``n`` steps run from about ``t_start`` to
  about ``t_end`` -- every scheduler keeps its own solver.

Example:
    >>> from diffusers import FlowMatchEulerDiscreteScheduler
    >>> s = FlowMatchEulerDiscreteScheduler(shift=3.0)
    >>> s.set_timesteps(4)
    >>> noise_level(s, 0)
    (0.0, 1.0)
    >>> shift_key(s)
    'shift'
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["clean_estimate", "fit_stage", "noise_level", "shift_key", "stage_scheduler"]


def is_flow(scheduler: Any) -> bool:
    """Whether ``scheduler`` samples a flow-matching path ``x = (1 - s) x0 + s noise``."""
    config = scheduler.config
    return bool(config.get("use_flow_sigmas", False)) or not hasattr(scheduler, "alphas_cumprod")


def noise_level(scheduler: Any, index: int) -> tuple[float, float]:
    """``(alpha, sigma)`` of step ``index`` of ``scheduler``'s current schedule."""
    sigmas = getattr(scheduler, "sigmas", None)
    if sigmas is None:  # DDIM-like: no sigmas, timesteps index alphas_cumprod
        abar = float(scheduler.alphas_cumprod[int(scheduler.timesteps[index])])
        return abar**0.5, (1.0 - abar) ** 0.5
    s = float(sigmas[index])
    if is_flow(scheduler):
        return 1.0 - s, s
    alpha = 1.0 / (1.0 + s * s) ** 0.5
    return alpha, s * alpha


def clean_estimate(scheduler: Any, index: int, model_output: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
    """The clean sample ``x0`` that ``model_output`` predicts for ``sample`` at step ``index``."""
    alpha, sigma = noise_level(scheduler, index)
    out, x = model_output.to(torch.float32), sample.to(torch.float32)
    kind = "flow_prediction" if is_flow(scheduler) else scheduler.config.get("prediction_type", "epsilon")
    if kind == "flow_prediction":
        x0 = x - sigma * out
    elif kind == "epsilon":
        x0 = (x - sigma * out) / alpha
    elif kind == "v_prediction":
        x0 = alpha * x - sigma * out
    elif kind == "sample":
        x0 = out
    else:
        raise ValueError(
            f"Bottleneck Sampling cannot read a clean-sample estimate from {type(scheduler).__name__} with "
            f"prediction_type={kind!r}; use a scheduler predicting epsilon, v, sample or flow velocity."
        )
    return x0.to(sample.dtype)


def shift_key(scheduler: Any) -> str | None:
    """The config key of ``scheduler``'s flow-matching shift, or ``None`` if it has none."""
    config = scheduler.config
    if "shift" in config:
        return "shift"
    if config.get("use_flow_sigmas", False) and "flow_shift" in config:
        return "flow_shift"
    return None


def stage_scheduler(scheduler_class: type, config: Any, shift: float | None) -> Any:
    """A fresh ``scheduler_class`` from ``config``, with the flow-matching ``shift`` if given
    (dynamic, resolution-dependent shifting off: the stage's shift is the one asked for)."""
    overrides: dict[str, Any] = {}
    if shift is not None:
        probe = scheduler_class.from_config(config)
        key = shift_key(probe)
        if key is None:
            raise ValueError(
                f"{scheduler_class.__name__} (prediction_type={config.get('prediction_type')!r}) is not a "
                "flow-matching schedule and has no shift; pass shifts=None to BottleneckSamplingConfig."
            )
        overrides[key] = float(shift)
        if "use_dynamic_shifting" in config:
            overrides["use_dynamic_shifting"] = False
    return scheduler_class.from_config(config, **overrides)


def _timesteps_with_end(scheduler: Any) -> list[float]:
    return [float(t) for t in scheduler.timesteps.detach().cpu()] + [0.0]


def fit_stage(make: Any, set_kwargs: dict, n: int, t_start: float, t_end: float | None,
              max_steps: int) -> tuple[int, int]:
    """``(M, b)``: the schedule of ``M`` steps of ``make()`` whose steps ``b .. b + n`` run from the
    timestep closest to ``t_start`` to the one closest to ``t_end`` (``None``: to the end, ``b + n = M``).

    ``make()`` returns a fresh stage scheduler; ``set_kwargs`` go to its ``set_timesteps``.
    """
    best: tuple[float, int, int] | None = None
    scheduler = make()
    for m in range(n, max(max_steps, n) + 1):
        scheduler.set_timesteps(m, **set_kwargs)
        ts = _timesteps_with_end(scheduler)
        begins = [m - n] if t_end is None else range(0, m - n + 1)
        for b in begins:
            err = abs(ts[b] - t_start) + (0.0 if t_end is None else abs(ts[b + n] - t_end))
            if best is None or err < best[0] - 1e-9:
                best = (err, m, b)
    return best[1], best[2]
