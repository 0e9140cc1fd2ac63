"""`search_schedule`: the evolutionary (NSGA-II) search for cache schedules, end to end.

1. Validate the inputs (nothing is loaded or written before: a bad input leaves ``out`` as it was).
2. Load the pipeline, lay out the genome (:mod:`.problem`), and on ``resume`` check that the
   checkpoint's settings and search space match.
3. Compute the calibration references once (:class:`.fitness.CandidateEvaluator`).
4. Generation 0 is the seeded population (:mod:`.seeding`); each further generation asks NSGA-II
   (:mod:`.nsga`) for offspring, evaluates the new ones across processes (:mod:`.distributed`),
   tells the objectives, then -- on the main process -- writes the checkpoint and a Pareto plot.
   With ``refine_rounds``, further rounds refine the frontier at the target speed-ups
   (:mod:`.refine`), checkpointed the same way.
5. The frontier (non-dominated among every evaluated candidate) goes to ``frontier.json``; with
   ``validation_prompts``, the best candidates per target are scored again on validation prompts
   (:mod:`.validation`) and the picks are the best there; the picked schedules at
   ``pick_speedups`` go to ``picked-<x>x.json``; the generalisation report (:mod:`.generalise`) to
   ``frontier.json`` and ``generalisation.json``.

Output folder::

    checkpoint.json             state after the last finished generation or refinement round (resume from it)
    frontier.json               non-dominated schedules with objectives (+ heuristics, generalisation)
    plots/generation-<g>.png    Pareto plot after generation g
    picked-<x>x.json            AccelerationConfig of the best schedule with speed-up >= x

Example:
    >>> from diffusion_accel.testing import tiny_pipeline, tiny_call_kwargs
    >>> pipe = tiny_pipeline("pixart-alpha")
    >>> kwargs = {k: v for k, v in tiny_call_kwargs("pixart-alpha", height=32, width=32).items()
    ...           if k not in ("prompt", "output_type")}
    >>> result = search_schedule(pipe, ["a cat", "a dog"], num_steps=4, population=4, generations=2,
    ...                          call_kwargs=kwargs, generalise=False, progress=False)
    >>> result.frontier[0]["name"], result.frontier[0]["speedup"]
    ('full', 1.0)
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..config import AccelerationConfig
from ..eval.generate import distributed_state, make_items
from ..eval.prompts import load_prompts
from ..caching.static import StaticCacheConfig
from .checkpoint import check_compatible, load_checkpoint, save_checkpoint
from .distributed import check_agreement, map_tasks
from .fitness import COST_MODELS, QUALITY_METRICS, CandidateEvaluator, Evaluation
from .frontier import non_dominated, pick_entry, plot_frontier, save_frontier
from .generalise import default_settings, evaluate_generalisation
from .nsga import NsgaDriver, Operators
from .problem import GRANULARITIES, ScheduleGenome, ScheduleProblem, bits_to_str, str_to_bits
from .refine import gene_savings, refine_candidates
from .seeding import DYNAMIC_SEED_THRESHOLDS, dynamic_schedules, initial_population
from .validation import candidates_to_validate, split_prompts, validated_entries

__all__ = ["SearchResult", "load_search_pipeline", "search_call_kwargs", "search_schedule"]

FRONTIER_FILE = "frontier.json"
GENERALISATION_FILE = "generalisation.json"
PLOTS_DIR = "plots"


@dataclass
class SearchResult:
    """What a search returns (on every process).

    Attributes:
        frontier: frontier entries (see :mod:`.frontier`), slowest first.
        heuristics: the seeded heuristic schedules with their objectives.
        generalisation: records of :func:`.generalise.evaluate_generalisation` (``[]`` if skipped).
        picked: target speed-up -> picked entry name (targets no schedule reaches are left out).
        requested: the target speed-ups asked for (``pick_speedups``).
        evaluations: candidates evaluated (over all generations, resumed runs included).
        out: the output folder, or ``None``.
        validated: entries scored on the validation prompts (see :mod:`.validation`; ``[]`` without).
    """

    frontier: list[dict[str, Any]]
    heuristics: list[dict[str, Any]]
    generalisation: list[dict[str, Any]] = field(default_factory=list)
    picked: dict[float, str] = field(default_factory=dict)
    evaluations: int = 0
    out: str | None = None
    requested: list[float] = field(default_factory=list)
    validated: list[dict[str, Any]] = field(default_factory=list)

    def pick(self, speedup: float) -> AccelerationConfig:
        """The best-quality schedule with at least ``speedup`` (see :func:`.frontier.pick`)."""
        from .frontier import pick

        return pick(self, speedup)

    def entry(self, name: str) -> dict[str, Any]:
        """The frontier or validated entry called ``name``."""
        return next(e for e in [*self.validated, *self.frontier] if e["name"] == name)


def load_search_pipeline(model: Any, device: Any = None) -> Any:
    """``"benchmark"``, ``"tiny:<name>"`` (an offline tiny pipeline), a folder, a hub id, or a pipeline."""
    if isinstance(model, str) and model.startswith("tiny:"):
        from ..testing import tiny_pipeline

        pipe = tiny_pipeline(model.split(":", 1)[1])
        return pipe.to(device) if device is not None else pipe
    from ..eval.sweep import load_pipeline

    return load_pipeline(model, device=device)


def search_call_kwargs(model: Any) -> dict[str, Any]:
    """Default pipeline arguments of a search on ``model`` (the benchmark's settings, tiny defaults, or ``{}``).

    The bundled (PixArt) model also gets ``clean_caption=False``: its templated captions need no
    cleaning, and cleaning needs bs4/ftfy (without them PixArt warns at every call).
    """
    if isinstance(model, str) and model.startswith("tiny:"):
        from ..testing import tiny_call_kwargs

        return {k: v for k, v in tiny_call_kwargs(model.split(":", 1)[1]).items() if k not in ("prompt", "output_type")}
    from ..eval.sweep import default_call_kwargs

    kwargs = dict(default_call_kwargs(model))
    if model == "benchmark":
        kwargs.setdefault("clean_caption", False)
    return kwargs


def _positive_int(name: str, value: Any, minimum: int, hint: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}; {hint}.")
    return value


def _model_label(model: Any) -> str:
    return os.fspath(model) if isinstance(model, (str, os.PathLike)) else f"<{type(model).__name__} instance>"


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def search_schedule(
    model: Any = "benchmark",
    prompts: Any = "benchmark:train",
    *,
    out: str | os.PathLike | None = None,
    num_steps: int | None = None,
    population: int = 16,
    generations: int = 10,
    seed: int = 0,
    quality: str = "latent_mse",
    cost: str = "macs",
    num_prompts: int | None = None,
    num_images: int = 1,
    batch_size: int = 8,
    call_kwargs: dict[str, Any] | None = None,
    operators: Operators | None = None,
    num_heuristics: int | None = None,
    dynamic_seeds: Sequence[float] = DYNAMIC_SEED_THRESHOLDS,
    reuse: str = "auto",
    granularity: str = "component",
    validation_prompts: int = 0,
    validate_top: int = 4,
    refine_rounds: int = 0,
    clip: Any = "benchmark",
    fid_reference: Any = "benchmark:train",
    pick_speedups: Sequence[float] = (2.0, 3.0),
    generalise: bool = True,
    generalise_steps: Sequence[int] | None = None,
    generalise_resolution: tuple[int, int] | None = None,
    resume: bool = False,
    device: Any = None,
    progress: bool = True,
    callback: Callable[[dict[str, Any]], None] | None = None,
) -> SearchResult:
    """Search a Pareto frontier of cache schedules for ``model`` with NSGA-II.

    Args:
        model: ``"benchmark"``, ``"tiny:<name>"``, a diffusers folder or hub id, or a pipeline.
        prompts: calibration prompts: a file, ``"benchmark:train"`` or a list of strings.
        out: output folder (checkpoint, frontier, plots, picked configs); ``None`` writes nothing.
        num_steps: denoising steps of the schedules (default: ``call_kwargs``' or 20).
        population: candidates per generation (>= 2).
        generations: NSGA-II generations after the initial population (>= 1).
        seed: seeds the random schedules, NSGA-II and every calibration item's noise.
        quality: ``"latent_mse"`` (default), ``"psnr"``, ``"clip"`` or ``"fid"`` (see :mod:`.fitness`).
        cost: ``"macs"`` (default) or ``"latency"``.
        num_prompts, num_images: sample this many prompts (seeded), images per prompt.
        batch_size: calibration items per pipeline call.
        call_kwargs: pipeline arguments besides prompt/generator/output_type (default: the
            benchmark's settings for the benchmark model, tiny defaults for ``tiny:<name>``).
        operators: crossover and mutation settings (:class:`.nsga.Operators`).
        num_heuristics: at most this many heuristic seeds in the initial population.
        dynamic_seeds: dynamic-caching thresholds whose decisions on the calibration prompts seed
            the initial population (:func:`.seeding.dynamic_schedules`); ``()`` for none.
        reuse: :attr:`StaticCacheConfig.reuse` of every candidate (and of the saved configs):
            ``"auto"`` (default) is ``"block_residual"`` when every block of the denoiser declares
            its streams (all covered transformers), else ``"outputs"`` (UNets).
        granularity: what one gene switches (:data:`.problem.GRANULARITIES`): ``"component"``
            (default, ECAD's: each component of each block at each step) or ``"block"`` (whole
            blocks per step: a smaller space, Δ-DiT's unit).
        validation_prompts: hold this many prompts of ``prompts`` back (disjoint from the
            calibration prompts, seeded) to choose the picks on (:mod:`.validation`); 0 (default)
            picks on calibration quality. With ``num_prompts`` the source gives
            ``num_prompts + validation_prompts`` prompts.
        validate_top: per target speed-up, this many best calibration candidates are validated.
        refine_rounds: after the generations, this many rounds of ``population`` candidates each
            refine the frontier at the ``pick_speedups`` (:mod:`.refine`: surrogate-guided local
            search that spends each target's whole MAC budget); 0 (default) for none.
        clip, fid_reference: CLIP model (``clip`` metric and CLIP-feature FID) and FID reference.
        pick_speedups: target speed-ups to pick schedules at (and to check generalisation at).
        generalise: evaluate the picked schedules (and the best heuristics at the same targets)
            at other step counts (``generalise_steps``) and an unseen resolution
            (``generalise_resolution``).
        resume: continue the search in ``out`` (same settings; ``generations`` may grow).
        device: where to run (default: the process's accelerator device, else CPU).
        progress: tqdm progress bars (main process).
        callback: called on every process with ``{"event": "candidate", "generation", "index"}``
            after each evaluated candidate and ``{"event": "generation", "generation", "frontier"}``
            after each checkpoint (raising from it stops the search; resume continues it).

    Returns:
        :class:`SearchResult`.

    Raises:
        ValueError: population < 2, generations < 1, an empty or unreadable prompt set, unknown
            metric/cost, ``out`` holds a search and ``resume`` is false, or the checkpoint does not
            match (another model, step count or settings, or more generations than asked for).
            ``out`` is left untouched.
    """
    # 1. Validate.
    _positive_int("population", population, 2, "NSGA-II needs at least 2 candidates per generation")
    _positive_int("generations", generations, 1, "run at least one generation after the initial population")
    _positive_int("num_images", num_images, 1, "generate at least one image per prompt")
    _positive_int("batch_size", batch_size, 1, "use at least one item per call")
    _positive_int("validate_top", validate_top, 1, "validate at least one candidate per target speed-up")
    _positive_int("refine_rounds", refine_rounds, 0, "0 runs no refinement after the generations")
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {list(GRANULARITIES)}, got {granularity!r}.")
    if quality not in QUALITY_METRICS:
        raise ValueError(f"Unknown quality metric {quality!r}; choose one of {sorted(QUALITY_METRICS)}.")
    if cost not in COST_MODELS:
        raise ValueError(f"Unknown cost {cost!r}; choose one of {sorted(COST_MODELS)}.")
    operators = operators or Operators()
    _positive_int("validation_prompts", validation_prompts, 0, "0 picks on calibration quality")
    wanted = None if num_prompts is None else num_prompts + validation_prompts
    prompt_list, validation_list = split_prompts(load_prompts(prompts, num=wanted, seed=seed),
                                                 validation_prompts, seed)
    items = make_items(prompt_list, num_images=num_images, seed=seed)
    call_kwargs = dict(search_call_kwargs(model) if call_kwargs is None else call_kwargs)
    reserved = sorted({"prompt", "generator", "output_type"} & set(call_kwargs))
    if reserved:
        raise ValueError(f"call_kwargs must not set {reserved}: the search sets them per calibration item.")
    num_steps = num_steps if num_steps is not None else int(call_kwargs.get("num_inference_steps", 20))
    _positive_int("num_steps", num_steps, 2, "step 0 always computes, so a search needs 2 steps or more")
    call_kwargs["num_inference_steps"] = num_steps
    targets = [float(t) for t in pick_speedups]
    if any(not t > 0 for t in targets):
        raise ValueError(f"pick_speedups must be positive numbers, got {list(pick_speedups)}.")
    out = os.fspath(out) if out is not None else None
    saved = load_checkpoint(out) if out is not None else None
    if saved is not None and not resume:
        raise ValueError(f"{out!r} already holds a schedule search; pass --resume (resume=True) to continue "
                         "it, or choose another --out.")

    # 2. Pipeline, search space, settings.
    state = distributed_state(device)
    pipe = load_search_pipeline(model, device=device if device is not None else state.device)
    genome = ScheduleGenome.for_model(pipe, num_steps, granularity)
    reuse = _resolve_reuse(pipe, reuse)
    quality_options = {"clip": clip, "reference": fid_reference}
    settings = {
        "model": _model_label(model),
        "search_space": genome.signature(),
        "prompts": [[p.index, p.text] for p in prompt_list],
        "num_images": num_images,
        "seed": int(seed),
        "population": population,
        "generations": generations,
        "quality": quality,
        "quality_options": _jsonable(quality_options) if quality in ("clip", "fid") else None,
        "cost": cost,
        "batch_size": batch_size,
        "call_kwargs": _jsonable(call_kwargs),
        "operators": operators.to_dict(),
        "num_heuristics": num_heuristics,
        "dynamic_seeds": [float(t) for t in dynamic_seeds],
        "reuse": reuse,
        "validation": {"prompts": [[p.index, p.text] for p in validation_list], "top": validate_top}
        if validation_list else None,
        "refine": {"rounds": refine_rounds, "targets": targets} if refine_rounds else None,
    }
    total_rounds = generations + 1 + refine_rounds
    if saved is not None:
        check_compatible(saved["settings"], settings, out)
        done, saved_generations = int(saved["completed"]), int(saved["settings"]["generations"])
        if done > saved_generations + 1:  # refinement rounds have begun: the generations are fixed
            if generations != saved_generations:
                raise ValueError(f"{out!r} has started refining after {saved_generations} generations; resume "
                                 f"with --generations {saved_generations}.")
        elif done > generations + 1:
            raise ValueError(f"{out!r} already holds {done - 1} generations; resume with "
                             f"--generations {done - 1} or more.")

    # 3. References (only if there is something left to evaluate) and the optimiser.
    evaluator = CandidateEvaluator(pipe, items, call_kwargs, quality=quality, cost=cost, batch_size=batch_size,
                                   quality_options=quality_options, reuse=reuse)
    if saved is None or int(saved["completed"]) < total_rounds:
        evaluator.prepare()
    # Data-driven seeds need pipeline runs: only when the search starts (a resumed search has its
    # population, and the seeds' names, in the checkpoint).
    extra = dynamic_schedules(evaluator, genome, dynamic_seeds) if saved is None and dynamic_seeds else []
    seed_names, initial = initial_population(pipe, genome, population, seed, num_heuristics, extra)
    problem = ScheduleProblem(genome)
    driver = NsgaDriver(problem, initial, seed, operators)
    archive: dict[str, dict[str, Any]] = {}
    history: list[dict[str, Any]] = []
    completed = 0
    if saved is not None:
        driver.load_state(saved["nsga"])
        archive = saved["archive"]
        history = saved["history"]
        completed = int(saved["completed"])
    names = dict(zip((bits_to_str(b) for b in initial), seed_names))
    names.update({key: record["name"] for key, record in archive.items() if record.get("name")})

    # 4. Generations, then refinement rounds (:mod:`.refine`) at the target speed-ups.
    from tqdm.auto import tqdm

    show = progress and state.is_main_process
    savings = gene_savings(genome, evaluator.profile) if refine_rounds and completed < total_rounds else None
    bar = tqdm(total=total_rounds, initial=min(completed, total_rounds), desc="generations", unit="gen",
               disable=not show, dynamic_ncols=True)
    try:
        for generation in range(completed, total_rounds):
            refining = generation > generations
            if refining:
                rng = np.random.default_rng([int(seed), generation])
                X = np.array(refine_candidates(archive, savings, targets, population, rng), dtype=bool)
                X = X.reshape(-1, genome.num_bits)
            else:
                X = driver.ask()
            what = "refinement round" if refining else "generation"
            check_agreement(np.packbits(X).tobytes(), state, f"the candidates of {what} {generation}")
            keys = [bits_to_str(x) for x in X]
            todo = list(dict.fromkeys(k for k in keys if k not in archive))
            inner = tqdm(total=len(todo), desc=f"{what} {generation}", unit="cand", leave=False,
                         disable=not show, dynamic_ncols=True)

            def evaluate(key: str, generation: int = generation, todo: list[str] = todo) -> dict[str, Any]:
                result = evaluator.evaluate(genome.decode(str_to_bits(key)))
                if callback is not None:
                    callback({"event": "candidate", "generation": generation, "index": todo.index(key)})
                return {**result.to_dict(), "process": state.process_index}

            try:
                results = map_tasks(evaluate, todo, state, inner)
            finally:
                inner.close()
            for key, result in zip(todo, results):
                archive[key] = {**result, "generation": generation, "name": names.get(key),
                                **({"origin": "refine"} if refining else {})}
            if refining:
                history.append({"generation": generation, "population": keys, "refine": True})
            else:
                F = np.array([[archive[k]["cost"], archive[k]["objective"]] for k in keys])
                driver.tell(X, F)
                history.append({"generation": generation,
                                "population": [bits_to_str(x) for x in driver.population()[0]]})
            if out is not None and state.is_main_process:
                save_checkpoint(out, {"settings": settings, "completed": generation + 1, "nsga": driver.state(),
                                      "archive": archive, "history": history})
                _plot(out, generation, archive, history[-1]["population"], quality)
            bar.update(1)
            if callback is not None:
                callback({"event": "generation", "generation": generation,
                          "frontier": [archive[k]["objective"] for k in _frontier_keys(archive)]})
    finally:
        bar.close()

    # 5. Frontier, picks, generalisation.
    frontier = [_entry(genome, k, archive[k], reuse) for k in _frontier_keys(archive)]
    frontier.sort(key=lambda e: (e["speedup"], e["objectives"][1]))
    heuristics = [_entry(genome, k, archive[k], reuse) for k in names if k in archive and _is_heuristic(names[k])]
    result = SearchResult(frontier, heuristics, evaluations=len(archive), out=out, requested=targets)
    if validation_list:
        validator = evaluator.variant(items=make_items(validation_list, num_images=num_images, seed=seed))
        result.validated = _validate(validator, genome, archive, targets, validate_top, state, show)
    for target in targets:
        try:
            result.picked[target] = pick_entry(result, target)["name"]
        except ValueError:
            continue
    extra = {"metric": evaluator.metric.describe(), "cost": cost, "settings": settings, "heuristics": heuristics,
             "picked": {f"{t:g}": result.picked.get(t) for t in targets}}
    if result.validated:
        extra["validation"] = {**settings["validation"], "entries": result.validated}
    if out is not None and state.is_main_process:
        save_frontier(os.path.join(out, FRONTIER_FILE), frontier, **extra)
        for target, name in result.picked.items():
            AccelerationConfig.from_dict(result.entry(name)["config"]).save(
                os.path.join(out, f"picked-{target:g}x.json"))
    if generalise:
        result.generalisation = _generalise(evaluator, genome, result, heuristics, targets, state, generalise_steps,
                                            generalise_resolution, show)
        if out is not None and state.is_main_process:
            save_frontier(os.path.join(out, FRONTIER_FILE), frontier, **extra, generalisation=result.generalisation)
            from ..utils import atomic_write_json

            atomic_write_json(os.path.join(out, "generalisation.json"), result.generalisation)
    state.wait_for_everyone()
    return result


def _validate(validator: CandidateEvaluator, genome: ScheduleGenome, archive: dict[str, dict[str, Any]],
              targets: list[float], top: int, state: Any, show: bool) -> list[dict[str, Any]]:
    """Score the best calibration candidates per target with ``validator`` (the search's evaluator on the
    validation prompts; :mod:`.validation`)."""
    from tqdm.auto import tqdm

    chosen = candidates_to_validate(archive, targets, top)
    if not chosen:
        return []
    validator.prepare()
    reuse = validator.reuse
    bar = tqdm(total=len(chosen), desc="validation", unit="cand", disable=not show, dynamic_ncols=True)

    def evaluate(keys: list[str]) -> list[dict[str, Any]]:
        return map_tasks(lambda k: validator.evaluate(genome.decode(str_to_bits(k))).to_dict(), keys, state, bar)

    try:
        return validated_entries(chosen, {k: _entry(genome, k, archive[k], reuse) for k in chosen}, evaluate)
    finally:
        bar.close()


def _frontier_keys(archive: dict[str, dict[str, Any]]) -> list[str]:
    keys = sorted(archive)
    F = np.array([[archive[k]["cost"], archive[k]["objective"]] for k in keys])
    return [keys[i] for i in non_dominated(F)]


def _resolve_reuse(pipe: Any, reuse: str) -> str:
    from ..api import find_denoisers
    from ..caching.static import REUSE_MODES, block_residual_supported

    if reuse == "auto":
        supported = all(block_residual_supported(m) for _, m in find_denoisers(pipe))
        return "block_residual" if supported else "outputs"
    if reuse not in REUSE_MODES:
        raise ValueError(f"reuse must be 'auto' or one of {list(REUSE_MODES)}, got {reuse!r}.")
    return reuse


def _entry(genome: ScheduleGenome, key: str, record: dict[str, Any], reuse: str = "outputs") -> dict[str, Any]:
    evaluation = Evaluation.from_dict(record)
    prefix = "refine" if record.get("origin") == "refine" else "search"
    name = record.get("name") or f"{prefix}-g{record['generation']}-{key_digest(key)}"
    schedule = genome.decode(str_to_bits(key), name=name)
    return {
        "name": name,
        "origin": record.get("origin") or ("heuristic" if _is_heuristic(record.get("name"))
                                           else "random" if record.get("name") else "search"),
        "config": AccelerationConfig(cache=StaticCacheConfig(schedule, reuse=reuse)).to_dict(),
        "speedup": 1.0 / evaluation.cost,
        "macs_ratio": evaluation.macs_ratio,
        "cost": evaluation.cost,
        "quality": evaluation.quality,
        "objectives": [evaluation.cost, evaluation.objective],
        "compute_fraction": schedule.compute_fraction(),
        "generation": int(record["generation"]),
    }


def _is_heuristic(name: str | None) -> bool:
    return bool(name) and not name.startswith("random-")


def key_digest(key: str) -> str:
    """A short stable label of a genome (6 hex digits of its CRC32)."""
    import zlib

    return f"{zlib.crc32(key.encode()) & 0xFFFFFF:06x}"


def _plot(out: str, generation: int, archive: dict[str, dict[str, Any]], population: list[str], quality: str) -> None:
    def points(keys):
        return np.array([[1.0 / archive[k]["cost"], archive[k]["quality"]] for k in keys]).reshape(-1, 2)

    heuristics = {r["name"]: (1.0 / r["cost"], r["quality"]) for r in archive.values() if _is_heuristic(r.get("name"))}
    plot_frontier(os.path.join(out, PLOTS_DIR, f"generation-{generation:03d}.png"), points(list(archive)),
                  points(population), points(_frontier_keys(archive)), heuristics, metric=quality,
                  title=f"generation {generation}: {len(archive)} schedules evaluated")


def _generalise(evaluator: CandidateEvaluator, genome: ScheduleGenome, result: SearchResult,
                heuristics: list[dict[str, Any]], targets: list[float], state: Any, steps: Sequence[int] | None,
                resolution: tuple[int, int] | None, show: bool) -> list[dict[str, Any]]:
    """Evaluate, per target, the picked schedule and the best heuristic reaching it, in new settings."""
    chosen: dict[str, Any] = {}
    for target in targets:
        for pool in (result, [h for h in heuristics if h["speedup"] > 1.0 + 1e-9]):
            try:
                entry = pick_entry(pool, target)
            except ValueError:
                continue
            chosen.setdefault(entry["name"], AccelerationConfig.from_dict(entry["config"]).cache.schedule)
    if not chosen:
        return []
    settings = default_settings(evaluator.call_kwargs, genome.num_steps, evaluator.pipe, steps, resolution)
    from tqdm.auto import tqdm

    bar = tqdm(total=len(settings) * len(chosen), desc="generalisation", unit="eval", disable=not show,
               dynamic_ncols=True)
    try:
        return evaluate_generalisation(evaluator, chosen, settings, state=state, progress=bar)
    finally:
        bar.close()
