"""Validated picks: candidates re-scored on held-back prompts, the pick made on them."""

import json

import numpy as np
import pytest

from diffusion_accel import AccelerationConfig
from diffusion_accel.search import pick, search_schedule
from diffusion_accel.search import CandidateEvaluator, pick_entry
from diffusion_accel.search.validation import candidates_to_validate, split_prompts
from diffusion_accel.eval.generate import make_items
from diffusion_accel.eval.prompts import load_prompts

PROMPTS = ["a red cat", "a blue dog", "a green tree", "a yellow car", "a white bird"]


def test_split_is_disjoint_seeded_and_refuses_too_few_prompts():
    prompts = load_prompts(PROMPTS)
    calibration, validation = split_prompts(prompts, 2, seed=0)
    assert len(calibration) == 3 and len(validation) == 2
    assert {p.index for p in calibration}.isdisjoint(p.index for p in validation)
    assert [p.index for p in calibration] == sorted(p.index for p in calibration)
    assert split_prompts(prompts, 2, seed=0) == (calibration, validation)
    assert split_prompts(prompts, 0, seed=0) == (prompts, [])
    with pytest.raises(ValueError, match="leave none for calibration"):
        split_prompts(prompts, 5, seed=0)


def test_candidates_are_the_best_per_target():
    archive = {
        "a": {"cost": 1.0, "objective": -100.0},
        "b": {"cost": 0.5, "objective": -30.0},  # 2x
        "c": {"cost": 0.45, "objective": -35.0},  # 2.2x, best at 2x
        "d": {"cost": 0.3, "objective": -20.0},  # 3.3x
        "e": {"cost": 0.55, "objective": -50.0},  # 1.8x: never a 2x candidate
    }
    assert candidates_to_validate(archive, [2.0, 3.0], top=2) == {"c": [2.0], "b": [2.0], "d": [3.0]}
    assert candidates_to_validate(archive, [2.0, 3.0], top=5) == {"c": [2.0], "b": [2.0], "d": [2.0, 3.0]}
    assert candidates_to_validate(archive, [10.0], top=3) == {}


@pytest.mark.slow
def test_search_picks_on_validation_prompts(pixart, tiny_call, tmp_path, one_thread):
    call = {**tiny_call, "num_inference_steps": 4}
    result = search_schedule(pixart, PROMPTS, out=tmp_path, num_steps=4, population=4, generations=1, seed=0,
                             call_kwargs=call, batch_size=2, generalise=False, progress=False, quality="latent_mse",
                             validation_prompts=2, validate_top=3, pick_speedups=(1.2, 1.5))
    saved = json.loads((tmp_path / "frontier.json").read_text())
    calibration, validation = split_prompts(load_prompts(PROMPTS), 2, seed=0)
    assert saved["settings"]["prompts"] == [[p.index, p.text] for p in calibration]
    assert saved["validation"]["prompts"] == [[p.index, p.text] for p in validation]
    assert saved["validation"]["entries"] == result.validated and result.validated
    # every validated quality is the schedule's quality on the validation prompts alone
    ev = CandidateEvaluator(pixart, make_items(validation, seed=0), call, quality="latent_mse", batch_size=2,
                            reuse=saved["settings"]["reuse"])
    ev.prepare()
    for entry in result.validated:
        schedule = AccelerationConfig.from_dict(entry["config"]).cache.schedule
        assert entry["validation_quality"] == ev.evaluate(schedule).quality
        assert all(entry["speedup"] >= t * (1 - 1e-9) for t in entry["targets"])
    for target in (1.2, 1.5):
        pool = [e for e in result.validated if target in e["targets"]]
        if not pool:
            continue
        best = min(pool, key=lambda e: e["validation_objective"])
        assert result.picked[target] == best["name"] == pick_entry(str(tmp_path), target)["name"]
        assert pick(str(tmp_path / "frontier.json"), target) == AccelerationConfig.from_dict(best["config"])
        assert AccelerationConfig.load(tmp_path / f"picked-{target:g}x.json").to_dict() == best["config"]
    # a target that was not validated falls back to calibration quality on the frontier
    unvalidated = pick_entry(saved, 1.1)
    assert unvalidated in result.frontier and "validation_quality" not in unvalidated
    assert len(np.unique([e["name"] for e in result.validated])) == len(result.validated)


def test_validation_bad_input(pixart, tiny_call, tmp_path):
    with pytest.raises(ValueError, match="leave none for calibration"):
        search_schedule(pixart, PROMPTS[:2], out=tmp_path, num_steps=4, population=4, generations=1,
                        call_kwargs=tiny_call, validation_prompts=2, progress=False)
    with pytest.raises(ValueError, match="validate_top"):
        search_schedule(pixart, PROMPTS, out=tmp_path, num_steps=4, population=4, generations=1,
                        call_kwargs=tiny_call, validation_prompts=1, validate_top=0, progress=False)
    with pytest.raises(ValueError, match="granularity"):
        search_schedule(pixart, PROMPTS, out=tmp_path, num_steps=4, population=4, generations=1,
                        call_kwargs=tiny_call, granularity="step", progress=False)
    assert not any(tmp_path.iterdir())  # nothing written
