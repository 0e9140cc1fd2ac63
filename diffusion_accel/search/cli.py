"""Search a Pareto frontier of cache schedules with NSGA-II (ECAD-style), resumable and multi-process.

Examples:
    diffusion-accel search --model benchmark --prompts benchmark:train --steps 20 \\
        --population 16 --generations 10 --out search-out --pick-speedup 2 --pick-speedup 3
    diffusion-accel search ... --out search-out --resume          # continue after a kill
    accelerate launch --multi_gpu --num_processes 2 -m diffusion_accel.cli search ...  # 2 processes
    diffusion-accel search --pick-from search-out/frontier.json --pick-speedup 2.5 --pick-out fast.json
    diffusion-accel search ... --space cache,quant --seed-config cache-w8a8.json --out joint-out  # seeded joint search

Writes ``checkpoint.json``, ``frontier.json``, ``plots/generation-<g>.png``, ``picked-<x>x.json``
and ``generalisation.json`` to ``--out`` (see ``docs/search.md``).
"""

from __future__ import annotations

import argparse
import os
import sys

from ..cli import json_object_option
from ..eval.cli import positive_int

#: ``--reuse`` values: "auto" plus :data:`diffusion_accel.caching.static.REUSE_MODES` (kept literal so that
#: ``--help`` does not import torch; tests/search/test_cli_reuse.py checks they agree).
REUSE_CHOICES = ("auto", "outputs", "block_residual", "forecast")

__all__ = ["add_arguments", "main", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from .fitness import COST_MODELS, QUALITY_METRICS
    from .nsga import CROSSOVERS

    parser.add_argument("--model", default="benchmark",
                        help="'benchmark' (the bundled image model), 'benchmark-video' (the bundled video model), "
                        "'tiny:<name>', a diffusers folder or a hub id (default: benchmark)")
    parser.add_argument("--prompts", default=None,
                        help="calibration prompts: a file or 'benchmark[-video][:split]' (default: the bundled "
                        "model's train captions, benchmark:train for other models)")
    parser.add_argument("--steps", type=positive_int, default=None, help="denoising steps (default: the model's settings)")
    parser.add_argument("--population", type=int, default=16, help="candidates per generation (>= 2)")
    parser.add_argument("--generations", type=int, default=10, help="generations after the initial one (>= 1)")
    parser.add_argument("--out", default=None, help="output folder (checkpoint, frontier, plots, picked configs)")
    parser.add_argument("--resume", action="store_true", help="continue the search in --out")
    parser.add_argument("--seed", type=int, default=0, help="seed of the whole search (default 0)")
    parser.add_argument("--quality", default="latent_mse", choices=sorted(QUALITY_METRICS),
                        help="quality objective (default latent_mse: fidelity to the full-compute latents)")
    parser.add_argument("--space", default="cache",
                        help="what to search, comma-separated: cache (default: cache schedules), quant (weight bits "
                        "per block + activation mode), attention (sparse attention per block); e.g. "
                        "--space cache,quant,attention for one joint NSGA-II")
    parser.add_argument("--cost", default=None, choices=sorted(COST_MODELS),
                        help="cost objective (default: macs for --space cache, latency_model for a joint space)")
    parser.add_argument("--latency-model", default=None,
                        help="JSON file of a calibrated latency model to price candidates with (default: calibrate "
                        "one on this machine at the start of the search)")
    parser.add_argument("--latency-repeats", type=int, default=5,
                        help="timed repetitions per op when calibrating the latency model (default 5)")
    parser.add_argument("--num-prompts", type=int, default=None, help="sample this many calibration prompts")
    parser.add_argument("--num-images", type=int, default=1, help="images per prompt")
    parser.add_argument("--batch-size", type=int, default=8, help="calibration items per pipeline call")
    parser.add_argument("--call-kwargs", default=None, help="JSON object of further pipeline arguments")
    parser.add_argument("--crossover", default="uniform", choices=sorted(CROSSOVERS), help="crossover operator")
    parser.add_argument("--crossover-prob", type=float, default=0.9, help="crossover probability")
    parser.add_argument("--mutation-prob", type=float, default=1.0, help="probability that a child is mutated")
    parser.add_argument("--bit-flip-prob", type=float, default=None, help="per-bit flip probability (default 1/bits)")
    parser.add_argument("--num-heuristics", type=int, default=None, help="at most this many heuristic seeds")
    parser.add_argument("--dynamic-seeds", type=float, nargs="*", default=None, metavar="THRESHOLD",
                        help="dynamic-caching thresholds whose decisions seed the search (default 0.1 0.2 0.3 "
                        "0.5 0.8; no value: no such seeds)")
    parser.add_argument("--dp-seeds", type=int, default=0, metavar="N",
                        help="seed the search with N DP schedules (least accumulated reuse error at compute "
                        "budgets spread over 0.3-0.8; default 0)")
    parser.add_argument("--seed-config", action="append", default=[], metavar="CFG.json",
                        help="seed a joint search (--space with quant or attention, or several --reuse choices) "
                        "with this AccelerationConfig file (AccelerationConfig.save, a picked-<x>x.json) or every "
                        "entry of a search frontier.json, scored in generation 0 right after full compute "
                        "(repeatable; named after the file stem, or the frontier entry's name)")
    parser.add_argument("--reuse", default="auto", metavar="MODES",
                        help=f"{', '.join(REUSE_CHOICES)}, forecast1 (= forecast) or forecast2: how reused "
                        "components contribute (StaticCacheConfig.reuse; default auto: block "
                        "residuals where the blocks allow it; forecast extrapolates them, better at many steps; "
                        "forecast2 = forecast_order 2). Several, comma-separated (e.g. "
                        "block_residual,forecast1,forecast2): a gene chooses the reuse of each candidate")
    parser.add_argument("--granularity", default="component", choices=["component", "block"],
                        help="what one gene switches: each component of each block per step (default, ECAD's) "
                        "or whole blocks per step (smaller space, Δ-DiT's unit)")
    parser.add_argument("--validation-prompts", type=int, default=0,
                        help="hold this many prompts back to choose the picks on (disjoint from the calibration "
                        "prompts; default 0: pick on calibration quality)")
    parser.add_argument("--validate-top", type=int, default=4,
                        help="with --validation-prompts: validate this many best candidates per target (default 4)")
    parser.add_argument("--refine-rounds", type=int, default=0,
                        help="after the generations, this many rounds of --population candidates refine the "
                        "frontier at the --pick-speedup targets (surrogate-guided local search; default 0)")
    parser.add_argument("--clip", default="benchmark", help="CLIP model for --quality clip / fid")
    parser.add_argument("--fid-reference", default="benchmark:train", help="FID reference for --quality fid")
    parser.add_argument("--pick-speedup", type=float, action="append", default=None,
                        help="pick the best schedule with at least this speed-up (repeatable; default 2 and 3)")
    parser.add_argument("--pick-from", default=None,
                        help="only pick from this frontier.json (no search); writes --pick-out")
    parser.add_argument("--pick-out", default=None, help="with --pick-from: where to save the picked config")
    parser.add_argument("--no-generalise", action="store_true",
                        help="skip evaluating the picked schedules at other step counts and resolutions")
    parser.add_argument("--generalise-steps", type=int, nargs="+", default=None,
                        help="step counts to resample the picked schedules to (default: steps/2 and 1.5x steps)")
    parser.add_argument("--generalise-resolution", default=None,
                        help="HxW never used in the search (default: 1.5x the search's)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads per process")
    parser.add_argument("--device", default=None, help="device (default: the process's accelerator, else cpu)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


#: The flags of search_schedule()'s settings, for its error messages.
OPTION_NAMES = {"num_prompts": "--num-prompts", "validation_prompts": "--validation-prompts",
                "call_kwargs": "--call-kwargs"}


def _resolution(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--generalise-resolution must look like 48x48, got {text!r}.") from None
    return h, w


def _seed_configs(paths: list[str]) -> dict:
    """The ``--seed-config`` files as ``{name: AccelerationConfig}``, read as ``eval --config`` reads them
    (:func:`~diffusion_accel.eval.sweep.load_configs`: a config file is named after its stem, a frontier
    file gives every entry under its name; names made unique)."""
    if not paths:
        return {}
    from ..eval.sweep import load_configs

    try:
        return dict(load_configs(paths))
    except (ValueError, TypeError) as exc:
        raise ValueError(f"--seed-config: {str(exc).rstrip('.')}; pass a JSON AccelerationConfig file (AccelerationConfig.save, "
                         "search --pick-out, picked-<x>x.json) or a search frontier.json.") from exc


def _pick_only(args: argparse.Namespace) -> int:
    from .frontier import pick, pick_entry

    if not args.pick_speedup or len(args.pick_speedup) != 1:
        raise ValueError("--pick-from needs exactly one --pick-speedup.")
    target = args.pick_speedup[0]
    entry = pick_entry(args.pick_from, target)
    path = args.pick_out or f"picked-{target:g}x.json"
    pick(args.pick_from, target).save(path)
    validated = f", validation quality {entry['validation_quality']:.6g}" if "validation_quality" in entry else ""
    print(f"picked {entry['name']}: speed-up {entry['speedup']:.3g}x, quality {entry['quality']:.6g}{validated} -> {path}")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.pick_from is not None:
        return _pick_only(args)
    if args.out is None:
        raise ValueError("--out is required (the folder for the checkpoint, frontier and plots).")
    call_kwargs = None if args.call_kwargs is None else json_object_option(args.call_kwargs, "--call-kwargs")
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}.")
        import torch

        torch.set_num_threads(args.threads)
    from .nsga import Operators
    from .runner import search_call_kwargs, search_schedule

    if call_kwargs is not None:
        call_kwargs = {**search_call_kwargs(args.model), **call_kwargs}
    operators = Operators(args.crossover, args.crossover_prob, args.mutation_prob, args.bit_flip_prob)
    extra = {} if args.dynamic_seeds is None else {"dynamic_seeds": tuple(args.dynamic_seeds)}
    seed_configs = _seed_configs(args.seed_config)
    result = search_schedule(
        args.model, args.prompts, out=args.out, num_steps=args.steps, population=args.population,
        generations=args.generations, seed=args.seed, quality=args.quality, cost=args.cost,
        num_prompts=args.num_prompts, num_images=args.num_images, batch_size=args.batch_size,
        call_kwargs=call_kwargs, operators=operators, num_heuristics=args.num_heuristics, clip=args.clip,
        fid_reference=args.fid_reference, pick_speedups=args.pick_speedup or (2.0, 3.0),
        generalise=not args.no_generalise, generalise_steps=args.generalise_steps,
        generalise_resolution=_resolution(args.generalise_resolution), resume=args.resume, device=args.device,
        progress=not args.no_progress, reuse=args.reuse, granularity=args.granularity,
        validation_prompts=args.validation_prompts, validate_top=args.validate_top,
        refine_rounds=args.refine_rounds, dp_seeds=args.dp_seeds, space=args.space, latency_model=args.latency_model,
        latency_repeats=args.latency_repeats, seed_configs=seed_configs, option_names=OPTION_NAMES, **extra,
    )
    from accelerate import PartialState

    if PartialState().is_main_process:
        _report(result)
    return 0


def _report(result) -> None:
    print(f"frontier: {len(result.frontier)} schedules of {result.evaluations} evaluated -> "
          f"{os.path.join(result.out, 'frontier.json')}")
    for entry in result.frontier:
        print(f"  {entry['name']:<24} speed-up {entry['speedup']:6.3f}x  quality {entry['quality']:.6g}")
    for target in result.requested:
        name = result.picked.get(target)
        if name is None:
            print(f"pick {target:g}x: no schedule reaches it (fastest {max(e['speedup'] for e in result.frontier):.3g}x)",
                  file=sys.stderr)
        else:
            entry = result.entry(name)
            how = (f"validation quality {entry['validation_quality']:.6g}" if "validation_quality" in entry
                   else f"quality {entry['quality']:.6g}")
            print(f"pick {target:g}x: {name} (speed-up {entry['speedup']:.3g}x, {how}) -> "
                  f"{os.path.join(result.out, f'picked-{target:g}x.json')}")
    if result.generalisation:
        print("generalisation (quality at other settings):")
        for r in result.generalisation:
            print(f"  {r['setting']:<10} {r['name']:<24} speed-up {r['macs_ratio']:6.3f}x  quality {r['quality']:.6g}")


def main(argv: list[str] | None = None) -> int:
    from ..cli import main as cli_main

    return cli_main(["search", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
