"""Per-step, per-channel correction of the denoiser's data prediction (the trajectory half of CacheQuant's
decoupled error correction).

A cached and quantized denoiser drifts from the full-compute, full-precision trajectory: its error at a
step is its own (reused features, rounded weights) plus the drift of its input. This module corrects the
**data prediction** of every denoiser call (``x0 = (x - sigma * eps) / alpha`` for epsilon prediction,
``x0 = alpha * x - sigma * v`` for v-prediction; ``alpha, sigma`` from the scheduler's
``alphas_cumprod`` at the call's timestep) by a per-step, per-latent-channel affine map
``x0 -> scale * x0 + shift`` (fitted: the shift alone, ``scale = 1``; a fitted scale followed the few
calibration images and lowered held-out PSNR on the bundled model, docs/caching.md), and hands the pipeline the prediction that gives the corrected ``x0``
from the same input. Correcting ``x0`` and not the raw output keeps the sampler's own pull-back: the
update of a drifted latent with the reference ``x0`` shrinks the drift (the raw noise prediction depends
on the latent itself, so forcing it to the reference's would undo that).

* :class:`StepFitter` fits the maps **sequentially** in one accelerated run: at step ``t`` it fits
  ``reference x0[t] ~ x0 + shift`` per channel (least squares: the mean difference) (the reference recorded by :class:`X0Recorder` on
  the full-compute, full-precision run with the same inputs and seeds), applies it at once, and the run
  continues from the corrected latents, so step ``t + 1`` is fitted with the corrections of the earlier
  steps in place: the maps correct the accumulated cache + quantization error, not a local one.
* :func:`install_step_correction` applies fitted maps (a forward hook on the denoiser).

Flow matching (SD3, Flux, Wan: ``x_t = (1 - sigma) x0 + sigma * noise``, the model predicts the velocity
``v = noise - x0``) is the third prediction form: ``x0 = x - sigma * v``, with ``sigma`` the scheduler's
sigma at its current step (``scheduler.sigmas[step_index]``): ``FlowMatchEulerDiscreteScheduler`` and the
multistep solvers with ``prediction_type="flow_prediction"`` (``UniPCMultistepScheduler`` with flow sigmas,
Wan's). Solvers that call the model more than once per step at different sigmas (Heun) are not supported.
Packed latents ``(B, tokens, features)`` (Flux) are corrected per feature (the last axis).

Maps are fitted on the first denoiser call of each step (pipelines that batch both guidance branches
make one call per step) and applied to every call of that step. A step whose accelerated ``x0`` equals
the reference exactly gets the identity ``()`` and is left untouched (bit-identical outputs).

Example:
    >>> import torch
    >>> from diffusion_accel.testing import tiny_pipeline
    >>> pipe = tiny_pipeline("pixart-alpha")
    >>> x, eps = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    >>> pred = DataPrediction.of(pipe.scheduler, torch.tensor([500, 500]), x)
    >>> torch.allclose(pred.output(x, pred.x0(x, eps)).float(), eps, atol=1e-5)
    True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..hooks import Denoiser
from ..models.base import forward_argument
from .correction import ChannelFit

__all__ = ["DataPrediction", "StepFitter", "X0Recorder", "install_step_correction", "check_step_correction",
           "supports_step_correction"]

#: scheduler ``prediction_type`` values whose data prediction this module can form from ``alphas_cumprod``.
PREDICTION_TYPES = ("epsilon", "v_prediction")
#: flow-matching schedulers (one model call per step, velocity prediction) by class name; multistep solvers
#: say ``prediction_type="flow_prediction"`` instead.
FLOW_SCHEDULERS = ("FlowMatchEulerDiscreteScheduler",)
FLOW_PREDICTION = "flow_prediction"


def prediction_kind(scheduler: Any) -> str | None:
    """``"epsilon"``, ``"v_prediction"`` or ``"flow"``: the prediction form of ``scheduler`` this module can
    turn into a data prediction, or ``None`` when it cannot."""
    kind = getattr(getattr(scheduler, "config", None), "prediction_type", None)
    if kind in PREDICTION_TYPES and getattr(scheduler, "alphas_cumprod", None) is not None:
        return kind
    flow = kind == FLOW_PREDICTION or type(scheduler).__name__ in FLOW_SCHEDULERS
    return "flow" if flow and getattr(scheduler, "sigmas", None) is not None else None


def supports_step_correction(scheduler: Any) -> bool:
    """Whether ``scheduler`` gives the data prediction: epsilon or v prediction with ``alphas_cumprod``, or
    flow matching with one model call per step (:data:`FLOW_SCHEDULERS`, ``prediction_type="flow_prediction"``)."""
    return prediction_kind(scheduler) is not None


def check_step_correction(scheduler: Any) -> None:
    """Raise ``ValueError`` unless :func:`supports_step_correction`."""
    if not supports_step_correction(scheduler):
        kind = getattr(getattr(scheduler, "config", None), "prediction_type", None)
        raise ValueError(f"The step correction corrects the data prediction, which needs a scheduler with "
                         f"alphas_cumprod and prediction_type in {list(PREDICTION_TYPES)}, or a flow-matching "
                         f"scheduler ({', '.join(FLOW_SCHEDULERS)} or prediction_type={FLOW_PREDICTION!r}); "
                         f"{type(scheduler).__name__} has prediction_type={kind!r}. Use "
                         "calibrate_error_correction(..., method='block_residual') for this pipeline.")


def _current_sigma(scheduler: Any) -> float:
    """The sigma of the step the scheduler is at (its first step before ``step()`` has run)."""
    index = getattr(scheduler, "step_index", None)
    if index is None:
        index = getattr(scheduler, "begin_index", None) or 0
    return float(scheduler.sigmas[index])


@dataclass(frozen=True)
class DataPrediction:
    """``alpha``, ``sigma`` (shape ``(B, 1, ...)``, float64) of one denoiser call and the prediction type
    (flow matching: ``alpha = 1 - sigma``)."""

    kind: str
    alpha: torch.Tensor
    sigma: torch.Tensor

    @classmethod
    def of(cls, scheduler: Any, timestep: Any, sample: torch.Tensor) -> DataPrediction:
        check_step_correction(scheduler)
        shape = (-1,) + (1,) * (sample.dim() - 1)
        if prediction_kind(scheduler) == "flow":
            sigma = torch.full((sample.shape[0],), _current_sigma(scheduler), dtype=torch.float64).reshape(shape)
            return cls("flow", (1 - sigma).to(sample.device), sigma.to(sample.device))
        t = torch.as_tensor(timestep).reshape(-1).long().cpu()
        t = t.expand(sample.shape[0]) if t.numel() == 1 else t
        acp = scheduler.alphas_cumprod.double().cpu()[t.clamp(0, len(scheduler.alphas_cumprod) - 1)]
        alpha, sigma = acp.sqrt().reshape(shape), (1 - acp).sqrt().reshape(shape)
        return cls(scheduler.config.prediction_type, alpha.to(sample.device), sigma.to(sample.device))

    def x0(self, sample: torch.Tensor, prediction: torch.Tensor) -> torch.Tensor:
        x, p = sample.double(), prediction.double()
        if self.kind == "flow":
            return x - self.sigma * p
        return (x - self.sigma * p) / self.alpha if self.kind == "epsilon" else self.alpha * x - self.sigma * p

    def output(self, sample: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """The prediction that gives ``x0`` from ``sample`` (float64)."""
        x = sample.double()
        if self.kind == "flow":
            return (x - x0) / self.sigma
        return (x - self.alpha * x0) / self.sigma if self.kind == "epsilon" else (self.alpha * x - x0) / self.sigma


def _call_tensors(denoiser: Denoiser, scheduler: Any, module, args, kwargs, output
                  ) -> tuple[torch.Tensor, torch.Tensor, DataPrediction]:
    """``(sample, prediction, data prediction)`` of a denoiser call: its latent input, the first
    ``sample.shape[1]`` channels of its output (a learned variance is left out), and the
    :class:`DataPrediction` at its timestep."""
    sample = forward_argument(module, "hidden_states", args, kwargs)
    if sample is None:
        sample = args[0]
    timestep = forward_argument(module, denoiser.adapter.timestep_arg, args, kwargs)
    return sample, _prediction(output)[:, :sample.shape[1]], DataPrediction.of(scheduler, timestep, sample)


def _prediction(output: Any) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, tuple):
        return output[0]
    return output["sample"]


def _replace(output: Any, prediction: torch.Tensor) -> Any:
    full = _prediction(output)
    if prediction.shape[1] != full.shape[1]:
        prediction = torch.cat([prediction, full[:, prediction.shape[1]:]], dim=1)
    if isinstance(output, torch.Tensor):
        return prediction
    if isinstance(output, tuple):
        return (prediction, *output[1:])
    output["sample"] = prediction
    return output


def _channel_axis(x: torch.Tensor) -> int:
    """Axis of the latent channels: 1 (``(B, C, ...)``), or the last for packed ``(B, tokens, features)``."""
    return -1 if x.dim() == 3 else 1


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    return x.movedim(_channel_axis(x), -1)


def _corrected(output: Any, sample: torch.Tensor, prediction: torch.Tensor, pred: DataPrediction,
               scale: tuple[float, ...], shift: tuple[float, ...]) -> Any:
    """``output`` with its prediction replaced by the one whose data prediction is ``scale * x0 + shift``
    (per channel, in float64): what the fitting run and the installed maps both return."""
    shape = [1] * sample.dim()
    shape[_channel_axis(sample)] = -1
    scale, shift = (torch.tensor(v, dtype=torch.float64, device=sample.device).reshape(shape) for v in (scale, shift))
    x0 = pred.x0(sample, prediction) * scale + shift
    return _replace(output, pred.output(sample, x0).to(prediction.dtype))


class X0Recorder:
    """Forward hook keeping the data prediction of the first call of every step (float64); ``close()``."""

    def __init__(self, denoiser: Denoiser, scheduler: Any) -> None:
        check_step_correction(scheduler)
        self.x0: dict[int, torch.Tensor] = {}

        def hook(module, args, kwargs, output):
            call = denoiser.tracker.current
            if call is not None and call.call_in_step == 0:
                sample, prediction, pred = _call_tensors(denoiser, scheduler, module, args, kwargs, output)
                self.x0[call.step] = pred.x0(sample, prediction).detach()

        self._handle = denoiser.module.register_forward_hook(hook, with_kwargs=True)

    def close(self) -> None:
        self._handle.remove()


class StepFitter:
    """Fits and applies the per-step maps during one accelerated run (see the module doc); ``tables()``
    gives ``(scale, shift)``: per step, one float per channel, ``()`` for the identity."""

    def __init__(self, denoiser: Denoiser, scheduler: Any, reference: dict[int, torch.Tensor], num_steps: int) -> None:
        check_step_correction(scheduler)
        self.fits: dict[int, tuple[tuple[float, ...], tuple[float, ...]]] = {}
        self.num_steps = num_steps

        def hook(module, args, kwargs, output):
            call = denoiser.tracker.current
            if call is None or call.step not in reference:
                return output
            sample, prediction, pred = _call_tensors(denoiser, scheduler, module, args, kwargs, output)
            if call.step not in self.fits:
                fit = ChannelFit()
                fit.add(_channels_last(pred.x0(sample, prediction)), _channels_last(reference[call.step]))
                self.fits[call.step] = fit.solve_shift()
            scale, shift = self.fits[call.step]
            return _corrected(output, sample, prediction, pred, scale, shift) if scale else output

        self._handle = denoiser.module.register_forward_hook(hook, with_kwargs=True)

    def tables(self) -> tuple[tuple[tuple[float, ...], ...], tuple[tuple[float, ...], ...]]:
        pairs = [self.fits.get(step, ((), ())) for step in range(self.num_steps)]
        if all(not scale for scale, _ in pairs):
            return (), ()
        return tuple(p[0] for p in pairs), tuple(p[1] for p in pairs)

    def close(self) -> None:
        self._handle.remove()


def install_step_correction(denoiser: Denoiser, scheduler: Any, scale: tuple, shift: tuple) -> Any:
    """Forward hook applying fitted per-step maps on ``denoiser`` (returns the handle; ``.remove()``)."""
    check_step_correction(scheduler)
    maps = list(zip(scale, shift))

    def hook(module, args, kwargs, output):
        call = denoiser.tracker.current
        if call is None:
            return output
        s, b = maps[min(call.step, len(maps) - 1)]
        if not s:
            return output
        return _corrected(output, *_call_tensors(denoiser, scheduler, module, args, kwargs, output), s, b)

    return denoiser.module.register_forward_hook(hook, with_kwargs=True)
