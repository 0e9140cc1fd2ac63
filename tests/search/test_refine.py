"""Target refinement: MAC accounting per gene, the surrogate, budget repair, and refinement in a search."""

import json

import numpy as np
import pytest

from diffusion_accel.search import CandidateEvaluator, ScheduleGenome, non_dominated
from diffusion_accel.search.problem import bits_to_str
from diffusion_accel.search.refine import (
    fit_surrogate,
    gene_savings,
    refine_candidates,
    repair,
    schedule_cost,
)
from diffusion_accel.eval.generate import make_items
from diffusion_accel.eval.prompts import load_prompts

from .test_search import PROMPTS, search, snapshot


@pytest.mark.parametrize("granularity", ["component", "block"])
def test_gene_savings_price_a_genome_as_the_mac_profile_does(pixart, tiny_call, granularity, one_thread):
    ev = CandidateEvaluator(pixart, make_items(load_prompts(PROMPTS), seed=0), {**tiny_call, "num_inference_steps": 5},
                            batch_size=2)
    ev.prepare()
    genome = ScheduleGenome.for_model(pixart, 5, granularity)
    savings = gene_savings(genome, ev.profile)
    assert savings.shape == (genome.num_bits,) and (savings > 0).all()
    rng = np.random.default_rng(0)
    for bits in [np.ones(genome.num_bits, bool), np.zeros(genome.num_bits, bool),
                 *(rng.random(genome.num_bits) < 0.5 for _ in range(5))]:
        assert schedule_cost(bits, savings) == pytest.approx(1.0 / ev.macs_ratio(genome.decode(bits)), rel=1e-12)


def test_surrogate_recovers_an_additive_objective():
    rng = np.random.default_rng(1)
    harm = rng.random(12)
    X = rng.random((200, 12)) < 0.6
    y = 2.0 + (~X).astype(float) @ harm
    intercept, w = fit_surrogate(X, y, ridge=1e-6)
    assert intercept == pytest.approx(2.0, abs=1e-4)
    np.testing.assert_allclose(w, harm, atol=1e-4)
    weights = np.where(X[:, 0], 1.0, 0.0) + 1e-3  # weighting changes the fit, not an exact model
    np.testing.assert_allclose(fit_surrogate(X, y, weights, ridge=1e-6)[1], harm, atol=1e-3)


def test_repair_reuses_the_least_harmful_genes_and_spends_the_whole_budget():
    savings = np.array([0.1, 0.1, 0.2, 0.1, 0.1])
    harm = np.array([5.0, 1.0, 1.0, 3.0, 2.0])  # per MAC saved: 50, 10, 5, 30, 20
    full = np.ones(5, bool)
    out = repair(full, savings, budget=0.65, harm=harm)  # must save 0.35: gene 2 (0.2), then 1, then 4
    assert out.tolist() == [True, False, False, True, False]
    assert schedule_cost(out, savings) == pytest.approx(0.6)
    lean = np.zeros(5, bool)  # cost 0.4 under a budget of 0.65: recompute the most harmful that fit
    out = repair(lean, savings, budget=0.65, harm=harm)
    assert out.tolist() == [True, False, False, True, False]  # genes 0 and 3 (0.2); 4 would exceed it
    for j in np.flatnonzero(~out):  # nothing more fits
        assert schedule_cost(out, savings) + savings[j] > 0.65


def test_refined_candidates_reach_their_targets_and_beat_the_archive_on_an_additive_objective():
    rng = np.random.default_rng(2)
    bits = 40
    savings = np.full(bits, 0.9 / bits)
    harm = rng.gamma(0.5, 1.0, bits)  # a few genes hurt a lot, most little

    def objective(x):
        return float(harm[~x].sum())

    archive = {}
    for p in np.linspace(0.3, 0.95, 60):
        x = rng.random(bits) < p
        archive[bits_to_str(x)] = {"objective": objective(x)}
    targets = [2.0, 3.0]
    kids = refine_candidates(archive, savings, targets, count=8, rng=np.random.default_rng(7))
    again = refine_candidates(archive, savings, targets, count=8, rng=np.random.default_rng(7))
    assert [bits_to_str(k) for k in kids] == [bits_to_str(k) for k in again]  # deterministic per rng
    keys = [bits_to_str(k) for k in kids]
    assert len(kids) == 8 and len(set(keys)) == 8 and not set(keys) & set(archive)
    for target, group in ((2.0, kids[:4]), (3.0, kids[4:])):
        budget = 1.0 / target
        best_archived = min(r["objective"] for k, r in archive.items()
                            if schedule_cost(np.array([c == "1" for c in k]), savings) <= budget + 1e-12)
        for kid in group:
            assert schedule_cost(kid, savings) <= budget + 1e-12
            assert budget - schedule_cost(kid, savings) < 0.9 / bits  # filled up to the budget
        assert min(objective(k) for k in group) < best_archived


def refine_search(pixart, tiny_call, **overrides):
    kwargs = dict(num_steps=6, generations=1, refine_rounds=2, pick_speedups=(1.5, 2.0))
    return search(pixart, tiny_call, **{**kwargs, **overrides})


def test_refinement_rounds_add_schedules_at_the_targets(pixart, tiny_call, tmp_path, one_thread):
    result = refine_search(pixart, tiny_call, out=tmp_path)
    saved = json.loads((tmp_path / "checkpoint.json").read_text())
    assert saved["completed"] == 4 and saved["settings"]["refine"] == {"rounds": 2, "targets": [1.5, 2.0]}
    refined = {k: r for k, r in saved["archive"].items() if r.get("origin") == "refine"}
    assert refined and {r["generation"] for r in refined.values()} <= {2, 3}
    rounds = [h for h in saved["history"] if h.get("refine")]
    assert [h["generation"] for h in rounds] == [2, 3]
    for h in rounds:  # each round's candidates, half per target, each reaching its target
        assert 0 < len(h["population"]) <= 4
        for key in h["population"]:
            assert 1.0 / saved["archive"][key]["cost"] >= 1.5 - 1e-9
    F = np.array([e["objectives"] for e in result.frontier])
    assert non_dominated(F).tolist() == list(range(len(F)))
    names = {e["name"]: e for e in result.frontier}
    for e in names.values():
        assert (e["origin"] == "refine") == e["name"].startswith("refine-g")
    plain = search(pixart, tiny_call, num_steps=6, generations=1, pick_speedups=(1.5, 2.0), out=tmp_path / "plain")
    plain_archive = json.loads((tmp_path / "plain" / "checkpoint.json").read_text())["archive"]
    assert set(plain_archive) == set(saved["archive"]) - set(refined)  # the generations are unchanged
    assert plain.evaluations + len(refined) == result.evaluations


class Interrupted(Exception):
    pass


@pytest.mark.slow
def test_search_killed_while_refining_resumes_to_the_same_frontier(pixart, tiny_call, tmp_path, one_thread):
    straight = refine_search(pixart, tiny_call, out=tmp_path / "straight")

    def kill(event):
        if event["event"] == "candidate" and event["generation"] == 3 and event["index"] == 1:
            raise Interrupted

    with pytest.raises(Interrupted):
        refine_search(pixart, tiny_call, out=tmp_path / "killed", callback=kill)
    assert json.loads((tmp_path / "killed" / "checkpoint.json").read_text())["completed"] == 3
    before = snapshot(tmp_path / "killed")
    with pytest.raises(ValueError, match="started refining after 1 generations; resume with --generations 1"):
        refine_search(pixart, tiny_call, out=tmp_path / "killed", resume=True, generations=2)
    with pytest.raises(ValueError, match="settings differ from the checkpoint \\(refine"):
        refine_search(pixart, tiny_call, out=tmp_path / "killed", resume=True, refine_rounds=3)
    with pytest.raises(ValueError, match="refine_rounds must be an integer >= 0"):
        refine_search(pixart, tiny_call, out=tmp_path / "killed", resume=True, refine_rounds=-1)
    assert snapshot(tmp_path / "killed") == before
    resumed = refine_search(pixart, tiny_call, out=tmp_path / "killed", resume=True)
    assert resumed.frontier == straight.frontier
    ck = [json.loads((tmp_path / d / "checkpoint.json").read_text()) for d in ("straight", "killed")]
    assert ck[0]["archive"].keys() == ck[1]["archive"].keys() and ck[0]["history"] == ck[1]["history"]


def test_the_best_measured_parent_gets_the_first_slot_whatever_the_surrogate_predicts_elsewhere():
    rng = np.random.default_rng(3)
    bits = 30
    savings = np.full(bits, 0.03)
    best = np.ones(bits, bool)
    best[:16] = False  # cost 0.52: just over the 2x budget, and the best schedule measured
    archive = {bits_to_str(best): {"objective": 1.0}}
    for _ in range(40):  # worse schedules, some reaching 2x with slack for recomputing genes
        x = rng.random(bits) < rng.uniform(0.2, 0.8)
        archive.setdefault(bits_to_str(x), {"objective": 5.0 + float((~x).sum())})
    (kid,) = refine_candidates(archive, savings, [2.0], count=1, rng=np.random.default_rng(0))
    assert schedule_cost(kid, savings) <= 0.5 + 1e-12
    assert int((kid != best).sum()) <= 2 + 2 + 2  # two random flips, their repair, one reuse for the budget
