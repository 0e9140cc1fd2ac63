"""Caching benchmark: MAC ratio, wall-clock speedup and fidelity of every cache policy.

Measured side by side in one run against the un-accelerated pipeline (same prompts, same seeds):

* ``macs_ratio``       full / accelerated MACs of the denoising loop (analytic for schedules,
                       counted during a real call otherwise);
* ``denoiser_speedup`` baseline / accelerated time spent inside the denoiser (the loop the MACs
                       describe; median of interleaved runs);
* ``pipeline_speedup`` the same for the whole pipeline call (text encoder and VAE included);
* ``psnr_db``          PSNR of the images against the full-compute images of the same seeds.

Policies: the full schedule, FORA 2 and 3, Δ-DiT, TGATE (component-output reuse), FORA and Δ-DiT
again with block-residual reuse (``-res``) and with forecast reuse (``-forecast1``/``-forecast2``:
first/second-order extrapolation, TaylorSeer's idea), the searched schedule bundled with the benchmark
model (``searched``), dynamic caching, and diffusers' own FirstBlockCache / TaylorSeer /
MagCache where they run on the model (otherwise the reason).

    python benchmarks/caching.py                      # bundled benchmark model
    python benchmarks/caching.py --model tiny:pixart-alpha --quick
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from typing import Any, Callable

import numpy as np
import torch
from _common import add_model_arguments, argument_parser, emit_json, set_threads

import diffusion_accel
from diffusion_accel import AccelerationConfig
from diffusion_accel.caching import CacheSchedule, DynamicCacheConfig, StaticCacheConfig
from diffusion_accel.caching.static import block_residual_supported
from diffusion_accel.cost import denoiser_macs, profile_macs
from diffusion_accel.eval.metrics import psnr


def load(model: str, batch: int, steps: int):
    """(pipe, call_kwargs) for ``benchmark`` or ``tiny:<name>``."""
    if model.startswith("tiny:"):
        from diffusion_accel.testing import tiny_call_kwargs, tiny_pipeline

        name = model.split(":", 1)[1]
        kwargs = tiny_call_kwargs(name, num_inference_steps=steps)
        kwargs["prompt"] = [f"a photo number {i}" for i in range(batch)]
        return tiny_pipeline(name), kwargs
    from diffusion_accel.assets import benchmark_prompts
    from diffusion_accel.eval.sweep import default_call_kwargs, load_pipeline

    kwargs = {**default_call_kwargs("benchmark"), "num_inference_steps": steps, "output_type": "np"}
    kwargs["prompt"] = benchmark_prompts("heldout")[:batch]
    return load_pipeline(model), kwargs


def images_of(output: Any) -> np.ndarray:
    images = output.frames if hasattr(output, "frames") else output.images
    images = images.cpu().numpy() if torch.is_tensor(images) else np.asarray(images)
    if images.shape[-1] not in (1, 3):  # channels first
        images = np.moveaxis(images, -3, -1)
    return (np.clip(images, 0, 1) * 255).round().astype(np.uint8)


class DenoiserTimer:
    """Sums the wall-clock time spent inside the pipeline's denoisers."""

    def __init__(self, pipe: Any) -> None:
        self.total = 0.0
        self._start: list[float] = []
        self._handles = []
        for _, module in diffusion_accel.api.find_denoisers(pipe):
            self._handles.append(module.register_forward_pre_hook(self._pre))
            self._handles.append(module.register_forward_hook(self._post))

    def _pre(self, module, args):
        self._start.append(time.perf_counter())

    def _post(self, module, args, output):
        self.total += time.perf_counter() - self._start.pop()

    def close(self) -> None:
        for h in self._handles:
            h.remove()


def ours(config: AccelerationConfig) -> Callable[[Any], Callable[[], None]]:
    def attach(pipe):
        diffusion_accel.apply(pipe, config)
        return lambda: diffusion_accel.remove(pipe)

    return attach


def diffusers_cache(config_factory: Callable[[], Any]) -> Callable[[Any], Callable[[], None]]:
    """Attach one of diffusers' cache hooks through the model's own ``enable_cache``."""

    def attach(pipe):
        module = pipe.transformer
        if not hasattr(module, "enable_cache"):
            raise RuntimeError(f"{type(module).__name__} has no enable_cache (not a diffusers CacheMixin model)")
        module.enable_cache(config_factory())
        return module.disable_cache

    return attach


def policies(pipe: Any, steps: int, quick: bool) -> dict[str, Callable]:
    from diffusers.hooks import FirstBlockCacheConfig, MagCacheConfig, TaylorSeerCacheConfig

    def static(schedule, reuse="outputs", **options):
        return ours(AccelerationConfig(cache=StaticCacheConfig(schedule, reuse=reuse, **options)))

    out = {
        "full": static(CacheSchedule.full(pipe, steps)),
        "fora-2": static(CacheSchedule.fora(pipe, steps, 2)),
        "fora-3": static(CacheSchedule.fora(pipe, steps, 3)),
        "delta-dit": static(CacheSchedule.delta_dit(pipe, steps, interval=3)),
    }
    if block_residual_supported(pipe.transformer):  # StaticCacheConfig(reuse="block_residual")
        for interval in (2, 3, 4):
            out[f"fora-{interval}-res"] = static(CacheSchedule.fora(pipe, steps, interval), "block_residual")
        out["delta-dit-res"] = static(CacheSchedule.delta_dit(pipe, steps, interval=3), "block_residual")
    for interval in (2, 3, 4):  # TaylorSeer-style forecast reuse (issue 20), first and second order
        for order in (1, 2):
            schedule = CacheSchedule.fora(pipe, steps, interval)
            out[f"fora-{interval}-forecast{order}"] = static(schedule, "forecast", forecast_order=order)
    try:  # the schedule the NSGA-II search found for the bundled model
        from diffusion_accel.assets import benchmark_search_config

        searched = benchmark_search_config()
        searched.cache.schedule.check_model(pipe.transformer)
        out["searched"] = ours(AccelerationConfig(cache=dataclasses.replace(searched.cache, auto_resample=True)))
    except (FileNotFoundError, ValueError) as exc:
        out["searched"] = exc
    try:
        out["tgate"] = static(CacheSchedule.tgate(pipe, steps, gate_step=max(1, steps // 2)))
    except ValueError as exc:
        out["tgate"] = exc
    for threshold in (0.05,) if quick else (0.05, 0.1, 0.2):
        out[f"dynamic-{threshold}"] = ours(AccelerationConfig(cache=DynamicCacheConfig(threshold=threshold)))
    out["diffusers-firstblockcache"] = diffusers_cache(lambda: FirstBlockCacheConfig(threshold=0.1))
    out["diffusers-taylorseer"] = diffusers_cache(lambda: TaylorSeerCacheConfig(cache_interval=2))
    out["diffusers-magcache"] = diffusers_cache(lambda: MagCacheConfig(num_inference_steps=steps))
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    set_threads(args.threads)
    pipe, call_kwargs = load(args.model, args.batch, args.steps)

    def call(seed: int = 0):
        return pipe(**call_kwargs, generator=torch.Generator().manual_seed(seed))

    profile = profile_macs(pipe, **call_kwargs)
    full_macs = profile.full_macs()
    reference = images_of(call())
    candidates = policies(pipe, args.steps, args.quick)
    results: dict[str, dict[str, Any]] = {}
    usable: dict[str, Callable] = {}
    for name, attach in candidates.items():
        if isinstance(attach, Exception):
            results[name] = {"name": name, "supported": False, "reason": str(attach)}
            continue
        try:
            detach = attach(pipe)
            try:
                images = images_of(call())
                macs = denoiser_macs(pipe, **call_kwargs, generator=torch.Generator().manual_seed(0))
            finally:
                detach()
        except Exception as exc:  # third-party hooks that do not run on this model
            results[name] = {"name": name, "supported": False, "reason": f"{type(exc).__name__}: {exc}"}
            continue
        results[name] = {
            "name": name,
            "supported": True,
            "macs_ratio": full_macs / macs if macs else float("inf"),
            "psnr_db": psnr(images, reference),
        }
        usable[name] = attach

    # Interleaved timing: each round times the baseline and every policy once.
    timings: dict[str, list[tuple[float, float]]] = {name: [] for name in ["baseline", *usable]}
    for _ in range(args.warmup + args.runs):
        for name in timings:
            detach = usable[name](pipe) if name != "baseline" else (lambda: None)
            timer = DenoiserTimer(pipe)
            start = time.perf_counter()
            call()
            elapsed = time.perf_counter() - start
            timer.close()
            detach()
            timings[name].append((timer.total, elapsed))
    median = {
        name: tuple(statistics.median(t[i] for t in runs[args.warmup:]) for i in (0, 1))
        for name, runs in timings.items()
    }
    base_denoiser, base_pipeline = median["baseline"]
    for name in usable:
        denoiser_s, pipeline_s = median[name]
        r = results[name]
        r.update(
            denoiser_s=denoiser_s,
            pipeline_s=pipeline_s,
            denoiser_speedup=base_denoiser / denoiser_s,
            pipeline_speedup=base_pipeline / pipeline_s,
        )
        r["speedup_over_macs_ratio"] = r["denoiser_speedup"] / r["macs_ratio"]

    static_2x = [r for n, r in results.items() if r.get("supported") and n.split("-")[0] in ("fora", "delta", "searched")
                 and r["macs_ratio"] >= 2.0]
    return {
        "benchmark": "caching",
        "model": args.model,
        "steps": args.steps,
        "batch": args.batch,
        "threads": args.threads,
        "runs": args.runs,
        "baseline": {"denoiser_s": base_denoiser, "pipeline_s": base_pipeline, "denoiser_macs": full_macs},
        "per_component_macs_per_step": profile.per_component(),
        "results": list(results.values()),
        "goal_static_speedup_ge_0.9x_macs_ratio_at_2x": {
            r["name"]: r["speedup_over_macs_ratio"] >= 0.9 for r in static_2x
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argument_parser(__doc__)
    add_model_arguments(parser, steps=20, batch=16)
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="fewer runs and policies")
    args = parser.parse_args(argv)
    if args.quick:
        args.runs, args.steps = min(args.runs, 2), min(args.steps, 10)
    emit_json(run(args), indent=2, default=float)
    return 0


if __name__ == "__main__":
    sys.exit(main())
