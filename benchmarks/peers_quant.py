"""Peers, quantization part: ours (W8A8 eager / compiled, W4A8) vs torchao and optimum-quanto.

Two models, each with fp32 and bf16 baselines measured in the same run:

* ``dit``: a PixArt-width DiT stack (hidden 1152, 16 heads x 72, FFN 4608, caption width 4096;
  random weights; ``--quant-dit-layers`` layers, ``--quant-dit-latent`` latent side -> 1024 tokens)
  built as in ``benchmarks/quant.py``, one denoiser call with CFG batch 2.
* ``bundled``: the bundled benchmark model's transformer (``diffusion_accel.assets``), on the
  inputs of one real denoiser call (CFG batch 2) captured from its pipeline.

Variants (every one quantizes every ``nn.Linear`` of the transformer, fp32 model):

* ``ours-W8A8-eager`` / ``ours-W8A8-compiled``: ``QuantConfig(weight_bits=8, act_bits=8)`` with
  ``compile=False`` / ``True`` (the quantize and rescale steps through ``torch.compile``);
  ``ours-W8A8-fullgraph``: the same layers with the whole transformer under ``torch.compile``;
  ``ours-W4A8``: 4-bit group-wise weights, 8-bit activations (``compile=True``);
* ``torchao-int8dyn-eager`` / ``-compiled``: torchao ``Int8DynamicActivationInt8WeightConfig()``
  (per-token activations, per-channel weights), eager and with the transformer under
  ``torch.compile``; ``torchao-int8wo``: ``Int8WeightOnlyConfig()`` (eager);
* ``quanto-W8A8``: optimum-quanto ``quantize(weights=qint8, activations=qint8)``, calibrated on
  the measured call (``Calibration()``; without it the activation scales stay at their initial
  value), then ``freeze``.

Reported per variant: latency (interleaved repeats: every round runs each variant once; min,
median, max and the spread ``(max - min) / min``), speed ratios vs fp32 and bf16 from the minima,
output SQNR vs fp32, weight bytes (real storage of every parameter and buffer, inner tensors of
tensor subclasses included), and the process memory of each variant built in a fresh process
(``memory_child.py``). The CPU kind and the GEMM backend ours chose are recorded, and for the
``--quant-profile`` variants the time of one profiled call split by op kind (attention, int8 GEMM,
float GEMM, other), which bounds what faster quantize / rescale passes could still gain.

Run with the driver: ``python benchmarks/peers.py --parts quant``.
"""

from __future__ import annotations

import copy
import os
import statistics
import sys
import time
import warnings

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)
from _common import cpu_name, interleaved_times  # noqa: E402

MODELS = ("dit", "bundled")
VARIANTS = ("fp32", "bf16", "ours-W8A8-eager", "ours-W8A8-compiled", "ours-W8A8-fullgraph",
            "ours-W8A8-int8attn-fullgraph", "ours-W4A8",
            "torchao-int8dyn-eager", "torchao-int8dyn-compiled", "torchao-int8wo", "quanto-W8A8")


def add_arguments(parser) -> None:
    group = parser.add_argument_group("quant part")
    group.add_argument("--quant-models", default=",".join(MODELS), help=f"subset of {MODELS}")
    group.add_argument("--quant-variants", default=",".join(VARIANTS), help=f"subset of {VARIANTS}")
    group.add_argument("--quant-repeats", type=int, default=5, help="interleaved timing rounds")
    group.add_argument("--quant-threads", type=int, default=1)
    group.add_argument("--quant-dit-layers", type=int, default=4)
    group.add_argument("--quant-dit-latent", type=int, default=64, help="latent side (64: 1024 tokens)")
    group.add_argument("--quant-memory", default="dit", help="models whose variants get a memory subprocess "
                       "('dit', 'dit,bundled' or 'none')")
    group.add_argument("--quant-profile", default="fp32,ours-W8A8-fullgraph,torchao-int8dyn-compiled",
                       help="variants whose CPU time is split by op kind (one profiled call each; 'none')")


# --- models and their inputs ----------------------------------------------------------------------
def _dit(args: dict, warmup: bool):
    import quant as quant_bench

    layers, latent = (1, 8) if warmup else (args["layers"], args["latent"])
    model = quant_bench._wide_dit(layers, latent)
    return model, quant_bench._dit_inputs(latent, torch.float32)


@torch.no_grad()
def _bundled(args: dict, warmup: bool):
    from diffusers import PixArtAlphaPipeline

    from diffusion_accel.assets import BENCHMARK_GENERATION_KWARGS, benchmark_model_dir, benchmark_prompts

    pipe = PixArtAlphaPipeline.from_pretrained(benchmark_model_dir())
    pipe.set_progress_bar_config(disable=True)
    captured = {}

    def grab(module, a, kwargs):
        if not captured:
            captured.update({k: (v.clone() if torch.is_tensor(v) else v) for k, v in kwargs.items()})
            captured["hidden_states"] = a[0].clone() if a else kwargs["hidden_states"].clone()

    handle = pipe.transformer.register_forward_pre_hook(grab, with_kwargs=True)
    kwargs = dict(BENCHMARK_GENERATION_KWARGS, num_inference_steps=2)
    pipe(benchmark_prompts("heldout")[0], generator=torch.Generator().manual_seed(0), **kwargs)
    handle.remove()
    captured.pop("return_dict", None)
    return pipe.transformer.eval(), captured


BUILDERS = {"dit": _dit, "bundled": _bundled}


def _to(inputs: dict, dtype: torch.dtype) -> dict:
    return {k: (v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() and k != "timestep" else v)
            for k, v in inputs.items()}


# --- variants: (model fp32, calibration inputs, model kind) -> (runnable module, inputs dtype) ---------
def _ours(config_kwargs: dict, fullgraph: bool = False, int8_attention: bool = False):
    def build(model, inputs, kind):
        from diffusion_accel.hooks import Denoiser, StepTracker
        from diffusion_accel.models import get_model_adapter
        from diffusion_accel.quant import QuantConfig, quantize_denoiser
        from diffusion_accel.sparse_attn import SparseAttentionConfig
        from diffusion_accel.sparse_attn.technique import install_sparse_layers

        kw = dict(config_kwargs)
        if kw.get("weight_bits") == 4:
            kw["group_size"] = 128 if kind == "dit" else 32
        adapter = get_model_adapter(model)
        denoiser = Denoiser("transformer", model, adapter, StepTracker.attach(model, adapter))
        quantize_denoiser(denoiser, QuantConfig(**kw))
        if int8_attention:  # self-attention scores from INT8 Q and K (SparseAttentionConfig(method="int8"))
            install_sparse_layers(SparseAttentionConfig(method="int8"), [denoiser])
        return (torch.compile(model) if fullgraph else model), torch.float32
    return build


def _torchao(config_name: str, compiled: bool):
    def build(model, inputs, kind):
        import torchao.quantization as tq

        precision = torch.get_float32_matmul_precision()
        tq.quantize_(model, getattr(tq, config_name)())
        torch.set_float32_matmul_precision(precision)  # keep every variant on the same fp32 numerics
        return (torch.compile(model) if compiled else model), torch.float32
    return build


def _quanto(model, inputs, kind):
    from optimum.quanto import Calibration, freeze, qint8, quantize

    quantize(model, weights=qint8, activations=qint8)
    with torch.no_grad(), Calibration():
        model(**inputs)
    freeze(model)
    return model, torch.float32


def _float(dtype: torch.dtype):
    def build(model, inputs, kind):
        return model.to(dtype), dtype
    return build


BUILD = {
    "fp32": _float(torch.float32),
    "bf16": _float(torch.bfloat16),
    "ours-W8A8-eager": _ours(dict(weight_bits=8, act_bits=8, compile=False)),
    "ours-W8A8-compiled": _ours(dict(weight_bits=8, act_bits=8, compile=True)),
    "ours-W8A8-fullgraph": _ours(dict(weight_bits=8, act_bits=8, compile=False), fullgraph=True),
    "ours-W8A8-int8attn-fullgraph": _ours(dict(weight_bits=8, act_bits=8, compile=False), fullgraph=True,
                                          int8_attention=True),
    "ours-W4A8": _ours(dict(weight_bits=4, act_bits=8, compile=True)),
    "torchao-int8dyn-eager": _torchao("Int8DynamicActivationInt8WeightConfig", compiled=False),
    "torchao-int8dyn-compiled": _torchao("Int8DynamicActivationInt8WeightConfig", compiled=True),
    "torchao-int8wo": _torchao("Int8WeightOnlyConfig", compiled=False),
    "quanto-W8A8": _quanto,
}


def build_for_memory(variant: str, args: dict, warmup: bool):
    """For ``memory_child.py``: build (and quantize) ``variant`` in this process; returns its runner."""
    model, inputs = BUILDERS[args["model"]](args, warmup)
    module, dtype = BUILD[variant](model, inputs, args["model"])
    call_inputs = _to(inputs, dtype)
    return lambda: module(**call_inputs)


# --- measurement ------------------------------------------------------------------------------------
def storage_bytes(module: torch.nn.Module) -> int:
    """Bytes of every parameter and buffer, counting the inner tensors of tensor subclasses
    (torchao / quanto weights) and the packed weights of our ``QuantLinear`` layers."""
    from diffusion_accel.quant import QuantLinear

    def tensor_bytes(t) -> int:
        if hasattr(t, "__tensor_flatten__") and type(t) is not torch.nn.Parameter and type(t) is not torch.Tensor:
            names, _ = t.__tensor_flatten__()
            return sum(tensor_bytes(getattr(t, n)) for n in names if getattr(t, n) is not None)
        return t.numel() * t.element_size()

    seen, total = set(), 0
    for m in module.modules():
        if isinstance(m, QuantLinear):
            total += m.memory_bytes()
            continue
        for t in list(m.parameters(recurse=False)) + [b for b in m.buffers(recurse=False) if b is not None]:
            data = t.data if isinstance(t, torch.nn.Parameter) else t
            if id(t) not in seen:
                seen.add(id(t))
                total += tensor_bytes(data)
    return total


def _timeit(fns: dict, repeats: int) -> dict:
    """Wall and process-CPU time of interleaved rounds. On a shared CPU (here: a long training run
    on the same 2 cores) wall time mostly measures waiting; with one torch thread the CPU time of
    this process is the steadier measure of the work, so ratios are given for both."""
    out = {}
    for k, clocks in interleaved_times(fns, repeats).items():
        out[k] = {}
        for clock, v in clocks.items():
            lo, hi = min(v), max(v)
            out[k][clock] = {"min_ms": round(1e3 * lo, 2), "median_ms": round(1e3 * statistics.median(v), 2),
                             "max_ms": round(1e3 * hi, 2), "spread": round((hi - lo) / lo, 3)}
    return out


#: op-name fragments -> kind, first match wins (self CPU time of one profiled call)
OP_KINDS = (("scaled_dot_product", "attention"), ("_int_mm", "int8_gemm"), ("quantized::", "int8_gemm"),
            ("qlinear", "int8_gemm"), ("addmm", "float_gemm"), ("aten::mm", "float_gemm"),
            ("aten::bmm", "float_gemm"), ("convolution", "conv"))


def time_split(fn, calls: int = 2) -> dict:
    """Profiler self time (ms; wall clock of each op, so a loaded machine inflates it: read the
    shares) of one call of ``fn`` by op kind: attention, int8 / float GEMM, conv, and
    ``other`` (elementwise, norms, quantize / rescale passes, fused inductor kernels); the profiled
    call with the smallest total of ``calls``."""
    from torch.profiler import ProfilerActivity, profile

    best = None
    for _ in range(calls):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            fn()
        split: dict[str, float] = {}
        for event in prof.key_averages():
            kind = next((k for frag, k in OP_KINDS if frag in event.key), "other")
            split[kind] = split.get(kind, 0.0) + event.self_cpu_time_total / 1e3
        split["total"] = sum(split.values())
        if best is None or split["total"] < best["total"]:
            best = split
    out = {k: round(v, 1) for k, v in sorted(best.items())}
    out["share"] = {k: round(v / best["total"], 3) for k, v in sorted(best.items()) if k != "total"}
    return out


def _backends(module) -> list[str]:
    return sorted({m._resolved[1] for m in module.modules() if getattr(m, "_resolved", None) is not None})


def bench_model(kind: str, args, variants: list[str]) -> dict:
    from diffusion_accel.quant import sqnr_db

    spec = {"model": kind, "layers": args.quant_dit_layers, "latent": args.quant_dit_latent,
            "threads": args.quant_threads}
    if args.quant_repeats == 0:  # memory only
        from memory_child import measure

        return {"memory_only": {n: measure("peers_quant", n, spec) for n in variants}}
    base, inputs = BUILDERS[kind](spec, False)
    modules, outputs, build_s, first_call_s = {}, {}, {}, {}
    with torch.no_grad():
        for name in variants:
            start = time.perf_counter()
            modules[name] = BUILD[name](copy.deepcopy(base), inputs, kind)
            build_s[name] = time.perf_counter() - start
            module, dtype = modules[name]
            start = time.perf_counter()
            outputs[name] = module(**_to(inputs, dtype)).sample.float()  # warm-up: compile, prepack
            first_call_s[name] = time.perf_counter() - start
            module(**_to(inputs, dtype))
        fns = {n: (lambda m=m, i=_to(inputs, d): m(**i)) for n, (m, d) in modules.items()}
        timing = _timeit(fns, args.quant_repeats)
        profiled = [n for n in args.quant_profile.split(",") if n in fns]
        split = {n: time_split(fns[n]) for n in profiled}
    memory = {}
    if kind in args.quant_memory.split(","):
        from memory_child import measure

        memory = {n: measure("peers_quant", n, spec) for n in variants if not n.endswith("fullgraph")}
    result = {"variants": {}, "tokens": int(inputs["hidden_states"].shape[-1] * inputs["hidden_states"].shape[-2]
                                             // (4 if kind == "dit" else 1)),
              "batch": int(inputs["hidden_states"].shape[0])}
    if split:
        result["time_split_ms"] = split
    for name, (module, _) in modules.items():
        entry = {"latency": timing[name], "weight_bytes": storage_bytes(module),
                 "build_seconds": round(build_s[name], 2), "first_call_seconds": round(first_call_s[name], 2)}
        for clock in ("cpu", "wall"):
            mine = timing[name][clock]
            for base_name in ("fp32", "bf16"):
                if base_name in timing:
                    ref = timing[base_name][clock]
                    entry[f"speed_vs_{base_name}_{clock}"] = round(ref["min_ms"] / mine["min_ms"], 3)
                    entry[f"speed_vs_{base_name}_{clock}_median"] = round(ref["median_ms"] / mine["median_ms"], 3)
        if "fp32" in outputs and name != "fp32":
            entry["output_sqnr_db_vs_fp32"] = round(sqnr_db(outputs["fp32"], outputs[name]), 2)
        if name.startswith("ours"):
            entry["backends"] = _backends(module)
        if name in memory:
            entry["process_memory"] = memory[name]
        result["variants"][name] = entry
    result.update(comparisons(result, timing, variants))
    return result


def comparisons(result: dict, timing: dict, variants: list[str]) -> dict:
    """Fastest ours vs fastest torchao int8-dynamic: ``ours_vs_torchao`` (the same work: linear layers
    only) and ``ours_int8_attention_vs_torchao`` (ours with the attention scores in int8 too)."""
    theirs = [n for n in variants if n.startswith("torchao-int8dyn")]
    groups = {"ours_vs_torchao": [n for n in variants if n.startswith("ours-W8A8") and "int8attn" not in n],
              "ours_int8_attention_vs_torchao": [n for n in variants if n.startswith("ours-W8A8-int8attn")]}
    out = {}
    for key, ours in groups.items():
        if ours and theirs:
            out[key] = _versus(result, timing, min(ours, key=lambda n: timing[n]["cpu"]["min_ms"]),
                               min(theirs, key=lambda n: timing[n]["cpu"]["min_ms"]))
    return out


def _versus(result: dict, timing: dict, ours: str, theirs: str) -> dict:
    """Speed ratio (theirs' time / ours) on both clocks and both SQNRs (``[ours, theirs]``)."""
    return {
        "ours": ours, "torchao": theirs,
        "speed_ratio_cpu": round(timing[theirs]["cpu"]["min_ms"] / timing[ours]["cpu"]["min_ms"], 3),
        "speed_ratio_wall": round(timing[theirs]["wall"]["min_ms"] / timing[ours]["wall"]["min_ms"], 3),
        "sqnr_db": [result["variants"][ours].get("output_sqnr_db_vs_fp32"),
                    result["variants"][theirs].get("output_sqnr_db_vs_fp32")]}


def run(args) -> dict:
    import platform

    from diffusion_accel.quant import cpu_support
    from diffusers.utils import logging as dlogging

    warnings.filterwarnings("ignore")
    dlogging.set_verbosity_error()
    torch.set_num_threads(args.quant_threads)
    variants = [v.strip() for v in args.quant_variants.split(",") if v.strip()]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        raise ValueError(f"unknown --quant-variants {unknown}; choose from {VARIANTS}")
    versions = {}
    for package in ("torch", "torchao", "optimum-quanto", "diffusers"):
        try:
            from importlib.metadata import version

            versions[package] = version(package)
        except Exception:  # noqa: BLE001 - a missing peer is recorded, not fatal
            versions[package] = None
    result = {"versions": versions, "cpu": platform.processor() or cpu_name(), "cpu_kind": cpu_support.cpu_kind(),
              "threads": args.quant_threads, "repeats": args.quant_repeats,
              "dit_layers": args.quant_dit_layers, "dit_latent": args.quant_dit_latent,
              "load_average_start": [round(x, 2) for x in os.getloadavg()]}
    for kind in [m.strip() for m in args.quant_models.split(",") if m.strip()]:
        result[kind] = bench_model(kind, args, variants)
    result["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    return result
