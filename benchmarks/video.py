"""Everything measured on the bundled video model (a small Wan; issue 18), ratios in one run (JSON).

Parts (``--parts``, default all):

* ``caching``: ours vs cache-dit and diffusers' own caches at matched compute -- the caching part of
  ``benchmarks/peers.py`` run with ``--caching-model benchmark-video`` (block computations counted the
  same way for every method, each weighted by the token rows it projected so that Bottleneck
  Sampling's lower resolution counts), plus the video-only points: forecast (TaylorSeer) reuse on
  FORA-3 at order 2 and FORA-4 at orders 1 and 2 (FORA-3 order 1 is a peers row), ``first_block`` with
  diffusers FirstBlockCache's rule (``compare_to="last_computed"``, no cap on skips in a row) at gentle
  thresholds, the dynamic ``teacache`` and
  ``magcache`` policies (calibrated on training captions), Bottleneck Sampling, and a searched
  frontier chosen on training captions only (``--search-prompts``, default 8; see :func:`_searched`):
  ``search_schedule`` seeded with the replays of FirstBlockCache's rule and TeaCache, pooled with
  dynamic candidates (FirstBlockCache's rule and TeaCache at several thresholds, each with plain and
  forecast reuse) scored by the same evaluator, and the pool's non-dominated points between 1.0x and
  5x MACs measured like every other method. The goal check is run twice: every one of our points,
  and the searched points alone, against every diffusers and cache-dit point (margin >= BEAT_DB at
  the peer's compute along our interpolated frontier).
* ``techniques``: quantization (W8A8, W4A8, mixed W4/W8 allocated from sensitivities measured on the
  video model), sparse attention (block-sparse at 50 % / 25 % density, SLA, linear, VMoBA) and INT8
  attention (alone and with W8A8) at the model's token count, applied with :func:`diffusion_accel.apply`: PSNR per video, temporal error
  and flicker against the full-compute clips of the same seeds, denoiser MAC ratio.

Results go to ``benchmarks/results/video.json``::

    python benchmarks/video.py --prompts 8
    python benchmarks/video.py --parts techniques --prompts 4

``--caching-only`` (name prefixes, the video-only rows included) with ``--merge`` re-runs some caching
rows and the baseline and puts them into the existing file, after checking that the baseline's clips
are the ones its rows were scored against (compute and PSNR are deterministic; wall clock is only
comparable within one run, see each row's ``run``). A merge that re-runs the search (``"ours searched"``)
first drops every row of the earlier search, so two searches' points never mix::

    python benchmarks/video.py --parts caching --threads 1 --merge --caching-only "ours searched"
    python benchmarks/video.py --parts caching --threads 1 --merge --caching-only "ours dynamic first_block"
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results", "video.json")


def technique_configs() -> dict[str, Any]:
    """name -> AccelerationConfig of the ``techniques`` part (mixed precision is added by
    :func:`mixed_precision_config`, from sensitivities measured on the model)."""
    from diffusion_accel import AccelerationConfig
    from diffusion_accel.quant import QuantConfig
    from diffusion_accel.sparse_attn import SparseAttentionConfig

    def sparse(**kw):
        return AccelerationConfig(attention=SparseAttentionConfig(**kw))

    return {
        "W8A8": AccelerationConfig(quant=QuantConfig(weight_bits=8, act_bits=8)),
        "W4A8": AccelerationConfig(quant=QuantConfig(weight_bits=4, act_bits=8)),
        "block-sparse 50%": sparse(method="block_sparse", density=0.5),
        "block-sparse 25%": sparse(method="block_sparse", density=0.25),
        "SLA 25%": sparse(method="sla", density=0.25),
        "vmoba 50%": sparse(method="vmoba", density=0.5),
        "vmoba 25%": sparse(method="vmoba", density=0.25),
        "linear": sparse(method="linear"),
        "INT8 attention": sparse(method="int8"),
        "W8A8 + INT8 attention": AccelerationConfig(quant=QuantConfig(weight_bits=8, act_bits=8),
                                                    attention=SparseAttentionConfig(method="int8")),
    }


#: the techniques row whose W4/W8 plan is allocated from sensitivities measured in the run
MIXED = "W4A8 mixed @6 bits"


def mixed_precision_config(pipe: Any, prompts: list[str], call_kwargs: dict[str, Any], average_bits: float = 6.0):
    """W4/W8 per component (MILP at ``average_bits``) from sensitivities measured on the video model
    (one training caption, half the steps: a component's rank, not its absolute loss, matters)."""
    from diffusion_accel import AccelerationConfig
    from diffusion_accel.quant import QuantConfig, measure_sensitivity

    steps = max(2, call_kwargs["num_inference_steps"] // 2)
    other = {k: v for k, v in call_kwargs.items() if k not in ("num_inference_steps", "output_type")}
    sens = measure_sensitivity(pipe, prompts, group_by="component", num_inference_steps=steps, call_kwargs=other)
    plan = sens.allocate(average_bits=average_bits)
    return AccelerationConfig(quant=QuantConfig(plan=plan, act_bits=8)), {
        "average_bits": average_bits, "groups": len(sens.sizes), "sensitivity_steps": steps,
        "w4_layers": sum(1 for _, bits in plan.rules if bits == 4),
        "w8_layers": sum(1 for _, bits in plan.rules if bits == 8)}


def _clips(output: Any) -> np.ndarray:
    """``(N, F, H, W, 3)`` uint8 from a pipeline output with ``output_type="np"``."""
    frames = np.asarray(output.frames)
    return (np.clip(frames, 0, 1) * 255).round().astype(np.uint8)


def _tokens(pipe: Any, call) -> int:
    """Video tokens one denoiser call sees (latent frames x height x width / patch)."""
    seen = []
    handle = pipe.transformer.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(tuple((kwargs.get("hidden_states", args[0] if args else None)).shape)),
        with_kwargs=True)
    try:
        call(1)
    finally:
        handle.remove()
    _, _, f, h, w = seen[0]
    pf, ph, pw = pipe.transformer.config.patch_size
    return (f // pf) * (h // ph) * (w // pw)


def run_techniques(prompts: list[str], call_kwargs: dict[str, Any], model: str,
                   calibration: list[str], only: str = "") -> dict[str, Any]:
    import diffusion_accel
    from diffusion_accel.cost import denoiser_macs
    from diffusion_accel.eval.sweep import load_pipeline
    from diffusion_accel.eval.video_metrics import TemporalSums

    pipe = load_pipeline(model)
    pipe.set_progress_bar_config(disable=True)

    def call(count=None):
        chosen = prompts[:count] if count else prompts
        generators = [torch.Generator().manual_seed(i) for i in range(len(chosen))]
        return pipe(chosen, generator=generators, **call_kwargs)

    tokens = _tokens(pipe, call)
    reference = _clips(call())
    full_macs = denoiser_macs(pipe, prompt=prompts, **call_kwargs)
    prefixes = [p.strip() for p in only.split(",") if p.strip()]
    wanted = lambda name: not prefixes or any(name.startswith(p) for p in prefixes)  # noqa: E731
    configs = {name: config for name, config in technique_configs().items() if wanted(name)}
    extra: dict[str, Any] = {}
    start = time.perf_counter()
    if wanted(MIXED):
        try:
            configs[MIXED], extra = mixed_precision_config(pipe, calibration, call_kwargs)
        except Exception as exc:  # record why, keep the other rows
            extra = {"error": f"{type(exc).__name__}: {exc}"[:400]}
        extra["seconds"] = round(time.perf_counter() - start, 1)
    rows = []
    for name, config in configs.items():
        row: dict[str, Any] = {"name": name, "config": config.to_dict()}
        attention = config.attention
        if attention is not None and attention.method != "linear":
            row["density"] = attention.density
        try:
            diffusion_accel.apply(pipe, config)
            try:
                start = time.perf_counter()
                clips = _clips(call())
                row["seconds"] = time.perf_counter() - start
                macs = denoiser_macs(pipe, prompt=prompts, **call_kwargs)
            finally:
                diffusion_accel.remove(pipe)
        except Exception as exc:  # a technique that does not run on this model: say why
            row.update(supported=False, reason=f"{type(exc).__name__}: {exc}")
            rows.append(row)
            continue
        sums = TemporalSums()
        sums.update(clips, reference)
        row.update(supported=True, macs_ratio=full_macs / macs if macs else None, **sums.compute())
        rows.append(row)
        shown = {k: row.get(k) for k in ("macs_ratio", "psnr_per_video", "temporal_error")}
        print(f"[video techniques] {name}: {json.dumps(shown, default=float)}", file=sys.stderr, flush=True)
    return {"tokens": tokens, "mixed_precision": extra, "rows": rows}


#: FirstBlockCache's rule (``compare_to="last_computed"``, no cap on skips in a row) at the thresholds the search
#: replays as seeds and tries as dynamic candidates (the gentle end matters: below 1.45x it is the peers' rule)
SEARCH_FIRST_BLOCK = (0.06, 0.08, 0.1, 0.12, 0.15, 0.2, 0.25, 0.3, 0.4)
#: the compute budgets the search's target refinement aims at (those of the gentle diffusers/cache-dit points)
SEARCH_TARGETS = (1.36, 1.43, 1.82)
#: the subsets replayed as seeds (the population also needs room for FORA, Δ-DiT...)
SEED_FIRST_BLOCK = (0.08, 0.1, 0.12, 0.15, 0.2, 0.3)
SEED_TEACACHE = (0.1, 0.15, 0.2, 0.35)
#: TeaCache thresholds (coefficients calibrated on the search's captions) seeded and tried the same way
SEARCH_TEACACHE = (0.08, 0.1, 0.12, 0.15, 0.2, 0.25, 0.35, 0.5)


def search_dynamic_configs(steps: int, teacache: Any = None) -> list[tuple[str, Any]]:
    """``(name, DynamicCacheConfig)`` candidates of the searched frontier's dynamic half: FirstBlockCache's rule
    at :data:`SEARCH_FIRST_BLOCK` and TeaCache (``teacache``: a calibrated config, or ``None``) at
    :data:`SEARCH_TEACACHE`, each with plain residual reuse and with forecast reuse of order 1."""
    import dataclasses

    from diffusion_accel.caching import DynamicCacheConfig

    out = []
    for reuse in ("residual", "forecast"):
        tag = "" if reuse == "residual" else "-forecast"
        out += [(f"first_block-last-{t:g}{tag}", DynamicCacheConfig(threshold=t, compare_to="last_computed",
                                                                    max_consecutive_skips=steps, reuse=reuse))
                for t in SEARCH_FIRST_BLOCK]
        if teacache is not None:
            out += [(f"teacache-{t:g}{tag}", dataclasses.replace(teacache, threshold=t, reuse=reuse))
                    for t in SEARCH_TEACACHE]
    return out


def search_seeds(steps: int, teacache: Any = None) -> tuple[Any, ...]:
    """The search's dynamic seeds: FirstBlockCache's rule, TeaCache and three of the default rule's thresholds
    (replayed as static schedules on the calibration captions)."""
    fbc = [{"threshold": t, "compare_to": "last_computed", "max_consecutive_skips": steps} for t in SEED_FIRST_BLOCK]
    tea = [] if teacache is None else [
        {"threshold": t, "policy": "teacache", "teacache_coefficients": list(teacache.teacache_coefficients)}
        for t in SEED_TEACACHE]
    return (*fbc, *tea, 0.1, 0.3, 0.5)


def _searched(bench: Any, args: argparse.Namespace, other: dict[str, Any]):
    """``(points, record)``: the searched frontier on the video model, chosen on training captions only.

    1. ``search_schedule`` (NSGA-II over static schedules with ``--search-reuse``, default forecast order 1;
       latent MSE, MACs), seeded with the replays of FirstBlockCache's rule, TeaCache and three default dynamic
       thresholds, plus target refinement at :data:`SEARCH_TARGETS`;
    2. its frontier and the dynamic candidates (:func:`search_dynamic_configs`) are scored by one
       :class:`~diffusion_accel.search.CandidateEvaluator` on the same captions and seeds (latent MSE; MACs from
       the profile, a dynamic cache's from its per-step skip shares);
    3. the non-dominated set of that pool between 1.0x and 5x MACs is the searched frontier, measured on the
       held-out prompts like every other method."""
    from diffusion_accel import AccelerationConfig
    from diffusion_accel.caching import calibrate_teacache
    from diffusion_accel.eval.generate import make_items
    from diffusion_accel.eval.prompts import load_prompts
    from diffusion_accel.search import CandidateEvaluator, non_dominated, search_schedule

    start = time.perf_counter()
    captions = bench.model.prompts("train")[: args.search_prompts]
    teacache = None
    try:
        teacache = calibrate_teacache(bench.fresh(), captions, batch_size=len(captions), seed=1,
                                      num_inference_steps=bench.steps, **other)
    except Exception as exc:  # TeaCache does not run here: search without it
        print(f"[video search] TeaCache calibration failed: {exc}", file=sys.stderr, flush=True)
    result = search_schedule(model=bench.fresh(), prompts=captions, num_steps=bench.steps,
                             population=args.search_population, generations=args.search_generations,
                             batch_size=len(captions), call_kwargs=other, dynamic_seeds=search_seeds(bench.steps, teacache),
                             refine_rounds=args.search_refine_rounds, pick_speedups=SEARCH_TARGETS,
                             reuse=args.search_reuse,
                             generalise=False, out=None, progress=False, clip=None, seed=0)
    searched_seconds = time.perf_counter() - start
    evaluator = CandidateEvaluator(bench.fresh(), make_items(load_prompts(captions), seed=0),
                                   {**other, "num_inference_steps": bench.steps}, quality="latent_mse",
                                   batch_size=len(captions))
    evaluator.prepare()
    pool = []
    for e in result.frontier:
        config = AccelerationConfig.from_dict(e["config"])
        pool.append((e["name"], e.get("origin"), config, evaluator.evaluate_config(config)))
    for name, cache in search_dynamic_configs(bench.steps, teacache):
        config = AccelerationConfig(cache=cache)
        pool.append((name, "dynamic", config, evaluator.evaluate_dynamic(config)))
    keep = non_dominated([[ev.cost, ev.objective] for *_, ev in pool])
    front = sorted((pool[i] for i in keep if 1.0 < pool[i][3].macs_ratio <= 5.0), key=lambda p: p[3].macs_ratio)
    if len(front) > args.searched_points:
        picks = np.linspace(0, len(front) - 1, args.searched_points).round().astype(int)
        front = [front[i] for i in sorted(set(picks.tolist()))]
    entries = [{"name": name, "origin": origin, "speedup": ev.macs_ratio, "config": config.to_dict(),
                "calibration_latent_mse": ev.quality} for name, origin, config, ev in front]
    record = {"seconds": round(time.perf_counter() - start), "search_seconds": round(searched_seconds),
              "evaluations": result.evaluations, "population": args.search_population,
              "generations": args.search_generations, "refine_rounds": args.search_refine_rounds,
              "refine_targets": list(SEARCH_TARGETS), "reuse": args.search_reuse,
              "calibration_prompts": len(captions), "quality": "latent_mse", "cost": "macs",
              "dynamic_seeds": len(search_seeds(bench.steps, teacache)),
              "dynamic_candidates": len(pool) - len(result.frontier),
              "teacache_coefficients": None if teacache is None else list(teacache.teacache_coefficients),
              "pool": [{"name": name, "origin": origin, "macs_speedup": round(ev.macs_ratio, 3),
                        "latent_mse": ev.quality} for name, origin, _, ev in pool],
              "frontier": [{"name": e["name"], "origin": e["origin"], "macs_speedup": round(e["speedup"], 3),
                            "latent_mse": e["calibration_latent_mse"]} for e in entries]}
    return entries, record


#: forecast (TaylorSeer) reuse rows beside the peers' ``ours fora-3-forecast`` (order 1): (FORA interval, order)
FORECAST_ROWS = ((3, 2), (4, 1), (4, 2))


def forecast_methods(pipe: Any, steps: int, method) -> list[Any]:
    """``StaticCacheConfig(reuse="forecast")`` on FORA-3/FORA-4 schedules at orders 1 and 2 (issue 20),
    measured at the same compute as the block-residual FORA rows."""
    from diffusion_accel import AccelerationConfig
    from diffusion_accel.caching import CacheSchedule, StaticCacheConfig

    out = []
    for interval, order in FORECAST_ROWS:
        config = AccelerationConfig(cache=StaticCacheConfig(CacheSchedule.fora(pipe, steps, interval),
                                                            reuse="forecast", forecast_order=order))
        out.append(method(f"ours fora-{interval}-forecast-o{order}",
                          {"policy": f"fora-{interval}", "reuse": "forecast", "forecast_order": order}, config))
    return out


#: ``first_block`` with diffusers FirstBlockCache's rule (``compare_to="last_computed"``, no cap on skips in a row:
#: the same decisions as FirstBlockCache, docs/caching.md) at gentle thresholds, for 1.0-1.5x
GENTLE_FIRST_BLOCK = (0.05, 0.1, 0.12, 0.15, 0.2, 0.3)


def gentle_first_block_methods(steps: int, method) -> list[Any]:
    """``DynamicCacheConfig(compare_to="last_computed", max_consecutive_skips=steps)`` at :data:`GENTLE_FIRST_BLOCK`,
    with plain residual reuse and with forecast reuse of order 1 (``reuse="forecast"``)."""
    from diffusion_accel import AccelerationConfig
    from diffusion_accel.caching import DynamicCacheConfig

    out = []
    for reuse, tag in (("residual", ""), ("forecast", "-forecast")):
        for t in GENTLE_FIRST_BLOCK:
            kw = {"threshold": t, "compare_to": "last_computed", "max_consecutive_skips": steps, "reuse": reuse}
            out.append(method(f"ours dynamic first_block-last-nocap-{t:g}{tag}", {"policy": "first_block", **kw},
                              AccelerationConfig(cache=DynamicCacheConfig(**kw))))
    return out


def overlaps(prefixes: list[str], group: str) -> bool:
    """Whether a ``--caching-only`` selection can pick a method whose name starts with ``group`` (no
    prefixes: everything)."""
    return not prefixes or any(p.startswith(group) or group.startswith(p) for p in prefixes)


def caching_extra(args: argparse.Namespace, record: dict[str, Any]):
    """The video-only methods of the caching part (see the module docstring); ``record`` gets the
    calibrations and the search. ``--caching-only`` selects among them too (a group -- calibration,
    search -- runs only if its names can match)."""
    prefixes = [p.strip() for p in args.caching_only.split(",") if p.strip()]

    def extra(bench: Any, template: Any) -> list[Any]:
        out = _extra_methods(bench, template, prefixes, args, record)
        return [m for m in out if not prefixes or any(m.name.startswith(p) for p in prefixes)]

    return extra


def _extra_methods(bench: Any, template: Any, prefixes: list[str], args: argparse.Namespace,
                   record: dict[str, Any]) -> list[Any]:
    import dataclasses

    import peers_caching as pc
    from dynamic_policies import magcache_thresholds

    from diffusion_accel import AccelerationConfig, apply
    from diffusion_accel.caching import calibrate_magcache, calibrate_teacache
    from diffusion_accel.sampling import BottleneckSamplingConfig

    def method(name, settings, config):
        return pc.Method(name, "ours", {**settings, "config": config.to_dict()},
                         lambda pipe: apply(pipe, config) and None)

    calibration = bench.model.prompts("train")[: args.calibration_prompts]
    other = {k: v for k, v in bench.kwargs.items() if k not in ("output_type", "num_inference_steps")}
    out = forecast_methods(template, bench.steps, method) + gentle_first_block_methods(bench.steps, method)
    start = time.perf_counter()
    policies = [(p, c) for p, c in (("teacache", calibrate_teacache), ("magcache", calibrate_magcache))
                if overlaps(prefixes, f"ours dynamic {p}")]
    for policy, calibrate in policies:
        try:
            base = calibrate(template, calibration, batch_size=len(calibration), seed=1,
                             num_inference_steps=bench.steps, **other)
        except Exception as exc:  # record why, keep the rest
            out.append(pc.Method(f"ours dynamic {policy}", "ours", {"policy": policy}, pc._raiser(exc)))
            continue
        thresholds = (args.teacache if policy == "teacache"
                      else magcache_thresholds(base, bench.steps, args.magcache_skips))
        for t in thresholds:
            out.append(method(f"ours dynamic {policy}-{t:g}", {"policy": policy, "threshold": t},
                              AccelerationConfig(cache=dataclasses.replace(base, threshold=float(t)))))
    if policies:
        record["calibration_seconds"] = round(time.perf_counter() - start)
    for stages in (((0.3, 1), (0.4, 2), (0.3, 1)), ((0.2, 1), (0.6, 2), (0.2, 1))):
        name = "-".join(str(round(100 * f)) for f, _ in stages)
        out.append(method(f"ours bottleneck {name}", {"policy": "bottleneck", "stages": stages},
                          AccelerationConfig(sampling=BottleneckSamplingConfig(stages=stages))))
    entries = []
    if overlaps(prefixes, "ours searched "):
        try:
            entries, record["search"] = _searched(bench, args, other)
        except Exception as exc:
            record["search"] = {"error": f"{type(exc).__name__}: {exc}"[:400]}
    from diffusion_accel import AccelerationConfig as Config

    names: set[str] = set()
    for e in entries:
        config = Config.from_dict(e["config"])
        name = f"ours searched {e['speedup']:.2f}x"
        name = name if name not in names else f"{name} {e['name']}"
        names.add(name)
        out.append(method(name, {"searched": True, "search_name": e["name"], "search_origin": e["origin"],
                                 "search_macs_speedup": e["speedup"]}, config))
    return out


#: the margin that counts as beating a peer (> 0 dB at the checks' 0.01 dB rounding; a tie does not).
BEAT_DB = 0.01


def goal_checks(part: dict[str, Any]) -> dict[str, Any]:
    """Our frontier (all our points; the searched points alone) minus every diffusers cache's PSNR at
    the cache's compute: the goal is a positive margin everywhere (a tie, 0.00 dB, does not beat a peer:
    the margin must reach :data:`BEAT_DB`, the smallest positive margin at the checks' 0.01 dB rounding)."""
    import peers_caching as pc

    methods = [pc.Method(m["name"], m["family"], m.get("settings", {}), None,
                         {k: v for k, v in m.items() if k not in ("name", "family", "settings")})
               for m in part["methods"]]
    every = (1.01, float("inf"))  # a peer at 1.0x skipped nothing (it is the full-compute output)
    skipped = lambda m: m.result.get("compute_ratio", 1.0) > 1.0  # noqa: E731 (a point at 1.0x skipped nothing)
    return {"all_ours": pc.goal_check(methods, BEAT_DB, every, skipped),
            "searched_only": pc.goal_check(methods, BEAT_DB, every, lambda m: skipped(m) and bool(m.settings.get("searched")))}


def caching_namespace(args: argparse.Namespace, model: str) -> argparse.Namespace:
    """The caching part's arguments: ``peers_caching``'s own parser (every option it reads, with its
    defaults) set from this script's flags, one timing round, token-weighted compute."""
    sys.path.insert(0, HERE)
    import peers_caching

    parser = argparse.ArgumentParser()
    peers_caching.add_arguments(parser)
    merge = ["--caching-merge"] if getattr(args, "merge", False) else []
    namespace = parser.parse_args(["--caching-model", model, "--caching-prompts", str(args.prompts),
                                   "--caching-steps", str(args.steps), "--caching-rounds", "1",
                                   "--caching-threads", str(args.threads), "--caching-only", args.caching_only,
                                   "--caching-compute", "tokens", *merge])
    namespace.out = getattr(args, "out", RESULTS)  # the file --caching-merge reads (peers_caching._merge)
    return namespace


def _prefixes(only: str) -> list[str]:
    return [p.strip() for p in only.split(",") if p.strip()]


def drop_searched_rows(results: dict[str, Any]) -> bool:
    """Remove the rows of an earlier search from ``results`` in memory (before a ``--merge`` that re-runs the
    search: its frontier may have other points, which must not mix with the old ones). ``--out`` itself is only
    rewritten when the run ends, so a run that fails keeps the old rows. Returns whether any row was dropped."""
    methods = results["caching"]["methods"]
    kept = [m for m in methods if not m.get("settings", {}).get("searched")]
    results["caching"]["methods"] = kept
    return len(kept) < len(methods)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="caching,techniques")
    parser.add_argument("--prompts", type=int, default=8, help="held-out prompts (default 8)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--calibration-prompts", type=int, default=2,
                        help="training captions for TeaCache/MagCache calibration and sensitivities")
    parser.add_argument("--teacache", type=float, nargs="*", default=[0.03, 0.05, 0.1, 0.2, 0.35])
    parser.add_argument("--magcache-skips", type=int, nargs="*", default=[6, 9, 12],
                        help="MagCache thresholds are set to skip this many of the steps")
    parser.add_argument("--search-prompts", type=int, default=16, help="training captions the search scores on (16: with 8 the gentle end ranked wrong, README)")
    parser.add_argument("--search-population", type=int, default=16)
    parser.add_argument("--search-generations", type=int, default=2)
    parser.add_argument("--search-refine-rounds", type=int, default=2)
    parser.add_argument("--search-reuse", default="forecast",
                        help="reuse mode of the searched static schedules (search_schedule's reuse=)")
    parser.add_argument("--searched-points", type=int, default=16, help="searched frontier points measured at most")
    parser.add_argument("--caching-only", default="",
                        help="comma-separated name prefixes of the peers' methods to run (split a run over processes)")
    parser.add_argument("--techniques-only", default="",
                        help="comma-separated name prefixes of the techniques rows to run (split a run over processes)")
    parser.add_argument("--no-extras", action="store_true",
                        help="skip the video-only caching methods (forecast rows, calibrated policies, Bottleneck, "
                             "the search)")
    parser.add_argument("--merge", action="store_true",
                        help="with --parts caching --caching-only: run those methods and the baseline, check the "
                             "baseline's clips are the ones --out was scored against, put the rows into --out's "
                             "caching part (same name: replaced; new: appended; each records its run) and recompute "
                             "the goal checks and plots; the rest of --out is kept")
    parser.add_argument("--out", default=RESULTS)
    args = parser.parse_args(argv)
    if args.merge and (args.parts.strip() != "caching" or not args.caching_only.strip()):
        parser.error("--merge needs --parts caching and --caching-only <name prefixes> (the rows to re-run)")
    from diffusion_accel.assets.bundled import BUNDLED_MODELS

    torch.set_num_threads(args.threads)
    model = BUNDLED_MODELS["benchmark-video"]
    prompts = model.prompts("heldout")[: args.prompts]
    call_kwargs = {**model.generation_kwargs(), "num_inference_steps": args.steps, "output_type": "np"}
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = sorted(set(parts) - {"caching", "techniques"})
    if unknown:
        parser.error(f"unknown part(s) {unknown}; choose from ['caching', 'techniques']")
    results: dict[str, Any] = {"model": model.name, "prompts": len(prompts), "steps": args.steps}
    merge_base = args.out
    if args.merge:
        with open(args.out, encoding="utf-8") as fh:
            results = json.load(fh)
        if "caching" in results and overlaps(_prefixes(args.caching_only), "ours searched ") and not args.no_extras:
            if drop_searched_rows(results):  # a new search replaces the old searched frontier as a whole
                merge_base = args.out + ".merge-base.json"  # what peers_caching's merge reads; --out stays intact
                with open(merge_base, "w", encoding="utf-8") as fh:
                    json.dump(results, fh, indent=2, default=float)
    started = time.perf_counter()
    sys.path.insert(0, HERE)
    if "caching" in parts:
        import peers_caching

        caching_args = caching_namespace(args, model.name)
        caching_args.out = merge_base
        record: dict[str, Any] = {}
        try:
            part = peers_caching.run(caching_args, None if args.no_extras else caching_extra(args, record),
                                     plot_prefix="video_caching",
                                     title="Bundled Wan video model")
        finally:
            if merge_base != args.out:
                os.remove(merge_base)
        part.update(record)
        if args.merge:  # keep what this run did not redo (the search, the calibration record, notes)
            part = {**results["caching"], **part,
                    "merges": results["caching"].get("merges", []) + [part["merged"]]}
        part["goal_checks"] = goal_checks(part)
        results["caching"] = part
    if "techniques" in parts:
        calibration = model.prompts("train")[: max(1, args.calibration_prompts // 2)]
        results["techniques"] = run_techniques(prompts, call_kwargs, model.name, calibration, args.techniques_only)
    results["merge_seconds" if args.merge else "seconds"] = round(time.perf_counter() - started)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as fh:
        json.dump(results, fh, indent=2, default=float)
        fh.write("\n")
    print(markdown_tables(results))
    return 0


def markdown_tables(results: dict[str, Any]) -> str:
    """The README tables of a finished run (``python benchmarks/video.py --table`` reprints them)."""
    lines = []
    part = results.get("caching")
    if part:
        margins = {row["peer"]: row for row in part["goal_checks"]["searched_only"]["points"]}
        lines += ["| method | family | compute (token-weighted blocks) | PSNR dB | SSIM | wall clock | searched frontier − peer |",
                  "|---|---|---|---|---|---|---|"]
        for m in part["methods"]:
            if not m.get("supported"):
                lines.append(f"| {m['name']} | {m['family']} | — | — | — | — | fails: {m['reason'][:90]} |")
                continue
            row = margins.get(m["name"])
            margin = "" if row is None else ("beyond our fastest point" if row["margin_db"] is None
                                             else f"{row['margin_db']:+.1f} dB")
            lines.append(f"| {m['name']} | {m['family']} | {m['compute_ratio']:.2f}× | {m['psnr_db']:.1f} | "
                         f"{m['ssim']:.3f} | {m['wall_speedup']:.2f}× | {margin} |")
    tech = results.get("techniques")
    if tech:
        lines += ["", f"Techniques at the model's {tech['tokens']} video tokens:", "",
                  "| technique | density | denoiser MACs | PSNR/video dB | SSIM/video | temporal error | flicker (baseline) |",
                  "|---|---|---|---|---|---|---|"]
        for r in tech["rows"]:
            if not r.get("supported"):
                lines.append(f"| {r['name']} | | fails: {r['reason'][:90]} | | | | |")
                continue
            density = "" if r.get("density") is None else f"{100 * r['density']:.0f} %"
            macs = "–" if r.get("macs_ratio") is None else f"{r['macs_ratio']:.2f}×"
            lines.append(f"| {r['name']} | {density} | {macs} | {r['psnr_per_video']:.1f} | "
                         f"{r['ssim_per_video']:.3f} | {r['temporal_error']:.4f} | "
                         f"{r['flicker']:.4f} ({r['baseline_flicker']:.4f}) |")
    return "\n".join(lines)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--table"]:
        with open(sys.argv[2] if len(sys.argv) > 2 else RESULTS, encoding="utf-8") as fh:
            print(markdown_tables(json.load(fh)))
        sys.exit(0)
    sys.exit(main())
