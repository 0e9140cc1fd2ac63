"""The joint search's pieces the schedule search does not have: seeds, the latency model, entries, wall clock.

* :func:`initial_genes` -- generation 0 of a :class:`~.genome.JointGenome`: its named seeds
  (every part off, each part's hand-made settings, their combination), then random genomes.
* :func:`search_latency_model` -- the latency model the search prices candidates with: given by the
  user (a JSON file, dict or :class:`~diffusion_accel.cost.latency.LatencyModel`), else the one in
  the checkpoint (a resumed search prices exactly as before), else calibrated now on the main process
  and sent to the others (every process prices alike).
* :func:`joint_entry` -- a frontier entry of a joint genome (the full config, MAC and latency-model
  speed-ups side by side).
* :func:`measure_wall_clock` -- measured time inside the denoiser of picked configs against the
  reference, interleaved repeats.

Example:
    >>> from diffusion_accel.testing import tiny_pipeline
    >>> from diffusion_accel.search.genome import JointGenome
    >>> genome = JointGenome.build(tiny_pipeline("pixart-alpha"), ("cache", "quant"), num_steps=4)
    >>> names, genes = initial_genes(genome, size=6, seed=0)
    >>> names[:3], genes.shape
    (['full', 'fora-2', 'w8a8'], (6, 23))
"""

from __future__ import annotations

import os
import statistics
from typing import Any

import numpy as np
import torch

from ..caching.correction import static_part
from ..config import AccelerationConfig
from ..cost.latency import LatencyModel, calibrate_latency_model
from ..eval.generate import item_call_inputs, make_batches
from ..utils import read_json
from .correction import with_correction
from .fitness import CandidateEvaluator, Evaluation
from .genome import JointGenome
from .problem import str_to_genes

__all__ = ["initial_genes", "joint_entry", "measure_wall_clock", "search_latency_model"]


def initial_genes(genome: JointGenome, size: int, seed: int, num_heuristics: int | None = None,
                  extra: list[tuple[str, AccelerationConfig]] | None = None) -> tuple[list[str], np.ndarray]:
    """``(names, genes)``: ``size`` distinct genomes, the seeds first (at most ``num_heuristics``, and at
    least one random genome when ``size >= 4``), then random ones: each part keeps its "off" genes with a
    probability drawn in ``[0.3, 0.9]``, else takes uniformly random values. ``extra`` named configs (the
    user's ``seed_configs``, encoded by the genome) come right after "full", before the genome's own seeds."""
    limit = size - 1 if size >= 4 else size
    if num_heuristics is not None:
        limit = min(limit, num_heuristics)
    names, rows, seen = [], [], set()
    own = genome.seeds()
    given = [(name, _encode_seed(genome, name, config)) for name, config in (extra or [])]
    for name, genes in own[:1] + given + own[1:]:
        key = genes.tobytes()
        if len(rows) < limit and key not in seen:
            seen.add(key)
            names.append(name)
            rows.append(genes)
    rng = np.random.default_rng([int(seed), 0x5EED])
    card, off = genome.cardinalities, genome.off
    for attempt in range(1000 * size):
        if len(rows) >= size:
            break
        keep = rng.random(card.size) < 0.3 + 0.6 * rng.random()
        genes = np.where(keep, off, np.floor(rng.random(card.size) * card).astype(np.int64))
        if genes.tobytes() not in seen:
            seen.add(genes.tobytes())
            names.append(f"random-{len(rows)}")
            rows.append(genes)
    if len(rows) < size:
        raise ValueError(f"Cannot make {size} distinct genomes from {genome.num_bits} genes; use a smaller population.")
    return names, np.stack(rows).astype(np.int64)


def _encode_seed(genome: JointGenome, name: str, config: AccelerationConfig) -> np.ndarray:
    try:
        return genome.encode(config)
    except ValueError as error:
        raise ValueError(f"seed_configs[{name!r}] cannot be expressed by the search space "
                         f"({'+'.join(genome.spaces)}): {error}") from None


def search_latency_model(given: Any, saved: dict[str, Any] | None, pipe: Any, evaluator: CandidateEvaluator,
                         pairs: list[tuple[str, float]], state: Any, repeats: int) -> LatencyModel:
    """The latency model of a search (see the module doc)."""
    if given is not None:
        return load_latency_model(given)
    if saved is not None and saved.get("latency_model") is not None:
        return LatencyModel.from_dict(saved["latency_model"])
    model = None
    if state.is_main_process:
        first = make_batches(evaluator.items, evaluator.batch_size)[0]
        kwargs = {**item_call_inputs(first), **evaluator.call_kwargs, "output_type": "latent",
                  "generator": [torch.Generator("cpu").manual_seed(it.seed) for it in first]}
        model = calibrate_latency_model(pipe, kwargs, attention=pairs, repeats=repeats)
    if state.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        box = [None if model is None else model.to_dict()]
        broadcast_object_list(box, from_process=0)
        model = LatencyModel.from_dict(box[0])
    return model


def load_latency_model(source: Any) -> LatencyModel:
    """A :class:`LatencyModel`, its dict, or the path of its JSON file -> the model."""
    if isinstance(source, LatencyModel):
        return source
    if isinstance(source, (str, os.PathLike)):
        source = read_json(source, "the latency model")
    return LatencyModel.from_dict(source)


def joint_entry(genome: JointGenome, key: str, record: dict[str, Any], base: AccelerationConfig | None,
                name: str) -> dict[str, Any]:
    """The frontier entry of an archived joint genome ``key`` (see :mod:`.frontier`)."""
    evaluation = Evaluation.from_dict(record)
    config = genome.decode(str_to_genes(key), base, name=name)
    if record.get("correction"):  # the maps fitted when the candidate was scored
        config = with_correction(config, record["correction"])
    cache = static_part(config.cache).schedule.compute_fraction() if genome.part("cache") is not None else 1.0
    entry = {
        "name": name,
        "config": config.to_dict(),
        "speedup": 1.0 / evaluation.cost,
        "macs_ratio": evaluation.macs_ratio,
        "latency_model_speedup": evaluation.latency_ratio,
        "cost": evaluation.cost,
        "quality": evaluation.quality,
        "objectives": [evaluation.cost, evaluation.objective],
        "compute_fraction": cache,
        "generation": int(record["generation"]),
    }
    return entry


def measure_wall_clock(evaluator: CandidateEvaluator, configs: dict[str, AccelerationConfig],
                       repeats: int = 3) -> dict[str, dict[str, float]]:
    """Name -> ``{"seconds", "reference_seconds", "speedup"}``: median seconds inside the denoiser over
    the calibration items, each config timed interleaved with the reference (``evaluator.base``)."""
    out = {}
    for name, config in configs.items():
        evaluator.run(config)  # warm-up (first calls of a quantized layer, caches)
        pairs = [(evaluator.run(None)[1], evaluator.run(config)[1]) for _ in range(repeats)]
        reference = statistics.median(p[0] for p in pairs)
        seconds = statistics.median(p[1] for p in pairs)
        out[name] = {"seconds": seconds, "reference_seconds": reference, "speedup": reference / seconds}
    return out
