"""Quantization benchmark: memory, latency and quality of W8A8 / W4A8 / mixed precision (JSON).

Two parts, each against baselines measured in the same run:

* ``dit``: a PixArt-α transformer at realistic layer widths (hidden 1152 = 16 heads × 72, caption
  width 4096, FFN 4608; random weights, few layers) on one denoiser call with classifier-free
  guidance batch 2. Weight bytes from the modules' real tensors vs the bf16 model; latency of fp32,
  bf16 and each quantized variant, interleaved, min and median of repeats; output SQNR vs fp32;
  process memory of each variant measured in a fresh process (``memory_child.py``: resident set
  of the loaded model and peak over inference, CUDA max allocated where CUDA runs). Quantized
  variants run on a model in ``--quant-dtype`` (``auto``: bf16 where a bf16 ``F.linear`` is faster
  than fp32 on this CPU — with AMX —, else fp32).
* ``pipeline``: the bundled benchmark model (``diffusion_accel.assets``) or, until it exists, the
  tiny PixArt-α pipeline. Images of held-out prompts with fixed seeds, scored against the
  full-precision images (PSNR, SSIM) and, when the bundled CLIP is available, CLIP score and
  CLIP-feature FID against real held-out images. Variants: W8A8, uniform W4A8, mixed-precision
  W4/W8 allocated by MILP on decoupled sensitivities measured on *training* prompts, random
  W4/W8 plans at the same average bits, and — at equal *memory* — uniform W4A8 with small groups
  vs a MILP W4/W8 plan of the same bytes.

Usage::

    python benchmarks/quant.py --quick            # ~5 min on 2 busy cores
    python benchmarks/quant.py --out results.json
"""

from __future__ import annotations

import argparse
import copy
import os
import random
import statistics
import sys
import time
import warnings

import numpy as np
import torch
from _common import emit_json, interleaved_times

import diffusion_accel
from diffusion_accel import AccelerationConfig
from diffusion_accel.hooks import Denoiser, StepTracker
from diffusion_accel.models import get_model_adapter
from diffusion_accel.quant import QuantConfig, QuantPlan, measure_sensitivity, quantize_denoiser, sqnr_db
from diffusion_accel.quant.allocate import layer_bytes
from diffusion_accel.quant.calibrate import collect_statistics
from diffusion_accel.quant.memory import quantized_linear_bytes, weight_bytes
from diffusion_accel.quant.replace import linear_names


def _timeit(fns: dict, repeats: int) -> dict:
    """Interleaved timing: every round runs each variant once; min and median per variant (ms)."""
    times = {k: clocks["wall"] for k, clocks in interleaved_times(fns, repeats).items()}
    return {k: {"min_ms": round(1e3 * min(v), 2), "median_ms": round(1e3 * statistics.median(v), 2)}
            for k, v in times.items()}


# --------------------------------------------------------------------------------------------
# Part 1: a DiT at realistic widths


def _wide_dit(layers: int, latent: int):
    from diffusers import PixArtTransformer2DModel

    torch.manual_seed(0)
    model = PixArtTransformer2DModel(
        num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8, num_layers=layers,
        cross_attention_dim=1152, sample_size=latent, patch_size=2, caption_channels=4096,
        norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6, attention_bias=True,
        activation_fn="gelu-approximate", num_embeds_ada_norm=1000, use_additional_conditions=False,
    ).eval()
    # Trained DiT weights are ~N(0, 0.02); keep the random init but give the outputs a sane scale.
    return model


def _dit_inputs(latent: int, dtype: torch.dtype, timestep: float = 500.0, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return dict(
        hidden_states=torch.randn(2, 4, latent, latent, generator=g).to(dtype),
        encoder_hidden_states=torch.randn(2, 120, 4096, generator=g).to(dtype),
        timestep=torch.tensor([timestep, timestep]),
        added_cond_kwargs={"resolution": None, "aspect_ratio": None},
    )


def _quantized_copy(model_bf16, config: QuantConfig, latent: int):
    return _quantize_in_place(copy.deepcopy(model_bf16), config, latent)


def _quantize_in_place(model, config: QuantConfig, latent: int):
    dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())
    adapter = get_model_adapter(model)
    denoiser = Denoiser("transformer", model, adapter, StepTracker.attach(model, adapter))
    calibration = None
    if config.needs_calibration:
        names = {"transformer": [n for n in linear_names(model)]}

        def run():
            for i, t in enumerate((900.0, 600.0, 300.0, 50.0)):
                model(**_dit_inputs(latent, dtype, t, seed=100 + i))

        calibration = collect_statistics([denoiser], names, run, config.timestep_ranges)["transformer"]
    handle = quantize_denoiser(denoiser, config, calibration)
    return model, handle


def quant_dtype(choice: str) -> torch.dtype:
    """The model dtype quantized variants run in: ``auto`` measures a bf16 vs an fp32 ``F.linear``."""
    if choice != "auto":
        return getattr(torch, choice)
    x, w = torch.randn(1024, 1152), torch.randn(1152, 1152)
    timing = _timeit({"float32": lambda: torch.nn.functional.linear(x, w),
                      "bfloat16": lambda: torch.nn.functional.linear(x.bfloat16(), w.bfloat16())}, 5)
    return torch.bfloat16 if timing["bfloat16"]["min_ms"] < timing["float32"]["min_ms"] else torch.float32


def dit_variants(quick: bool) -> dict[str, QuantConfig]:
    variants = {
        "W8A8": QuantConfig(weight_bits=8, act_bits=8, compile=True),
        "W8A8-eager": QuantConfig(weight_bits=8, act_bits=8, compile=False),
        "W8A8-static": QuantConfig(weight_bits=8, act_bits=8, act_mode="static", smooth_alpha=0.5, timestep_ranges=2,
                                   calibration_prompts=("(denoiser-level calibration)",), compile=True),
        "W4A8": QuantConfig(weight_bits=4, act_bits=8, group_size=128, compile=True),
    }
    if quick:
        variants.pop("W8A8-eager")
    return variants


def build_for_memory(variant: str, args: dict, warmup: bool):
    """For ``memory_child.py``: build (and quantize) ``variant`` in this process; returns its runner."""
    layers, latent = (1, 8) if warmup else (args["layers"], args["latent"])
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}.get(variant, getattr(torch, args["quant_dtype"]))
    torch.set_default_dtype(dtype)  # built in its dtype, as from_pretrained(torch_dtype=...) loads it
    try:
        model = _wide_dit(layers, latent)
    finally:
        torch.set_default_dtype(torch.float32)
    if variant not in ("fp32", "bf16"):
        _quantize_in_place(model, dit_variants(False)[variant], latent)
    inputs = _dit_inputs(latent, dtype)
    return lambda: model(**inputs)


def _memory(variants: list[str], layers: int, latent: int, dtype: torch.dtype, malloc: str) -> dict:
    from memory_child import measure

    spec = {"layers": layers, "latent": latent, "quant_dtype": str(dtype).replace("torch.", ""),
            "threads": torch.get_num_threads()}
    return {name: measure("quant", name, spec, malloc) for name in variants}


def bench_dit(args) -> dict:
    layers, latent = (2, 32) if args.quick else (args.dit_layers, args.dit_latent)
    fp32 = _wide_dit(layers, latent)
    bf16 = copy.deepcopy(fp32).to(torch.bfloat16)
    qdtype = quant_dtype(args.quant_dtype)
    base = fp32 if qdtype == torch.float32 else bf16
    variants = dit_variants(args.quick)
    models = {"fp32": fp32, "bf16": bf16}
    reports = {}
    for name, config in variants.items():
        models[name], handle = _quantized_copy(base, config, latent)
        reports[name] = handle.report()["transformer"]
    inputs = {dt: _dit_inputs(latent, dt) for dt in (torch.float32, torch.bfloat16)}
    dtypes = {name: {"fp32": torch.float32, "bf16": torch.bfloat16}.get(name, qdtype) for name in models}
    outputs = {}
    with torch.no_grad():
        for name, model in models.items():  # warm-up: compile, prepack and JIT
            for _ in range(2):
                outputs[name] = model(**inputs[dtypes[name]]).sample.float()
        fns = {name: (lambda m=m, i=inputs[dtypes[name]]: m(**i)) for name, m in models.items()}
        timing = _timeit(fns, args.repeats)
    bf16_bytes = weight_bytes(bf16)
    memory = {}
    if args.memory:
        memory = _memory([n for n in models if n != "W8A8-eager"], layers, latent, qdtype, args.malloc)
    result = {"config": {"layers": layers, "hidden": 1152, "heads": 16, "ffn": 4608, "caption_channels": 4096,
                         "tokens_per_image": (latent // 2) ** 2, "batch": 2, "text_tokens": 120,
                         "quantized_model_dtype": str(qdtype).replace("torch.", "")},
              "weight_bytes": {"fp32": weight_bytes(fp32), "bf16": bf16_bytes}, "variants": {}}
    for name in models:
        entry = {"latency": timing[name],
                 "speedup_vs_fp32": round(timing["fp32"]["min_ms"] / timing[name]["min_ms"], 3),
                 "speedup_vs_bf16": round(timing["bf16"]["min_ms"] / timing[name]["min_ms"], 3),
                 "latency_ratio_vs_bf16": round(timing[name]["min_ms"] / timing["bf16"]["min_ms"], 3),
                 "speedup_vs_fp32_median": round(timing["fp32"]["median_ms"] / timing[name]["median_ms"], 3),
                 "speedup_vs_bf16_median": round(timing["bf16"]["median_ms"] / timing[name]["median_ms"], 3),
                 "output_sqnr_db_vs_fp32": round(sqnr_db(outputs["fp32"], outputs[name]), 2)
                 if name != "fp32" else None}
        if name in reports:
            held, lin_bf16 = quantized_linear_bytes(models[name])
            entry.update({
                "weight_bytes": weight_bytes(models[name]),
                "memory_ratio_vs_bf16": round(bf16_bytes / weight_bytes(models[name]), 3),
                "linear_memory_ratio_vs_bf16": round(lin_bf16 / held, 3),
                "backends": sorted({m._resolved[1] for m in models[name].modules()
                                    if getattr(m, "_resolved", None) is not None}),
            })
        if name in memory:
            mem = entry["process_memory"] = memory[name]
            entry["rss_model_ratio_vs_bf16"] = round(
                mem["rss_model_bytes"] / memory["bf16"]["rss_model_bytes"], 3)
            entry["rss_peak_inference_ratio_vs_bf16"] = round(
                mem["rss_peak_inference_bytes"] / memory["bf16"]["rss_peak_inference_bytes"], 3)
        result["variants"][name] = entry
    return result


# --------------------------------------------------------------------------------------------
# Part 2: quality on a pipeline


def _load_pipeline():
    try:
        from diffusers import PixArtAlphaPipeline

        from diffusion_accel.assets import BENCHMARK_GENERATION_KWARGS, benchmark_model_dir, benchmark_prompts

        pipe = PixArtAlphaPipeline.from_pretrained(benchmark_model_dir())
        train, heldout = benchmark_prompts("train"), benchmark_prompts("heldout")
        return pipe, "benchmark-model", dict(BENCHMARK_GENERATION_KWARGS), train, heldout, None
    except (FileNotFoundError, OSError, ImportError, KeyError) as exc:
        from diffusion_accel.testing import tiny_call_kwargs, tiny_pipeline

        kwargs = tiny_call_kwargs("pixart-alpha")
        kwargs.pop("prompt")
        kwargs.pop("output_type", None)
        kwargs["num_inference_steps"] = 10
        colours = ["red", "green", "blue", "yellow", "white", "purple"]
        things = ["cat", "dog", "house", "tree", "car", "boat", "bird", "flower"]
        rng = random.Random(0)
        prompts = [f"a {rng.choice(colours)} {rng.choice(things)} on a {rng.choice(colours)} background"
                   for _ in range(80)]
        return tiny_pipeline("pixart-alpha"), "tiny-pixart-alpha", kwargs, prompts[:40], prompts[40:], str(exc)


def _generate(pipe, prompts, kwargs, batch=8) -> np.ndarray:
    images = []
    for i in range(0, len(prompts), batch):
        chunk = prompts[i:i + batch]
        gens = [torch.Generator().manual_seed(1000 + i + j) for j in range(len(chunk))]
        with torch.no_grad():
            out = pipe(prompt=chunk, generator=gens, output_type="np", **kwargs)
        images.append(out.images)
    return (np.clip(np.concatenate(images), 0, 1) * 255).round().astype(np.uint8)


def _quality(images, reference, prompts, clip, real) -> dict:
    from diffusion_accel.eval import metrics

    out = {"psnr_vs_fp": round(metrics.psnr(images, reference), 3),
           "ssim_vs_fp": round(metrics.ssim(images, reference), 4)}
    if clip is not None:
        out["clip_score"] = round(metrics.clip_score(images, prompts, clip), 3)
        if real is not None:
            out["fid_clip_vs_real_heldout"] = round(metrics.fid(images, real, metrics.fid_features("clip", clip)), 3)
    return out


def _random_plan(sizes: dict, average_bits: float, seed: int) -> QuantPlan:
    """W4/W8 plan with layers promoted to 8 bits in random order while under ``average_bits``."""
    rng = random.Random(seed)
    names = list(sizes)
    rng.shuffle(names)
    total, budget = sum(sizes.values()), average_bits * sum(sizes.values())
    used, rules = 4 * total, {}
    for n in names:
        if used + 4 * sizes[n] <= budget:
            rules[n] = 8
            used += 4 * sizes[n]
    return QuantPlan(tuple((n, rules.get(n, 4)) for n in sizes), default=None)


def bench_pipeline(args) -> dict:
    pipe, source, kwargs, train, heldout, why = _load_pipeline()
    pipe.set_progress_bar_config(disable=True)
    n_eval = 8 if args.quick else args.eval_prompts
    n_cal = 2 if args.quick else args.calibration_prompts
    eval_prompts, cal_prompts = heldout[:n_eval], train[:n_cal]
    clip, real, clip_note = None, None, None
    try:
        from diffusion_accel.eval import metrics

        clip = metrics.load_clip("benchmark")
        if source == "benchmark-model":
            from diffusion_accel.assets import benchmark_images

            real = benchmark_images("heldout")[0]
    except Exception as exc:  # the bundled CLIP is not there yet
        clip_note = f"CLIP score / FID not computed: {type(exc).__name__}: {exc}"
    if source != "benchmark-model" and clip is not None:
        clip_note = "CLIP scored on tiny-pipeline images: the bundled CLIP was trained on digit scenes only"
    group = 64 if source == "benchmark-model" else 32
    reference = _generate(pipe, eval_prompts, kwargs)
    result = {"source": source, "fallback_reason": why, "eval_prompts": len(eval_prompts),
              "calibration_prompts": len(cal_prompts), "call_kwargs": {k: v for k, v in kwargs.items()},
              "group_size": group, "variants": {}, "notes": clip_note}
    result["variants"]["full_precision"] = _quality(reference, reference, eval_prompts, clip, real)

    # sensitivity on calibration (training) prompts, decoupled metrics, MILP allocation
    start = time.perf_counter()
    sens = measure_sensitivity(pipe, cal_prompts, group_by="layer", group_size=group,
                               num_inference_steps=kwargs.get("num_inference_steps"),
                               call_kwargs={k: v for k, v in kwargs.items() if k != "num_inference_steps"})
    result["sensitivity_seconds"] = round(time.perf_counter() - start, 1)
    sizes = {n: s for n, s in sens.sizes.items()}
    top = sorted(sens.scores(), key=lambda g: -sens.scores()[g][4])[:8]
    result["most_sensitive_layers"] = {g: {"kind": sens.kinds[g], "loss_w4": sens.losses[g][4]} for g in top}

    plans = {"W8A8": QuantConfig(weight_bits=8, act_bits=8),
             "W4A8-uniform": QuantConfig(weight_bits=4, act_bits=8, group_size=group)}
    for avg in args.average_bits:
        mixed = sens.allocate(average_bits=avg)
        plans[f"W4A8-mixed@{avg}"] = QuantConfig(plan=mixed, act_bits=8, group_size=group)
        for seed in range(args.random_plans):
            plans[f"W4A8-random@{avg}#{seed}"] = QuantConfig(plan=_random_plan(sizes, avg, seed), act_bits=8,
                                                              group_size=group)
    # Equal *memory*: uniform W4A8 with small groups (more scale bytes) vs a W4/W8 plan of the same bytes.
    modules = dict(pipe.transformer.named_modules())
    shapes = {n: (modules[n].in_features, modules[n].out_features) for n in sizes}
    small = max(2, group // 4)
    budget = sum(layer_bytes(k, n, 4, small) for k, n in shapes.values())
    costs = {name: {b: layer_bytes(k, n, b, group) for b in (4, 8)} for name, (k, n) in shapes.items()}
    plans[f"W4A8-uniform-g{small}"] = QuantConfig(weight_bits=4, act_bits=8, group_size=small)
    plans[f"W4A8-mixed-g{group}@bytes(uniform-g{small})"] = QuantConfig(
        plan=sens.allocate(memory_bytes=budget, layer_costs=costs), act_bits=8, group_size=group)
    for name, config in plans.items():
        diffusion_accel.apply(pipe, AccelerationConfig(quant=config))
        try:
            images = _generate(pipe, eval_prompts, kwargs)
            report = diffusion_accel.api.acceleration_state(pipe).report()["quant"]["transformer"]
        finally:
            diffusion_accel.remove(pipe)
        avg_bits = config.resolved_plan().average_bits(sizes)
        result["variants"][name] = {**_quality(images, reference, eval_prompts, clip, real),
                                    "average_weight_bits": round(avg_bits, 3),
                                    "quantized_linear_bytes": report["quantized_linear_bytes"],
                                    "memory_ratio_vs_bf16": report["ratio_vs_bf16"]}
    # pipeline latency, fp32 vs bf16 vs W8A8 on this (small) model
    lat_prompts = eval_prompts[:2]
    bf16_pipe = copy.deepcopy(pipe).to(torch.bfloat16)
    q_pipe = copy.deepcopy(bf16_pipe)
    diffusion_accel.apply(q_pipe, AccelerationConfig(quant=QuantConfig(weight_bits=8, act_bits=8)))
    fns = {name: (lambda p=p: _generate(p, lat_prompts, kwargs)) for name, p in
           (("fp32", pipe), ("bf16", bf16_pipe), ("W8A8", q_pipe))}
    for fn in fns.values():
        fn()
    result["latency_2_images"] = _timeit(fns, max(2, args.repeats // 2))
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small shapes, few prompts (a few minutes)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: ratios are steadier)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--dit-layers", type=int, default=4)
    parser.add_argument("--dit-latent", type=int, default=64, help="latent side (64: 1024 tokens, a 512 px image)")
    parser.add_argument("--quant-dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                        help="model dtype of the quantized DiT variants "
                             "(auto: the faster of bf16 / fp32 F.linear here)")
    parser.add_argument("--no-memory", dest="memory", action="store_false",
                        help="skip the per-variant process-memory measurement (fresh subprocesses)")
    parser.add_argument("--malloc", default="fixed", choices=["fixed", "default"],
                        help="glibc settings of the memory subprocesses (see memory_child.py)")
    parser.add_argument("--eval-prompts", type=int, default=32)
    parser.add_argument("--calibration-prompts", type=int, default=4)
    parser.add_argument("--average-bits", type=float, nargs="+", default=[5.0])
    parser.add_argument("--random-plans", type=int, default=3)
    parser.add_argument("--parts", nargs="+", default=["dit", "pipeline"], choices=["dit", "pipeline"])
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats = min(args.repeats, 5)
        args.random_plans = min(args.random_plans, 2)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    from diffusers.utils import logging as dlogging

    dlogging.set_verbosity_error()
    result = {"benchmark": "quant", "quick": args.quick, "torch": torch.__version__, "threads": args.threads,
              "cpu_count": os.cpu_count(), "load_average_start": [round(x, 2) for x in os.getloadavg()]}
    start = time.perf_counter()
    if "dit" in args.parts:
        result["dit"] = bench_dit(args)
    if "pipeline" in args.parts:
        result["pipeline"] = bench_pipeline(args)
    result["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    result["seconds"] = round(time.perf_counter() - start, 1)
    emit_json(result, args.out, indent=2)


if __name__ == "__main__":
    sys.exit(main())
