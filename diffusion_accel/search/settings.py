"""Settings of :func:`~diffusion_accel.search.search_schedule`: :class:`SearchSettings`.

The fields the search shares with the evaluation harness (model, prompts, seeds, steps, pipeline
arguments, device, output folder) come from :class:`~diffusion_accel.eval.settings.RunSettings`;
the search adds the optimiser's and the picks' settings. Frozen and validated when built.

Example:
    >>> settings = SearchSettings(model="tiny:pixart-alpha", population=8, generations=4)
    >>> settings.prompts, settings.batch_size, settings.pick_speedups
    ('benchmark:train', 8, (2.0, 3.0))
    >>> SearchSettings(population=1)
    Traceback (most recent call last):
    ...
    ValueError: population must be an integer >= 2, got 1; NSGA-II needs at least 2 candidates per generation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from ..eval.settings import RunSettings, check_int
from .fitness import COST_MODELS, QUALITY_METRICS
from .nsga import Operators
from .problem import GRANULARITIES
from .reuse import parse_reuse
from .seeding import DYNAMIC_SEED_THRESHOLDS, dynamic_seed
from .space import parse_space

__all__ = ["SearchSettings"]


@dataclass(frozen=True)
class SearchSettings(RunSettings):
    """Settings of a schedule search (shared fields: :class:`~diffusion_accel.eval.settings.RunSettings`;
    ``prompts`` are the calibration prompts, default ``"benchmark:train"``; ``batch_size`` calibration
    items per call, default 8; ``num_steps`` the schedules' steps, default ``call_kwargs``' or 20).

    Args:
        population: candidates per generation (>= 2).
        generations: NSGA-II generations after the initial population (>= 1).
        space: what the search varies (:data:`.space.SPACES`): ``"cache"`` (default: the cache schedule,
            as before), or several, e.g. ``"cache,quant,attention"`` (one NSGA-II over the joint genome,
            :mod:`.genome`); a string or a sequence of names.
        quality: ``"latent_mse"`` (default), ``"psnr"``, ``"clip"`` or ``"fid"`` (see :mod:`.fitness`).
        cost: ``"macs"``, ``"latency"`` or ``"latency_model"``; default ``None``: ``"macs"`` for the cache
            space, ``"latency_model"`` for a joint space (quantization saves no MACs).
        latency_model: a calibrated :class:`~diffusion_accel.cost.latency.LatencyModel` (or its dict or
            JSON file) to price candidates with; ``None`` calibrates one at the start of the search.
        latency_repeats: timed repetitions per op when the search calibrates the latency model.
        operators: crossover and mutation settings (:class:`.nsga.Operators`).
        num_heuristics: at most this many heuristic seeds in the initial population.
        dynamic_seeds: dynamic-caching runs whose decisions on the calibration prompts seed the initial
            population (:func:`.seeding.dynamic_schedules`): each a threshold (``DynamicCacheConfig(threshold=t)``)
            or a mapping of :class:`~diffusion_accel.caching.DynamicCacheConfig` fields (e.g. FirstBlockCache's
            rule ``{"threshold": 0.1, "compare_to": "last_computed", "max_consecutive_skips": 20}``); ``()`` for none.
        dp_seeds: this many DP schedules (least accumulated reuse error under a compute budget,
            :mod:`.dp_seeds`) seed the initial population; 0 (default) for none.
        seed_configs: configs that seed a joint search's initial population (first, after "full"): a
            mapping name -> :class:`~diffusion_accel.AccelerationConfig` (or its dict), or a sequence of
            configs (named ``seed-<i>``); each must be expressible by the genome (e.g. a cache-only
            frontier with W8A8 applied). ``()`` (default) for none; joint spaces only.
        reuse: :attr:`StaticCacheConfig.reuse` of every candidate (and of the saved configs):
            ``"auto"`` (default) is ``"block_residual"`` when every block of the denoiser declares
            its streams (all covered transformers), else ``"outputs"`` (UNets); or one choice of
            :mod:`.reuse` (``"outputs"``, ``"block_residual"``, ``"forecast"``, ``"forecast2"`` =
            forecast order 2); or several (``("block_residual", "forecast", "forecast2")`` or
            ``"block_residual,forecast,forecast2"``): a gene of the cache space then chooses each
            candidate's reuse (searched over the integer genome, as a joint space: no ``dp_seeds``,
            ``dynamic_seeds``, ``refine_rounds`` or generalisation).
        granularity: what one gene switches (:data:`.problem.GRANULARITIES`): ``"component"``
            (default, ECAD's: each component of each block at each step) or ``"block"`` (whole
            blocks per step: a smaller space, Δ-DiT's unit).
        validation_prompts: hold this many prompts of ``prompts`` back (disjoint from the calibration
            prompts, seeded) to choose the picks on (:mod:`.validation`); 0 (default) picks on
            calibration quality. With ``num_prompts`` the source gives ``num_prompts + validation_prompts``.
        validate_top: per target speed-up, this many best calibration candidates are validated.
        refine_rounds: after the generations, this many rounds of ``population`` candidates each
            refine the frontier at the ``pick_speedups`` (:mod:`.refine`); 0 (default) for none.
        fid_reference: FID reference of the ``fid`` metric (``clip`` is the CLIP model of ``clip``/``fid``).
        pick_speedups: target speed-ups to pick schedules at (and to check generalisation at).
        generalise: evaluate the picked schedules (and the best heuristics at the same targets) at
            other step counts (``generalise_steps``) and an unseen resolution (``generalise_resolution``).
    """

    DEFAULT_PROMPTS: ClassVar[str] = "benchmark:train"
    DEFAULT_BATCH_SIZE: ClassVar[int] = 8

    population: int = 16
    generations: int = 10
    space: Any = ("cache",)
    quality: str = "latent_mse"
    cost: str | None = None
    latency_model: Any = None
    latency_repeats: int = 5
    operators: Operators | None = None
    num_heuristics: int | None = None
    dynamic_seeds: Sequence[Any] = DYNAMIC_SEED_THRESHOLDS
    dp_seeds: int = 0
    seed_configs: Any = ()
    reuse: Any = "auto"
    granularity: str = "component"
    validation_prompts: int = 0
    validate_top: int = 4
    refine_rounds: int = 0
    fid_reference: Any = "benchmark:train"
    pick_speedups: Sequence[float] = (2.0, 3.0)
    generalise: bool = True
    generalise_steps: Sequence[int] | None = None
    generalise_resolution: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.operators is None:
            object.__setattr__(self, "operators", Operators())
        object.__setattr__(self, "dynamic_seeds", tuple(dynamic_seed(t) for t in self.dynamic_seeds))
        object.__setattr__(self, "pick_speedups", tuple(self.pick_speedups))
        object.__setattr__(self, "space", parse_space(self.space))
        object.__setattr__(self, "reuse", parse_reuse(self.reuse))
        object.__setattr__(self, "seed_configs", _named_configs(self.seed_configs))
        if self.cost is None:
            object.__setattr__(self, "cost", "macs" if self.space == ("cache",) else "latency_model")
        super().__post_init__()

    def validate(self) -> None:
        check_int("population", self.population, 2, "NSGA-II needs at least 2 candidates per generation")
        check_int("generations", self.generations, 1, "run at least one generation after the initial population")
        super().validate()
        check_int("validate_top", self.validate_top, 1, "validate at least one candidate per target speed-up")
        check_int("refine_rounds", self.refine_rounds, 0, "0 runs no refinement after the generations")
        check_int("dp_seeds", self.dp_seeds, 0, "0 seeds no DP schedules")
        check_int("latency_repeats", self.latency_repeats, 1, "time every op at least once")
        if self.refine_rounds and self.space != ("cache",):
            raise ValueError(f"refine_rounds refines cache schedules; with space={','.join(self.space)!r} use "
                             "refine_rounds=0 (--refine-rounds 0) or --space cache.")
        if self.dp_seeds and self.space != ("cache",):
            raise ValueError(f"dp_seeds seeds cache schedules; with space={','.join(self.space)!r} use "
                             "dp_seeds=0 (--dp-seeds 0) or --space cache.")
        joint = self.space != ("cache",) or isinstance(self.reuse, tuple)
        if self.seed_configs and not joint:
            raise ValueError("seed_configs seed a joint search's integer genome; with space='cache' and a single "
                             "reuse choice use space='cache,quant' (--space cache,quant) or drop seed_configs "
                             "(--seed-config).")
        if joint and self.dynamic_seeds and self.dynamic_seeds != tuple(DYNAMIC_SEED_THRESHOLDS):
            raise ValueError(f"dynamic_seeds seed binary cache schedules, which a joint search (space="
                             f"{','.join(self.space)!r}, or several reuse choices) does not use; drop dynamic_seeds "
                             "(--dynamic-seeds) or search --space cache with a single --reuse.")
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {list(GRANULARITIES)}, got {self.granularity!r}.")
        if self.quality not in QUALITY_METRICS:
            raise ValueError(f"Unknown quality metric {self.quality!r}; choose one of {sorted(QUALITY_METRICS)}.")
        if self.cost not in COST_MODELS:
            raise ValueError(f"Unknown cost {self.cost!r}; choose one of {sorted(COST_MODELS)}.")
        if not isinstance(self.operators, Operators):
            raise ValueError(f"operators must be an Operators, got {type(self.operators).__name__}.")
        check_int("validation_prompts", self.validation_prompts, 0, "0 picks on calibration quality")
        check_int("num_steps", self.num_steps, 2, "step 0 always computes, so a search needs 2 steps or more",
                  optional=True)
        if any(not isinstance(t, (int, float)) or not t > 0 for t in self.pick_speedups):
            raise ValueError(f"pick_speedups must be positive numbers, got {list(self.pick_speedups)}.")
        if isinstance(self.reuse, tuple) and (self.refine_rounds or self.dp_seeds):
            flag = "refine_rounds=0 (--refine-rounds 0)" if self.refine_rounds else "dp_seeds=0 (--dp-seeds 0)"
            raise ValueError(f"Several reuse choices ({','.join(self.reuse)}) make the cache genes integers; "
                             f"use {flag} or a single --reuse.")

    def resolved_call_kwargs(self, default: dict[str, Any]) -> dict[str, Any]:
        """The pipeline arguments of every calibration call: ``call_kwargs`` (or ``default``) with
        ``num_inference_steps`` set to the schedules' step count."""
        kwargs = dict(default if self.call_kwargs is None else self.call_kwargs)
        steps = self.num_steps if self.num_steps is not None else int(kwargs.get("num_inference_steps", 20))
        check_int("num_steps", steps, 2, "step 0 always computes, so a search needs 2 steps or more")
        kwargs["num_inference_steps"] = steps
        return kwargs


def _named_configs(value: Any) -> tuple[tuple[str, dict[str, Any]], ...]:
    """``seed_configs`` as ``((name, config dict), ...)`` (checked: each is a valid AccelerationConfig)."""
    from ..config import AccelerationConfig

    if isinstance(value, dict):
        pairs = list(value.items())
    elif isinstance(value, (list, tuple)):
        pairs = [(f"seed-{i}", v) for i, v in enumerate(value)]
    else:
        raise ValueError(f"seed_configs must be a mapping name -> config or a sequence of configs, got "
                         f"{type(value).__name__}.")
    out = []
    for name, config in pairs:
        if isinstance(config, dict):
            config = AccelerationConfig.from_dict(config)
        if not isinstance(config, AccelerationConfig):
            raise ValueError(f"seed_configs[{name!r}] must be an AccelerationConfig or its dict, got "
                             f"{type(config).__name__}.")
        out.append((str(name), config.to_dict()))
    return tuple(out)
