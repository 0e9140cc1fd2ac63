"""Evaluation harness: quality and cost of acceleration configs against the full-compute baseline.

* :func:`evaluate` runs a sweep (baseline + configs) and writes ``results.json``, ``results.csv``,
  ``pareto.png`` and ``report.md``; ``diffusion-accel eval`` is its command line. Its settings are one
  frozen :class:`EvalSettings` (the fields it shares with the schedule search: :class:`RunSettings`).
* :mod:`.prompts`, :mod:`.generate`, :mod:`.metrics`, :mod:`.scoring`, :mod:`.latency`, :mod:`.report`
  are usable on their own (e.g. :func:`~.metrics.fid`, :func:`~.latency.measure_latency`).

Example:
    >>> from diffusion_accel.eval import evaluate
    >>> # records = evaluate(model="benchmark", configs=["fast.json"], num_images=2, out="eval-out")
"""

from .generate import generate_images, make_items
from .latency import count_macs, measure_latency, operator_breakdown, peak_memory
from .metrics import clip_score, fid, load_clip, numeric_deviation, psnr, ssim
from .prompts import Prompt, load_prompts
from .report import load_results
from .settings import EvalSettings, RunSettings
from .sweep import TIMING_FIELDS, deterministic_view, evaluate, load_configs

__all__ = [
    "EvalSettings",
    "RunSettings",
    "TIMING_FIELDS",
    "Prompt",
    "clip_score",
    "count_macs",
    "deterministic_view",
    "evaluate",
    "fid",
    "generate_images",
    "load_clip",
    "load_configs",
    "load_prompts",
    "load_results",
    "make_items",
    "measure_latency",
    "numeric_deviation",
    "operator_breakdown",
    "peak_memory",
    "psnr",
    "ssim",
]
