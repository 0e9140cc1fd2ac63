"""A cache schedule under a compute budget by dynamic programming (CacheQuant's schedule half).

1. **Measure.** :func:`reuse_errors` runs the pipeline at full compute on calibration prompts and
   records every component's output at every step, per guidance branch. The error of *reusing at
   step t the output computed at step s* (s < t) of block ``b`` is
   ``E[b, s, t] = sum over the block's components of mean|o_t - o_s| / mean|o_t|`` (mean over the
   calibration batches and branches): what ``StaticCacheConfig(reuse="outputs")`` feeds the block
   in place of the fresh output.
2. **Solve.** A block that computes at steps ``c_0 = 0 < c_1 < ... < c_{k-1}`` accumulates
   ``sum_i sum_{c_i < t < c_{i+1}} E[b, c_i, t]``. For each block and each ``k`` the minimum over
   placements is a DP over (computes used, last compute) in ``O(k T^2)``; a second DP (a knapsack over
   blocks) splits the total budget of computed (step, block) pairs between the blocks. At
   ``granularity="step"`` every block shares one set of compute steps (errors summed over blocks).

The result is a plain :class:`CacheSchedule` (whole blocks compute or reuse together), used with
``StaticCacheConfig(schedule)``.

Example:
    >>> from diffusion_accel.testing import tiny_pipeline, tiny_call_kwargs
    >>> pipe = tiny_pipeline("pixart-alpha")
    >>> kwargs = {k: v for k, v in tiny_call_kwargs("pixart-alpha").items() if k != "prompt"}
    >>> s = dp_schedule(pipe, ["a cat", "a dog"], budget=0.6, **kwargs)
    >>> s.num_steps == kwargs["num_inference_steps"], s.name
    (True, 'dp-0.6')
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..call_inputs import check_call_inputs
from ..hooks import TRACKER_HOOK, pipeline_call_scope, remove_hook
from .calibrate import _calls, _denoisers
from .schedule import CacheSchedule, resolve_denoiser

__all__ = ["GRANULARITIES", "dp_schedule", "reuse_errors", "schedule_from_errors", "best_compute_steps"]

#: Values of ``granularity``: one set of compute steps for the whole model (default: 1-8 dB better than
#: per block on the bundled model, docs/caching.md), or one per block.
GRANULARITIES = ("step", "block")


def _first_tensor(output: Any) -> torch.Tensor | None:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)):
        return next((o for o in output if isinstance(o, torch.Tensor)), None)
    return None


def reuse_errors(pipe: Any, prompts: Sequence[Any], *, batch_size: int = 8, seed: int = 0,
                 **call_kwargs: Any) -> np.ndarray:
    """``E[block, s, t]``: the error of reusing at step ``t`` the outputs computed at step ``s`` (``s < t``;
    other entries 0), measured at full compute on ``prompts`` (see the module doc). Shape ``(B, T, T)``."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}.")
    calls = _calls(prompts, batch_size)
    check_call_inputs(pipe, {name for call in calls for name in call}, "the calibration prompts")
    model = resolve_denoiser(pipe)
    denoisers, attached = _denoisers(pipe)
    denoiser = next(d for d in denoisers if d.module is model)
    blocks = denoiser.blocks()
    outputs: dict[tuple[str, int, str], dict[int, torch.Tensor]] = {}

    def recorder(block: int, component: str):
        def hook(module, args, output):
            call, tensor = denoiser.tracker.current, _first_tensor(output)
            if call is not None and tensor is not None:
                outputs.setdefault((call.branch, block, component), {})[call.step] = tensor.detach().float().clone()
        return hook

    handles = [module.register_forward_hook(recorder(b.index, name))
               for b in blocks for name, module in b.components().items()]
    total, count = None, 0
    try:
        for k, item in enumerate(calls):
            outputs.clear()
            kwargs = {**call_kwargs, **item}
            kwargs.setdefault("generator", torch.Generator().manual_seed(seed + k))
            kwargs.setdefault("output_type", "latent")
            with torch.no_grad(), pipeline_call_scope(denoisers):
                pipe(**kwargs)
            errors = _pair_errors(outputs, len(blocks))
            total = errors if total is None else total + errors
            count += 1
    finally:
        for handle in handles:
            handle.remove()
        for module in attached:
            remove_hook(module, TRACKER_HOOK)
    return total / count


def _pair_errors(outputs: dict[tuple[str, int, str], dict[int, torch.Tensor]], num_blocks: int) -> np.ndarray:
    """Mean over branches of the summed relative L1 reuse error of each block's components."""
    steps = 1 + max(step for per_step in outputs.values() for step in per_step)
    branches = sorted({branch for branch, _, _ in outputs})
    errors = np.zeros((num_blocks, steps, steps))
    for (branch, block, _), per_step in outputs.items():
        for t, fresh in per_step.items():
            scale = float(fresh.abs().mean().clamp_min(1e-12))
            for s in range(t):
                if s in per_step and per_step[s].shape == fresh.shape:
                    errors[block, s, t] += float((fresh - per_step[s]).abs().mean()) / scale
    return errors / len(branches)


def best_compute_steps(errors: np.ndarray) -> tuple[np.ndarray, list[list[int]]]:
    """For one block's ``errors[s, t]`` (``(T, T)``): ``cost[k]`` the least accumulated error with ``k``
    compute steps (``k = 1..T``; ``cost[0] = inf``) and ``steps[k]`` the compute steps achieving it."""
    T = errors.shape[0]
    # seg[i, j]: error of computing at i and reusing it up to step j - 1 (i < j <= T)
    cumulative = np.concatenate([np.zeros((T, 1)), np.cumsum(errors, axis=1)], axis=1)
    seg = np.full((T, T + 1), np.inf)
    for i in range(T):
        seg[i, i + 1:] = cumulative[i, i + 1:] - cumulative[i, i + 1]
    best = np.full((T + 1, T + 1), np.inf)  # best[k, j]: k computes, the last segment ends at j (next compute)
    back = np.zeros((T + 1, T + 1), dtype=int)
    best[1, 1:] = seg[0, 1:]
    for k in range(2, T + 1):
        for j in range(k, T + 1):
            options = best[k - 1, k - 1:j] + seg[k - 1:j, j]
            i = int(np.argmin(options))
            best[k, j], back[k, j] = options[i], i + k - 1
    cost = best[:, T].copy()
    cost[0] = np.inf
    steps: list[list[int]] = [[]]
    for k in range(1, T + 1):
        chosen, j = [], T
        for kk in range(k, 1, -1):
            j = back[kk, j]
            chosen.append(int(j))
        steps.append(sorted([0, *chosen]))
    return cost, steps


def _allocate(costs: list[np.ndarray], total: int) -> list[int]:
    """Computes per block (each >= 1) summing to ``total`` that minimise the summed costs (knapsack DP)."""
    T = len(costs[0]) - 1
    best = np.zeros(total + 1)
    best[1:] = np.inf
    choices = []
    for cost in costs:
        new = np.full(total + 1, np.inf)
        pick = np.zeros(total + 1, dtype=int)
        for used in range(total + 1):
            for k in range(1, min(T, used) + 1):
                value = best[used - k] + cost[k]
                if value < new[used]:
                    new[used], pick[used] = value, k
        best = new
        choices.append(pick)
    out, used = [], total
    for pick in reversed(choices):
        out.append(int(pick[used]))
        used -= out[-1]
    return out[::-1]


def schedule_from_errors(model: Any, errors: np.ndarray, budget: float, granularity: str = "step",
                         name: str | None = None) -> CacheSchedule:
    """The least-error :class:`CacheSchedule` for ``model`` computing a ``budget`` share of (step, block)
    pairs (rounded; at least step 0 of every block), given :func:`reuse_errors`' ``errors``."""
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {list(GRANULARITIES)}, got {granularity!r}.")
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not 0 < budget <= 1:
        raise ValueError(f"budget must be the share of (step, block) pairs computed, in (0, 1]; got {budget!r}.")
    errors = np.asarray(errors, dtype=float)
    model = resolve_denoiser(model)
    full = CacheSchedule.full(model, errors.shape[1])
    num_steps, num_blocks = full.num_steps, full.num_blocks
    if errors.shape != (num_blocks, num_steps, num_steps):
        raise ValueError(f"errors must have shape (blocks, steps, steps) = ({num_blocks}, {num_steps}, "
                         f"{num_steps}) for this model; got {errors.shape}.")
    compute = np.zeros(full.compute.shape, dtype=bool)
    if granularity == "step":
        k = min(num_steps, max(1, round(budget * num_steps)))
        _, steps = best_compute_steps(errors.sum(axis=0))
        compute[steps[k]] = True
    else:
        total = min(num_steps * num_blocks, max(num_blocks, round(budget * num_steps * num_blocks)))
        solved = [best_compute_steps(errors[b]) for b in range(num_blocks)]
        for b, k in enumerate(_allocate([cost for cost, _ in solved], total)):
            compute[solved[b][1][k], b] = True
    return CacheSchedule.from_model(model, compute, name=name or f"dp-{budget:g}")


def dp_schedule(pipe: Any, prompts: Sequence[Any], *, budget: float = 0.5, granularity: str = "step",
                batch_size: int = 8, seed: int = 0, **call_kwargs: Any) -> CacheSchedule:
    """Measure the reuse errors of ``pipe`` on ``prompts`` (:func:`reuse_errors`; ``num_inference_steps``
    in ``call_kwargs`` sets the schedule's step count) and return the least-error schedule computing a
    ``budget`` share of (step, block) pairs (:func:`schedule_from_errors`)."""
    if granularity not in GRANULARITIES:  # before the (slow) measurement
        raise ValueError(f"granularity must be one of {list(GRANULARITIES)}, got {granularity!r}.")
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not 0 < budget <= 1:
        raise ValueError(f"budget must be the share of (step, block) pairs computed, in (0, 1]; got {budget!r}.")
    errors = reuse_errors(pipe, prompts, batch_size=batch_size, seed=seed, **call_kwargs)
    return schedule_from_errors(pipe, errors, budget, granularity)
