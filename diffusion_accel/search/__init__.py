"""Evolutionary search for cache schedules (ECAD-style NSGA-II) -- alone, or jointly with quantization
bits and sparse attention (``space="cache,quant,attention"``): a Pareto frontier of configs.

An offline tool above the api layer (it applies candidate configs to a pipeline); the caching
technique it searches for lives in :mod:`diffusion_accel.caching`, the MAC pricing in
:mod:`diffusion_accel.cost`.

* :func:`search_schedule` -- search, resumable and multi-process; writes ``frontier.json``,
  per-generation Pareto plots, picked configs and a generalisation report. Its settings are one
  frozen :class:`SearchSettings`.
* :func:`pick` -- the best-quality schedule of a frontier at (at least) a target speed-up, as an
  :class:`~diffusion_accel.AccelerationConfig`.
* Search spaces: :data:`SPACES` (a registry: ``cache``, ``quant``, ``attention``), each laying out genes
  and decoding them into its field of the config; :class:`JointGenome` puts them side by side. The
  joint search prices candidates with a latency model calibrated on the machine
  (:mod:`diffusion_accel.cost.latency`) and measures the picks' wall clock.
* Building blocks: :class:`ScheduleGenome` (schedule <-> bits), :class:`NsgaDriver` (pymoo
  NSGA-II in ask/tell steps with an exact saved state), :class:`CandidateEvaluator` (objectives),
  :data:`QUALITY_METRICS`, :func:`non_dominated`.
* :func:`search_skipped_steps` -- which steps to skip at a target compute: a measured local search over
  step-skip sets (hill-climbing on a caller's score, e.g. PSNR on calibration prompts).

Command line: ``diffusion-accel search --model benchmark --prompts benchmark:train --steps 20
--population 16 --generations 10 --out search-out [--resume] [--pick-speedup 2]``
(several processes, CPU too: ``accelerate launch --multi_gpu --num_processes 2 -m diffusion_accel.cli
search ...``).

Example:
    >>> from diffusion_accel.search import search_schedule, pick
    >>> # result = search_schedule("benchmark", "benchmark:train", out="search-out", population=16,
    >>> #                          generations=10)
    >>> # or: search_schedule(settings=SearchSettings(out="search-out", population=16, generations=10))
    >>> # config = pick("search-out/frontier.json", speedup=2.0)
"""

from .fitness import QUALITY_METRICS, CandidateEvaluator, Evaluation, quality_metric
from .frontier import load_frontier, non_dominated, pick, pick_entry
from .genome import JointGenome
from .nsga import NsgaDriver, Operators
from .problem import ScheduleGenome
from .runner import SearchResult, search_schedule
from .settings import SearchSettings
from .skip_steps import SkipSearchResult, search_skipped_steps, spread_skips
from .space import SPACES, parse_space, register_space

__all__ = [
    "QUALITY_METRICS",
    "SPACES",
    "CandidateEvaluator",
    "JointGenome",
    "Evaluation",
    "NsgaDriver",
    "Operators",
    "ScheduleGenome",
    "SearchResult",
    "SearchSettings",
    "SkipSearchResult",
    "load_frontier",
    "non_dominated",
    "parse_space",
    "register_space",
    "pick",
    "pick_entry",
    "quality_metric",
    "search_schedule",
    "search_skipped_steps",
    "spread_skips",
]
