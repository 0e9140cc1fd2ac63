"""Caching benchmark: MAC ratio, wall-clock speedup and fidelity of every cache policy.

Measured side by side in one run against the un-accelerated pipeline (same prompts, same seeds):

* ``macs_ratio``       full / accelerated MACs of the denoising loop (analytic for schedules,
                       counted during a real call otherwise);
* ``denoiser_speedup`` baseline / accelerated time spent inside the denoiser (the loop the MACs
                       describe; median of interleaved runs);
* ``pipeline_speedup`` the same for the whole pipeline call (text encoder and VAE included);
* ``psnr_db``          PSNR of the images against the full-compute images of the same seeds.

Policies: the full schedule, FORA 2 and 3, Δ-DiT, TGATE (component-output reuse), FORA and Δ-DiT
again with block-residual reuse (``-res``), FORA-2/3/4 with forecast reuse (``-forecast1``/``-forecast2``:
first/second-order extrapolation, TaylorSeer's idea), the searched schedule bundled with the benchmark
model (``searched``), dynamic caching (``dynamic-*``: ``policy="first_block"``), TeaCache and MagCache
(``teacache-*``/``magcache-*``, calibrated with ``calibrate_teacache``/``calibrate_magcache`` on the
bundled *train* captions, never the held-out evaluation prompts), Bottleneck Sampling
(``bottleneck-*``), and diffusers' own cache hooks (FirstBlockCache, PAB, TaylorSeer, MagCache,
FasterCache; applied as ``benchmarks/peers_caching.py`` does) where they run (otherwise the reason).

Then the **joint frontier** over every measured point in (MAC ratio, PSNR) (``joint_frontier``: the
points no other point beats on both; per family the points on it, or the closest one and its gap in dB
to the best point at least as cheap), issue 20's forecast target (``goal_forecast_ge_1db_over_block_residual``)
and, with ``--plot``, the frontier plot.

    python benchmarks/caching.py --plot benchmarks/results/caching_frontier.png   # bundled benchmark model
    python benchmarks/caching.py --model tiny:pixart-alpha --quick
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import copy
import dataclasses
import io
import json
import os
import re
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
from diffusion_accel.cost import count_macs, profile_macs
from diffusion_accel.eval.metrics import psnr
from diffusion_accel.sampling import BottleneckSamplingConfig

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # dynamic_policies, peers_caching: same folder


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


def policies(pipe: Any, steps: int, quick: bool, calibration: list[str], call_kwargs: dict) -> dict[str, Callable]:
    """Every policy by name: ``attach(pipe) -> detach``, or the exception saying why it cannot run."""
    return {**static_policies(pipe, steps), **dynamic_policies(pipe, steps, quick, calibration, call_kwargs),
            **sampling_policies(quick), **peer_policies(pipe, steps, calibration, call_kwargs)}


def static_policies(pipe: Any, steps: int) -> dict[str, Callable]:
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
    return out


def dynamic_policies(pipe: Any, steps: int, quick: bool, calibration: list[str],
                     call_kwargs: dict) -> dict[str, Callable]:
    """``first_block`` at a few thresholds; ``teacache`` and ``magcache`` calibrated with the project's
    helpers on ``calibration`` prompts (never the evaluation prompts)."""
    from diffusion_accel.caching import calibrate_magcache, calibrate_teacache

    out: dict[str, Callable] = {}
    for threshold in (0.05,) if quick else (0.05, 0.1, 0.2, 0.3):
        out[f"dynamic-{threshold}"] = ours(AccelerationConfig(cache=DynamicCacheConfig(threshold=threshold)))
    other = {k: v for k, v in call_kwargs.items() if k not in ("prompt", "output_type")}
    batch = len(calibration)
    try:
        teacache = calibrate_teacache(pipe, calibration, degree=4, batch_size=batch, seed=1, **other)
        magcache = calibrate_magcache(pipe, calibration, batch_size=batch, seed=1, **other)
    except ValueError as exc:  # a family without a modulated input or block streams
        return {**out, "teacache": exc, "magcache": exc}
    CALIBRATION.update(prompts=batch, teacache_coefficients=teacache.teacache_coefficients,
                       magcache_ratios=magcache.magcache_ratios)
    for threshold in (0.2,) if quick else (0.15, 0.2, 0.25, 0.35):
        out[f"teacache-{threshold}"] = ours(AccelerationConfig(cache=dataclasses.replace(teacache, threshold=threshold)))
    from dynamic_policies import magcache_thresholds  # same folder; picks thresholds by skipped steps

    for threshold in magcache_thresholds(magcache, steps, [6] if quick else [6, 9, 11]):
        out[f"magcache-{threshold}"] = ours(AccelerationConfig(cache=dataclasses.replace(magcache, threshold=threshold)))
    return out


CALIBRATION: dict[str, Any] = {}  # what the calibration helpers fitted (reported in the JSON)


def sampling_policies(quick: bool) -> dict[str, Callable]:
    """Bottleneck Sampling (``AccelerationConfig(sampling=...)``): the default stages and the cheapest
    setting measured in ``benchmarks/sampling.py``."""
    settings = {"bottleneck-30-40-30-r0.5-initial": BottleneckSamplingConfig()}
    if not quick:
        settings["bottleneck-20-60-20-r0.3-initial"] = BottleneckSamplingConfig(
            stages=((0.2, 1), (0.6, 2), (0.2, 1)), renoise=0.3)
    return {name: ours(AccelerationConfig(sampling=cfg)) for name, cfg in settings.items()}


def peer_policies(pipe: Any, steps: int, calibration: list[str], call_kwargs: dict) -> dict[str, Callable]:
    """diffusers' cache hooks, applied with their ``apply_*`` functions (as ``benchmarks/peers_caching.py``
    does, with the denoising context PixArt's pipeline does not open) on a copy of the transformer, so
    that ``detach`` restores the untouched original. cache-dit runs where it is installed only in
    ``peers_caching.py``. MagCache's ratios come from diffusers' own calibration on ``calibration``."""
    from peers_caching import _blocks_path, _diffusers  # same folder

    ratios: list[float] = []

    def mag_ratios() -> list[float]:
        if not ratios:
            ratios.extend(diffusers_mag_ratios(pipe, steps, {**call_kwargs, "prompt": calibration}))
        return ratios

    out: dict[str, Callable] = {}
    for method in _diffusers(steps, mag_ratios, _blocks_path(pipe)):
        out[method.name] = on_transformer_copy(method.attach)
    return out


def on_transformer_copy(attach_to: Callable[[Any], None]) -> Callable[[Any], Callable[[], None]]:
    def attach(pipe):
        original = pipe.transformer
        pipe.transformer = copy.deepcopy(original)
        try:
            attach_to(pipe)
        except Exception:
            pipe.transformer = original
            raise

        def detach():
            pipe.transformer = original

        return detach

    return attach


def diffusers_mag_ratios(pipe: Any, steps: int, call_kwargs: dict) -> list[float]:
    """diffusers' MagCache calibration (``MagCacheConfig(calibrate=True)``, which prints the ratios)."""
    from diffusers.hooks import MagCacheConfig, apply_mag_cache
    from peers_caching import _DenoisingContext

    def attach_to(p):
        _DenoisingContext(p.transformer, steps)
        apply_mag_cache(p.transformer, MagCacheConfig(calibrate=True, num_inference_steps=steps))

    detach = on_transformer_copy(attach_to)(pipe)
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            pipe(**call_kwargs, generator=torch.Generator().manual_seed(1))
    finally:
        detach()
    lists = [line for line in printed.getvalue().splitlines() if line.strip().startswith("[")]
    if not lists:
        raise RuntimeError("diffusers' MagCache calibration printed no ratios")
    return [float(x) for x in ast.literal_eval(lists[-1].strip())]


def calibration_prompts(model: str, count: int) -> list[str]:
    """Prompts for the calibration helpers, disjoint from the evaluation prompts (the bundled train captions)."""
    if model.startswith("tiny:"):
        return [f"a calibration photo {i}" for i in range(count)]
    from diffusion_accel.assets import benchmark_prompts

    return benchmark_prompts("train")[:count]


def quality(pipe: Any, call: Callable, candidates: dict[str, Any], reference: np.ndarray, full_macs: float,
            log: Callable) -> tuple[dict[str, dict[str, Any]], dict[str, Callable]]:
    """One untimed call per policy: MACs the denoiser executed (counted during the call) and PSNR."""
    results: dict[str, dict[str, Any]] = {}
    usable: dict[str, Callable] = {}
    for name, attach in candidates.items():
        if isinstance(attach, Exception):
            results[name] = {"name": name, "supported": False, "reason": str(attach)}
            continue
        try:
            detach = attach(pipe)
            try:
                output = []
                counted = count_macs(lambda: output.append(call()), [m for _, m in diffusion_accel.api.find_denoisers(pipe)])
                images = images_of(output[0])
            finally:
                detach()
        except Exception as exc:  # third-party hooks that do not run on this model
            results[name] = {"name": name, "supported": False, "reason": f"{type(exc).__name__}: {exc}"}
            log(name, "unsupported:", results[name]["reason"][:100])
            continue
        macs = float(counted.modules)
        results[name] = {"name": name, "supported": True, "macs_ratio": full_macs / macs if macs else float("inf"),
                         "psnr_db": psnr(images, reference)}
        usable[name] = attach
        log(name, f"{results[name]['macs_ratio']:.2f}x", f"{results[name]['psnr_db']:.2f} dB")
    return results, usable


def timing(pipe: Any, call: Callable, usable: dict[str, Callable], rounds: int, warmup: int) -> dict[str, list]:
    """Interleaved timing: each round times the baseline and every policy once; the rounds after the warm-up."""
    timings: dict[str, list[tuple[float, float]]] = {name: [] for name in ["baseline", *usable]}
    for _ in range(warmup + rounds):
        for name in timings:
            detach = usable[name](pipe) if name != "baseline" else (lambda: None)
            timer = DenoiserTimer(pipe)
            start = time.perf_counter()
            call()
            elapsed = time.perf_counter() - start
            timer.close()
            detach()
            timings[name].append((timer.total, elapsed))
    return {name: runs[warmup:] for name, runs in timings.items()}


def speedups(base: list[tuple[float, float]], runs: list[tuple[float, float]]) -> dict[str, Any]:
    """Medians of one policy's rounds, and its per-round denoiser speed-ups (baseline / policy of the same
    round): their list, minimum and spread (max - min)."""
    per_round = [b[0] / r[0] for b, r in zip(base, runs)]
    return {"denoiser_s": statistics.median(r[0] for r in runs), "pipeline_s": statistics.median(r[1] for r in runs),
            "denoiser_speedup_rounds": per_round, "denoiser_speedup_min": min(per_round),
            "denoiser_speedup_spread": max(per_round) - min(per_round)}


def family(name: str) -> str:
    """The group a policy belongs to on the frontier plot (the new policies of issue 20 by name)."""
    for key, label in (("forecast", "forecast reuse"), ("teacache", "teacache"), ("magcache-", "magcache"),
                       ("bottleneck", "bottleneck sampling"), ("diffusers", "diffusers hooks"),
                       ("-res", "block residual"), ("dynamic", "first_block"), ("searched", "searched")):
        if key in name:
            return label
    return "full" if name == "full" else "component outputs"


def pareto(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Joint frontier over every measured point in (MAC ratio, PSNR): a point is on it when no other point
    is at least as cheap and at least as good (one of them strictly). ``gap_db`` = PSNR of the best point
    at least as cheap minus the point's own (0 on the frontier), without interpolation."""
    points = [r for r in results if r.get("supported")]
    for r in points:
        better = [o["psnr_db"] for o in points if o is not r and o["macs_ratio"] >= r["macs_ratio"]]
        dominated = any(o is not r and o["macs_ratio"] >= r["macs_ratio"] and o["psnr_db"] >= r["psnr_db"]
                        and (o["macs_ratio"], o["psnr_db"]) != (r["macs_ratio"], r["psnr_db"]) for o in points)
        r["on_frontier"] = not dominated
        r["frontier_gap_db"] = max(0.0, max(better, default=r["psnr_db"]) - r["psnr_db"])
    frontier = sorted((r for r in points if r["on_frontier"]), key=lambda r: r["macs_ratio"])
    families: dict[str, Any] = {}
    for r in points:
        entry = families.setdefault(family(r["name"]), {"on_frontier": [], "closest": None})
        if r["on_frontier"]:
            entry["on_frontier"].append(r["name"])
        if entry["closest"] is None or r["frontier_gap_db"] < entry["closest"]["gap_db"]:
            entry["closest"] = {"name": r["name"], "gap_db": r["frontier_gap_db"], "macs_ratio": r["macs_ratio"]}
    return {"frontier": [r["name"] for r in frontier], "families": families}


def forecast_goal(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Issue 20's target: at FORA-3 and FORA-4 compute, forecast reuse >= +1 dB PSNR over block residuals."""
    out = {}
    for interval in (3, 4):
        res = results.get(f"fora-{interval}-res", {})
        if not res.get("supported"):
            continue
        for order in (1, 2):
            forecast = results.get(f"fora-{interval}-forecast{order}", {})
            if forecast.get("supported"):
                gain = forecast["psnr_db"] - res["psnr_db"]
                out[f"fora-{interval}-forecast{order}"] = {"gain_db": gain, "met": gain >= 1.0}
    return out


def plot(results: list[dict[str, Any]], path: str, title: str) -> None:
    """PSNR against MAC ratio for every measured point, coloured by family, with the joint frontier."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [r for r in results if r.get("supported") and r["name"] != "full"]
    fig, ax = plt.subplots(figsize=(9, 6))
    for label in sorted({family(r["name"]) for r in points}):
        group = [r for r in points if family(r["name"]) == label]
        ax.scatter([r["macs_ratio"] for r in group], [r["psnr_db"] for r in group], label=label, s=28,
                   marker="*" if label in NEW_FAMILIES else "o")
        for r in group:
            if label in NEW_FAMILIES or r["on_frontier"]:
                ax.annotate(r["name"], (r["macs_ratio"], r["psnr_db"]), fontsize=6, xytext=(3, 2),
                            textcoords="offset points")
    front = sorted((r for r in points if r["on_frontier"]), key=lambda r: r["macs_ratio"])
    xs, ys = [r["macs_ratio"] for r in front], [r["psnr_db"] for r in front]
    ax.step(xs, ys, where="pre", color="k", lw=1, label="joint frontier")
    ax.set_xlabel("MAC ratio (full / accelerated denoiser MACs)")
    ax.set_ylabel("PSNR vs full compute (dB)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


NEW_FAMILIES = ("forecast reuse", "teacache", "magcache", "bottleneck sampling")


def run(args: argparse.Namespace) -> dict[str, Any]:
    set_threads(args.threads)
    pipe, call_kwargs = load(args.model, args.batch, args.steps)
    pipe.set_progress_bar_config(disable=True)
    log = lambda *a: print(*a, file=sys.stderr, flush=True)  # noqa: E731

    def call(seed: int = 0):
        return pipe(**call_kwargs, generator=torch.Generator().manual_seed(seed))

    profile = profile_macs(pipe, **call_kwargs)
    full_macs = profile.full_macs()
    reference = images_of(call())
    calibration = calibration_prompts(args.model, args.batch)
    candidates = policies(pipe, args.steps, args.quick, calibration, call_kwargs)
    if args.only:
        candidates = {n: a for n, a in candidates.items() if n == "full" or re.search(args.only, n)}
    log(f"{len(candidates)} policies; calibration on {len(calibration)} prompts:", json.dumps(CALIBRATION))
    results, usable = quality(pipe, call, candidates, reference, full_macs, log)
    log("quality pass:", json.dumps(list(results.values()), default=float))  # kept if the timing is cut short
    if args.runs == 0:  # quality and MACs only (a loaded machine times nothing usefully)
        usable = {}
    rounds = timing(pipe, call, usable, args.runs, args.warmup) if args.runs else {}
    base = speedups(rounds["baseline"], rounds["baseline"]) if rounds else {"denoiser_s": None, "pipeline_s": None}
    base_denoiser, base_pipeline = base["denoiser_s"], base["pipeline_s"]
    for name in usable:
        r = results[name]
        r.update(speedups(rounds["baseline"], rounds[name]))
        r.update(denoiser_speedup=base_denoiser / r["denoiser_s"], pipeline_speedup=base_pipeline / r["pipeline_s"])
        r["speedup_over_macs_ratio"] = r["denoiser_speedup"] / r["macs_ratio"]
    static_2x = [r for n, r in results.items() if "speedup_over_macs_ratio" in r and n.split("-")[0] in ("fora", "delta", "searched")
                 and r["macs_ratio"] >= 2.0]
    frontier = pareto(list(results.values()))
    if args.plot:
        plot(list(results.values()), args.plot, f"{args.model}: {args.batch} held-out prompts, {args.steps} steps")
    return {
        "benchmark": "caching",
        "model": args.model,
        "steps": args.steps,
        "batch": args.batch,
        "threads": args.threads,
        "runs": args.runs,
        "baseline": {"denoiser_s": base_denoiser, "pipeline_s": base_pipeline, "denoiser_macs": full_macs},
        "calibration": {"split": "train" if args.model == "benchmark" else "synthetic", **CALIBRATION},
        "per_component_macs_per_step": profile.per_component(),
        "results": list(results.values()),
        "joint_frontier": frontier,
        "goal_forecast_ge_1db_over_block_residual": forecast_goal(results),
        "goal_static_speedup_ge_0.9x_macs_ratio_at_2x": {
            r["name"]: r["speedup_over_macs_ratio"] >= 0.9 for r in static_2x
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argument_parser(__doc__)
    add_model_arguments(parser, steps=20, batch=16)
    parser.add_argument("--runs", type=int, default=9, help="interleaved timing rounds (0: no timing)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="fewer runs and policies")
    parser.add_argument("--only", default=None, help="regular expression: measure the policies whose name matches "
                        "(and the full schedule)")
    parser.add_argument("--plot", default=None, help="write the frontier plot here (PNG); the bundled model's run "
                        "writes benchmarks/results/caching_frontier.png")
    args = parser.parse_args(argv)
    if args.quick:
        args.runs, args.steps = min(args.runs, 2), min(args.steps, 10)
    emit_json(run(args), indent=2, default=float)
    return 0


if __name__ == "__main__":
    sys.exit(main())
