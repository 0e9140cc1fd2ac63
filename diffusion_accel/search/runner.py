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
    ...                          call_kwargs=kwargs, generalise=False, progress=False)   # or settings=SearchSettings(...)
    >>> result.frontier[0]["name"], result.frontier[0]["speedup"]
    ('full', 1.0)
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..api import acceleration_restored, acceleration_state, find_denoisers
from ..call_inputs import check_call_arguments, check_call_inputs, item_inputs
from ..caching.static import StaticCacheConfig, block_residual_supported
from ..config import AccelerationConfig
from ..cost.latency import ATTENTION_OPS
from ..eval.generate import check_item_call_kwargs, distributed_state, make_items
from ..eval.prompts import load_prompts
from ..eval.settings import check_device, check_output_folder, jsonable
from ..pipeline_state import with_call_defaults
from ..utils import atomic_write_json
from .checkpoint import check_compatible, load_checkpoint, save_checkpoint
from .distributed import check_agreement, map_tasks
from .fitness import CandidateEvaluator, Evaluation, with_cache
from .frontier import non_dominated, pick_entry, plot_frontier, save_frontier
from .generalise import default_settings, evaluate_generalisation
from .nsga import NsgaDriver
from .genome import JointGenome
from .correction import CorrectionFitter, correction_maps, with_correction
from .joint import initial_genes, joint_entry, measure_wall_clock, search_latency_model
from .problem import ScheduleGenome, ScheduleProblem, genes_to_str, str_to_bits, str_to_genes
from .refine import gene_savings, refine_candidates
from .reuse import reuse_choices, reuse_kwargs
from .dp_seeds import dp_schedules
from .seeding import dynamic_schedules, initial_population
from .settings import SearchSettings
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

        per_item = ("prompt", "class_labels", "output_type")  # the search sets these per item
        return {k: v for k, v in tiny_call_kwargs(model.split(":", 1)[1]).items() if k not in per_item}
    from ..eval.sweep import default_call_kwargs

    return dict(default_call_kwargs(model))


def search_schedule(model: Any = None, prompts: Any = None, *, settings: SearchSettings | None = None,
                    callback: Callable[[dict[str, Any]], None] | None = None,
                    option_names: dict[str, str] | None = None, **options: Any) -> SearchResult:
    """Search a Pareto frontier of cache schedules for ``model`` with NSGA-II.

    Takes :class:`~diffusion_accel.search.SearchSettings` as ``settings=``, or its fields as arguments
    (they replace the fields of ``settings``): ``model`` (``"benchmark"``, ``"tiny:<name>"``, a diffusers
    folder or hub id, or a pipeline), ``prompts`` (calibration prompts: a file, ``"benchmark:train"``, a
    list of strings, or of per-item call arguments such as ``{"class_labels": 207}`` for DiT), ``out``
    (output folder: checkpoint, frontier, plots, picked configs; ``None`` writes nothing), ``num_steps``,
    ``population``, ``generations``, ``seed``, ``quality``, ``cost``, ``num_prompts``, ``num_images``,
    ``batch_size``, ``call_kwargs``, ``operators``, ``num_heuristics``, ``dynamic_seeds``, ``dp_seeds``,
    ``seed_configs`` (CLI ``--seed-config``), ``reuse``,
    ``granularity``, ``validation_prompts``, ``validate_top``, ``refine_rounds``, ``clip``,
    ``fid_reference``, ``pick_speedups``, ``generalise``, ``generalise_steps``,
    ``generalise_resolution``, ``resume``, ``device``, ``progress`` -- see the settings for each.

    A pipeline that is already accelerated (e.g. W8A8) has every candidate scored on top of the
    non-cache part of its config (the candidate replaces the cache; the picked configs keep the rest),
    and gets its own acceleration back when the search ends.

    Args:
        callback: called on every process with ``{"event": "candidate", "generation", "index"}``
            after each evaluated candidate and ``{"event": "generation", "generation", "frontier"}``
            after each checkpoint (raising from it stops the search; resume continues it).

        option_names: how the caller names the settings in error messages (the command line passes its
            flags, e.g. ``{"num_prompts": "--num-prompts"}``; default the keywords, ``num_prompts=``).

    Returns:
        :class:`SearchResult`.

    Raises:
        ValueError: an invalid setting, an empty or unreadable prompt set, prompts the pipeline cannot
            take, ``out`` holds a search and ``resume`` is false, or the checkpoint does not match
            (another model, step count or settings, or more generations than asked for). ``out`` is
            left untouched.
    """
    s = SearchSettings.from_arguments(settings, "search_schedule", {"model": model, "prompts": prompts}, options)
    names = {k: f"{k}=" for k in ("num_prompts", "validation_prompts", "call_kwargs")}
    names.update(option_names or {})
    run = _Search.start(s, names)  # 1.-2.: inputs, pipeline, search space, checkpoint; nothing written yet
    with acceleration_restored(run.pipe):
        run.prepare()  # 3.
        with _bar(total=run.total_rounds, initial=min(run.completed, run.total_rounds), desc="generations",
                  unit="gen", show=run.show) as bar:
            for generation in range(run.completed, run.total_rounds):  # 4.
                run.round(generation, callback)
                bar.update(1)
        return run.finish()  # 5.


class _Search:
    """One search run's state, from :meth:`start` to :meth:`finish` (the numbered steps of the module doc)."""

    def __init__(self, **fields: Any) -> None:
        self.__dict__.update(fields)

    @classmethod
    def start(cls, s: SearchSettings, names: dict[str, str]) -> _Search:
        """Check every input and load the pipeline; on ``resume`` check the checkpoint matches."""
        wanted = None if s.num_prompts is None else s.num_prompts + s.validation_prompts
        num_name = names["num_prompts"] if not s.validation_prompts else \
            f"{names['num_prompts'].rstrip('=')} + {names['validation_prompts']}"
        prompt_list, validation_list = split_prompts(load_prompts(s.prompts, num=wanted, seed=s.seed,
                                                                  names={"num": num_name}),
                                                     s.validation_prompts, s.seed)
        items = make_items(prompt_list, num_images=s.num_images, seed=s.seed)
        call_kwargs = s.resolved_call_kwargs(search_call_kwargs(s.model))
        check_item_call_kwargs(items, call_kwargs, "the search")
        out = os.fspath(s.out) if s.out is not None else None
        if out is not None:
            check_output_folder(out)
        check_device(s.device)
        saved = load_checkpoint(out) if out is not None else None
        if saved is not None and not s.resume:
            raise ValueError(f"{out!r} already holds a schedule search; pass --resume (resume=True) to continue "
                             "it, or choose another --out.")
        state = distributed_state(s.device)
        pipe = load_search_pipeline(s.model, device=s.device if s.device is not None else state.device)
        check_call_inputs(pipe, {n for it in items for n in item_inputs(it.call_input())}, "the search's prompts")
        call_kwargs = with_call_defaults(pipe, call_kwargs)  # what the checkpoint needs (model adapters)
        check_call_arguments(pipe, call_kwargs, names["call_kwargs"].rstrip("="))
        reuse = _resolve_reuse(pipe, s.reuse)
        genome = _genome(pipe, s, call_kwargs["num_inference_steps"], reuse)
        run = cls(s=s, out=out, saved=saved, state=state, pipe=pipe, genome=genome, items=items,
                  validation_list=validation_list, call_kwargs=call_kwargs, targets=[float(t) for t in s.pick_speedups],
                  reuse=reuse, base=_base_config(pipe, _fields(genome)), completed=0, latency=None,
                  total_rounds=s.generations + 1 + s.refine_rounds, show=s.progress and state.is_main_process)
        run.record = run.settings_record(prompt_list)
        if saved is not None:
            _check_resume(saved, run.record, s.generations, out)
        return run

    def settings_record(self, prompt_list: list) -> dict[str, Any]:
        """The settings saved in the checkpoint (a resumed search must match them) and ``frontier.json``."""
        s = self
        quality_options = {"clip": s.s.clip, "reference": s.s.fid_reference}
        record = {
            "model": s.s.model_label,
            "search_space": s.genome.signature(),
            "prompts": [[p.index, p.text] for p in prompt_list],
            "num_images": s.s.num_images,
            "seed": int(s.s.seed),
            "population": s.s.population,
            "generations": s.s.generations,
            "quality": s.s.quality,
            "quality_options": jsonable(quality_options) if s.s.quality in ("clip", "fid") else None,
            "cost": s.s.cost,
            "batch_size": s.s.batch_size,
            "call_kwargs": jsonable(s.call_kwargs),
            "operators": s.s.operators.to_dict(),
            "num_heuristics": s.s.num_heuristics,
            "dynamic_seeds": list(s.s.dynamic_seeds),
            **({"dp_seeds": s.s.dp_seeds} if s.s.dp_seeds else {}),  # absent when 0: older checkpoints resume
            **({"seed_configs": [list(p) for p in s.s.seed_configs]} if s.s.seed_configs else {}),
            "reuse": list(s.reuse) if isinstance(s.reuse, tuple) else s.reuse,  # a list: the reuse gene's choices
            "validation": {"prompts": [[p.index, p.text] for p in s.validation_list], "top": s.s.validate_top}
            if s.validation_list else None,
            "refine": {"rounds": s.s.refine_rounds, "targets": s.targets} if s.s.refine_rounds else None,
        }
        if s.base is not None:  # the acceleration every candidate ran on top of
            record["base_config"] = s.base.to_dict()
        if s.s.latency_model is not None:  # a given latency model: its numbers, not its source, must match
            record["latency_model"] = "given"
        return record

    def prepare(self) -> None:
        """References (only if there is something left to evaluate), seeds and the optimiser."""
        s, saved = self.s, self.saved
        if _prices_non_cache(self.genome) or s.cost == "latency_model":
            self.latency = self._latency_model()
        self.evaluator = CandidateEvaluator(self.pipe, self.items, self.call_kwargs, quality=s.quality, cost=s.cost,
                                            batch_size=s.batch_size, **_evaluator_reuse(self.reuse), base=self.base,
                                            quality_options={"clip": s.clip, "reference": s.fid_reference},
                                            latency=self.latency)
        if saved is None or int(saved["completed"]) < self.total_rounds:
            self.evaluator.prepare()
        # Data-driven seeds need pipeline runs: only when the search starts (a resumed search has its
        # population, and the seeds' names, in the checkpoint).
        if _joint(self.genome):
            extra = [(name, AccelerationConfig.from_dict(config)) for name, config in s.seed_configs]
            seed_names, initial = initial_genes(self.genome, s.population, s.seed, s.num_heuristics, extra)
            problem = self.genome.problem()
            self.fitter = CorrectionFitter(self.evaluator)
        else:
            extra = dynamic_schedules(self.evaluator, self.genome, s.dynamic_seeds) \
                if saved is None and s.dynamic_seeds else []
            if saved is None and s.dp_seeds:  # DP schedules under compute budgets (issue #21; .dp_seeds)
                extra = dp_schedules(self.evaluator, s.dp_seeds) + extra
            seed_names, initial = initial_population(self.pipe, self.genome, s.population, s.seed, s.num_heuristics,
                                                     extra)
            problem = ScheduleProblem(self.genome)
        self.driver = NsgaDriver(problem, initial, s.seed, s.operators)
        self.archive: dict[str, dict[str, Any]] = {}
        self.history: list[dict[str, Any]] = []
        if saved is not None:
            self.driver.load_state(saved["nsga"])
            self.archive, self.history, self.completed = saved["archive"], saved["history"], int(saved["completed"])
        self.names = dict(zip((genes_to_str(b) for b in initial), seed_names))
        self.names.update({key: record["name"] for key, record in self.archive.items() if record.get("name")})
        refining = s.refine_rounds and self.completed < self.total_rounds
        self.savings = gene_savings(self.genome, self.evaluator.profile) if refining else None

    def round(self, generation: int, callback: Callable[[dict[str, Any]], None] | None) -> None:
        """One NSGA-II generation (or, after the generations, one refinement round; :mod:`.refine`):
        evaluate the new candidates across processes, then checkpoint and plot on the main process."""
        s, state = self.s, self.state
        refining = generation > s.generations
        if refining:
            rng = np.random.default_rng([int(s.seed), generation])
            X = np.array(refine_candidates(self.archive, self.savings, self.targets, s.population, rng), dtype=bool)
            X = X.reshape(-1, self.genome.num_bits)
        else:
            X = self.driver.ask()
        what = "refinement round" if refining else "generation"
        payload = np.packbits(X) if X.dtype == bool else X.astype(np.uint8)
        check_agreement(payload.tobytes(), state, f"the candidates of {what} {generation}")
        keys = [genes_to_str(x) for x in X]
        todo = list(dict.fromkeys(k for k in keys if k not in self.archive))

        def evaluate(key: str) -> dict[str, Any]:
            result, maps = self.evaluate(self.evaluator, key, with_maps=True)
            if callback is not None:
                callback({"event": "candidate", "generation": generation, "index": todo.index(key)})
            return {**result.to_dict(), "process": state.process_index, **({"correction": maps} if maps else {})}

        with _bar(total=len(todo), desc=f"{what} {generation}", unit="cand", leave=False, show=self.show) as inner:
            results = map_tasks(evaluate, todo, state, inner)
        for key, result in zip(todo, results):
            self.archive[key] = {**result, "generation": generation, "name": self.names.get(key),
                                 **({"origin": "refine"} if refining else {})}
        if refining:
            self.history.append({"generation": generation, "population": keys, "refine": True})
        else:
            self.driver.tell(X, np.array([[self.archive[k]["cost"], self.archive[k]["objective"]] for k in keys]))
            self.history.append({"generation": generation,
                                 "population": [genes_to_str(x) for x in self.driver.population()[0]]})
        if self.out is not None and state.is_main_process:
            latency = {} if self.latency is None else {"latency_model": self.latency.to_dict()}
            save_checkpoint(self.out, {"settings": self.record, "completed": generation + 1, **latency,
                                       "nsga": self.driver.state(), "archive": self.archive, "history": self.history})
            _plot(self.out, generation, self.archive, self.history[-1]["population"], s.quality)
        if callback is not None:
            callback({"event": "generation", "generation": generation,
                      "frontier": [self.archive[k]["objective"] for k in _frontier_keys(self.archive)]})

    def entry(self, key: str) -> dict[str, Any]:
        return _entry(self.genome, key, self.archive[key], self.reuse, self.base)

    def evaluate(self, evaluator: CandidateEvaluator, key: str, with_maps: bool = False) -> Any:
        """The evaluation of the genome ``key`` by ``evaluator`` (the search's, or a validation variant);
        with ``with_maps``, ``(evaluation, fitted correction maps or None)``."""
        maps = None
        if _joint(self.genome):
            config = self.genome.decode(str_to_genes(key), self.base)
            saved = self.archive.get(key, {}).get("correction")
            config = with_correction(config, saved) if saved else self.fitter(config)
            maps = correction_maps(config)
            result = evaluator.evaluate_config(config)
        else:
            result = evaluator.evaluate(self.genome.decode(str_to_bits(key)))
        return (result, maps) if with_maps else result

    def _latency_model(self) -> Any:
        """The latency model pricing the candidates (:func:`.joint.search_latency_model`)."""
        part = self.genome.part("attention") if _joint(self.genome) else None
        pairs = part.pricing_keys() if part is not None else []
        kept = None if self.base is None else self.base.attention  # the user's sparse attention, kept
        if kept is not None and kept.method in ATTENTION_OPS and kept.density is not None \
                and (kept.method, kept.density) not in pairs:
            pairs.append((kept.method, kept.density))
        probe = CandidateEvaluator(self.pipe, self.items, self.call_kwargs, batch_size=self.s.batch_size)
        return search_latency_model(self.s.latency_model, self.saved, self.pipe, probe, pairs, self.state,
                                    self.s.latency_repeats)

    def finish(self) -> SearchResult:
        """Frontier, validation, picks and generalisation; the files of ``out`` (main process)."""
        s, state, targets = self.s, self.state, self.targets
        frontier = sorted((self.entry(k) for k in _frontier_keys(self.archive)),
                          key=lambda e: (e["speedup"], e["objectives"][1]))
        # Sorted: a resumed search rebuilds its seeds without the data-driven ones, so ``names`` comes in
        # another order.
        heuristics = sorted((self.entry(k) for k in self.names if k in self.archive and _is_heuristic(self.names[k])),
                            key=lambda e: (e["speedup"], e["name"]))
        result = SearchResult(frontier, heuristics, evaluations=len(self.archive), out=self.out, requested=targets)
        if self.validation_list:
            items = make_items(self.validation_list, num_images=s.num_images, seed=s.seed)
            result.validated = _validate(self.evaluator.variant(items=items), self, targets, s.validate_top)
        for target in targets:
            try:
                result.picked[target] = pick_entry(result, target)["name"]
            except ValueError:
                continue
        extra = {"metric": self.evaluator.metric.describe(), "cost": s.cost, "settings": self.record,
                 "heuristics": heuristics, "picked": {f"{t:g}": result.picked.get(t) for t in targets}}
        if result.validated:
            extra["validation"] = {**self.record["validation"], "entries": result.validated}
        main = self.out is not None and state.is_main_process
        if self.latency is not None and state.is_main_process and result.picked:
            # measured wall clock of the picks (the cost objective was the latency model's prediction)
            picked = {n: AccelerationConfig.from_dict(result.entry(n)["config"]) for n in set(result.picked.values())}
            extra["wall_clock"] = measure_wall_clock(self.evaluator, picked)
        if main:
            save_frontier(os.path.join(self.out, FRONTIER_FILE), frontier, **extra)
            for target, name in result.picked.items():
                AccelerationConfig.from_dict(result.entry(name)["config"]).save(
                    os.path.join(self.out, f"picked-{target:g}x.json"))
        if s.generalise and not _joint(self.genome):  # generalisation resamples cache schedules only
            result.generalisation = _generalise(self, result, heuristics)
            if main:
                save_frontier(os.path.join(self.out, FRONTIER_FILE), frontier, **extra,
                              generalisation=result.generalisation)
                atomic_write_json(os.path.join(self.out, GENERALISATION_FILE), result.generalisation)
        state.wait_for_everyone()
        return result


def _check_resume(saved: dict[str, Any], record: dict[str, Any], generations: int, out: str) -> None:
    """Raise unless a search with settings ``record`` and ``generations`` may continue ``saved``."""
    check_compatible(saved["settings"], record, out)
    done, saved_generations = int(saved["completed"]), int(saved["settings"]["generations"])
    if done > saved_generations + 1:  # refinement rounds have begun: the generations are fixed
        if generations != saved_generations:
            raise ValueError(f"{out!r} has started refining after {saved_generations} generations; resume "
                             f"with --generations {saved_generations}.")
    elif done > generations + 1:
        raise ValueError(f"{out!r} already holds {done - 1} generations; resume with "
                         f"--generations {done - 1} or more.")


def _base_config(pipe: Any, fields: tuple[str, ...] = ("cache",)) -> AccelerationConfig | None:
    """The pipeline's current acceleration without the ``fields`` the search decides (what candidates run
    on top of: e.g. a sampling schedule, or quantization in a cache search), or ``None``."""
    state = acceleration_state(pipe)
    if state is None:
        return None
    base = dataclasses.replace(state.config, **{f: None for f in fields})
    return base if any(True for _ in base.techniques()) else None


def _joint(genome: Any) -> bool:
    return isinstance(genome, JointGenome)


def _fields(genome: ScheduleGenome | JointGenome) -> tuple[str, ...]:
    return genome.fields if _joint(genome) else ("cache",)


def _prices_non_cache(genome: Any) -> bool:
    """Whether the genome decides more than the cache (quantization and sparse attention need a latency model)."""
    return _joint(genome) and genome.spaces != ("cache",)


def _evaluator_reuse(reuse: str | tuple[str, ...]) -> dict[str, Any]:
    """The evaluator's ``reuse`` and ``forecast_order``: the single choice, or a reuse gene's first one
    (a joint genome's configs carry their own)."""
    return reuse_kwargs(reuse_choices(reuse)[0])


def _genome(pipe: Any, s: SearchSettings, num_steps: int,
            reuse: str | tuple[str, ...]) -> ScheduleGenome | JointGenome:
    """The search space: today's schedule genome for ``space=("cache",)`` with one reuse choice, else the
    joint genome (several reuse choices: the cache space's reuse gene, :mod:`.reuse`)."""
    if tuple(s.space) == ("cache",) and isinstance(reuse, str):
        return ScheduleGenome.for_model(pipe, num_steps, s.granularity)
    return JointGenome.build(pipe, tuple(s.space), num_steps, s.granularity, reuse)


@contextlib.contextmanager
def _bar(*, show: bool, **kwargs: Any) -> Iterator[Any]:
    """A tqdm progress bar shown on the main process only (closed on exit)."""
    from tqdm.auto import tqdm

    bar = tqdm(disable=not show, dynamic_ncols=True, **kwargs)
    try:
        yield bar
    finally:
        bar.close()


def _validate(validator: CandidateEvaluator, run: _Search, targets: list[float], top: int) -> list[dict[str, Any]]:
    """Score the best calibration candidates per target with ``validator`` (the search's evaluator on the
    validation prompts; :mod:`.validation`)."""
    chosen = candidates_to_validate(run.archive, targets, top)
    if not chosen:
        return []
    validator.prepare()
    with _bar(total=len(chosen), desc="validation", unit="cand", show=run.show) as bar:

        def evaluate(keys: list[str]) -> list[dict[str, Any]]:
            return map_tasks(lambda k: run.evaluate(validator, k).to_dict(), keys, run.state, bar)

        return validated_entries(chosen, {k: run.entry(k) for k in chosen}, evaluate)


def _frontier_keys(archive: dict[str, dict[str, Any]]) -> list[str]:
    keys = sorted(archive)
    F = np.array([[archive[k]["cost"], archive[k]["objective"]] for k in keys])
    return [keys[i] for i in non_dominated(F)]


def _resolve_reuse(pipe: Any, reuse: str | tuple[str, ...]) -> str | tuple[str, ...]:
    """``reuse="auto"``: block residuals where every block declares its streams, else component outputs
    (one choice or several, :mod:`.reuse`, are kept)."""
    if reuse == "auto":
        supported = all(block_residual_supported(m) for _, m in find_denoisers(pipe))
        return "block_residual" if supported else "outputs"
    return reuse


def _entry(genome: ScheduleGenome | JointGenome, key: str, record: dict[str, Any], reuse: str = "outputs",
           base: AccelerationConfig | None = None) -> dict[str, Any]:
    """The frontier entry (see :mod:`.frontier`) of an archived genome; its config runs on top of ``base``."""
    evaluation = Evaluation.from_dict(record)
    prefix = "refine" if record.get("origin") == "refine" else "search"
    name = record.get("name") or f"{prefix}-g{record['generation']}-{key_digest(key)}"
    if _joint(genome):
        origin = "heuristic" if _is_heuristic(record.get("name")) else "random" if record.get("name") else "search"
        return {**joint_entry(genome, key, record, base, name), "origin": origin}
    schedule = genome.decode(str_to_bits(key), name=name)
    return {
        "name": name,
        "origin": record.get("origin") or ("heuristic" if _is_heuristic(record.get("name"))
                                           else "random" if record.get("name") else "search"),
        "config": with_cache(base, StaticCacheConfig(schedule, **reuse_kwargs(reuse))).to_dict(),
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
    return f"{zlib.crc32(key.encode()) & 0xFFFFFF:06x}"


def _plot(out: str, generation: int, archive: dict[str, dict[str, Any]], population: list[str], quality: str) -> None:
    def points(keys):
        return np.array([[1.0 / archive[k]["cost"], archive[k]["quality"]] for k in keys]).reshape(-1, 2)

    heuristics = {r["name"]: (1.0 / r["cost"], r["quality"]) for r in archive.values() if _is_heuristic(r.get("name"))}
    plot_frontier(os.path.join(out, PLOTS_DIR, f"generation-{generation:03d}.png"), points(list(archive)),
                  points(population), points(_frontier_keys(archive)), heuristics, metric=quality,
                  title=f"generation {generation}: {len(archive)} schedules evaluated")


def _generalise(run: _Search, result: SearchResult, heuristics: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Evaluate, per target, the picked schedule and the best heuristic reaching it, in new settings."""
    chosen: dict[str, Any] = {}
    for target in run.targets:
        for pool in (result, [h for h in heuristics if h["speedup"] > 1.0 + 1e-9]):
            try:
                entry = pick_entry(pool, target)
            except ValueError:
                continue
            chosen.setdefault(entry["name"], AccelerationConfig.from_dict(entry["config"]).cache.schedule)
    if not chosen:
        return []
    settings = default_settings(run.call_kwargs, run.genome.num_steps, run.pipe, run.s.generalise_steps,
                                run.s.generalise_resolution)
    with _bar(total=len(settings) * len(chosen), desc="generalisation", unit="eval", show=run.show) as bar:
        return evaluate_generalisation(run.evaluator, chosen, settings, state=run.state, progress=bar)
