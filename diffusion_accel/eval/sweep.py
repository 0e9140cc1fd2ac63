"""Evaluate acceleration configs against the full-compute baseline in one run: :func:`evaluate`.

For the baseline and then each config, :func:`evaluate` applies the config and generates every
(prompt, image) item with the same seeds into ``<out>/<name>/`` (resumable, multi-process; see
:mod:`.generate`). Then the main process alone measures MACs, peak memory and operator shares of
one batch per variant (``<out>/<name>/cost.json``; :mod:`.costs`: every variant's memory first,
each from a clean state, so the order of the variants does not change it) and the latency in interleaved rounds (each
round times every variant once, so a drift in machine load affects all alike;
``<out>/latency.json``), scores every variant (:mod:`.scoring`) and writes ``results.json``,
``results.csv``, ``pareto.png`` and ``report.md`` (see :mod:`.report`).

Output folder::

    run.json                 the settings of the run and the model's fingerprint (a resumed run must match them)
    latency.json             the interleaved latency measurement
    baseline/, <name>/       images/, manifest.jsonl, cost.json per variant
    results.json  results.csv  pareto.png  report.md  grid.png

Each record of ``results.json`` holds ``name``, ``config`` (the AccelerationConfig as a dict),
quality (``clip_score``, ``fid``, ``fid_vs_baseline``, ``psnr``, ``ssim``, ``lpips``,
``max_abs_error``, ``mean_abs_error``, ``wasserstein``; videos add ``frame_consistency``), work
(``macs``: MACs run inside the denoisers during one generation of the first batch, counted with
``FlopCounterMode``; ``macs_ratio`` = baseline ``macs`` / this ``macs``, so 2.0 means half the
denoising MACs, the convention of :func:`diffusion_accel.cost.macs`; ``pipeline_macs`` and
``pipeline_macs_ratio`` include text encoders and VAE; ``uncounted_ops`` lists operators without a
flop formula, whose region's count is then ``None``) and the measured cost (:data:`TIMING_FIELDS`:
``speedup``, ``latency_s``, ``latency`` (median, min, max, std, IQR and every run),
``latency_spread`` (:func:`latency_spread`), ``speedup_noisy`` (this variant's or the baseline's runs
spread more than :data:`NOISY_SPREAD`), ``environment`` (CPU model, threads, torch version, device),
``peak_memory_bytes``, ``peak_memory_source``, ``operator_shares``). Every field but the timing
fields is a deterministic function of the settings: :func:`deterministic_view` keeps them.

Example:
    >>> # records = evaluate(model="benchmark", prompts="benchmark", configs=["fast.json"],
    >>> #                    num_images=2, out="eval-out")
    >>> # [(r["name"], r["speedup"], r["fid"]) for r in records]
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch

from ..api import acceleration_restored, check_config
from ..assets.bundled import BUNDLED_MODELS, bundled_model
from ..call_inputs import call_argument_default, check_call_arguments
from ..config import AccelerationConfig
from ..pipeline_state import with_call_defaults
from ..utils import atomic_write_json
from . import metrics as M
from .fingerprint import model_fingerprint
from .generate import (
    Item,
    check_item_call_kwargs,
    distributed_state,
    generate_images,
    load_arrays,
    make_items,
)
from .costs import BASELINE, interleaved_latency, latency_environment, macs_counter, measure_costs, use_variant
from .latency import MacsResult
from .prompts import Prompt, load_prompts
from .video_metrics import FVD_FEATURES, check_video_reference
from .settings import COST_MEASURES, EvalSettings, check_device, check_output_folder, jsonable, source_label

__all__ = [
    "BASELINE",
    "COST_MEASURES",
    "TIMING_FIELDS",
    "deterministic_view",
    "evaluate",
    "load_configs",
    "load_pipeline",
]

#: Record fields that depend on the machine's load (everything else is deterministic).
TIMING_FIELDS = ("speedup", "latency_s", "latency", "latency_spread", "speedup_noisy", "environment",
                 "peak_memory_bytes", "peak_memory_source", "operator_shares")
#: A speed-up is flagged noisy when its runs or the baseline's spread more than this (relative to the median).
NOISY_SPREAD = 0.10
RUN_FILE = "run.json"
#: The ``run.json`` key of the model's :func:`~.fingerprint.model_fingerprint`.
FINGERPRINT = "model_fingerprint"


def deterministic_view(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """``records`` without :data:`TIMING_FIELDS`: equal for equal settings (resumed, split or not)."""
    return [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in records]


# ---------------------------------------------------------------------------------------------
# Inputs


def load_configs(sources: Iterable[Any]) -> list[tuple[str, AccelerationConfig]]:
    """``[(name, config), ...]`` from config files, frontier files, configs or ``(name, config)`` pairs.

    A file holds one AccelerationConfig (named after the file), a JSON list of entries, or a
    frontier ``{"frontier": [{"config": {...}, "name"?: ...}, ...]}``; a list entry is a config or an
    object with a ``config`` key, named ``entry["name"]`` or ``<file stem>-<i>``. Names are made
    file-safe and unique; ``baseline`` is reserved.

    Raises:
        ValueError: unreadable file, invalid JSON, or an invalid config (the message names the file
            and entry).
    """
    out: list[tuple[str, AccelerationConfig]] = []
    for i, source in enumerate(sources):
        if isinstance(source, AccelerationConfig):
            out.append((f"config{i}", source))
        elif isinstance(source, tuple) and len(source) == 2 and isinstance(source[1], AccelerationConfig):
            out.append((str(source[0]), source[1]))
        elif isinstance(source, (str, os.PathLike)):
            out.extend(_configs_from_file(os.fspath(source)))
        else:
            raise TypeError(f"Cannot read an acceleration config from {source!r}; pass a JSON file path.")
    return _unique_names(out)


def _configs_from_file(path: str) -> list[tuple[str, AccelerationConfig]]:
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"Cannot read acceleration config file {path!r}: {exc}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"Acceleration config file {path!r} is not valid JSON: {exc}") from exc
    stem = os.path.splitext(os.path.basename(path))[0]
    if isinstance(data, dict) and "frontier" in data:
        entries = data["frontier"]
        if not isinstance(entries, list):
            raise ValueError(f"{path!r}: 'frontier' must be a list of entries holding a 'config'.")
    elif isinstance(data, list):
        entries = data
    else:
        return [(stem, _parse_config(data, path))]
    if not entries:
        raise ValueError(f"{path!r} holds an empty list of configs.")
    out = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ValueError(f"{path!r}, entry {i}: expected an object, got {type(entry).__name__}.")
        config = entry.get("config", entry)
        name = entry.get("name") if isinstance(entry.get("name"), str) else f"{stem}-{i:02d}"
        out.append((name, _parse_config(config, f"{path}, entry {i}")))
    return out


def _parse_config(data: Any, where: str) -> AccelerationConfig:
    try:
        return AccelerationConfig.from_dict(data)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{where}: not a valid acceleration config: {exc}") from exc


def _unique_names(configs: list[tuple[str, AccelerationConfig]]) -> list[tuple[str, AccelerationConfig]]:
    seen: set[str] = {BASELINE}
    out = []
    for name, config in configs:
        base = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "config"
        unique, k = base, 1
        while unique in seen:
            unique, k = f"{base}-{k}", k + 1
        seen.add(unique)
        out.append((unique, config))
    return out


def check_folder_source(source: str | os.PathLike, what: str, fix: str, label: str | None = None) -> None:
    """ValueError unless ``source`` is a folder or could be a hub id (not a path: absolute, ``./``,
    ``~``, or an existing file)."""
    path = os.fspath(source)
    if not os.path.isdir(path) and (os.path.isabs(path) or path.startswith((".", "~")) or os.path.exists(path)):
        raise ValueError(f"Cannot load {what} from {label or path!r}: no such folder; pass {fix}.")


def load_pipeline(model: Any = "benchmark", device: str | torch.device | None = None,
                  dtype: torch.dtype | None = None) -> Any:
    """A diffusers pipeline from ``"benchmark"`` (the bundled model), a local folder or a hub id
    (``DiffusionPipeline.from_pretrained``); a pipeline object is returned as is (moved to ``device``)."""
    if isinstance(model, (str, os.PathLike)):
        from diffusers import DiffusionPipeline

        name = os.fspath(model)
        path = name
        if name in BUNDLED_MODELS:
            path = os.fspath(BUNDLED_MODELS[name].model_dir())
        kwargs = {"torch_dtype": dtype} if dtype is not None else {}
        check_folder_source(path, "a diffusers pipeline", "a diffusers folder (with model_index.json), a hub id, "
                            "or 'benchmark' (--model)", label=name)
        try:
            pipe = DiffusionPipeline.from_pretrained(path, **kwargs)
        except (OSError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ValueError(f"Cannot load a diffusers pipeline from {name!r}: {first}") from exc
    else:
        pipe = model
        if dtype is not None:
            pipe.to(dtype=dtype)
    if device is not None:
        pipe.to(device)
    return pipe


def is_bundled_model(model: Any) -> bool:
    """Whether ``model`` is the bundled benchmark model: ``"benchmark"``, its folder, or a pipeline loaded from it."""
    return bundled_model(model) is not None


def _resolved_clip(clip: Any, model: Any) -> tuple[Any, str | None]:
    """``(clip source or None, note)``: ``"auto"`` is the bundled CLIP for the bundled model and no CLIP
    (with a note saying how to get the scores) for any other model."""
    if not (isinstance(clip, str) and clip == "auto"):
        return clip, None
    entry = bundled_model(model)
    if entry is not None and entry.clip is not None:
        return entry.clip, None
    return None, ("clip_score and CLIP-feature FID skipped: the bundled CLIP only knows the bundled model's digit "
                  "scenes; pass a CLIP model that fits this model with --clip (clip=) to compute them.")


def default_call_kwargs(model: Any) -> dict[str, Any]:
    """Pipeline arguments the bundled benchmark model is evaluated with (``{}`` for other models)."""
    if isinstance(model, str) and model in BUNDLED_MODELS:
        return BUNDLED_MODELS[model].generation_kwargs()
    return {}


# ---------------------------------------------------------------------------------------------
# The run


def evaluate(model: Any = None, prompts: Any = None, configs: Iterable[Any] | None = None, *,
             settings: EvalSettings | None = None, option_names: dict[str, str] | None = None,
             **options: Any) -> list[dict[str, Any]]:
    """Evaluate ``configs`` against the baseline; write results and reports to ``out``.

    Takes :class:`~diffusion_accel.eval.settings.EvalSettings` as ``settings=``, or its fields as
    arguments (they replace the fields of ``settings``): ``model``, ``prompts`` (prompt file,
    ``"benchmark[:split]"``, a list), ``configs``, ``out`` (required), ``num_images``,
    ``num_prompts``, ``prompt_column``, ``category_column``, ``categories``, ``seed``, ``num_steps``,
    ``batch_size``, ``call_kwargs``, ``clip``, ``reference``, ``fid_features``, ``latency_runs``, ``warmup``,
    ``device``, ``dtype``, ``resume``, ``progress``, ``measure`` -- see the settings for each.
    A pipeline passed as ``model`` keeps the acceleration it had. ``option_names``: how the caller
    names the settings in error messages (the command line passes its flags, e.g.
    ``{"num_prompts": "--num-prompts"}``; default the keywords, ``num_prompts=``).

    Returns:
        The records (one per variant, baseline first) on the main process; ``[]`` on the others.

    Raises:
        ValueError: bad prompts, configs, reference or settings; ``out`` holds another run.
    """
    s = EvalSettings.from_arguments(settings, "evaluate", {"model": model, "prompts": prompts, "configs": configs},
                                    options)
    out = os.fspath(s.out)
    names = {k: f"{k}=" for k in ("num_prompts", "category_column", "call_kwargs")}
    names.update(option_names or {})
    run = _checked_inputs(s, names)  # 1. every input, before anything is loaded, generated or written
    state = distributed_state(s.device)
    device = torch.device(s.device) if s.device is not None else state.device
    run_file = _read_run_file(out)  # read once: the configs to resume and the settings to check
    if s.resume:  # the configs of the run being resumed stay in it; the given ones are added
        run = run._replace(variants=_with_finished_configs(out, run.variants, run_file))
    pipe = load_pipeline(s.model, device=device, dtype=s.dtype)
    run = _checked_against_pipeline(pipe, run, names)
    # The CLIP model loads now (on the CPU), so that a bad one fails before the first image.
    clip_model = M.load_clip(run.clip) if run.clip is not None and state.is_main_process else None
    variants, items, call_kwargs = run.variants, run.items, run.call_kwargs
    _claim_out_dir(out, {**_run_record(s, run), FINGERPRINT: model_fingerprint(pipe)}, s.resume, state, run_file)

    # 2. Generate and measure each variant.
    with acceleration_restored(pipe):
        costs = _generate_and_measure(pipe, s, variants, items, call_kwargs, out, state, device)
    if not state.is_main_process:
        return []

    # 3. Score (main process) and report.
    if clip_model is not None:
        clip_model.model.to(device)
    records = _score(variants, items, out, costs, clip_model, run.reference, s.fid_features, s.progress,
                     run.clip_note, video=(run.video_reference, s.fvd_features))
    from .report import write_report, write_results

    write_results(records, out)
    write_report(records, out, items)
    return records


class _Inputs(NamedTuple):
    prompts: list[Prompt]
    variants: list[tuple[str, AccelerationConfig]]
    items: list[Item]
    call_kwargs: dict[str, Any]
    reference: Any
    clip: Any  # the CLIP source (``"auto"`` resolved), or None
    clip_note: str | None  # why there is no CLIP model
    video_reference: Any  # the FVD reference source (``"auto"`` resolved), or None


def _checked_inputs(s: EvalSettings, names: dict[str, str]) -> _Inputs:
    """What a run generates and scores, every input checked (nothing loaded or written)."""
    check_output_folder(s.out)
    check_device(s.device)
    if isinstance(s.model, (str, os.PathLike)) and os.fspath(s.model) != "benchmark":
        check_folder_source(s.model, "a diffusers pipeline", "a diffusers folder (with model_index.json), a hub "
                            "id, or 'benchmark' (--model)")
    clip, clip_note = _resolved_clip(s.clip, s.model)
    if isinstance(clip, (str, os.PathLike)) and os.fspath(clip) != "benchmark":
        check_folder_source(clip, "a CLIP model", "a CLIP folder, a hub id, 'benchmark' or 'none' (--clip)")
    prompt_list = load_prompts(s.prompts, column=s.prompt_column, category_column=s.category_column,
                               categories=s.categories, num=s.num_prompts, seed=s.seed,
                               names={"num": names["num_prompts"], "category_column": names["category_column"]})
    variants = [(BASELINE, AccelerationConfig())] + load_configs(s.configs)
    items = make_items(prompt_list, num_images=s.num_images, seed=s.seed)
    call_kwargs = default_call_kwargs(s.model) if s.call_kwargs is None else dict(s.call_kwargs)
    if s.num_steps is not None:
        call_kwargs["num_inference_steps"] = s.num_steps
    check_item_call_kwargs(items, call_kwargs, "the harness")
    reference = s.reference
    if reference == "auto":
        reference = BUNDLED_MODELS[s.model].fid_reference if isinstance(s.model, str) and s.model in BUNDLED_MODELS \
            else None
    _check_reference(reference)
    if isinstance(s.fid_features, str) and s.fid_features != "clip":
        M.fid_features(s.fid_features)  # unknown names and missing optional packages fail here
    video_reference = s.video_reference
    if isinstance(video_reference, str) and video_reference == "auto":
        entry = bundled_model(s.model) if isinstance(s.model, (str, os.PathLike)) else None
        video_reference = entry.fvd_reference if entry is not None else None
    check_video_reference(video_reference)
    if isinstance(s.fvd_features, str) and s.fvd_features not in FVD_FEATURES:
        raise ValueError(f"Unknown video feature extractor {s.fvd_features!r} (--fvd-features); choose one of "
                         f"{sorted(FVD_FEATURES)} or pass a torch module.")
    return _Inputs(prompt_list, variants, items, call_kwargs, reference, clip, clip_note, video_reference)


def _checked_against_pipeline(pipe: Any, run: _Inputs, names: dict[str, str]) -> _Inputs:
    """``run`` checked against the loaded pipeline: the call takes every argument, every config fits
    the denoisers and the step count. The checkpoint's own call defaults are added (e.g. no resolution
    binning for a PixArt checkpoint whose sample size has no bins; see the model adapters)."""
    run = run._replace(call_kwargs=with_call_defaults(pipe, run.call_kwargs))
    check_call_arguments(pipe, run.call_kwargs, names["call_kwargs"].rstrip("="))
    steps = run.call_kwargs.get("num_inference_steps", call_argument_default(pipe, "num_inference_steps"))
    for name, config in run.variants:
        if name == BASELINE:
            continue
        try:
            check_config(pipe, config, steps if isinstance(steps, int) else None)
        except ValueError as exc:
            raise ValueError(f"Config {name!r} does not fit {type(pipe).__name__}: {exc}") from None
    return run


def _run_record(s: EvalSettings, run: _Inputs) -> dict[str, Any]:
    """The settings written to ``run.json`` (a resumed run must match them)."""
    reference = run.reference
    return {
        "model": s.model_label,
        "prompts": [[p.index, p.text] for p in run.prompts],
        "configs": {name: config.to_dict() for name, config in run.variants},
        "num_images": s.num_images,
        "seed": s.seed,
        "batch_size": s.batch_size,
        "call_kwargs": jsonable(run.call_kwargs),
        "clip": None if run.clip is None else run.clip.name if isinstance(run.clip, M.Clip) else source_label(run.clip),
        "reference": None if reference is None else source_label(reference),
        "fid_features": s.fid_features if isinstance(s.fid_features, str) else type(s.fid_features).__name__,
        "video_reference": None if run.video_reference is None else source_label(run.video_reference),
        "fvd_features": s.fvd_features if isinstance(s.fvd_features, str) else type(s.fvd_features).__name__,
    }


def _generate_and_measure(pipe: Any, s: EvalSettings, variants: list, items: list, call_kwargs: dict[str, Any],
                          out: str, state: Any, device: torch.device) -> dict[str, dict[str, Any]]:
    """Generate every variant's images (all processes), then measure each variant's cost on the main
    process alone, after generation, so that the other processes never wait on it."""
    counted: dict[str, MacsResult] = {}
    for name, config in variants:
        use_variant(pipe, name, config)
        # The MACs of the first batch are counted while it is generated (one call fewer).
        count = macs_counter(pipe, counted, name) if "macs" in s.measure and state.is_main_process else None
        generate_images(pipe, items, os.path.join(out, name), batch_size=s.batch_size, call_kwargs=call_kwargs,
                        progress=s.progress, desc=name, state=state, wrap_first_batch=count)
    if not state.is_main_process:
        return {}
    batch = items[:s.batch_size]
    costs = measure_costs(pipe, variants, batch, call_kwargs, out, device, s.measure, counted, s.progress)
    latencies = interleaved_latency(pipe, variants, batch, call_kwargs, out, s.latency_runs, s.warmup, device,
                                    s.progress)
    for name, cost in costs.items():
        cost["latency"] = latencies[name]
    return costs


def _check_reference(reference: Any) -> None:
    if reference is None or isinstance(reference, (M.ReferenceStats, np.ndarray)):
        return
    name = os.fspath(reference)
    if name == "benchmark" or name.startswith("benchmark:"):
        return
    if name.endswith(".npz"):
        M.ReferenceStats.load(name)
        return
    if not os.path.isdir(name):
        raise ValueError(f"Reference {name!r} is neither a folder of images nor a .npz of statistics.")
    if not any(n.lower().endswith(M.IMAGE_EXTENSIONS) for n in os.listdir(name)):
        raise ValueError(f"Reference folder {name!r} holds no images ({', '.join(M.IMAGE_EXTENSIONS)}); "
                         "point --reference at a folder of reference images or a saved .npz.")


class _RunFile(NamedTuple):
    """``run.json`` of an output folder as read once at the start of a run."""

    exists: bool
    data: Any = None  # the parsed JSON (None where the file is missing or unreadable)
    error: Exception | None = None  # why an existing file could not be read


def _read_run_file(out: str) -> _RunFile:
    path = os.path.join(out, RUN_FILE)
    if not os.path.exists(path):
        return _RunFile(False)
    try:
        with open(path, encoding="utf-8") as fh:
            return _RunFile(True, json.load(fh))
    except (OSError, json.JSONDecodeError) as exc:
        return _RunFile(True, error=exc)


def _with_finished_configs(out: str, variants: list[tuple[str, AccelerationConfig]], run_file: _RunFile
                           ) -> list[tuple[str, AccelerationConfig]]:
    """The variants of the run in ``out`` (in their order; their outputs are reused), then those of
    ``variants`` it lacks (generated now): ``--resume --config new.json`` adds a config to a run."""
    path = os.path.join(out, RUN_FILE)
    if not isinstance(run_file.data, dict):
        return variants  # no run to resume (or an unreadable one: _claim_out_dir says so)
    finished = run_file.data.get("configs") or {}
    given = dict(variants)
    merged = []
    for name, data in finished.items():
        if name in given and given[name].to_dict() != data:
            raise ValueError(f"Cannot resume {out!r}: the settings differ in ['configs']: config {name!r} is not "
                             f"the one the run evaluated under that name. Give the new config another name (a "
                             "config file is named after the file), or choose another --out.")
        merged.append((name, given[name] if name in given else _parse_config(data, f"{path}, config {name!r}")))
    return merged + [(name, config) for name, config in variants if name not in finished]


def _claim_out_dir(out: str, settings: dict[str, Any], resume: bool, state: Any, run_file: _RunFile) -> None:
    """Check that ``out`` may take this run and write ``run.json`` (``run_file``: what it held when
    the run started). A folder whose run failed before any output (``run.json`` and maybe empty
    folders) is restarted with these settings."""
    path = os.path.join(out, RUN_FILE)
    previous = None
    started = run_file.exists and _generated_anything(out)
    if started:
        if run_file.error is not None:
            exc = run_file.error
            raise ValueError(f"{path!r} is unreadable ({exc}); choose another --out.") from exc
        previous = run_file.data
        if not resume:
            raise ValueError(f"{out!r} already holds an evaluation run; pass --resume (resume=True) to "
                             "continue it, or choose another --out. Nothing was changed.")
        _check_same_model(out, previous.get(FINGERPRINT), settings[FINGERPRINT])
        changed = sorted(k for k in set(settings) | set(previous)
                         if k not in (FINGERPRINT, "configs") and settings.get(k) != previous.get(k))
        old_configs = previous.get("configs") or {}
        if any(settings["configs"].get(name) != config for name, config in old_configs.items()):
            changed = sorted([*changed, "configs"])
        if changed:
            raise ValueError(f"Cannot resume {out!r}: the settings differ in {changed}. Rerun with the "
                             "original settings, or choose another --out.")
    elif not run_file.exists and os.path.isdir(out) and os.listdir(out) and not resume:
        raise ValueError(f"{out!r} exists and is not empty; choose another --out (nothing was changed).")
    # Every process checks the folder before the main process writes run.json into it.
    state.wait_for_everyone()
    if state.is_main_process and (not started or previous != settings):  # new run, or configs added
        atomic_write_json(path, settings)
    state.wait_for_everyone()


def _check_same_model(out: str, previous: str | None, current: str) -> None:
    """Refuse to resume ``out`` with another model than the one its outputs come from (runs written
    before fingerprints were recorded have ``previous`` ``None`` and are not checked)."""
    if previous is not None and previous != current:
        raise ValueError(f"Cannot resume {out!r}: the model is not the one this run was made with (its class, "
                         f"config, weights, dtype or acceleration differ; fingerprint {current[:12]} != "
                         f"{previous[:12]}), and its outputs would be mixed with the old ones. Pass the same model, "
                         "or choose another --out for this one. Nothing was changed.")


def _generated_anything(out: str) -> bool:
    """Whether any variant folder of the run in ``out`` holds a generated output."""
    for name in os.listdir(out):
        images = os.path.join(out, name, "images")
        if os.path.isdir(images) and os.listdir(images):
            return True
    return False


def latency_spread(latency: dict[str, Any]) -> float:
    """How far a variant's timed runs stray from their median: ``max(max - median, median - min) / median``
    (0.1 = the runs lie within ±10 % of the median; 0 for a single run)."""
    median = latency["median_s"]
    return max(latency["max_s"] - median, median - latency["min_s"]) / median if median > 0 else 0.0


def _ratio(full: int | None, accelerated: int | None) -> float | None:
    """``full / accelerated`` (2.0 = half the MACs; the convention of ``diffusion_accel.cost.macs``);
    ``None`` when either count is unknown."""
    if not full or accelerated is None:
        return None
    return full / accelerated if accelerated else float("inf")


#: Items scored at once: every metric is fed chunk by chunk, so memory does not grow with the run.
SCORE_CHUNK = 32


def _chunks(out: str, name: str, items: list, manifests: dict[str, dict]):
    """``(outputs, baseline outputs, prompts)`` for consecutive chunks of ``items``."""
    for i in range(0, len(items), SCORE_CHUNK):
        chunk = items[i : i + SCORE_CHUNK]
        keys = [it.key for it in chunk]
        yield (load_arrays(os.path.join(out, name), keys, manifests[name]),
               load_arrays(os.path.join(out, BASELINE), keys, manifests[BASELINE]),
               [it.prompt for it in chunk])


class _References(NamedTuple):
    """What every variant is scored against: feature extractors and reference statistics."""
    extractor: Any = None
    stats: Any = None  # the FID reference's
    baseline_stats: Any = None  # the baseline outputs' (fid_vs_baseline)
    video_extractor: Any = None
    video_stats: Any = None  # the FVD reference's
    video_baseline_stats: Any = None  # the baseline clips' (fvd_vs_baseline)


def _is_video(manifest: dict[str, dict]) -> bool:
    """Whether a variant's stored outputs are videos (``(F, H, W, 3)`` arrays)."""
    return any(len(record.get("shape") or ()) == 4 for record in manifest.values())


def _references(items, out, manifests, clip, reference, fid_features, video, bar,
                notes: list[str]) -> _References:
    """The extractors and reference statistics; the baseline's outputs are read once for both
    ``fid_vs_baseline`` and (videos) ``fvd_vs_baseline``."""
    from .video_metrics import fvd_features as make_fvd_features
    from .video_metrics import load_video_reference, video_tensor

    video_reference, fvd_kind = video
    with_features = clip is not None or not (isinstance(fid_features, str) and fid_features == "clip")
    is_video = _is_video(manifests[BASELINE])
    with_video = is_video and (clip is not None or isinstance(fvd_kind, torch.nn.Module))
    if is_video and not with_video:
        notes.append("fvd: no CLIP model for the clip-level video features (pass --clip, or a module as fvd_features=).")
    elif with_video and video_reference is None:
        notes.append("fvd: no reference clips (pass --video-reference); fvd_vs_baseline uses the full-compute clips.")
    if not (with_features or with_video):
        return _References()
    refs = _References()
    sums = video_sums = None
    if with_features:
        extractor = M.fid_features(fid_features, clip)
        refs = refs._replace(extractor=extractor, stats=M.load_reference(reference, extractor) if reference is not None
                             else None)
        sums = M.FeatureSums(extractor)
    if with_video:
        bar.set_postfix_str("video reference", refresh=False)
        video_extractor = make_fvd_features(fvd_kind, clip)
        refs = refs._replace(video_extractor=video_extractor, video_stats=load_video_reference(
            video_reference, video_extractor) if video_reference is not None else None)
        video_sums = M.FeatureSums(video_extractor)
    bar.set_postfix_str("baseline features", refresh=False)
    for _, baseline_chunk, _ in _chunks(out, BASELINE, items, manifests):
        if sums is not None:
            sums.update_frames(baseline_chunk)
        if video_sums is not None:
            clips = video_tensor(baseline_chunk)
            for start in range(0, len(clips), 8):
                video_sums.update(clips[start : start + 8])
        bar.update(len(baseline_chunk))
    for field, feature_sums in (("baseline_stats", sums), ("video_baseline_stats", video_sums)):
        if feature_sums is not None:
            stats = feature_sums.stats()
            refs = refs._replace(**{field: stats if stats.num_samples >= 2 else None})
    return refs


def _score(variants, items, out, costs, clip, reference, fid_features, progress,
           clip_note: str | None = None, video: tuple[Any, Any] = (None, "clip-video")) -> list[dict[str, Any]]:
    """One record per variant. ``video``: ``(FVD reference source or None, video feature extractor)``."""
    from tqdm.auto import tqdm

    from .generate import read_manifest
    from .scoring import QualityScorer

    manifests = {name: read_manifest(os.path.join(out, name)) for name, _ in variants}
    with_features = clip is not None or not (isinstance(fid_features, str) and fid_features == "clip")
    # One step per item scored (and per baseline item whose features are extracted first), with the time left.
    bar = tqdm(total=len(items) * (len(variants) + with_features), desc="scoring",
               unit="item", disable=not progress, dynamic_ncols=True)
    notes_common: list[str] = []
    if clip is None and isinstance(fid_features, str) and fid_features == "clip":
        notes_common.append(clip_note or "No CLIP model: clip_score and CLIP-feature FID are not computed.")
    refs = _references(items, out, manifests, clip, reference, fid_features, video, bar, notes_common)
    stats = refs.stats
    if stats is None:
        notes_common.append("fid: no reference images (pass --reference).")
    base_cost = costs[BASELINE]
    environment = latency_environment(out)
    records = []
    for name, config in variants:
        bar.set_postfix_str(name, refresh=False)
        cost = costs[name]
        record: dict[str, Any] = {"name": name, "config": config.to_dict(), "num_items": len(items)}
        record["speedup"] = base_cost["latency"]["median_s"] / cost["latency"]["median_s"]
        record["latency_s"] = cost["latency"]["median_s"]
        record["latency"] = cost["latency"]
        record["latency_spread"] = latency_spread(cost["latency"])
        record["speedup_noisy"] = max(record["latency_spread"], latency_spread(base_cost["latency"])) > NOISY_SPREAD
        record["environment"] = environment
        record["peak_memory_bytes"] = cost["peak_memory_bytes"]
        record["peak_memory_source"] = cost["peak_memory_source"]
        record["operator_shares"] = cost["operator_shares"]
        record["macs"] = cost["macs"]
        record["macs_ratio"] = _ratio(base_cost["macs"], cost["macs"])
        record["pipeline_macs"] = cost["pipeline_macs"]
        record["pipeline_macs_ratio"] = _ratio(base_cost["pipeline_macs"], cost["pipeline_macs"])
        record["uncounted_ops"] = cost["uncounted_ops"]
        notes = list(notes_common)
        if cost["uncounted_ops"]:
            notes.append(f"{name}: MACs not measurable (null) where operators without a flop formula ran: "
                         f"{cost['uncounted_ops']}; register one with "
                         "torch.utils.flop_counter.register_flop_formula.")
        scorer = QualityScorer(clip=clip, extractor=refs.extractor, reference=stats, baseline=refs.baseline_stats,
                               video_extractor=refs.video_extractor, video_reference=refs.video_stats,
                               video_baseline=refs.video_baseline_stats)
        for chunk in _chunks(out, name, items, manifests):
            scorer.update(*chunk)
            bar.update(len(chunk[2]))
        values, quality_notes = scorer.compute()
        record.update(values)
        record["notes"] = notes + quality_notes
        records.append(record)
    bar.close()
    return records
