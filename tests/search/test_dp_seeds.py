"""DP schedules as NSGA-II seeds (search/dp_seeds.py, ``dp_seeds=N``; issue #21)."""

import json

import numpy as np
import pytest

from diffusion_accel.caching.dp import reuse_errors, schedule_from_errors
from diffusion_accel.eval.generate import make_items
from diffusion_accel.eval.prompts import load_prompts
from diffusion_accel.search import CandidateEvaluator, search_schedule
from diffusion_accel.search.dp_seeds import dp_budgets, dp_schedules

PROMPTS = ["a red cat", "a blue dog", "a green tree", "a yellow car"]


def test_budgets_spread_over_the_range():
    assert dp_budgets(0) == [] and dp_budgets(1) == [0.5] and dp_budgets(3) == [0.3, 0.55, 0.8]


def test_seeds_are_the_dp_schedules_of_the_calibration_items(pixart, tiny_call, one_thread):
    call = {**tiny_call, "num_inference_steps": 6}
    ev = CandidateEvaluator(pixart, make_items(load_prompts(PROMPTS), seed=0), call, quality="latent_mse",
                            batch_size=4)
    seeds = dp_schedules(ev, 2)
    errors = reuse_errors(pixart, PROMPTS, batch_size=4, **call)
    assert seeds == [schedule_from_errors(pixart, errors, b, "step", name=f"dp-{b:g}") for b in (0.3, 0.8)]
    assert [s.name for s in seeds] == ["dp-0.3", "dp-0.8"]


@pytest.mark.slow
def test_search_starts_from_the_dp_seeds(pixart, tiny_call, tmp_path, one_thread):
    result = search_schedule(pixart, PROMPTS, num_steps=4, population=4, generations=1, seed=0, call_kwargs=tiny_call,
                             batch_size=2, generalise=False, progress=False, dp_seeds=1, out=tmp_path)
    saved = json.loads((tmp_path / "checkpoint.json").read_text())
    assert saved["settings"]["dp_seeds"] == 1
    first = saved["history"][0]
    names = {r["name"] for r in saved["archive"].values() if r.get("name")}
    assert "dp-0.5" in names and result.evaluations >= 4
    with pytest.raises(ValueError, match="dp_seeds"):
        search_schedule(pixart, PROMPTS, num_steps=4, call_kwargs=tiny_call, dp_seeds=-1, progress=False)
    assert first["generation"] == 0 and np.asarray(first["population"]).size == 4
