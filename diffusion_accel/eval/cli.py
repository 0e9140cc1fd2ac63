"""Evaluate acceleration configs against the full-compute baseline: quality, speed-up, MACs, memory.

Generates every prompt with the same seeds for the baseline and for each --config, then writes
results.json, results.csv, pareto.png and report.md to --out. Rerun with --resume to continue an
interrupted run. Several processes (GPUs, or CPU processes with gloo):

    accelerate launch --multi_gpu --num_processes 2 -m diffusion_accel.cli eval --out DIR ...

Example:
    diffusion-accel eval --config fast.json --config faster.json --num-images 2 --out eval-out
"""

from __future__ import annotations

import argparse
import importlib

from ..cli import json_object_option

__all__ = ["add_arguments", "positive_int", "run"]

_DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
           "float16": "float16", "fp16": "float16"}


def positive_int(text: str) -> int:
    """argparse ``type`` of a count that must be >= 1 (``--steps 0`` is an error, not an empty run)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("what to evaluate")
    g.add_argument("--model", default="benchmark",
                   help="'benchmark' (the bundled image model, default), 'benchmark-video' (the bundled video "
                        "model), a local diffusers folder or a hub id")
    g.add_argument("--config", action="append", default=[], metavar="CFG.json",
                   help="an AccelerationConfig JSON file or a search frontier file (repeatable); "
                        "the baseline is always included")
    g.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                   help="import this module first (e.g. a plug-in that registers a technique)")
    g = parser.add_argument_group("prompts")
    g.add_argument("--prompts", default=None,
                   help="prompt file (.txt, .csv, .tsv, .json, .jsonl) or 'benchmark[-video][:split]' (default: the "
                        "bundled model's held-out captions; 'benchmark' for other models)")
    g.add_argument("--prompt-column", default=None, help="prompt column of a CSV/TSV/JSON file")
    g.add_argument("--category", action="append", default=None, help="keep prompts of this category (repeatable)")
    g.add_argument("--category-column", default=None,
                   help="category column of a CSV/TSV/JSON file (default: Category or category)")
    g.add_argument("--num-prompts", type=int, default=None, help="sample this many prompts (seeded)")
    g.add_argument("--num-images", type=int, default=1, help="images per prompt (default 1)")
    g.add_argument("--seed", type=int, default=0, help="base seed of sampling and noise (default 0)")
    g = parser.add_argument_group("generation")
    g.add_argument("--batch-size", type=int, default=1, help="items per pipeline call (default 1)")
    g.add_argument("--steps", type=positive_int, default=None, help="num_inference_steps (>= 1)")
    g.add_argument("--guidance-scale", type=float, default=None, help="guidance_scale")
    g.add_argument("--height", type=int, default=None)
    g.add_argument("--width", type=int, default=None)
    g.add_argument("--num-frames", type=int, default=None, help="frames (video pipelines)")
    g.add_argument("--call-kwargs", default=None, metavar="JSON",
                   help='further pipeline arguments as a JSON object, e.g. \'{"use_resolution_binning": false}\'')
    g.add_argument("--device", default=None, help="device (default: the process's GPU, else cpu)")
    g.add_argument("--dtype", default=None, choices=sorted(_DTYPES), help="load the model in this dtype")
    g = parser.add_argument_group("metrics")
    g.add_argument("--clip", default="auto",
                   help="CLIP model for CLIP score and CLIP-feature FID: a folder, hub id, 'benchmark' (the "
                        "bundled CLIP) or 'none'; default 'auto' = the bundled CLIP for the bundled model, "
                        "none (the scores are skipped, with a note) for any other")
    g.add_argument("--reference", default="auto",
                   help="FID reference: folder of images, .npz statistics, 'benchmark[:split]', 'none'; "
                        "default 'auto' = the benchmark images for the benchmark model")
    g.add_argument("--fid-features", default="clip", choices=["clip", "inception"],
                   help="FID feature extractor (inception needs torch-fidelity)")
    g.add_argument("--video-reference", default="auto",
                   help="FVD reference clips (video models): 'benchmark-video[:split]', a .npy of uint8 videos "
                        "(N, F, H, W, 3), .npz statistics or 'none'; default 'auto' = the bundled held-out clips for "
                        "benchmark-video. fvd_vs_baseline (the full-compute clips) is always computed")
    g.add_argument("--fvd-features", default="clip-video", choices=["clip-video"],
                   help="clip-level video feature extractor of FVD (default: per-frame CLIP features, their spread "
                        "and temporal differences)")
    g.add_argument("--latency-runs", type=int, default=3, help="timed calls per configuration (default 3)")
    g.add_argument("--warmup", type=int, default=1, help="warm-up calls before timing (default 1)")
    g = parser.add_argument_group("output")
    g.add_argument("--out", required=True, help="output folder")
    g.add_argument("--resume", action="store_true", help="continue the run in --out (same settings)")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")


#: The flags of evaluate()'s settings, for its error messages.
OPTION_NAMES = {"num_prompts": "--num-prompts", "category_column": "--category-column",
                "call_kwargs": "--call-kwargs"}


def _call_kwargs(args: argparse.Namespace) -> dict | None:
    kwargs = json_object_option(args.call_kwargs, "--call-kwargs") if args.call_kwargs else {}
    for flag, key in (("steps", "num_inference_steps"), ("guidance_scale", "guidance_scale"),
                      ("height", "height"), ("width", "width"), ("num_frames", "num_frames")):
        value = getattr(args, flag)
        if value is not None:
            kwargs[key] = value
    if not kwargs:
        return None
    from .sweep import default_call_kwargs

    kwargs = {**default_call_kwargs(args.model), **kwargs}
    return kwargs


def _none(value: str) -> str | None:
    return None if value.lower() == "none" else value


def run(args: argparse.Namespace) -> int:
    import torch

    from .sweep import evaluate

    for module in args.imports:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ValueError(f"--import {module}: {exc}") from exc
    records = evaluate(
        model=args.model,
        prompts=args.prompts,
        configs=args.config,
        out=args.out,
        num_images=args.num_images,
        num_prompts=args.num_prompts,
        prompt_column=args.prompt_column,
        category_column=args.category_column,
        categories=args.category,
        seed=args.seed,
        batch_size=args.batch_size,
        call_kwargs=_call_kwargs(args),
        clip=_none(args.clip),
        reference=_none(args.reference),
        fid_features=args.fid_features,
        video_reference=_none(args.video_reference),
        fvd_features=args.fvd_features,
        latency_runs=args.latency_runs,
        warmup=args.warmup,
        device=args.device,
        dtype=getattr(torch, _DTYPES[args.dtype]) if args.dtype else None,
        resume=args.resume,
        progress=not args.no_progress,
        option_names=OPTION_NAMES,
    )
    for r in records:
        print(f"{r['name']:>24}  speed-up {r['speedup']:.2f}x  MACs /{_f(r['macs_ratio'])}  "
              f"CLIP {_f(r.get('clip_score'))}  FID {_f(r.get('fid'))}  PSNR {_f(r.get('psnr'))}"
              + (f"  FVD {_f(r.get('fvd', r.get('fvd_vs_baseline')))}" if "temporal_error" in r else ""))
    if records:
        print(f"results: {args.out}/results.json, report: {args.out}/report.md")
    return 0


def _f(v) -> str:
    return "-" if v is None else f"{v:.3g}" if isinstance(v, float) else str(v)


def main(argv: list[str] | None = None) -> int:
    """``python -m diffusion_accel.eval.cli ...``: this command alone (same as ``diffusion-accel eval``)."""
    import sys

    parser = argparse.ArgumentParser(prog="diffusion-accel eval", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        print(f"diffusion-accel eval: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
