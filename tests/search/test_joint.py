"""The joint search (--space cache,quant,attention) on the tiny PixArt: genome, frontier, resume, base config."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from diffusion_accel import AccelerationConfig, apply, remove
from diffusion_accel.api import acceleration_state
from diffusion_accel.caching import CorrectedCacheConfig
from diffusion_accel.quant import QuantConfig
from diffusion_accel.search import SearchSettings, load_frontier, pick, search_schedule
from diffusion_accel.search.genome import JointGenome
from diffusion_accel.search.space import SPACES, parse_space
from diffusion_accel.sparse_attn import SparseAttentionConfig

HERE = os.path.dirname(os.path.abspath(__file__))

PROMPTS = ["a red cat", "a blue dog"]


def search(pipe, call, **overrides):
    kwargs = dict(num_steps=4, population=4, generations=1, seed=0, call_kwargs=call, batch_size=2,
                  generalise=False, progress=False, space="cache,quant,attention", pick_speedups=(1.1,))
    kwargs.update(overrides)
    return search_schedule(pipe, PROMPTS, **kwargs)


@pytest.fixture(scope="module")
def latency(pixart):
    """One latency model shared by the runs that must agree (its timings are measured, hence not repeatable)."""
    from diffusion_accel.cost.latency import calibrate_latency_model
    from diffusion_accel.testing import tiny_call_kwargs

    return calibrate_latency_model(pixart, tiny_call_kwargs("pixart-alpha", num_inference_steps=4), repeats=1,
                                   attention=[("block_sparse", d) for d in (0.5, 0.25, 0.125)])


def test_default_space_gives_the_frontier_of_the_cache_only_search(pixart, tiny_call, one_thread):
    """``space`` left at its default is today's search: the frontier the code before the joint search
    gave for this seed (recorded from that code in data/cache_frontier_seed3.json)."""
    with open(os.path.join(HERE, "data", "cache_frontier_seed3.json")) as fh:
        before = json.load(fh)
    result = search_schedule(pixart, PROMPTS, population=6, generations=2, seed=3, generalise=False, progress=False,
                             call_kwargs={**tiny_call, "num_inference_steps": 4})
    now = [{"name": e["name"], "objectives": e["objectives"], "macs_ratio": e["macs_ratio"],
            "compute": e["config"]["cache"]["schedule"]["compute"]} for e in result.frontier]
    assert [e["name"] for e in now] == [e["name"] for e in before]
    assert [e["compute"] for e in now] == [e["compute"] for e in before]
    for a, b in zip(now, before):
        assert a["objectives"] == pytest.approx(b["objectives"], rel=1e-6, abs=1e-12)
        assert "latency_model_speedup" not in a
    assert SearchSettings().space == ("cache",) and SearchSettings().cost == "macs"


def test_joint_genome_round_trips(pixart):
    genome = JointGenome.build(pixart, ("cache", "quant", "attention"), num_steps=4)
    assert genome.spaces == ("cache", "quant", "attention")
    # 3 steps x 2 blocks x 3 components + the correction gene; 2 blocks + rest bits and the activation
    # mode; density + 2 blocks
    assert genome.cardinalities.tolist() == [2] * 18 + [2] + [3, 3, 3, 2] + [3, 2, 2]
    rng = np.random.default_rng(0)
    for _ in range(40):
        genes = np.floor(rng.random(genome.num_bits) * genome.cardinalities).astype(int)
        config = genome.decode(genes)
        assert genome.decode(genome.encode(config)) == config
        assert AccelerationConfig.from_json(config.to_json()) == config
        canonical = genome.canonical(genes)
        assert (genome.canonical(canonical) == canonical).all()
    full = genome.decode(genome.off)
    assert full.quant is None and full.attention is None and full.cache.schedule.compute.all()
    w8 = genome.decode(np.r_[np.ones(18), [0], [1, 1, 1, 0], [0, 0, 0]])
    assert (w8.quant.weight_bits, w8.quant.act_bits, w8.quant.plan) == (8, 8, None)
    mixed = genome.decode(np.r_[np.ones(18), [0], [2, 0, 1, 1], [1, 1, 0]])
    plan = mixed.quant.plan
    assert plan.bits_for("transformer_blocks.0.attn1.to_q") == 4 and plan.bits_for("transformer_blocks.1.ff.net.2") is None
    assert plan.bits_for("proj_out") == 8 and mixed.quant.act_bits is None
    assert mixed.attention == SparseAttentionConfig(density=0.25, blocks=(0,))
    corrected = genome.decode(np.r_[np.ones(18), [1], [1, 1, 1, 0], [0, 0, 0]])
    assert corrected.cache == CorrectedCacheConfig(full.cache) and not corrected.cache.fitted
    assert genome.encode(corrected)[18] == 1
    # the cache space alone (today's search) has no correction gene
    assert JointGenome.build(pixart, ("cache",), num_steps=4).num_bits == 18


def test_a_scheduler_without_a_data_prediction_gets_no_correction_gene(pixart):
    """Regression: the trajectory correction fits the data prediction; on a pipeline whose scheduler does not
    give one (here Heun flow matching: two model calls per step at different sigmas) the joint search stopped
    with a ValueError at its first candidate with the gene on. Such a genome has no correction gene."""
    from diffusers import FlowMatchHeunDiscreteScheduler

    from diffusion_accel.testing import tiny_pipeline

    wan = tiny_pipeline("wan")
    wan.scheduler = FlowMatchHeunDiscreteScheduler()
    genome = JointGenome.build(wan, ("cache", "quant"), num_steps=4)
    cache = genome.part("cache")
    assert not cache.correction and "correction" not in cache.signature()
    assert len(cache.cardinalities) == cache.genome.num_bits
    with pytest.raises(ValueError, match="no error-correction gene"):
        genome.encode(AccelerationConfig(cache=CorrectedCacheConfig(genome.decode(genome.off).cache)))
    assert JointGenome.build(pixart, ("cache", "quant"), num_steps=4).part("cache").correction


@pytest.mark.parametrize("family", ["wan", "sd3"])
def test_a_flow_matching_pipeline_gets_the_correction_gene(family):
    from diffusion_accel.testing import tiny_pipeline

    genome = JointGenome.build(tiny_pipeline(family), ("cache", "quant"), num_steps=4)
    assert genome.part("cache").correction


def test_frontier_points_are_configs_that_apply(pixart, tiny_call, tmp_path, one_thread, latency):
    result = search(pixart, tiny_call, out=tmp_path / "out", latency_model=latency)
    document = json.loads((tmp_path / "out" / "frontier.json").read_text())
    assert document["cost"] == "latency_model"
    assert document["settings"]["search_space"]["spaces"] == ["cache", "quant", "attention"]
    for entry in load_frontier(tmp_path / "out" / "frontier.json"):
        config = AccelerationConfig.from_dict(entry["config"])
        assert entry["latency_model_speedup"] > 0 and entry["macs_ratio"] > 0
        assert entry["speedup"] == pytest.approx(entry["latency_model_speedup"])
        apply(pixart, config)
        out = pixart(prompt="a cat", num_inference_steps=4, output_type="latent",
                     generator=torch.Generator().manual_seed(0), **tiny_call)
        assert torch.isfinite(out.images).all()
        remove(pixart)
    picked = result.picked.get(1.1)
    if picked is not None:  # the measured wall clock of every pick sits next to the predicted speed-up
        assert document["wall_clock"][picked]["seconds"] > 0
        assert isinstance(pick(tmp_path / "out", 1.1), AccelerationConfig)


class Interrupted(Exception):
    pass


@pytest.mark.slow
def test_killed_joint_search_resumes_to_the_same_frontier(pixart, tiny_call, tmp_path, one_thread, latency):
    straight = search(pixart, tiny_call, generations=2, out=tmp_path / "straight", latency_model=latency)

    def kill(event):
        if event["event"] == "candidate" and event["generation"] == 2 and event["index"] == 1:
            raise Interrupted

    with pytest.raises(Interrupted):
        search(pixart, tiny_call, generations=2, out=tmp_path / "killed", latency_model=latency, callback=kill)
    resumed = search(pixart, tiny_call, generations=2, out=tmp_path / "killed", latency_model=latency, resume=True)
    strip = [{k: v for k, v in e.items()} for e in straight.frontier]
    assert resumed.frontier == strip
    ck = [json.loads((tmp_path / d / "checkpoint.json").read_text()) for d in ("straight", "killed")]
    assert ck[0]["nsga"] == ck[1]["nsga"] and ck[0]["archive"].keys() == ck[1]["archive"].keys()


def test_search_keeps_what_lies_outside_its_space_and_restores_the_pipeline(pixart, tiny_call, one_thread, latency):
    user = AccelerationConfig(quant=QuantConfig(weight_bits=4, act_bits=8, keep_original="memory"),
                              attention=SparseAttentionConfig(density=0.5))
    apply(pixart, user)
    try:
        result = search(pixart, tiny_call, space="cache,quant", latency_model=latency)
        configs = [AccelerationConfig.from_dict(e["config"]) for e in [*result.frontier, *result.heuristics]]
        assert all(c.attention == user.attention for c in configs)  # outside the space: kept
        assert any(c.quant != user.quant for c in configs)           # inside: replaced by the genes
        assert acceleration_state(pixart).config == user
    finally:
        remove(pixart)


def test_quant_search_keeps_a_sampling_schedule(pixart, tiny_call, one_thread, latency):
    """Regression: the search's base used to keep only quantization and attention (a sampling schedule
    applied by the user was dropped from every candidate)."""
    from diffusion_accel.sampling import BottleneckSamplingConfig

    user = AccelerationConfig(sampling=BottleneckSamplingConfig(stages=((0.25, 1), (0.5, 2), (0.25, 1))))
    apply(pixart, user)
    try:
        result = search(pixart, tiny_call, space="quant", latency_model=latency)
        configs = [AccelerationConfig.from_dict(e["config"]) for e in [*result.frontier, *result.heuristics]]
        assert all(c.sampling == user.sampling for c in configs) and any(c.quant is not None for c in configs)
        assert acceleration_state(pixart).config == user
    finally:
        remove(pixart)


@pytest.mark.parametrize("value", ["cache,bogus", "", "cache,,quant", "quant,quant", "Cache"])
def test_bad_space_is_a_value_error_naming_the_choices(value):
    with pytest.raises(ValueError, match="cache, quant, attention"):
        SearchSettings(space=value)
    with pytest.raises(ValueError, match="cache, quant, attention"):
        parse_space(value)


def test_space_names_come_from_the_registry():
    assert tuple(SPACES) == ("cache", "quant", "attention")
    assert parse_space("attention,cache") == ("cache", "attention")
    assert SearchSettings(space="cache,quant").cost == "latency_model"
    with pytest.raises(ValueError, match="refine_rounds"):
        SearchSettings(space="cache,quant", refine_rounds=1)


def test_cli_rejects_a_bad_space_before_any_work(tmp_path, subprocess_env):
    out = subprocess.run([sys.executable, "-m", "diffusion_accel.cli", "search", "--model", "tiny:pixart-alpha",
                          "--space", "cache,sparsity", "--out", str(tmp_path / "o")],
                         capture_output=True, text=True, env=subprocess_env())
    assert out.returncode == 2
    assert "valid choices: cache, quant, attention" in out.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_two_processes_share_one_calibrated_latency_model(tmp_path, subprocess_env, master_port):
    """Two processes: the main one calibrates the latency model and sends it to the other; they price
    alike (else their populations would disagree and the search stop), split the candidates, and the
    checkpoint holds the model that priced the frontier."""
    out = tmp_path / "two"
    args = ["--model", "tiny:pixart-alpha", "--prompts", str(tmp_path / "p.txt"), "--steps", "4", "--population", "4",
            "--generations", "2", "--out", str(out), "--batch-size", "2", "--threads", "1", "--no-generalise",
            "--no-progress", "--call-kwargs", json.dumps({"height": 32, "width": 32}), "--space", "cache,quant",
            "--latency-repeats", "1", "--pick-speedup", "1.1"]
    (tmp_path / "p.txt").write_text("a red cat\na blue dog\n")
    procs = [subprocess.Popen([sys.executable, "-m", "diffusion_accel.cli", "search", *args],
                              env=subprocess_env(RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                                                 MASTER_ADDR="127.0.0.1", MASTER_PORT=master_port),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=400)
        assert proc.returncode == 0, err[-3000:]
    checkpoint = json.loads((out / "checkpoint.json").read_text())
    assert {r["process"] for r in checkpoint["archive"].values()} == {0, 1}
    from diffusion_accel.cost.latency import LatencyModel

    model = LatencyModel.from_dict(checkpoint["latency_model"])
    for entry in json.loads((out / "frontier.json").read_text())["frontier"]:
        config = AccelerationConfig.from_dict(entry["config"])
        assert entry["latency_model_speedup"] == pytest.approx(model.seconds(None) / model.seconds(config), rel=1e-9)
