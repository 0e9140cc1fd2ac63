"""The DP cache schedule (caching/dp.py): the solver is exact, the schedule meets its budget and is
the least-error schedule of its compute (FORA's placement included)."""

import itertools

import numpy as np
import pytest

from diffusion_accel.caching import CacheSchedule, dp_schedule
from diffusion_accel.caching.dp import _allocate, best_compute_steps, reuse_errors, schedule_from_errors
from diffusion_accel.testing import tiny_call_kwargs, tiny_pipeline

KWARGS = {k: v for k, v in tiny_call_kwargs("pixart-alpha", num_inference_steps=6).items() if k != "prompt"}
PROMPTS = ["a red cat", "a blue dog"]


def accumulated(errors, steps, total):
    """Brute-force accumulated reuse error of computing at ``steps`` (one block)."""
    out = 0.0
    for i, s in enumerate(steps):
        end = steps[i + 1] if i + 1 < len(steps) else total
        out += sum(errors[s, t] for t in range(s + 1, end))
    return out


def test_dp_equals_brute_force_for_every_compute_count():
    errors = np.triu(np.random.default_rng(0).random((7, 7)), 1)
    cost, steps = best_compute_steps(errors)
    for k in range(1, 8):
        brute = min((accumulated(errors, [0, *c], 7), [0, *c]) for c in itertools.combinations(range(1, 7), k - 1))
        assert cost[k] == pytest.approx(brute[0], abs=1e-12) and steps[k] == brute[1]
    assert cost[7] == 0.0 and steps[7] == list(range(7))


def test_budget_split_between_blocks_is_optimal():
    rng = np.random.default_rng(1)
    costs = [best_compute_steps(np.triu(rng.random((5, 5)), 1))[0] for _ in range(3)]
    split = _allocate(costs, 8)
    best = min(sum(c[k] for c, k in zip(costs, ks)) for ks in itertools.product(range(1, 6), repeat=3) if sum(ks) == 8)
    assert sum(split) == 8 and sum(c[k] for c, k in zip(costs, split)) == pytest.approx(best)


@pytest.fixture(scope="module")
def measured():
    pipe = tiny_pipeline("pixart-alpha")
    return pipe, reuse_errors(pipe, PROMPTS, **KWARGS)


def test_schedule_meets_the_budget_and_beats_fora_at_equal_compute(measured):
    pipe, errors = measured
    steps = KWARGS["num_inference_steps"]
    assert errors.shape == (2, steps, steps) and (errors[:, np.tril_indices(steps)[0], np.tril_indices(steps)[1]] == 0).all()
    fora = CacheSchedule.fora(pipe.transformer, steps, 2)
    for granularity in ("step", "block"):
        dp = schedule_from_errors(pipe, errors, 0.5, granularity)
        blocks = dp.compute.all(axis=2)  # whole blocks compute or reuse
        assert (blocks == dp.compute.any(axis=2)).all() and blocks[0].all()
        assert blocks.sum() == fora.compute.all(axis=2).sum()  # same compute as FORA-2
        dp_error = sum(accumulated(errors[b], list(np.flatnonzero(blocks[:, b])), steps) for b in range(2))
        fora_error = sum(accumulated(errors[b], list(range(0, steps, 2)), steps) for b in range(2))
        assert dp_error <= fora_error + 1e-12
    assert schedule_from_errors(pipe, errors, 1.0) == CacheSchedule.full(pipe, steps).with_name("dp-1")


def test_dp_schedule_end_to_end_and_bad_input(measured):
    pipe, errors = measured
    s = dp_schedule(pipe, PROMPTS, budget=0.5, **KWARGS)
    assert s == schedule_from_errors(pipe, errors, 0.5) and s.name == "dp-0.5"
    with pytest.raises(ValueError, match="budget must be the share"):
        dp_schedule(pipe, PROMPTS, budget=0, **KWARGS)
    with pytest.raises(ValueError, match="granularity must be one of"):
        dp_schedule(pipe, PROMPTS, granularity="component", **KWARGS)
    with pytest.raises(ValueError, match="errors must have shape"):
        schedule_from_errors(pipe, errors[:1], 0.5)
