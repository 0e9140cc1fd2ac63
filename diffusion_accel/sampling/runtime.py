"""The per-pipeline state of Bottleneck Sampling: the stage plan of a call and its scheduler steps.

:class:`BottleneckRun` is what the pipeline's scheduler consults (through
:mod:`.scheduler_hook`) while an accelerated call is under way:

* ``plan`` (after the pipeline's ``set_timesteps(N)``): split the ``N`` steps into stages; give
  every stage a fresh scheduler of the pipeline's scheduler class (with the stage's shift) whose
  ``n`` steps from ``begin`` run from the stage's re-noised start to about where plain sampling
  would leave the stage; publish the concatenated timesteps (and sigmas) as the scheduler's own,
  so the pipeline's loop hands each step's timestep to the denoiser;
* ``step``: the current stage scheduler's step, except on a stage's last step, which instead
  estimates the clean sample, resizes it to the next stage's resolution and re-noises it to that
  stage's first noise level. The pipeline's ``latents`` then have the new resolution, and the
  denoiser (whose position embedding follows the grid, see ``LatentLayout``) runs on fewer tokens.

Example: see :func:`diffusion_accel.sampling.apply_bottleneck_sampling`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from diffusers.schedulers.scheduling_utils import SchedulerOutput
from diffusers.utils.torch_utils import randn_tensor

from ..hooks import Denoiser
from .config import BottleneckSamplingConfig
from .schedulers import clean_estimate, fit_stage, noise_level, stage_scheduler
from .stages import resize_latents, stage_step_counts, subsample_noise

__all__ = ["BottleneckRun", "Stage"]


@dataclass
class Stage:
    """One resolution stage of a call: ``steps`` steps of ``scheduler`` from index ``begin``."""

    index: int
    factor: int
    steps: int
    first_step: int
    scheduler: Any
    begin: int


class BottleneckRun:
    """Bottleneck Sampling state for one pipeline (its denoisers and its scheduler class)."""

    def __init__(self, config: BottleneckSamplingConfig, scheduler_class: type, denoisers: list[Denoiser]) -> None:
        self.config = config
        #: ``(fraction, factor, shift, renoise)`` per resolution stage (equal consecutive factors merged).
        self.stages_config = config.resolution_stages()
        self.scheduler_class = scheduler_class
        self.denoisers = denoisers
        self._fits: dict[tuple, list[tuple[int, int]]] = {}
        self.stages: list[Stage] = []
        self.pass_id: object | None = None
        self.step_index = 0
        self.initial_noise: torch.Tensor | None = None
        self.full_size: tuple[int, int] = (0, 0)
        self.generator: torch.Generator | None = None
        #: ``(step, tokens)`` of every denoiser call of the last planned call.
        self.tokens: list[tuple[int, int]] = []
        #: ``(factor, steps, first timestep)`` of every stage of the last planned call.
        self.summary: list[tuple[int, int, float]] = []

    # -- when the plan applies -------------------------------------------------------------
    def active(self) -> bool:
        """An accelerated call of this pipeline is under way."""
        return any(d.tracker.in_pipeline_call for d in self.denoisers)

    def planned(self) -> bool:
        """The current accelerated call has a plan (its ``set_timesteps`` went through us)."""
        return self.active() and self.pass_id is not None and self.pass_id is self.denoisers[0].tracker.pass_id

    def release(self) -> None:
        """Drop the per-call tensors (the stage schedulers' histories, the initial noise)."""
        self.stages = []
        self.pass_id = None
        self.initial_noise = None
        self.generator = None

    def current_step(self) -> int | None:
        """The step of the current call (for the denoisers' step trackers), or ``None`` without a plan."""
        return self.step_index if self.planned() else None

    # -- planning ----------------------------------------------------------------------------
    def plan(self, base: Any, args: tuple, kwargs: dict) -> None:
        """Stage the schedule ``base.set_timesteps(*args, **kwargs)`` just made (see module doc)."""
        if kwargs.get("timesteps") is not None or kwargs.get("sigmas") is not None:
            raise ValueError(
                "Bottleneck Sampling re-stages the scheduler's schedule and cannot follow custom timesteps or "
                "sigmas; call the pipeline with num_inference_steps instead."
            )
        set_kwargs = {k: v for k, v in kwargs.items() if k not in ("num_inference_steps", "timesteps", "sigmas")}
        if len(args) > 1:
            set_kwargs["device"] = args[1]
        base_ts = [float(t) for t in base.timesteps.detach().cpu()] + [0.0]
        num_steps = len(base_ts) - 1
        counts = stage_step_counts(tuple(s[0] for s in self.stages_config), num_steps)
        fits = self._fit(base, base_ts, counts, set_kwargs)
        self.release()
        first = 0
        for k, ((_, factor, shift, _), n, (m, b)) in enumerate(zip(self.stages_config, counts, fits)):
            scheduler = stage_scheduler(self.scheduler_class, base.config, shift)
            scheduler.set_timesteps(m, **_stage_kwargs(set_kwargs, shift))
            if b:
                _set_begin(scheduler, b)
            self.stages.append(Stage(k, factor, n, first, scheduler, b))
            first += n
        self._publish(base)
        self.summary = [(s.factor, s.steps, float(s.scheduler.timesteps[s.begin])) for s in self.stages]
        self.pass_id = self.denoisers[0].tracker.pass_id
        self.step_index = 0
        self.tokens = []
        if self.config.noise == "fresh":
            self.generator = torch.Generator("cpu").manual_seed(self.config.seed)

    def _fit(self, base: Any, base_ts: list[float], counts: list[int], set_kwargs: dict) -> list[tuple[int, int]]:
        key = (tuple(base_ts), tuple(sorted((k, repr(v)) for k, v in set_kwargs.items() if k != "device")))
        if key not in self._fits:
            fits, start = [], 0
            for k, n in enumerate(counts):
                _, _, shift, renoise = self.stages_config[k]
                last = k == len(counts) - 1
                if k == 0 and shift is None:
                    fits.append((len(base_ts) - 1, 0))
                else:
                    t_b = base_ts[start]
                    t_start = t_b if k == 0 else t_b + renoise * (base_ts[0] - t_b)
                    t_end = None if last else base_ts[start + n]
                    stage_kwargs = {**_stage_kwargs(set_kwargs, shift), "device": "cpu"}
                    fits.append(fit_stage(lambda: stage_scheduler(self.scheduler_class, base.config, shift),
                                          stage_kwargs, n, t_start, t_end, max_steps=4 * (len(base_ts) - 1)))
                start += n
            self._fits[key] = fits
        return self._fits[key]

    def _publish(self, base: Any) -> None:
        """Make the staged timesteps (and sigmas) the pipeline's scheduler's own."""
        base.timesteps = torch.cat([s.scheduler.timesteps[s.begin:s.begin + s.steps] for s in self.stages])
        sigmas = [getattr(s.scheduler, "sigmas", None) for s in self.stages]
        if getattr(base, "sigmas", None) is not None and all(x is not None for x in sigmas):
            last = self.stages[-1]
            parts = [s.scheduler.sigmas[s.begin:s.begin + s.steps] for s in self.stages]
            parts.append(last.scheduler.sigmas[last.begin + last.steps:][:1])
            base.sigmas = torch.cat([p.to(base.sigmas.device) for p in parts])

    # -- stepping ----------------------------------------------------------------------------
    def current_stage(self) -> Stage:
        for stage in self.stages:
            if self.step_index < stage.first_step + stage.steps:
                return stage
        planned = sum(s.steps for s in self.stages)
        raise ValueError(
            f"The pipeline ran more steps than Bottleneck Sampling planned ({planned}); a loop that reuses "
            "timesteps (e.g. img2img strength) is not supported."
        )

    def scale_model_input(self, sample: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.current_stage().scheduler.scale_model_input(sample, *args, **kwargs)

    def step(self, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor, args: tuple, kwargs: dict):
        return_dict = kwargs.pop("return_dict", True)
        stage = self.current_stage()
        if self.step_index == 0:
            self._start(sample)
        j = self.step_index - stage.first_step
        if j == stage.steps - 1 and stage.index < len(self.stages) - 1:
            out = (self._transition(stage, model_output, sample),)
        else:
            out = stage.scheduler.step(model_output, timestep, sample, *args, return_dict=False, **kwargs)
        self.step_index += 1
        return SchedulerOutput(prev_sample=out[0]) if return_dict else out

    def _start(self, sample: torch.Tensor) -> None:
        layouts = [d.adapter.latent_layout for d in self.denoisers]
        height, width = sample.shape[-2:]
        self.full_size = (int(height), int(width))
        for d, layout in zip(self.denoisers, layouts):
            if sample.ndim != layout.ndim:
                raise ValueError(
                    f"Bottleneck Sampling expected {layout.ndim}-D latents for {d.adapter.family}, the pipeline "
                    f"stepped {tuple(sample.shape)}; this pipeline's loop is not supported."
                )
            ph, pw = layout.patch_size(d.module)
            for _, factor, _, _ in self.stages_config:
                if height % (factor * ph) or width % (factor * pw):
                    raise ValueError(
                        f"Latents of {height}x{width} cannot be downscaled {factor}x for {d.adapter.family} "
                        f"(patch {ph}x{pw}): height and width must be multiples of {factor * ph}x{factor * pw}. "
                        "Use another image size or a smaller factor."
                    )
        if self.config.noise == "initial":
            # (flow-matching schedulers start from unit noise and have no init_noise_sigma)
            self.initial_noise = sample / getattr(self.stages[0].scheduler, "init_noise_sigma", 1.0)

    def _transition(self, stage: Stage, model_output: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        nxt = self.stages[stage.index + 1]
        x0 = clean_estimate(stage.scheduler, stage.begin + stage.steps - 1, model_output, sample)
        size = (self.full_size[0] // nxt.factor, self.full_size[1] // nxt.factor)
        x0 = resize_latents(x0, size)
        if self.initial_noise is not None:
            noise = subsample_noise(self.initial_noise, nxt.factor).to(x0.dtype)
        else:
            noise = randn_tensor(tuple(x0.shape), generator=self.generator, device=x0.device, dtype=x0.dtype)
        alpha, sigma = noise_level(nxt.scheduler, nxt.begin)
        return alpha * x0 + sigma * noise


def _stage_kwargs(set_kwargs: dict, shift: float | None) -> dict:
    """``set_timesteps`` arguments of a stage: a stage with its own shift drops the dynamic ``mu``."""
    return {k: v for k, v in set_kwargs.items() if not (shift is not None and k == "mu")}


def _set_begin(scheduler: Any, begin: int) -> None:
    if not hasattr(scheduler, "set_begin_index"):
        raise ValueError(
            f"{type(scheduler).__name__} cannot start part-way through its schedule (no set_begin_index), which "
            "Bottleneck Sampling's later stages need; use a DPM-Solver, UniPC or flow-matching Euler scheduler."
        )
    scheduler.set_begin_index(begin)
