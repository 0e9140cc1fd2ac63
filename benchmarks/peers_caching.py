"""Peers, caching part: our cache policies vs cache-dit DBCache and diffusers' cache hooks.

On the bundled image model (PixArt-alpha, 8 blocks, 32x32 px), ``--caching-steps`` steps (20), the
first ``--caching-prompts`` held-out prompts (16), one seed per prompt:

* **ours** (the policies of ``benchmarks/caching.py``, built with its helpers): FORA-2/3/4 and
  Δ-DiT with block residuals, ``StaticCacheConfig(reuse="forecast")`` (TaylorSeer-style
  extrapolation) on FORA-3, dynamic caching at three thresholds, TeaCache (``DynamicCacheConfig(
  policy="teacache")``, coefficients calibrated on the training captions), the bundled searched
  schedule, and the step-skip schedules of ``benchmarks/low_speedup_schedules.py`` (picked on
  training captions) for 1.5-2.2x; first-block caching with FirstBlockCache's rule
  (``compare_to="last_computed"``, no cap on skips in a row) and TeaCache at more thresholds,
  uncapped and scored against the last computed step; and both rules with forecast reuse
  (``DynamicCacheConfig(reuse="forecast")``, ``forecast_until``, ``final_steps``, caps: ``FORECAST_DYNAMIC``,
  picked on training captions by ``benchmarks/low_speedup_dynamic.py``), that script's best 2.22x step
  skip (``STATIC_PICKS``), and the step-skip sets ``benchmarks/skip_search.py`` found per number of skipped
  steps by local search on training captions (``skip_search.json``: ``ours skip-search-<k>``);
* **cache-dit 1.5.3** DBCache F1B0, F2B1 and F4B0 with residual-diff thresholds sweeping about
  1.3-4x compute, each with and without its TaylorSeer calibrator (order 1). ``max_warmup_steps=2``
  (its default 8 of 20 steps caps the speed-up), everything else its defaults;
* **diffusers' hooks** applied with their ``apply_*`` functions on the transformer
  (FirstBlockCache, Pyramid Attention Broadcast, TaylorSeer, MagCache calibrated on this model,
  FasterCache); one that fails records the reason.

Every method runs on a *fresh* pipeline loaded from disk, so nothing leaks between methods.

* **compute** = block computations that really ran (:class:`diffusion_accel.cost.blocks.
  BlockComputeCounter`: calls of each block's ``attn1.to_q``, ``attn2.to_q``, ``ff.net[0].proj``),
  baseline / method; the same counter for everyone.
* **quality** (one untimed pass over all prompts): PSNR and SSIM of the images against the
  full-compute images of the same seeds; CLIP score (bundled CLIP, image vs its prompt); FID with
  bundled-CLIP features against the bundled real held-out scenes and against the full-compute images.
* **wall clock**: then ``--caching-rounds`` interleaved rounds on the first ``--caching-timing-prompts``
  prompts (each round runs every method once, in the same order); min over rounds, spread =
  (max - min) / min, speed-up from the minima, for the whole pipeline call and for the time inside
  the denoiser.
* **goal**: our frontier (upper envelope of our points in (compute, PSNR), linear between them)
  minus each peer point's PSNR at the peer's compute, for peers between 1.5x and 4x; goal >= 3 dB.
  The strict check (``margin_at_least_as_fast_db``) takes instead our best point that is at least as
  fast as the peer, without interpolation. The frontier holds our configs only.

Run with the driver: ``python benchmarks/peers.py --parts caching --caching-prompts 2``. Add
``--caching-merge --caching-only <prefixes>`` to run some methods (and the baseline) and merge them
into the caching part already in ``peers.json`` (each row records its ``run``), and
``--caching-configs NAME=PATH,...`` to run AccelerationConfig JSON files (a search's picks) as ``ours NAME``.
Plots go to ``benchmarks/results/peers_caching_{compute,wallclock}.png``.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import io
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from diffusion_accel.cost.blocks import BlockComputeCounter

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS_DIR = os.path.join(HERE, "results")
GOAL_DB = 3.0
GOAL_RANGE = (1.5, 4.0)


@dataclass
class Method:
    """One point: ``attach(pipe)`` accelerates a freshly loaded pipeline (or raises)."""

    name: str
    family: str  # "baseline" | "ours" | "cache-dit" | "diffusers"
    settings: dict[str, Any]
    attach: Callable[[Any], None]
    result: dict[str, Any] = field(default_factory=dict)


def add_arguments(parser) -> None:
    group = parser.add_argument_group("caching part")
    group.add_argument("--caching-model", default="benchmark", choices=["benchmark", "benchmark-video"],
                       help="bundled model: the PixArt image model (default) or the Wan video model")
    group.add_argument("--caching-prompts", type=int, default=16, help="held-out prompts (default 16)")
    group.add_argument("--caching-steps", type=int, default=20)
    group.add_argument("--caching-rounds", type=int, default=2,
                       help="interleaved timing rounds (after the quality pass, which is not timed)")
    group.add_argument("--caching-timing-prompts", type=int, default=2,
                       help="held-out prompts of each timed call (default 2: the first ones)")
    group.add_argument("--caching-threads", type=int, default=2)
    group.add_argument("--caching-only", default="",
                       help="comma-separated name prefixes to run (debugging; the baseline always runs)")
    group.add_argument("--caching-merge", action="store_true",
                       help="with --caching-only: merge the methods run into the caching part already in --out "
                            "(same name: replaced; new: appended; the baseline is re-run), then recompute the goal "
                            "check and plots. Compute and PSNR are deterministic per method; wall clock is relative "
                            "to the baseline of the run the row comes from (its 'run' field)")
    group.add_argument("--caching-compute", default="calls", choices=["calls", "tokens"],
                       help="compute axis: block computations (calls, default) or the same weighted by the token "
                            "rows each projected (sees per-sample decisions and lower resolutions)")
    group.add_argument("--caching-configs", default="",
                       help="comma-separated NAME=PATH of AccelerationConfig JSON files (e.g. a search's "
                            "picked-<x>x.json) run as our methods 'ours NAME'; they run whatever --caching-only says")


# ---------------------------------------------------------------------------------------------
# The methods


def _ours(pipe: Any, steps: int) -> list[Method]:
    """Our policies, built with ``benchmarks/caching.py``'s helpers (its policy table, plus the
    deeper FORA-4, forecast reuse and the dynamic thresholds that reach 2-3x on this model)."""
    import caching as bench  # benchmarks/caching.py (the driver puts benchmarks/ on sys.path)
    from diffusion_accel import AccelerationConfig
    from diffusion_accel.caching import CacheSchedule, DynamicCacheConfig, StaticCacheConfig

    table = bench.static_policies(pipe, steps)
    out = []
    for name in ("fora-2-res", "fora-3-res", "delta-dit-res", "searched"):
        out.append(Method(f"ours {name}", "ours", {"policy": name}, _ours_attach(table[name])))

    def static(schedule, **kw):
        return _ours_attach(bench.ours(AccelerationConfig(cache=StaticCacheConfig(schedule, **kw))))

    out.append(Method("ours fora-4-res", "ours", {"policy": "fora-4", "reuse": "block_residual"},
                      static(CacheSchedule.fora(pipe, steps, 4), reuse="block_residual")))
    out.append(Method("ours fora-3-forecast", "ours", {"policy": "fora-3", "reuse": "forecast", "forecast_order": 1},
                      static(CacheSchedule.fora(pipe, steps, 3), reuse="forecast")))
    for threshold in (0.2, 0.3, 0.4):
        config = AccelerationConfig(cache=DynamicCacheConfig(threshold=threshold))
        out.append(Method(f"ours dynamic-{threshold}", "ours", {"policy": "dynamic", "threshold": threshold},
                          _ours_attach(bench.ours(config))))
    out += _ours_teacache(bench)
    out += _ours_uncapped(bench, steps)
    out += _ours_skips(pipe, steps, bench)
    out += _ours_forecast_dynamic(bench, steps)
    out += _ours_static_picks(pipe, steps, bench)
    out += _ours_skip_search(pipe, steps, bench)
    return out


#: step-skip sets picked on the 16 training captions by ``benchmarks/low_speedup_dynamic.py`` (its ``st-res-*``
#: rows: the best at 2.22x of the first sets, then of four more around it), run with block-residual reuse: name of our method -> skipped steps (of 20)
STATIC_PICKS = {"skip-11-odd": (1, 2, 3, 5, 7, 9, 11, 13, 15, 17, 19),
                "skip-11-odd-e": (1, 2, 4, 5, 7, 9, 11, 13, 15, 17, 19)}


def _ours_static_picks(pipe, steps: int, bench) -> list[Method]:
    from diffusion_accel import AccelerationConfig
    from diffusion_accel.caching import StaticCacheConfig
    from low_speedup_schedules import skip_schedule

    out = []
    for name, skipped in STATIC_PICKS.items():
        if max(skipped) >= steps:
            continue
        config = AccelerationConfig(cache=StaticCacheConfig(skip_schedule(pipe, steps, list(skipped)),
                                                            reuse="block_residual"))
        out.append(Method(f"ours {name}", "ours", {"policy": "step skip picked on 16 training captions",
                                                   "skipped_steps": list(skipped), "reuse": "block_residual"},
                          _ours_attach(bench.ours(config))))
    return out


def _ours_skip_search(pipe, steps: int, bench, path: str | None = None) -> list[Method]:
    """The step-skip sets ``benchmarks/skip_search.py`` found by local search on training captions
    (``path``, default its ``skip_search.json``), one per number of skipped steps: ``ours skip-search-<k>``
    (none when the file is missing or searched another step count)."""
    import json

    from diffusion_accel import AccelerationConfig
    from diffusion_accel.caching import StaticCacheConfig
    from low_speedup_schedules import skip_schedule
    from skip_search import RESULTS as SEARCHED

    path = SEARCHED if path is None else path
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as fh:
        found = json.load(fh)["counts"]
    out = []
    for k, entry in sorted(found.items(), key=lambda item: int(item[0])):
        if entry["steps"] != steps:
            continue
        config = AccelerationConfig(cache=StaticCacheConfig(skip_schedule(pipe, steps, entry["pick"]),
                                                            reuse="block_residual"))
        settings = {"policy": f"step skip found by local search on {entry['prompts']} training captions "
                              "(benchmarks/skip_search.py)", "skipped_steps": entry["pick"],
                    "reuse": "block_residual", "train_psnr_db": entry["pick_train_psnr_db"],
                    "sets_measured": len(entry["measured"])}
        out.append(Method(f"ours skip-search-{k}", "ours", settings, _ours_attach(bench.ours(config))))
    return out


#: dynamic caching with forecast reuse (order 1) for 1.5-2x, picked on the training captions by
#: ``benchmarks/low_speedup_dynamic.py`` (16 training captions): name of our method -> DynamicCacheConfig fields
#: (``"steps"`` stands for no cap on consecutive skips)
FORECAST_DYNAMIC = {
    "teacache-fc1-0.11": {"policy": "teacache", "threshold": 0.11, "reuse": "forecast"},
    "teacache-fc1-final4-0.15": {"policy": "teacache", "threshold": 0.15, "reuse": "forecast", "final_steps": 4},
    "teacache-fc1-0.15": {"policy": "teacache", "threshold": 0.15, "reuse": "forecast"},
    "teacache-fc1-until0.65-0.15": {"policy": "teacache", "threshold": 0.15, "reuse": "forecast",
                                    "forecast_until": 0.65},
    "teacache-fc1-until0.5-cap1-0.5": {"policy": "teacache", "threshold": 0.5, "reuse": "forecast",
                                       "forecast_until": 0.5, "max_consecutive_skips": 1},
    "teacache-fc1-until0.5-cap2-0.2": {"policy": "teacache", "threshold": 0.2, "reuse": "forecast",
                                       "forecast_until": 0.5, "max_consecutive_skips": 2},
    "dynamic-last-nocap-fc1-0.12": {"threshold": 0.12, "compare_to": "last_computed",
                                    "max_consecutive_skips": "steps", "reuse": "forecast"},
    "dynamic-last-nocap-fc1-until0.5-0.2": {"threshold": 0.2, "compare_to": "last_computed",
                                            "max_consecutive_skips": "steps", "reuse": "forecast",
                                            "forecast_until": 0.5},
}


def _ours_forecast_dynamic(bench, steps: int) -> list[Method]:
    import json

    from diffusion_accel import AccelerationConfig
    from diffusion_accel.caching import DynamicCacheConfig

    with open(os.path.join(RESULTS_DIR, "dynamic_policies.json"), encoding="utf-8") as fh:
        coefficients = tuple(json.load(fh)["calibration"]["teacache_coefficients"])
    out = []
    for name, fields in FORECAST_DYNAMIC.items():
        kw = {k: steps if v == "steps" else v for k, v in fields.items()}
        extra = {"teacache_coefficients": coefficients} if kw.get("policy") == "teacache" else {}
        settings = {**kw, **({"teacache_coefficients": "dynamic_policies.json (training captions)"} if extra else {}),
                    "picked_by": "benchmarks/low_speedup_dynamic.py on the training captions"}
        out.append(Method(f"ours {name}", "ours", settings,
                          _ours_attach(bench.ours(AccelerationConfig(cache=DynamicCacheConfig(**kw, **extra))))))
    return out


#: first-block thresholds of ours with diffusers' FirstBlockCache rule (``compare_to="last_computed"``, no cap on
#: consecutive skips): ``benchmarks/first_block_gap.py`` found the 0.6-0.7 dB gap to FirstBlockCache at 2.11x is
#: our default ``max_consecutive_skips=3`` (it forces step 4 to compute where FirstBlockCache skips steps 1-4)
UNCAPPED_FIRST_BLOCK = (0.1, 0.15, 0.2)
#: TeaCache thresholds run without the cap too, and lower capped ones for 1.4-1.6x
UNCAPPED_TEACACHE = (0.12, 0.15)
LOW_TEACACHE = (0.08, 0.1, 0.11, 0.17)
#: TeaCache scored against the last computed step (``compare_to="last_computed"``, not summed)
LAST_TEACACHE = (0.15, 0.2)


def _ours_uncapped(bench, steps: int) -> list[Method]:
    import json

    from diffusion_accel import AccelerationConfig
    from diffusion_accel.caching import DynamicCacheConfig

    out = []
    for threshold in UNCAPPED_FIRST_BLOCK:
        kw = {"threshold": threshold, "compare_to": "last_computed", "max_consecutive_skips": steps}
        out.append(Method(f"ours dynamic-last-nocap-{threshold}", "ours", {"policy": "first_block", **kw},
                          _ours_attach(bench.ours(AccelerationConfig(cache=DynamicCacheConfig(**kw))))))
    with open(os.path.join(RESULTS_DIR, "dynamic_policies.json"), encoding="utf-8") as fh:
        coefficients = tuple(json.load(fh)["calibration"]["teacache_coefficients"])
    runs = [(t, {"max_consecutive_skips": steps}, "nocap-") for t in UNCAPPED_TEACACHE]
    runs += [(t, {}, "") for t in LOW_TEACACHE]
    runs += [(t, {"compare_to": "last_computed"}, "last-") for t in LAST_TEACACHE]
    for threshold, extra, tag in runs:
        kw = {"threshold": threshold, "policy": "teacache", **extra}
        out.append(Method(f"ours teacache-{tag}{threshold:.2f}", "ours",
                          {**kw, "teacache_coefficients": "dynamic_policies.json (training captions)"},
                          _ours_attach(bench.ours(AccelerationConfig(cache=DynamicCacheConfig(
                              **kw, teacache_coefficients=coefficients))))))
    return out


#: step-skip schedules picked by ``benchmarks/low_speedup_schedules.py`` to run, by skipped steps k: skipping
#: k of 20 steps is 20 / (20 - k) compute (1.54, 1.67, 1.82, 2.0, 2.22x)
SKIP_PICKS = (7, 8, 9, 10, 11)
#: the same schedule with component-output reuse instead of block residuals (for comparison)
SKIP_OUTPUTS_PICK = 10
#: TeaCache thresholds (coefficients calibrated on the training captions by benchmarks/dynamic_policies.py)
TEACACHE_THRESHOLDS = (0.12, 0.15)


def _ours_skips(pipe, steps: int, bench) -> list[Method]:
    """The step-skip schedules picked on training captions (``low_speedup_schedules.json``)."""
    import json

    from diffusion_accel import AccelerationConfig
    from diffusion_accel.caching import StaticCacheConfig
    from low_speedup_schedules import RESULTS, skip_schedule

    if not os.path.exists(RESULTS):
        return [Method("ours skip", "ours", {}, _raiser(FileNotFoundError(
            f"{RESULTS} is missing: run python benchmarks/low_speedup_schedules.py first")))]
    with open(RESULTS, encoding="utf-8") as fh:
        found = json.load(fh)
    out = []
    for k, reuse in [(k, "block_residual") for k in SKIP_PICKS] + [(SKIP_OUTPUTS_PICK, "outputs")]:
        if str(k) not in found["picks"] or found["steps"] != steps:
            continue
        skipped = found["picks"][str(k)]
        config = AccelerationConfig(cache=StaticCacheConfig(skip_schedule(pipe, steps, skipped), reuse=reuse))
        out.append(Method(f"ours skip-{k}" + ("-outputs" if reuse == "outputs" else ""), "ours",
                          {"policy": "step skip picked on training captions", "skipped_steps": skipped,
                           "reuse": reuse}, _ours_attach(bench.ours(config))))
    return out


def _ours_teacache(bench) -> list[Method]:
    import json

    from diffusion_accel import AccelerationConfig
    from diffusion_accel.caching import DynamicCacheConfig

    path = os.path.join(RESULTS_DIR, "dynamic_policies.json")
    with open(path, encoding="utf-8") as fh:
        coefficients = tuple(json.load(fh)["calibration"]["teacache_coefficients"])
    out = []
    for threshold in TEACACHE_THRESHOLDS:
        config = AccelerationConfig(cache=DynamicCacheConfig(threshold=threshold, policy="teacache",
                                                             teacache_coefficients=coefficients))
        out.append(Method(f"ours teacache-{threshold}", "ours",
                          {"policy": "teacache", "threshold": threshold,
                           "teacache_coefficients": "dynamic_policies.json (training captions)"},
                          _ours_attach(bench.ours(config))))
    return out


def _ours_attach(attach_and_detach):
    if isinstance(attach_and_detach, Exception):
        def fail(pipe):
            raise attach_and_detach
        return fail
    return lambda pipe: attach_and_detach(pipe) and None  # the fresh pipeline is dropped afterwards


#: DBCache variant -> residual-diff thresholds (chosen to span about 1.3-4x compute here; F4B0 and
#: F2B1 cannot go much beyond 8/4 = 2x and 8/3 = 2.7x: their first/last blocks always run).
CACHE_DIT_SWEEP = {
    (1, 0): (0.1, 0.12, 0.2, 0.3, 0.45, 0.7, 1.0),
    (2, 1): (0.35, 0.8),
    (4, 0): (0.35, 1.0),
}
#: thresholds also run with the TaylorSeer calibrator (all of F1B0's, the fastest of the others)
CACHE_DIT_TAYLOR = {(1, 0): (0.12, 0.2, 0.3, 0.7, 1.0), (2, 1): (0.8,), (4, 0): (1.0,)}


def _cache_dit(steps: int) -> list[Method]:
    try:
        import cache_dit
    except ImportError as exc:
        return [Method("cache-dit", "cache-dit", {}, _raiser(RuntimeError(
            f"cache-dit is not installed ({exc}); pip install cache-dit==1.5.3")))]
    out = []
    for (fn, bn), thresholds in CACHE_DIT_SWEEP.items():
        for taylor in (False, True):
            for threshold in (CACHE_DIT_TAYLOR[(fn, bn)] if taylor else thresholds):
                settings = {"Fn_compute_blocks": fn, "Bn_compute_blocks": bn, "residual_diff_threshold": threshold,
                            "max_warmup_steps": 2, "num_inference_steps": steps,
                            "calibrator": "taylorseer order 1" if taylor else None}
                name = f"cache-dit F{fn}B{bn} {threshold}" + (" +TaylorSeer" if taylor else "")
                out.append(Method(name, "cache-dit", settings, _cache_dit_attach(cache_dit, settings, taylor)))
    return out


def _cache_dit_attach(cache_dit, settings: dict[str, Any], taylor: bool):
    def attach(pipe):
        config = cache_dit.DBCacheConfig(**{k: v for k, v in settings.items() if k != "calibrator"})
        calibrator = cache_dit.TaylorSeerCalibratorConfig(taylorseer_order=1) if taylor else None
        cache_dit.enable_cache(pipe, cache_config=config, calibrator_config=calibrator)

    return attach


def _raiser(exc: Exception):
    def attach(pipe):
        raise exc

    return attach


class _DenoisingContext:
    """What a diffusers ``CacheMixin`` pipeline does around each denoiser call, for PixArt's
    pipeline, which does not: forward hooks open ``cache_context("cond", step_index=i, ...)``
    (one context: PixArt runs both guidance branches in one batched call) and record the timestep
    for ``current_timestep_callback`` (PAB, FasterCache). Without it diffusers' cache hooks raise
    "No cache context is set" on PixArt (recorded as a ``without_context`` row)."""

    def __init__(self, transformer: torch.nn.Module, steps: int, open_context: bool = True) -> None:
        self.value, self.steps, self.calls, self._open = 1000, steps, 0, None
        transformer.register_forward_pre_hook(self._enter, with_kwargs=True)
        if open_context:
            transformer.register_forward_hook(self._leave)
        self.open_context = open_context

    def _enter(self, module, args, kwargs):
        from diffusers.models.cache_utils import CacheMixin

        t = kwargs.get("timestep")
        if t is not None:
            self.value = int(t.max()) if torch.is_tensor(t) else int(t)
        if self.open_context:  # CacheMixin.cache_context only sets the context on the module's hooks
            self._open = CacheMixin.cache_context(module, "cond", step_index=self.calls,
                                                  num_inference_steps=self.steps, timestep=self.value)
            self._open.__enter__()
        self.calls += 1

    def _leave(self, module, args, output):
        self._open.__exit__(None, None, None)

    def __call__(self) -> int:
        return self.value


def opens_cache_context(pipe: Any) -> bool:
    """Whether the pipeline opens diffusers' cache contexts itself (``WanPipeline``: ``"cond"`` and
    ``"uncond"`` around its two guidance calls). :class:`_DenoisingContext` must then not open one:
    its single ``"cond"`` context would replace the pipeline's, and the hooks would share one state
    between the two branches (FirstBlockCache would compare a conditional call's first block with
    the unconditional one's, and hardly ever skip)."""
    import inspect

    return any("__call__" in vars(cls) and "cache_context(" in inspect.getsource(cls.__call__)
               for cls in type(pipe).__mro__ if cls is not object)


def _blocks_path(pipe: Any) -> str:
    """Attribute path of the denoiser's main block list (``transformer_blocks`` on PixArt, ``blocks`` on Wan)."""
    from diffusion_accel.models import find_model_adapter

    return find_model_adapter(pipe.transformer).groups[0].path


def _diffusers(steps: int, calibrate: Callable[[], list[float]], blocks: str = "transformer_blocks",
               kind: str = "image") -> list[Method]:
    from diffusers.hooks import (FasterCacheConfig, FirstBlockCacheConfig, MagCacheConfig,
                                 PyramidAttentionBroadcastConfig, TaylorSeerCacheConfig, apply_faster_cache,
                                 apply_first_block_cache, apply_mag_cache, apply_pyramid_attention_broadcast,
                                 apply_taylorseer_cache)

    def hook(apply_fn, make_config, needs_timestep=False, open_context=True):
        def attach(pipe):
            probe = _DenoisingContext(pipe.transformer, steps, open_context and not opens_cache_context(pipe))
            apply_fn(pipe.transformer, make_config(**({"current_timestep_callback": probe} if needs_timestep else {})))

        return attach

    out = [Method("diffusers FirstBlockCache 0.1 without_context", "diffusers", {"threshold": 0.1},
                  hook(apply_first_block_cache, lambda: FirstBlockCacheConfig(threshold=0.1), open_context=False))]
    for threshold in (0.1, 0.2, 0.3, 0.45):
        out.append(Method(f"diffusers FirstBlockCache {threshold}", "diffusers", {"threshold": threshold},
                          hook(apply_first_block_cache, lambda t=threshold: FirstBlockCacheConfig(threshold=t))))
    for skip in (2,):
        settings = {"spatial_attention_block_skip_range": skip, "cross_attention_block_skip_range": 2 * skip,
                    "spatial_attention_timestep_skip_range": (100, 800),
                    "cross_attention_timestep_skip_range": (100, 800)}
        out.append(Method(f"diffusers PAB {skip}", "diffusers", settings,
                          hook(apply_pyramid_attention_broadcast,
                               lambda s=settings, **kw: PyramidAttentionBroadcastConfig(**s, **kw), True)))
    def taylorseer(settings):
        def attach(pipe):
            hook(apply_taylorseer_cache, lambda: TaylorSeerCacheConfig(
                **{**settings, "taylor_factors_dtype": torch.float32}))(pipe)
            hooked = [name for name, m in pipe.transformer.named_modules()
                      if "taylorseer_cache" in getattr(getattr(m, "_diffusers_hook", None), "hooks", {})]
            if not hooked:  # diffusers keeps a module's HookRegistry in ``_diffusers_hook``
                raise RuntimeError("TaylorSeer's default cache_identifiers ('^transformer_blocks.*attn', "
                                   f"re.fullmatch) match no module of {type(pipe.transformer).__name__} (PixArt's attention "
                                   "modules are attn1/attn2, Wan's blocks.N.attn1): it would cache nothing; pass "
                                   "cache_identifiers to use it here")
        return attach

    out.append(Method("diffusers TaylorSeer 2 default-identifiers", "diffusers",
                      {"cache_interval": 2, "max_order": 1, "disable_cache_before_step": 2},
                      taylorseer({"cache_interval": 2, "max_order": 1, "disable_cache_before_step": 2})))
    for interval in (2, 3):
        settings = {"cache_interval": interval, "max_order": 1, "disable_cache_before_step": 2,
                    "cache_identifiers": [rf"{blocks}\.\d+"]}
        out.append(Method(f"diffusers TaylorSeer {interval} blocks", "diffusers",
                          {**settings, "taylor_factors_dtype": "float32"}, taylorseer(settings)))
    for threshold in (0.06, 0.24):
        settings = {"threshold": threshold, "num_inference_steps": steps, "mag_ratios": "calibrated on prompt 0"}

        def attach(pipe, t=threshold):
            _DenoisingContext(pipe.transformer, steps)
            apply_mag_cache(pipe.transformer, MagCacheConfig(threshold=t, num_inference_steps=steps,
                                                             mag_ratios=calibrate()))

        out.append(Method(f"diffusers MagCache {threshold}", "diffusers", settings, attach))
    settings = {"spatial_attention_block_skip_range": 2, "spatial_attention_timestep_skip_range": (-1, 681),
                "spatial_attention_block_identifiers": [blocks], "attention_weight": 0.3,
                "tensor_format": "BCFHW" if kind == "video" else "BCHW", "is_guidance_distilled": False}
    out.append(Method("diffusers FasterCache 2", "diffusers", settings, hook(
        apply_faster_cache, lambda s=settings, **kw: FasterCacheConfig(
            **{k: v for k, v in s.items() if k != "attention_weight"},
            attention_weight_callback=lambda _: 0.3, **kw), True)))
    return out


# ---------------------------------------------------------------------------------------------
# Running


class _Bench:
    def __init__(self, args) -> None:
        from diffusion_accel.assets.bundled import BUNDLED_MODELS

        self.model = BUNDLED_MODELS[args.caching_model]
        self.prompts = self.model.prompts("heldout")[: args.caching_prompts]
        if len(self.prompts) < args.caching_prompts:
            raise ValueError(f"--caching-prompts {args.caching_prompts}: only {len(self.prompts)} held-out prompts.")
        self.kwargs = {**self.model.generation_kwargs(), "num_inference_steps": args.caching_steps,
                       "output_type": "np"}
        self.steps = args.caching_steps
        self.timing_prompts = min(args.caching_timing_prompts, len(self.prompts))
        self._mag_ratios: list[float] | None = None

    def fresh(self):
        from diffusion_accel.eval.sweep import load_pipeline

        pipe = load_pipeline(self.model.name)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def call(self, pipe, prompts=None):
        prompts = self.prompts if prompts is None else prompts
        generators = [torch.Generator().manual_seed(i) for i in range(len(prompts))]
        return pipe(prompts, generator=generators, **self.kwargs)

    def mag_ratios(self) -> list[float]:
        """MagCache's magnitude ratios for this model: one calibration call (prompt 0, full compute)."""
        if self._mag_ratios is None:
            from diffusers.hooks import MagCacheConfig, apply_mag_cache

            pipe = self.fresh()
            _DenoisingContext(pipe.transformer, self.steps)
            apply_mag_cache(pipe.transformer, MagCacheConfig(calibrate=True, num_inference_steps=self.steps))
            printed = io.StringIO()
            with contextlib.redirect_stdout(printed):
                self.call(pipe, self.prompts[:1])
            lists = [line for line in printed.getvalue().splitlines() if line.strip().startswith("[")]
            if not lists:
                raise RuntimeError("MagCache calibration printed no ratios")
            self._mag_ratios = [float(x) for x in ast.literal_eval(lists[-1].strip())]
        return self._mag_ratios

    def quality(self, method: Method) -> tuple[np.ndarray, BlockComputeCounter]:
        """Images of every prompt and the block computations that ran (fresh pipeline, not timed)."""
        import caching as bench

        pipe = self.fresh()
        method.attach(pipe)
        with BlockComputeCounter(pipe) as counter:
            output = self.call(pipe)
        return bench.images_of(output), counter

    def timed(self, method: Method) -> tuple[float, float]:
        """Wall clock of one call on the timing prompts and the time inside the denoiser (fresh pipeline)."""
        import caching as bench

        pipe = self.fresh()
        method.attach(pipe)
        timer = bench.DenoiserTimer(pipe)
        try:
            start = time.perf_counter()
            self.call(pipe, self.prompts[: self.timing_prompts])
            elapsed = time.perf_counter() - start
        finally:
            timer.close()
        return elapsed, timer.total


class _Scorer:
    """CLIP score (the bundled CLIP, image vs its prompt) and FID with CLIP features against the
    bundled real held-out scenes and against the full-compute images of the same prompts."""

    def __init__(self, model, prompts: list[str]) -> None:
        from diffusion_accel.eval import metrics as M

        self.prompts = prompts
        self.clip = M.load_clip(model.clip) if model.clip else None
        self.extractor = M.fid_features("clip", self.clip) if self.clip is not None else None
        self.real = (M.load_reference(f"{model.fid_reference}:heldout", self.extractor)
                     if self.extractor is not None and model.fid_reference else None)
        self.full = None

    def __call__(self, images: np.ndarray, baseline: bool) -> dict[str, float]:
        from diffusion_accel.eval import metrics as M

        if self.clip is None or images.ndim != 4:
            return {}
        if baseline:
            self.full = M.reference_stats(images, self.extractor)
        out = {"clip_score": M.clip_score(images, self.prompts, self.clip),
               "fid_vs_full": M.fid(images, self.full, self.extractor)}
        if self.real is not None:
            out["fid_vs_real"] = M.fid(images, self.real, self.extractor)
        return out


def _methods(bench: _Bench, template_pipe, only: str, configs: str = "") -> list[Method]:
    methods = [Method("full compute", "baseline", {}, lambda pipe: None)]
    methods += _ours(template_pipe, bench.steps)
    methods += _cache_dit(bench.steps)
    methods += _diffusers(bench.steps, bench.mag_ratios, _blocks_path(template_pipe), bench.model.kind)
    prefixes = [p.strip() for p in only.split(",") if p.strip()]
    if prefixes:
        methods = methods[:1] + [m for m in methods[1:] if any(m.name.startswith(p) for p in prefixes)]
    return methods + config_methods(configs)


def config_methods(spec: str) -> list[Method]:
    """``--caching-configs``: one of our methods per ``NAME=PATH`` (an AccelerationConfig JSON file)."""
    import caching as bench
    from diffusion_accel import AccelerationConfig

    out = []
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        name, sep, path = item.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise ValueError(f"--caching-configs {item!r}: expected NAME=PATH (e.g. searched-2x=picked-2.0x.json).")
        config = AccelerationConfig.load(path.strip())  # ValueError naming the file when unreadable
        out.append(Method(f"ours {name.strip()}", "ours", {"policy": "config file", "config": path.strip()},
                          _ours_attach(bench.ours(config))))
    return out


def _quality_pass(bench: _Bench, methods: list[Method], scorer: _Scorer, tokens: bool = False) -> None:
    from diffusion_accel.eval.metrics import psnr, ssim

    reference: dict[str, Any] = {}
    for m in methods:
        try:
            images, counter = bench.quality(m)
            computed = counter.token_total if tokens else counter.total
        except Exception as exc:  # a peer that does not run on this model: record why
            m.result = {"supported": False, "reason": f"{type(exc).__name__}: {exc}"[:500]}
            print(f"[peers caching] {m.name}: FAILED {m.result['reason'][:200]}", flush=True)
            continue
        if m.family == "baseline":
            reference["images"], reference["computed"] = images, computed
            m.result["output_sha256"] = hashlib.sha256(np.ascontiguousarray(images).tobytes()).hexdigest()
        m.result.update(supported=True, block_computations=counter.total, token_computations=counter.token_total,
                        compute_ratio=BlockComputeCounter.ratio(reference["computed"], computed),
                        psnr_db=psnr(images, reference["images"]), ssim=ssim(images, reference["images"]),
                        **scorer(images, m.family == "baseline"))
        print(f"[peers caching] {m.name}: compute {m.result['compute_ratio']:.2f}x, "
              f"PSNR {m.result['psnr_db']:.2f} dB", flush=True)


def _timing_round(bench: _Bench, methods: list[Method]) -> None:
    for m in methods:
        if not m.result.get("supported"):
            continue
        elapsed, denoiser_s = bench.timed(m)
        m.result.setdefault("wall_s", []).append(elapsed)
        m.result.setdefault("denoiser_s", []).append(denoiser_s)
        print(f"[peers caching] timed {m.name}: {elapsed:.2f} s", flush=True)


def _summarize(methods: list[Method]) -> None:
    base_min = {key: min(methods[0].result[key]) for key in ("wall_s", "denoiser_s")}
    for m in methods:
        r = m.result
        if not r.get("supported"):
            continue
        for key in ("wall_s", "denoiser_s"):
            runs = r.pop(key)
            r[f"{key}_runs"] = [round(x, 3) for x in runs]
            r[f"{key}_min"] = round(min(runs), 3)
            r[f"{key}_spread"] = round((max(runs) - min(runs)) / min(runs), 3)
            r[f"{key.split('_')[0]}_speedup"] = round(base_min[key] / min(runs), 3)
        for key in ("compute_ratio", "psnr_db", "ssim", "clip_score", "fid_vs_full", "fid_vs_real"):
            if key in r and r[key] != float("inf"):
                r[key] = round(r[key], 4)


# ---------------------------------------------------------------------------------------------
# Goal check and plots


def frontier(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Upper envelope of (compute, psnr) points: those no other point beats on both, by compute."""
    pts = sorted(points, key=lambda p: (-p[0], -p[1]))
    out, best = [], -float("inf")
    for c, q in pts:  # from the highest compute down: keep a point if its PSNR beats all faster ones
        if q > best:
            out.append((c, q))
            best = q
    return sorted(out)


def frontier_psnr(front: list[tuple[float, float]], compute: float) -> float | None:
    """PSNR of our frontier at ``compute`` (linear between frontier points; below the slowest
    point its PSNR; ``None`` beyond our fastest point)."""
    if not front or compute > front[-1][0]:
        return None
    if compute <= front[0][0]:
        return front[0][1]
    for (c0, q0), (c1, q1) in zip(front, front[1:]):
        if c0 <= compute <= c1:
            return q0 + (q1 - q0) * (compute - c0) / (c1 - c0)
    return None


def goal_check(methods: list[Method], goal_db: float = GOAL_DB, goal_range: tuple[float, float] = GOAL_RANGE,
               ours_filter: Callable[[Method], bool] = lambda m: True) -> dict[str, Any]:
    """Our frontier (the ``ours`` points ``ours_filter`` keeps) minus each peer point's PSNR at the
    peer's compute; the goal is a margin of at least ``goal_db`` for peers within ``goal_range``."""
    ours = [(m.result["compute_ratio"], m.result["psnr_db"], m.name) for m in methods  # our configs only,
            if m.family == "ours" and m.result.get("supported") and ours_filter(m)  # and only those that
            and m.result["compute_ratio"] > 1.0]  # skipped something (at 1.0x: the full-compute output, inf dB)
    front = frontier([p[:2] for p in ours])
    rows, met, met_strict = [], True, True
    for m in methods:
        r = m.result
        if m.family not in ("cache-dit", "diffusers") or not r.get("supported"):
            continue
        c = r["compute_ratio"]
        in_range = goal_range[0] <= c <= goal_range[1]
        q = frontier_psnr(front, c)
        margin = None if q is None else round(q - r["psnr_db"], 2)
        ok = None if not in_range else (margin is not None and margin >= goal_db)
        if ok is False:
            met = False
        faster = at_least_as_fast(ours, c)
        strict = None if faster is None else round(faster[1] - r["psnr_db"], 2)
        ok_strict = None if not in_range else (strict is not None and strict >= goal_db)
        if ok_strict is False:
            met_strict = False
        rows.append({"peer": m.name, "compute_ratio": c, "peer_psnr_db": r["psnr_db"],
                     "ours_frontier_psnr_db": None if q is None else round(q, 2), "margin_db": margin,
                     "in_goal_range": in_range, "goal_met": ok,
                     "ours_at_least_as_fast": None if faster is None else faster[2],
                     "margin_at_least_as_fast_db": strict, "goal_met_at_least_as_fast": ok_strict})
    return {"goal": f"our frontier >= +{goal_db} dB over every peer point at matched compute, "
                    f"{goal_range[0]}-{goal_range[1]}x",
            "ours_frontier": [[round(c, 3), round(q, 2)] for c, q in front],
            "met": met, "met_at_least_as_fast": met_strict,
            "strict_check": "margin_at_least_as_fast_db: our best point whose compute ratio is >= the peer's "
                            "(no interpolation) minus the peer",
            "points": rows}


def at_least_as_fast(ours: list[tuple[float, float, str]], compute: float) -> tuple[float, float, str] | None:
    """Our best-PSNR point among those at least as fast as ``compute`` (``None`` if there is none)."""
    faster = [p for p in ours if p[0] >= compute - 1e-9]
    return max(faster, key=lambda p: p[1]) if faster else None


def plots(methods: list[Method], prompts: int, title: str = "Bundled PixArt model",
          prefix: str = "peers_caching", steps: int = 20) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    style = {"ours searched": ("tab:purple", "*"), "ours": ("tab:blue", "o"), "cache-dit": ("tab:red", "s"), "cache-dit+TS": ("tab:orange", "D"),
             "diffusers": ("tab:green", "^")}
    paths = []
    for key, label, fname in (("compute_ratio", "compute ratio (block computations, full / method)",
                               f"{prefix}_compute.png"),
                              ("wall_speedup", "wall-clock speed-up (min of interleaved rounds)",
                               f"{prefix}_wallclock.png")):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        groups: dict[str, list[tuple[float, float]]] = {}
        for m in methods:
            r = m.result
            if m.family == "baseline" or not r.get("supported") or not np.isfinite(r["psnr_db"]):
                continue  # (inf dB: a point that skipped nothing, the full-compute output)
            group = "cache-dit+TS" if "TaylorSeer" in m.name and m.family == "cache-dit" else m.family
            group = "ours searched" if m.settings.get("searched") else group
            groups.setdefault(group, []).append((r[key], r["psnr_db"]))
        for group, pts in groups.items():
            color, marker = style[group]
            xs, ys = zip(*sorted(pts))
            ax.scatter(xs, ys, c=color, marker=marker, label=group, s=28)
            if group in ("ours", "ours searched"):
                fx, fy = zip(*frontier(pts))
                ax.plot(fx, fy, c=color, lw=1)
        ax.set_xlabel(label)
        ax.set_ylabel("PSNR vs full compute (dB)")
        ax.set_title(f"{title}, {prompts} held-out prompts, {steps} steps")
        ax.grid(alpha=0.3)
        ax.legend()
        path = os.path.join(RESULTS_DIR, fname)
        os.makedirs(RESULTS_DIR, exist_ok=True)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(os.path.relpath(path, os.path.dirname(HERE)))
    return paths


def run(args, extra: Callable[[_Bench, Any], list[Method]] | None = None, plot_prefix: str = "peers_caching",
        title: str = "Bundled PixArt model") -> dict[str, Any]:
    """The caching comparison; ``extra(bench, template_pipe)`` adds methods (e.g. the video benchmark's)."""
    torch.set_num_threads(args.caching_threads)
    bench = _Bench(args)
    template = bench.fresh()
    methods = _methods(bench, template, args.caching_only, getattr(args, "caching_configs", ""))
    if extra is not None:
        methods += extra(bench, template)
    tokens = getattr(args, "caching_compute", "calls") == "tokens"
    started = time.perf_counter()
    _quality_pass(bench, methods, _Scorer(bench.model, bench.prompts), tokens)
    quality_seconds = round(time.perf_counter() - started)
    _save_progress(methods)  # the quality pass survives a run stopped during the timing rounds
    for _ in range(args.caching_rounds):
        _timing_round(bench, methods)
    _summarize(methods)
    merged_from = None
    if getattr(args, "caching_merge", False):
        methods, merged_from = _merge(args, methods)
    with contextlib.suppress(FileNotFoundError):
        os.remove(os.path.join(RESULTS_DIR, "peers_caching.partial.json"))
    import diffusers

    versions = {"torch": torch.__version__, "diffusers": diffusers.__version__}
    with contextlib.suppress(ImportError):
        import cache_dit

        versions["cache_dit"] = cache_dit.__version__
    out = {
        "benchmark": "peers-caching",
        "model": f"bundled {bench.model.name} (diffusion_accel.assets.bundled, {bench.model.kind})",
        "prompts": len(bench.prompts), "steps": bench.steps, "rounds": args.caching_rounds,
        "timing_prompts": bench.timing_prompts, "threads": args.caching_threads, "versions": versions,
        "seconds": round(time.perf_counter() - started), "quality_seconds": quality_seconds,
        "quality": "PSNR/SSIM vs the full-compute images of the same seeds; clip_score: bundled CLIP, image vs "
                   "its prompt; fid_vs_real / fid_vs_full: FID with bundled-CLIP features against the bundled "
                   "held-out real scenes / the full-compute images (few images: compare methods, not papers)",
        "compute": "block computations that ran (BlockComputeCounter: calls of attn1.to_q, attn2.to_q, "
                   "ff.net[0].proj per block)" + (", each weighted by the token rows it projected" if tokens else "")
                   + ", full / method",
        "timing": "wall clock of the pipeline call and time inside the denoiser on the first timing_prompts "
                  "prompts; interleaved rounds after the (untimed) quality pass, each method on a freshly loaded "
                  "pipeline; speed-up from the minima, spread = (max - min) / min",
        "methods": [{"name": m.name, "family": m.family, "settings": m.settings, **m.result} for m in methods],
        "goal_check": goal_check(methods),
        "plots": plots(methods, len(bench.prompts), title, plot_prefix, bench.steps),
    }
    if merged_from is not None:
        out.update(merged_from)
    return out


def _merge(args, new: list[Method]) -> tuple[list[Method], dict[str, Any]]:
    """The caching part already in ``args.out`` with ``new``'s rows put in (replaced by name, else appended);
    every row records the run it comes from."""
    import json

    with open(args.out, encoding="utf-8") as fh:
        old = json.load(fh)["caching"]
    if (old["prompts"], old["steps"]) != (args.caching_prompts, args.caching_steps):
        raise ValueError(f"--caching-merge: {args.out} has {old['prompts']} prompts / {old['steps']} steps; "
                         "re-run with the same --caching-prompts/--caching-steps or without --caching-merge.")
    check_same_baseline(old["methods"][0], new[0].result, args.out)
    run_id = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    fresh = {m.name: m for m in new}
    merged = []
    for row in old["methods"]:
        m = fresh.pop(row["name"], None)
        if m is None:
            rest = {k: v for k, v in row.items() if k not in ("name", "family", "settings")}
            rest.setdefault("run", old.get("run", "first run"))
            m = Method(row["name"], row["family"], row["settings"], _raiser(RuntimeError("merged row")), rest)
        else:
            m.result["run"] = run_id
        merged.append(m)
    for m in fresh.values():
        m.result["run"] = run_id
        merged.append(m)
    return merged, {"merged": f"rows with run={run_id!r} were run then (with --caching-only "
                              f"{args.caching_only!r}); the others come from the earlier run(s) of the same "
                              "settings; wall clock is relative to the baseline timed in each row's run",
                    "seconds_first_run": old.get("seconds_first_run", old["seconds"])}


#: baseline fields that identify its output when an older run recorded no ``output_sha256``
BASELINE_FINGERPRINT = ("block_computations", "token_computations", "clip_score", "fid_vs_real")


def check_same_baseline(old: dict[str, Any], new: dict[str, Any], path: str) -> None:
    """Rows of two runs are comparable only if both scored against the same full-compute output:
    the same ``output_sha256`` (or, for a run that did not record it, the same compute counts and
    rounded CLIP/FID of the baseline). Raises ``ValueError`` naming the fields that differ."""
    if "output_sha256" in old:
        keys = ("output_sha256",)
    else:
        keys = tuple(k for k in BASELINE_FINGERPRINT if k in old)
    differ = [f"{k}: {old.get(k)!r} there, {new.get(k)!r} now" for k in keys if old.get(k) != new.get(k)]
    if not keys or differ:
        raise ValueError(f"--caching-merge: the full-compute output differs from the one in {path} "
                         f"({'; '.join(differ) or 'nothing to compare'}); run with the same threads, weights and "
                         "library versions as that run, or without --caching-merge.")


def _save_progress(methods: list[Method]) -> None:
    import json

    path = os.path.join(RESULTS_DIR, "peers_caching.partial.json")
    with open(path, "w", encoding="utf-8") as fh:
        json.dump([{"name": m.name, "family": m.family, "settings": m.settings, **m.result} for m in methods], fh,
                  indent=1, default=str)
    print(f"[peers caching] quality pass saved to {path} (removed when the run completes)", flush=True)


def markdown_table(part: dict[str, Any]) -> str:
    """The README table of a finished run (``python benchmarks/peers_caching.py`` prints it)."""
    lines = ["| method | compute | PSNR dB | SSIM | CLIP | FID real / full | wall clock (spread) | "
             "our frontier − peer at its compute | our best at ≥ its compute − peer |",
             "|---|---|---|---|---|---|---|---|---|"]
    margins = {row["peer"]: row for row in part["goal_check"]["points"]}
    for m in part["methods"]:
        if not m.get("supported"):
            lines.append(f"| {m['name']} | — | — | — | — | — | — | fails: {m['reason'][:110]} | |")
            continue
        row = margins.get(m["name"])
        margin = "" if row is None or row["margin_db"] is None else f"{row['margin_db']:+.1f} dB"
        strict = ""
        if row is not None:
            strict = ("no point of ours" if row["margin_at_least_as_fast_db"] is None else
                      f"{row['margin_at_least_as_fast_db']:+.1f} dB ({row['ours_at_least_as_fast'][5:]})")
        if row is not None and not row["in_goal_range"]:
            margin += " (outside 1.5–4×)" if margin else "(beyond our fastest point)"
        psnr = "inf" if m["psnr_db"] == float("inf") else f"{m['psnr_db']:.1f}"
        fid = f"{m.get('fid_vs_real', float('nan')):.2f} / {m.get('fid_vs_full', float('nan')):.2f}"
        lines.append(f"| {m['name']} | {m['compute_ratio']:.2f}× | {psnr} | {m['ssim']:.4f} | "
                     f"{m.get('clip_score', float('nan')):.2f} | {fid} | "
                     f"{m['wall_speedup']:.2f}× ({100 * m['wall_s_spread']:.0f} %) | {margin} | {strict} |")
    return "\n".join(lines)


if __name__ == "__main__":
    import json
    import sys

    with open(sys.argv[1] if len(sys.argv) > 1 else os.path.join(RESULTS_DIR, "peers.json"), encoding="utf-8") as fh:
        print(markdown_table(json.load(fh)["caching"]))
