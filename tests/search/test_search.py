"""The search end to end on tiny pipelines, in process: frontier, reproducibility, resume, bad input."""

import json
import os

import numpy as np
import pytest
import torch

from diffusion_accel import AccelerationConfig, apply, remove
from diffusion_accel.caching import CacheSchedule, StaticCacheConfig
from diffusion_accel.search import CandidateEvaluator, load_frontier, non_dominated, pick, search_schedule
from diffusion_accel.eval.generate import make_items
from diffusion_accel.eval.prompts import load_prompts

PROMPTS = ["a red cat", "a blue dog"]


def search(pipe, call, prompts=PROMPTS, **overrides):
    kwargs = dict(num_steps=4, population=4, generations=2, seed=0, call_kwargs=call, batch_size=2,
                  generalise=False, progress=False)
    kwargs.update(overrides)
    return search_schedule(pipe, prompts, **kwargs)


def weakly_dominates(a, b):
    return all(x <= y for x, y in zip(a["objectives"], b["objectives"]))


def test_two_generations_of_four_candidates(pixart, tiny_call, tmp_path, one_thread):
    result = search(pixart, tiny_call, out=tmp_path)
    assert 4 <= result.evaluations <= 12
    F = np.array([e["objectives"] for e in result.frontier])
    assert non_dominated(F).tolist() == list(range(len(F)))  # no frontier entry dominates another
    full = result.frontier[0]
    assert full["name"] == "full" and full["speedup"] == 1.0 and full["quality"] == 0.0
    assert [e["speedup"] for e in result.frontier] == sorted(e["speedup"] for e in result.frontier)
    for h in result.heuristics:  # the seeded heuristics are never better than the frontier
        assert any(weakly_dominates(e, h) for e in result.frontier), h["name"]
    saved = json.loads((tmp_path / "checkpoint.json").read_text())
    assert saved["completed"] == 3 and len(saved["nsga"]["X"]) == 4
    assert sorted(os.listdir(tmp_path / "plots")) == [f"generation-{g:03d}.png" for g in range(3)]
    assert load_frontier(str(tmp_path)) == result.frontier
    config = pick(str(tmp_path / "frontier.json"), speedup=1.2)
    assert isinstance(config.cache, StaticCacheConfig) and config.cache.schedule.num_steps == 4
    entry = next(e for e in result.frontier if e["config"] == config.to_dict())
    assert entry["speedup"] >= 1.2
    assert all(e["speedup"] < 1.2 or e["objectives"][1] >= entry["objectives"][1] for e in result.frontier)


def test_same_seed_same_frontier_other_seed_other_search(pixart, tiny_call, one_thread):
    a = search(pixart, tiny_call, seed=1)
    b = search(pixart, tiny_call, seed=1)
    c = search(pixart, tiny_call, seed=2)
    assert a.frontier == b.frontier
    assert a.frontier != c.frontier


class Interrupted(Exception):
    pass


@pytest.mark.slow
def test_interrupted_search_resumes_to_the_same_frontier(pixart, tiny_call, tmp_path, one_thread):
    straight = search(pixart, tiny_call, generations=3, out=tmp_path / "straight")

    def kill_mid_generation(event):
        if event["event"] == "candidate" and event["generation"] == 2 and event["index"] == 1:
            raise Interrupted

    with pytest.raises(Interrupted):
        search(pixart, tiny_call, generations=3, out=tmp_path / "killed", callback=kill_mid_generation)
    assert json.loads((tmp_path / "killed" / "checkpoint.json").read_text())["completed"] == 2
    assert not (tmp_path / "killed" / "frontier.json").exists()
    with pytest.raises(ValueError, match="pass --resume"):
        search(pixart, tiny_call, generations=3, out=tmp_path / "killed")
    resumed = search(pixart, tiny_call, generations=3, out=tmp_path / "killed", resume=True)
    assert resumed.frontier == straight.frontier
    ck = [json.loads((tmp_path / d / "checkpoint.json").read_text()) for d in ("straight", "killed")]
    assert ck[0]["nsga"] == ck[1]["nsga"] and ck[0]["archive"].keys() == ck[1]["archive"].keys()


def snapshot(folder):
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_bad_input_is_one_clear_error_and_leaves_the_checkpoint_untouched(pixart, tiny_call, tmp_path, one_thread):
    from diffusion_accel.testing import tiny_pipeline

    out = tmp_path / "run"
    search(pixart, tiny_call, generations=1, out=out)
    before = snapshot(out)
    (tmp_path / "empty.txt").write_text("\n\n")
    cases = [
        (dict(population=1), "population must be an integer >= 2"),
        (dict(generations=0), "generations must be an integer >= 1"),
        (dict(prompts=str(tmp_path / "empty.txt")), "holds no prompts"),
        (dict(num_steps=5), "its schedules have 18 bits"),
        (dict(seed=9), "settings differ from the checkpoint (seed: 0 -> 9"),
        (dict(quality="sharpness"), "Unknown quality metric"),
    ]
    for overrides, message in cases:
        with pytest.raises(ValueError) as info:
            search(pixart, tiny_call, **{"generations": 1, "out": out, "resume": True, **overrides})
        assert message in str(info.value), (overrides, str(info.value))
    with pytest.raises(ValueError, match=r"18 bits .* but this model and step count give 15 bits \(sd3"):
        search(tiny_pipeline("sd3"), {"height": 32, "width": 32}, generations=1, out=out, resume=True)
    with pytest.raises(ValueError, match="pass --resume"):
        search(pixart, tiny_call, generations=1, out=out)
    search(pixart, tiny_call, generations=2, out=tmp_path / "longer")
    longer = snapshot(tmp_path / "longer")
    with pytest.raises(ValueError, match="already holds 2 generations; resume with --generations 2 or more"):
        search(pixart, tiny_call, generations=1, out=tmp_path / "longer", resume=True)
    assert snapshot(out) == before and snapshot(tmp_path / "longer") == longer


def test_full_schedule_is_exact_with_memoised_text_encoders(pixart, tiny_call, one_thread):
    items = make_items(load_prompts(PROMPTS), seed=0)
    call = {**tiny_call, "num_inference_steps": 4}
    ev = CandidateEvaluator(pixart, items, call, quality="latent_mse", batch_size=2)
    ev.prepare()
    plain = pixart(prompt=PROMPTS, generator=[torch.Generator().manual_seed(it.seed) for it in items],
                   output_type="latent", **call).images
    assert torch.equal(ev.reference, plain)
    assert ev.evaluate(CacheSchedule.full(pixart, 4)).quality == 0.0
    assert ev.memo.hits > 0
    fora = ev.evaluate(CacheSchedule.fora(pixart, 4, 2))
    assert fora.quality > 0 and fora.macs_ratio > 1.3 and fora.cost == pytest.approx(1 / fora.macs_ratio)
    # the evaluation is the accelerated pipeline's own output
    apply(pixart, AccelerationConfig(cache=StaticCacheConfig(CacheSchedule.fora(pixart, 4, 2))))
    try:
        accel = pixart(prompt=PROMPTS, generator=[torch.Generator().manual_seed(it.seed) for it in items],
                       output_type="latent", **call).images
    finally:
        remove(pixart)
    assert fora.quality == pytest.approx(float(((accel.double() - plain.double()) ** 2).mean()), rel=1e-12)


def tiny_clip():
    import string

    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in string.ascii_lowercase:
        vocab[ch] = len(vocab)
        vocab[ch + "</w>"] = len(vocab)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=32, bos_token_id=0, eos_token_id=1,
                         pad_token_id=1),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=8,
    )
    torch.manual_seed(0)
    processor = CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                                                 crop_size={"height": 32, "width": 32}),
                              tokenizer=CLIPTokenizer(vocab=vocab, merges=[]))
    return CLIPModel(config).eval(), processor


@pytest.mark.slow
def test_other_quality_and_cost_objectives(pixart, tiny_call, one_thread):
    items = make_items(load_prompts(PROMPTS), seed=0)
    call = {**tiny_call, "num_inference_steps": 4}
    full, fora = CacheSchedule.full(pixart, 4), CacheSchedule.fora(pixart, 4, 2)
    ev = CandidateEvaluator(pixart, items, call, quality="psnr", cost="latency", batch_size=2)
    ev.prepare()
    assert ev.evaluate(full).quality == 100.0  # capped: identical outputs
    f = ev.evaluate(fora)
    assert 0 < f.quality < 100.0 and f.objective == -f.quality and f.cost > 0 and f.denoiser_seconds > 0
    clip = tiny_clip()
    ev = CandidateEvaluator(pixart, items, call, quality="clip", batch_size=2, quality_options={"clip": clip})
    ev.prepare()
    assert ev.reference is None  # CLIP score needs no full-compute outputs
    c = ev.evaluate(fora)
    assert np.isfinite(c.quality) and c.objective == -c.quality
    refs = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    ev = CandidateEvaluator(pixart, items, call, quality="fid", batch_size=2,
                            quality_options={"clip": clip, "reference": refs})
    ev.prepare()
    d = ev.evaluate(fora)
    assert np.isfinite(d.quality) and d.objective == d.quality


@pytest.mark.slow
def test_generalisation_is_reported(pixart, tiny_call, tmp_path, one_thread):
    result = search(pixart, tiny_call, out=tmp_path, generations=1, pick_speedups=(1.2,), generalise=True,
                    generalise_steps=[3, 6], generalise_resolution=(48, 48))
    records = result.generalisation
    assert {r["setting"] for r in records} == {"steps=3", "steps=6", "48x48"}
    picked = result.picked[1.2]
    names = {r["name"] for r in records}
    assert picked in names and len(names) == 2  # the picked schedule and the best heuristic at >= 1.2x
    for r in records:
        assert r["macs_ratio"] > 1.0 and r["quality"] > 0
        assert r["steps"] == {"steps=3": 3, "steps=6": 6, "48x48": 4}[r["setting"]]
        assert (r["height"], r["width"]) == ((48, 48) if r["setting"] == "48x48" else (32, 32))
    saved = json.loads((tmp_path / "frontier.json").read_text())
    assert saved["generalisation"] == records and saved["picked"] == {"1.2": picked}
    assert AccelerationConfig.load(tmp_path / "picked-1.2x.json").to_dict() == next(
        e["config"] for e in result.frontier if e["name"] == picked)


def test_dynamic_seeds_replay_dynamic_caching_decisions(pixart, tiny_call, one_thread):
    from diffusion_accel.caching import DynamicCacheConfig
    from diffusion_accel.search import ScheduleGenome
    from diffusion_accel.search.seeding import dynamic_schedules, initial_population

    items = make_items(load_prompts(PROMPTS), seed=0)
    call = {**tiny_call, "num_inference_steps": 6}
    ev = CandidateEvaluator(pixart, items, call, quality="latent_mse", batch_size=4)
    ev.prepare()
    genome = ScheduleGenome.for_model(pixart, 6)
    reports = []
    ev.run(AccelerationConfig(cache=DynamicCacheConfig(threshold=1e9)), observe=reports.append)
    skipped = [int(s) for s, share in reports[0]["cache"]["skip_share_by_step"].items() if share >= 0.5]
    assert skipped == [1, 2, 3, 5]  # step 0 computes; at most 3 skips in a row

    seeds = dynamic_schedules(ev, genome, thresholds=(0.0, 1e9))
    assert [s.name for s in seeds] == ["dynamic-replay-1e+09"]  # threshold 0 never skips: no seed
    compute = seeds[0].compute
    assert compute[:, 0].all() and compute[[0, 4]].all()
    assert not compute[[1, 2, 3, 5], 1:].any()
    names, bits = initial_population(pixart, genome, 6, seed=0, extra=seeds)
    assert names[:2] == ["full", "dynamic-replay-1e+09"] and np.array_equal(bits[1], genome.encode(seeds[0]))


def test_dynamic_candidates_are_priced_like_their_static_replay(pixart, tiny_call, one_thread):
    from diffusion_accel.caching import DynamicCacheConfig
    from diffusion_accel.search import ScheduleGenome
    from diffusion_accel.search.seeding import dynamic_schedules

    items = make_items(load_prompts(PROMPTS), seed=0)
    ev = CandidateEvaluator(pixart, items, {**tiny_call, "num_inference_steps": 6}, quality="latent_mse", batch_size=4)
    ev.prepare()
    never = ev.evaluate_dynamic(AccelerationConfig(cache=DynamicCacheConfig(threshold=0.0)))
    assert never.macs_ratio == 1.0 and never.quality == 0.0  # never skips: the full-compute latents
    config = DynamicCacheConfig(threshold=1e9, max_consecutive_skips=1)
    every_other = ev.evaluate_dynamic(AccelerationConfig(cache=config))
    (replay,) = dynamic_schedules(ev, ScheduleGenome.for_model(pixart, 6), thresholds=({"threshold": 1e9, "max_consecutive_skips": 1},))
    assert every_other.macs_ratio == pytest.approx(ev.macs_ratio(replay), rel=1e-12) and every_other.macs_ratio > 1.2
    with pytest.raises(ValueError, match="DynamicCacheConfig"):
        ev.evaluate_dynamic(ev.config(replay))


def test_dynamic_seed_replays_only_steps_most_calls_skipped(pixart):
    from diffusion_accel.search import ScheduleGenome
    from diffusion_accel.search.seeding import dynamic_schedules

    class Recorded:  # an evaluator whose dynamic-caching run skipped step 2 in both batches, step 1 in one
        base = None  # no acceleration under the candidates

        def run(self, config, observe=None):
            observe({"cache": {"skip_share_by_step": {0: 0.0, 1: 0.5, 2: 1.0, 3: 0.0}}})

    genome = ScheduleGenome.for_model(pixart, 4)
    (seed,) = dynamic_schedules(Recorded(), genome, thresholds=(0.3,))
    assert seed.name == "dynamic-replay-0.3"
    assert seed.compute[[0, 1, 3]].all() and seed.compute[2, 0].all() and not seed.compute[2, 1:].any()


def test_dynamic_seed_mappings_replay_their_rule(pixart):
    """A seed given as DynamicCacheConfig fields runs that config; a whole-stack policy's replay reuses
    every block (the first too), the first-block rule's all but the first."""
    from diffusion_accel.search import ScheduleGenome, SearchSettings
    from diffusion_accel.search.seeding import dynamic_schedules

    class Recorded:
        base = None

        def __init__(self):
            self.configs = []

        def run(self, config, observe=None):
            self.configs.append(config.cache)
            observe({"cache": {"skip_share_by_step": {0: 0.0, 1: 1.0, 2: 0.0, 3: 1.0}}})

    genome = ScheduleGenome.for_model(pixart, 4)
    fbc = {"threshold": 0.1, "compare_to": "last_computed", "max_consecutive_skips": 4}
    tea = {"threshold": 0.2, "policy": "teacache", "teacache_coefficients": [1.0, 0.0]}
    ev = Recorded()
    first, whole = dynamic_schedules(ev, genome, thresholds=(fbc, tea))
    assert [c.compare_to for c in ev.configs] == ["last_computed", "previous"] and ev.configs[1].policy == "teacache"
    assert first.name == "dynamic-replay-first_block-last-0.1" and whole.name == "dynamic-replay-teacache-0.2"
    assert first.compute[[1, 3], 0].all() and not first.compute[[1, 3], 1:].any()
    assert not whole.compute[[1, 3]].any() and whole.compute[[0, 2]].all()
    assert SearchSettings(dynamic_seeds=(0.3, fbc)).dynamic_seeds == (0.3, fbc)
    with pytest.raises(ValueError, match="compare_to must be one of"):
        SearchSettings(dynamic_seeds=({"compare_to": "nope"},))
    with pytest.raises(ValueError, match="DynamicCacheConfig's field names"):
        SearchSettings(dynamic_seeds=({"treshold": 0.1},))
    with pytest.raises(ValueError, match="thresholds or mappings"):
        SearchSettings(dynamic_seeds=("0.1",))


def test_block_granularity_search_keeps_whole_blocks(pixart, tiny_call, tmp_path, one_thread):
    result = search(pixart, tiny_call, out=tmp_path, granularity="block")
    saved = json.loads((tmp_path / "checkpoint.json").read_text())
    assert saved["settings"]["search_space"]["granularity"] == "block"
    assert saved["settings"]["search_space"]["num_bits"] == 3 * 2
    for entry in result.frontier:
        compute = AccelerationConfig.from_dict(entry["config"]).cache.schedule.compute
        assert np.array_equal(compute.all(axis=2), compute.any(axis=2)), entry["name"]
    with pytest.raises(ValueError, match="6 bits"):  # resuming with the other granularity: another search space
        search(pixart, tiny_call, out=tmp_path, resume=True)


def test_resumed_search_writes_the_heuristics_in_the_same_order(pixart, tiny_call, tmp_path, one_thread):
    """A resumed search rebuilds its seeds without the data-driven ones (they are in the checkpoint):
    frontier.json's heuristics must still come out in the same (sorted) order (issue #17)."""
    first = search(pixart, tiny_call, generations=1, out=tmp_path, dynamic_seeds=(1e9,))
    names = [h["name"] for h in json.loads((tmp_path / "frontier.json").read_text())["heuristics"]]
    assert any(n.startswith("dynamic-replay") for n in names)
    again = search(pixart, tiny_call, generations=1, out=tmp_path, dynamic_seeds=(1e9,), resume=True)
    assert [h["name"] for h in json.loads((tmp_path / "frontier.json").read_text())["heuristics"]] == names
    assert again.heuristics == first.heuristics
    assert names == [h["name"] for h in sorted(first.heuristics, key=lambda h: (h["speedup"], h["name"]))]
