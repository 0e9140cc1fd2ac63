"""Objectives of a candidate schedule: cost and quality on fixed calibration items.

**Quality** (:data:`QUALITY_METRICS`, all reported in their natural units and minimised as
:meth:`QualityMetric.objective`):

* ``"latent_mse"`` (default) -- mean squared error between the candidate's final latents and the
  full-compute latents of the same prompts and seeds (``output_type="latent"``: no VAE decode).
  It is the default because it measures exactly what caching damages (the deviation from the
  model it approximates), is deterministic and smooth in the schedule (small schedule changes
  give small changes, which a genetic search needs), costs nothing beyond the denoising loop,
  needs no extra model, and works on every pipeline, video included.
* ``"psnr"`` -- PSNR (dB) of the decoded images against the full-compute images (float pixels,
  pooled MSE, capped at 100 dB so the full schedule stays finite).
* ``"clip"`` -- CLIP score of the images against their prompts (a local CLIP: the bundled one by
  default). Text alignment, not fidelity; noisy on small calibration sets.
* ``"fid"`` -- FID of the images against a reference image set in CLIP feature space (the bundled
  domain by default). Needs many images to be stable.

**Cost** (:data:`COST_MODELS`): ``"macs"`` (default) -- accelerated / full MACs of the denoising
loop from the caching engine's per-component profile (deterministic, machine-independent);
``"latency"`` -- wall-clock time inside the denoiser relative to the full-compute run (what users
feel, but noisy: a resumed or multi-process search is then not bit-reproducible).

Text-encoder outputs are memoised (:mod:`.memo`) and the full-compute outputs computed once in
:meth:`CandidateEvaluator.prepare`; every candidate then only runs the denoising loop.

Example:
    >>> from diffusion_accel.caching import CacheSchedule
    >>> from diffusion_accel.eval.generate import make_items
    >>> from diffusion_accel.eval.prompts import load_prompts
    >>> from diffusion_accel.testing import tiny_pipeline, tiny_call_kwargs
    >>> pipe = tiny_pipeline("pixart-alpha")
    >>> kwargs = tiny_call_kwargs("pixart-alpha", height=32, width=32, num_inference_steps=4)
    >>> for k in ("prompt", "output_type"): del kwargs[k]
    >>> items = make_items(load_prompts(["a cat", "a dog"]), seed=0)
    >>> ev = CandidateEvaluator(pipe, items, kwargs, quality="latent_mse")
    >>> ev.prepare()
    >>> ev.evaluate(CacheSchedule.full(pipe, 4)).quality
    0.0
    >>> ev.evaluate(CacheSchedule.fora(pipe, 4, 2)).macs_ratio > 1.5   # blocks run at 2 of 4 steps
    True
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from .._diffusers import progress_bar_disabled
from ..api import acceleration_state, apply, find_denoisers, remove
from ..config import AccelerationConfig
from ..eval.generate import Item, check_item_call_kwargs, item_call_inputs, make_batches, to_uint8
from ..cost.macs import MacProfile, profile_macs
from ..caching.correction import static_part
from ..caching.dynamic import DynamicCacheConfig
from ..caching.policies import skip_policy
from ..caching.schedule import CacheSchedule
from ..caching.static import StaticCacheConfig
from .memo import TextEncoderMemo, memoize_text_encoders

__all__ = [
    "COST_MODELS",
    "QUALITY_METRICS",
    "CandidateEvaluator",
    "Evaluation",
    "QualityMetric",
    "quality_metric",
    "with_cache",
]

PSNR_CAP_DB = 100.0


# ---------------------------------------------------------------------------------------------
# Quality metrics


class QualityMetric:
    """How good a candidate's outputs are. Subclasses set the class attributes and :meth:`value`.

    Attributes:
        name: registry name.
        output_type: pipeline ``output_type`` the metric reads (``"latent"`` or ``"np"``).
        needs_reference: whether :meth:`value` compares against the full-compute outputs.
        higher_is_better: direction of :meth:`value`.
    """

    name = ""
    output_type = "np"
    needs_reference = True
    higher_is_better = False

    def prepare(self, device: torch.device) -> None:
        """Load whatever the metric needs (CLIP, reference statistics); called once."""

    def value(self, outputs: torch.Tensor, reference: torch.Tensor | None, prompts: Sequence[str]) -> float:
        """The metric of ``outputs`` ``(N, ...)`` (``reference``: full-compute outputs, same shape)."""
        raise NotImplementedError

    def objective(self, value: float) -> float:
        """``value`` as a number to minimise."""
        return -float(value) if self.higher_is_better else float(value)

    def describe(self) -> dict[str, Any]:
        return {"metric": self.name, "higher_is_better": self.higher_is_better}


class LatentMSE(QualityMetric):
    name, output_type, needs_reference, higher_is_better = "latent_mse", "latent", True, False

    def value(self, outputs, reference, prompts):
        diff = outputs.double() - reference.double()
        return float((diff * diff).mean())


class Psnr(QualityMetric):
    name, output_type, needs_reference, higher_is_better = "psnr", "np", True, True

    def value(self, outputs, reference, prompts):
        a = outputs.double().clamp(0, 1)
        b = reference.double().clamp(0, 1)
        mse = float(((a - b) ** 2).mean())
        return PSNR_CAP_DB if mse <= 10 ** (-PSNR_CAP_DB / 10) else 10.0 * math.log10(1.0 / mse)


class ClipScoreMetric(QualityMetric):
    name, output_type, needs_reference, higher_is_better = "clip", "np", False, True

    def __init__(self, clip: Any = "benchmark") -> None:
        self.source = clip
        self.clip = None

    def prepare(self, device):
        from ..eval.metrics import load_clip

        self.clip = load_clip(self.source, device=str(device))

    def value(self, outputs, reference, prompts):
        from ..eval.metrics import clip_score

        return float(clip_score(to_uint8(outputs), list(prompts), self.clip))

    def describe(self):
        return {**super().describe(), "clip": _label(self.source)}


class FidMetric(QualityMetric):
    name, output_type, needs_reference, higher_is_better = "fid", "np", False, False

    def __init__(self, clip: Any = "benchmark", reference: Any = "benchmark:train", features: str = "clip") -> None:
        self.source, self.reference_source, self.features = clip, reference, features
        self.extractor = self.stats = None

    def prepare(self, device):
        from ..eval.metrics import fid_features, load_clip, load_reference

        clip = load_clip(self.source, device=str(device)) if self.features == "clip" else None
        self.extractor = fid_features(self.features, clip)
        self.stats = load_reference(self.reference_source, self.extractor)

    def value(self, outputs, reference, prompts):
        from ..eval.metrics import fid

        return float(fid(to_uint8(outputs), self.stats, self.extractor))

    def describe(self):
        return {**super().describe(), "clip": _label(self.source), "reference": _label(self.reference_source),
                "features": self.features}


def _label(value: Any) -> str:
    return value if isinstance(value, str) else type(value).__name__


#: quality name -> factory(**options) -> QualityMetric (options: ``clip``, ``reference``, ``features``).
QUALITY_METRICS: dict[str, Callable[..., QualityMetric]] = {
    "latent_mse": lambda **_: LatentMSE(),
    "psnr": lambda **_: Psnr(),
    "clip": lambda clip="benchmark", **_: ClipScoreMetric(clip),
    "fid": lambda clip="benchmark", reference="benchmark:train", features="clip", **_: FidMetric(
        clip, reference, features),
}


def quality_metric(name: Any, **options: Any) -> QualityMetric:
    """The metric named ``name`` (see :data:`QUALITY_METRICS`), or ``name`` itself if it is one."""
    if isinstance(name, QualityMetric):
        return name
    if name not in QUALITY_METRICS:
        raise ValueError(f"Unknown quality metric {name!r}; choose one of {sorted(QUALITY_METRICS)}.")
    return QUALITY_METRICS[name](**{k: v for k, v in options.items() if v is not None})


#: cost name -> description. Both are fractions of the full-compute cost (1.0 = no saving).
COST_MODELS = {
    "macs": "accelerated / full MACs of the denoising loop (analytic, from the caching engine)",
    "latency": "time inside the denoiser / full-compute time inside the denoiser (measured)",
    "latency_model": "predicted / full predicted seconds of the denoising loop (latency model calibrated on "
                     "this machine: per-op seconds at the model's shapes x the counted ops; diffusion_accel.cost.latency)",
}


# ---------------------------------------------------------------------------------------------
# Evaluation


@dataclass
class Evaluation:
    """Objectives and measurements of one candidate.

    Attributes:
        cost: the cost objective (fraction of the full-compute cost, lower is better).
        quality: the quality metric in its natural units.
        objective: ``quality`` as minimised by the search.
        macs_ratio: full / accelerated MACs of the denoising loop (the speed-up in MACs).
        denoiser_seconds: wall-clock time inside the denoiser during the evaluation.
        latency_ratio: full / predicted seconds of the latency model (``None`` without one).
    """

    cost: float
    quality: float
    objective: float
    macs_ratio: float
    denoiser_seconds: float
    latency_ratio: float | None = None

    def to_dict(self) -> dict[str, float]:
        out = asdict(self)
        if self.latency_ratio is None:  # absent without a latency model: cache-only records stay as they were
            del out["latency_ratio"]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Evaluation:
        values = {k: float(data[k]) for k in ("cost", "quality", "objective", "macs_ratio", "denoiser_seconds")}
        latency = data.get("latency_ratio")
        return cls(**values, latency_ratio=None if latency is None else float(latency))


class _DenoiserTimer:
    """Sums the wall-clock seconds spent inside the pipeline's denoisers while open."""

    def __init__(self, pipe: Any) -> None:
        self.total = 0.0
        self._start: list[float] = []
        self._handles = []
        for _, module in find_denoisers(pipe):
            self._handles.append(module.register_forward_pre_hook(lambda m, a: self._start.append(time.perf_counter())))
            self._handles.append(module.register_forward_hook(self._post))

    def _post(self, module, args, output):
        self.total += time.perf_counter() - self._start.pop()

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()


class CandidateEvaluator:
    """Scores schedules on fixed calibration items against the full-compute outputs.

    Args:
        pipe: the diffusers pipeline (left un-accelerated after every call).
        items: calibration items (prompt or per-item call arguments + seed each;
            :func:`diffusion_accel.eval.generate.make_items`).
        call_kwargs: pipeline arguments (steps, guidance, size...) without the items' inputs,
            ``generator`` and ``output_type``.
        quality: a :data:`QUALITY_METRICS` name or a :class:`QualityMetric`.
        cost: a :data:`COST_MODELS` name (``"latency_model"`` needs ``latency``).
        batch_size: items per pipeline call (fixed, so results never depend on how work is split).
        memo: text-encoder memo to share between evaluators of the same prompts.
        quality_options: options of the quality metric (``clip``, ``reference``, ``features``).
        reuse: :attr:`StaticCacheConfig.reuse` of the schedules :meth:`evaluate` scores (a config given
            to :meth:`evaluate_config` runs with its own).
        forecast_order: :attr:`StaticCacheConfig.forecast_order` of those schedules (with ``reuse="forecast"``).
        base: the acceleration every candidate runs on top of (its ``cache`` is replaced by the
            candidate's; e.g. the W8A8 quantization the pipeline had), also the full-compute reference;
            ``None`` for the plain model.
        latency: a :class:`~diffusion_accel.cost.latency.LatencyModel` pricing candidates (cost
            ``"latency_model"``, and ``latency_ratio`` of every evaluation), or ``None``.
    """

    def __init__(
        self,
        pipe: Any,
        items: Sequence[Item],
        call_kwargs: dict[str, Any],
        *,
        quality: Any = "latent_mse",
        cost: str = "macs",
        batch_size: int = 8,
        memo: TextEncoderMemo | None = None,
        quality_options: dict[str, Any] | None = None,
        reuse: str = "outputs",
        forecast_order: int = 1,
        base: AccelerationConfig | None = None,
        latency: Any = None,
    ) -> None:
        check_item_call_kwargs(items, call_kwargs, "the search")
        if cost not in COST_MODELS:
            raise ValueError(f"Unknown cost {cost!r}; choose one of {sorted(COST_MODELS)}.")
        if cost == "latency_model" and latency is None:
            raise ValueError("cost='latency_model' needs latency=<a LatencyModel> (calibrate_latency_model).")
        self.latency = latency
        if not items:
            raise ValueError("The search needs at least one calibration prompt.")
        from ..caching.static import FORECAST_ORDERS, REUSE_MODES

        if reuse not in REUSE_MODES:
            raise ValueError(f"reuse must be one of {list(REUSE_MODES)}, got {reuse!r}.")
        if forecast_order not in FORECAST_ORDERS or (forecast_order != 1 and reuse != "forecast"):
            raise ValueError(f"forecast_order must be one of {list(FORECAST_ORDERS)} (not 1 only with "
                             f"reuse='forecast'), got {forecast_order!r} with reuse={reuse!r}.")
        self.reuse = reuse
        self.forecast_order = forecast_order
        self.base = base if base is not None and any(True for _ in base.techniques()) else None
        self.pipe = pipe
        self.items = list(items)
        self.call_kwargs = dict(call_kwargs)
        self.metric = quality_metric(quality, **(quality_options or {}))
        self.cost_name = cost
        self.batch_size = batch_size
        self.batches = make_batches(self.items, batch_size)
        self.memo = memo if memo is not None else TextEncoderMemo()
        self.profile: MacProfile | None = None
        self.reference: torch.Tensor | None = None
        self.reference_seconds = float("nan")

    def variant(self, items: Sequence[Item] | None = None,
                call_kwargs: dict[str, Any] | None = None) -> CandidateEvaluator:
        """An evaluator (not yet prepared) scoring the same way on other ``items`` or ``call_kwargs``:
        same metric, cost, batch size, reuse mode, base acceleration and text-encoder memo."""
        return CandidateEvaluator(self.pipe, self.items if items is None else items,
                                  self.call_kwargs if call_kwargs is None else call_kwargs, quality=self.metric,
                                  cost=self.cost_name, batch_size=self.batch_size, memo=self.memo, reuse=self.reuse,
                                  forecast_order=self.forecast_order, base=self.base, latency=self.latency)

    @property
    def prompts(self) -> list[str]:
        return [it.prompt for it in self.items]

    def prepare(self) -> None:
        """Profile MACs, load the metric, and compute the full-compute outputs (once; on top of ``base``)."""
        device = getattr(self.pipe, "device", torch.device("cpu"))
        self.metric.prepare(device)
        first = self.batches[0]
        with progress_bar_disabled(self.pipe), memoize_text_encoders(self.pipe, self.memo):
            self.profile = profile_macs(self.pipe, **item_call_inputs(first), generator=_generators(first),
                                        output_type="latent", **self.call_kwargs)
        if self.cost_name == "latency":
            self.run(None)  # warm-up: the first call of a process is slower
        if self.metric.needs_reference or self.cost_name == "latency":
            self.reference, self.reference_seconds = self.run(None)

    def run(self, config: AccelerationConfig | None,
            observe: Callable[[dict[str, Any]], None] | None = None) -> tuple[torch.Tensor, float]:
        """Outputs ``(N, ...)`` (in the metric's ``output_type``) of every item under ``config``
        (``None``: full compute, i.e. ``base``), and the seconds spent inside the denoiser. ``observe``
        receives the techniques' reports (``AccelerationState.report()``) after the last call."""
        pipe = self.pipe
        remove(pipe)
        if (config if config is not None else self.base) is not None:
            apply(pipe, config if config is not None else self.base)
        timer = _DenoiserTimer(pipe)
        outputs = []
        try:
            # no_grad as diffusers itself: under inference_mode the quantized layers of a base config
            # cannot track their inputs' versions.
            with progress_bar_disabled(pipe), memoize_text_encoders(pipe, self.memo), torch.no_grad():
                for batch in self.batches:
                    out = pipe(**item_call_inputs(batch), generator=_generators(batch),
                               output_type=self.metric.output_type, **self.call_kwargs)
                    outputs.append(_as_tensor(out))
            if observe is not None and config is not None:
                observe(acceleration_state(pipe).report())
        finally:
            timer.close()
            remove(pipe)
        return torch.cat(outputs), timer.total

    def score(self, outputs: torch.Tensor) -> float:
        """The quality metric of ``outputs`` from :meth:`run`."""
        return self.metric.value(outputs, self.reference, self.prompts)

    def macs_ratio(self, schedule: CacheSchedule) -> float:
        return self.profile.full_macs(schedule.num_steps) / self.profile.schedule_macs(schedule)

    def config(self, schedule: CacheSchedule) -> AccelerationConfig:
        """The configuration that runs ``schedule`` the way this evaluator scores it (on top of ``base``)."""
        return with_cache(self.base, StaticCacheConfig(schedule, reuse=self.reuse, forecast_order=self.forecast_order))

    def evaluate(self, schedule: CacheSchedule) -> Evaluation:
        """Cost and quality of ``schedule`` (call :meth:`prepare` first)."""
        if self.profile is None:
            raise RuntimeError("Call CandidateEvaluator.prepare() before evaluate().")
        return self._evaluate_cache(self.config(schedule))

    def _evaluate_cache(self, config: AccelerationConfig) -> Evaluation:
        """Cost and quality of ``config``, whose cache is a static schedule run as the config says
        (reuse mode, forecast order) and priced by the MAC profile unless there is a latency model."""
        schedule = config.cache.schedule
        outputs, seconds = self.run(config)
        quality = self.score(outputs)
        ratio = self.macs_ratio(schedule)
        if self.latency is not None:
            return self._priced(config, quality, seconds)
        cost = 1.0 / ratio if self.cost_name == "macs" else seconds / self.reference_seconds
        return Evaluation(float(cost), float(quality), self.metric.objective(quality), float(ratio), float(seconds))

    def evaluate_config(self, config: AccelerationConfig) -> Evaluation:
        """Cost and quality of a complete candidate ``config`` (a joint search's; it replaces ``base``
        entirely). MACs and predicted latency come from the latency model (needed for quantization or
        sparse attention; a cache-only config without one is priced by the MAC profile)."""
        if self.profile is None:
            raise RuntimeError("Call CandidateEvaluator.prepare() before evaluate_config().")
        if self.latency is None:
            if config.quant is not None or config.attention is not None or not isinstance(config.cache, StaticCacheConfig):
                raise ValueError("Pricing quantization or sparse attention needs a latency model (latency=...).")
            return self._evaluate_cache(config)  # its own reuse mode and forecast order (a reuse gene's)
        outputs, seconds = self.run(config)
        return self._priced(config, self.score(outputs), seconds)

    def evaluate_dynamic(self, config: AccelerationConfig) -> Evaluation:
        """Cost and quality of a dynamic cache (a :class:`~diffusion_accel.caching.DynamicCacheConfig`, on top
        of ``base``) on the calibration items. Its MACs come from the MAC profile and the share of denoiser
        calls that skipped at each step (a skipped call saves the blocks the policy skips: all but the first,
        or all of them for a whole-stack policy), so static and dynamic candidates are priced alike."""
        if self.profile is None:
            raise RuntimeError("Call CandidateEvaluator.prepare() before evaluate_dynamic().")
        cache = config.cache
        if not isinstance(cache, DynamicCacheConfig) or self.cost_name not in ("macs", "latency"):
            raise ValueError("evaluate_dynamic prices a DynamicCacheConfig by MACs or measured latency; use "
                             "evaluate_config for static schedules, cost='macs' or 'latency'.")
        reports: list[dict[str, Any]] = []
        outputs, seconds = self.run(config, observe=reports.append)
        quality = self.score(outputs)
        shares = reports[0]["cache"]["skip_share_by_step"] if reports else {}
        first = 0 if skip_policy(cache.policy).before_first_block else 1
        per_skip = float(self.profile.component_macs.sum(axis=0)[first:].sum())  # one step's calls, skipped blocks
        num_steps = len(shares) or self.profile.num_steps
        full = self.profile.full_macs(num_steps)
        ratio = full / (full - per_skip * float(sum(shares.values())))
        cost = 1.0 / ratio if self.cost_name == "macs" else seconds / self.reference_seconds
        return Evaluation(float(cost), float(quality), self.metric.objective(quality), float(ratio), float(seconds))

    def _priced(self, config: AccelerationConfig, quality: float, seconds: float) -> Evaluation:
        """The evaluation of ``config`` priced by the latency model (MACs and predicted seconds)."""
        # a cache outside the static schedules (a user's dynamic cache kept by the search) is priced as full compute
        cache = static_part(config.cache)  # a corrected cache is priced as its schedule
        plain = AccelerationConfig(cache=cache, quant=config.quant, attention=config.attention)
        ratio = self.latency.macs(None) / self.latency.macs(plain)
        latency_ratio = self.latency.seconds(None) / self.latency.seconds(plain)
        costs = {"macs": 1.0 / ratio, "latency": seconds / self.reference_seconds, "latency_model": 1.0 / latency_ratio}
        return Evaluation(float(costs[self.cost_name]), float(quality), self.metric.objective(quality), float(ratio),
                          float(seconds), float(latency_ratio))


def with_cache(base: AccelerationConfig | None, cache: Any) -> AccelerationConfig:
    """``base`` (or no acceleration) with its ``cache`` replaced by ``cache``."""
    return AccelerationConfig(cache=cache) if base is None else dataclasses.replace(base, cache=cache)


def _generators(batch: Sequence[Item]) -> list[torch.Generator]:
    return [torch.Generator("cpu").manual_seed(it.seed) for it in batch]


def _as_tensor(output: Any) -> torch.Tensor:
    values = getattr(output, "frames", None)
    if values is None:
        values = getattr(output, "images", None)
    if values is None:
        raise TypeError(f"The pipeline returned {type(output).__name__} without .images or .frames.")
    if isinstance(values, np.ndarray):
        return torch.from_numpy(values.copy())
    if torch.is_tensor(values):
        return values.detach().cpu()
    raise TypeError(f"Cannot score pipeline outputs of type {type(values).__name__}; use output_type 'np' or 'latent'.")
