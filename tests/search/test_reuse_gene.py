"""Issue 20: the reuse mode (forecast order included) as one gene of the cache space, chosen per candidate."""

import json

import numpy as np
import pytest

from diffusion_accel import AccelerationConfig
from diffusion_accel.caching.static import StaticCacheConfig
from diffusion_accel.eval.generate import make_items
from diffusion_accel.eval.prompts import load_prompts
from diffusion_accel.search import CandidateEvaluator, search_schedule
from diffusion_accel.search.genome import JointGenome
from diffusion_accel.search.problem import str_to_genes
from diffusion_accel.search.reuse import parse_reuse
from diffusion_accel.search.settings import SearchSettings
from diffusion_accel.search.space import SPACES, SpaceContext

CHOICES = ("block_residual", "forecast", "forecast2")


def test_reuse_spellings():
    assert parse_reuse("auto") == "auto"
    assert parse_reuse("forecast1") == "forecast"  # a single value stays a string (today's search)
    assert parse_reuse("block_residual,forecast1,forecast2") == CHOICES
    assert parse_reuse(["block_residual", "forecast", "forecast2"]) == CHOICES
    assert parse_reuse(("forecast2",)) == "forecast2"
    assert SearchSettings(reuse="block_residual, forecast2").reuse == ("block_residual", "forecast2")


@pytest.mark.parametrize("value, why", [("residual", "unknown choice 'residual'"), ("auto,forecast", "stands alone"),
                                        ("forecast,forecast1", "named twice"), ("outputs,", "empty"),
                                        ((), "empty"), ("forecast3", "unknown choice")])
def test_bad_reuse_values_raise_one_error_naming_the_valid_ones(value, why):
    with pytest.raises(ValueError, match=why) as info:
        SearchSettings(reuse=value)
    assert "outputs, block_residual, forecast (= forecast1), forecast2" in str(info.value)


def test_several_reuse_choices_refuse_refinement_and_dp_seeds():
    with pytest.raises(ValueError, match="refine_rounds=0"):
        SearchSettings(reuse=CHOICES, refine_rounds=1)
    with pytest.raises(ValueError, match="dp_seeds=0"):
        SearchSettings(reuse=CHOICES, dp_seeds=2)


def test_a_joint_search_refuses_dynamic_seeds_it_would_not_use():
    with pytest.raises(ValueError, match="dynamic_seeds"):
        SearchSettings(reuse=CHOICES, refine_rounds=0, dynamic_seeds=(0.15,))
    with pytest.raises(ValueError, match="dynamic_seeds"):
        SearchSettings(space="cache,quant", refine_rounds=0, dynamic_seeds=(0.15,))
    SearchSettings(space="cache,quant", refine_rounds=0, dynamic_seeds=())  # nothing asked, nothing refused
    SearchSettings(dynamic_seeds=(0.15,))  # a cache-only search uses them


def test_the_reuse_gene_decodes_to_the_chosen_mode_and_order(pixart):
    single = SPACES["cache"](SpaceContext(pixart, 4, reuse="block_residual"))
    part = SPACES["cache"](SpaceContext(pixart, 4, reuse=CHOICES))
    assert part.cardinalities == single.cardinalities + (3,)  # one more gene, only with several choices
    bits = np.zeros(single.genome.num_bits, dtype=np.int64)
    decoded = [part.decode(np.append(bits, i)) for i in range(3)]
    assert [(c.reuse, c.forecast_order) for c in decoded] == [("block_residual", 1), ("forecast", 1), ("forecast", 2)]
    assert all(c.schedule == single.decode(bits).schedule for c in decoded)
    for i, config in enumerate(decoded):
        assert part.encode(config).tolist() == bits.tolist() + [i]
        assert StaticCacheConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ValueError, match="reuse gene chooses among"):
        part.encode(StaticCacheConfig(decoded[0].schedule, reuse="outputs"))
    assert part.signature()["reuse"] == list(CHOICES) and single.signature()["reuse"] == "block_residual"
    names = [n for n, _ in part.seeds()]
    assert names[:3] == [f"{names[0].rsplit('-', 1)[0]}-{c}" for c in ("block_residual", "forecast", "forecast2")]
    # a single forecast-2 choice (no gene) still decodes with its order
    assert SPACES["cache"](SpaceContext(pixart, 4, reuse="forecast2")).decode(bits).forecast_order == 2


def test_a_joint_config_is_evaluated_with_its_own_reuse(pixart, tiny_call, one_thread):
    """evaluate_config of a cache-only config must run the config's reuse, not the evaluator's."""
    call = {**tiny_call, "num_inference_steps": 4}
    items = make_items(load_prompts(["a red cat"]), seed=0)
    ev = CandidateEvaluator(pixart, items, call, batch_size=1, reuse="block_residual")
    ev.prepare()
    genome = JointGenome.build(pixart, ("cache",), 4, reuse=CHOICES)
    genes = genome.seeds()[1][1]  # a heuristic schedule with block residuals
    res, fc2 = genome.decode(genes), genome.decode(np.append(genes[:-1], 2))
    assert ev.evaluate_config(res).quality == ev.evaluate(res.cache.schedule).quality
    assert ev.evaluate_config(fc2).quality == ev._evaluate_cache(fc2).quality != ev.evaluate_config(res).quality


def test_a_search_with_two_reuse_choices_saves_each_candidates_choice(tmp_path, pixart, tiny_call, one_thread):
    result = search_schedule(pixart, ["a red cat", "a blue dog"], call_kwargs=tiny_call,
                             reuse=("block_residual", "forecast2"), num_steps=4, population=6, generations=1,
                             seed=0, batch_size=2, generalise=False, progress=False, out=tmp_path / "out")
    configs = [AccelerationConfig.from_dict(json.loads(json.dumps(e["config"]))) for e in result.frontier]
    assert configs and all(isinstance(c.cache, StaticCacheConfig) for c in configs)
    chosen = {(c.cache.reuse, c.cache.forecast_order) for c in configs}
    assert chosen <= {("block_residual", 1), ("forecast", 2)}
    saved = json.loads((tmp_path / "out" / "frontier.json").read_text())
    assert saved["settings"]["reuse"] == ["block_residual", "forecast2"]
    assert saved["settings"]["search_space"]["parts"]["cache"]["reuse"] == ["block_residual", "forecast2"]
    archive = json.loads((tmp_path / "out" / "checkpoint.json").read_text())["archive"]
    assert {int(str_to_genes(k)[-1]) for k in archive} == {0, 1}  # both choices were evaluated
    # the evaluated quality of every frontier point is the quality of its saved config
    ev = CandidateEvaluator(pixart, make_items(load_prompts(["a red cat", "a blue dog"]), seed=0),
                            {**tiny_call, "num_inference_steps": 4}, batch_size=2)
    ev.prepare()
    for entry, config in zip(result.frontier, configs):
        assert ev.evaluate_config(config).quality == entry["quality"]
    with pytest.raises(ValueError, match="Resume with --reuse block_residual,forecast2"):
        search_schedule(pixart, ["a red cat", "a blue dog"], call_kwargs=tiny_call, reuse="block_residual,forecast",
                        num_steps=4, population=6, generations=1, seed=0, batch_size=2, generalise=False,
                        progress=False, out=tmp_path / "out", resume=True)


def test_the_reuse_gene_joins_a_joint_genome(pixart):
    plain = JointGenome.build(pixart, ("cache", "quant"), 4, reuse="block_residual")
    genome = JointGenome.build(pixart, ("cache", "quant"), 4, reuse=CHOICES)
    assert genome.num_bits == plain.num_bits + 1
    cache_genes = len(genome.part("cache").cardinalities)
    genes = genome.off.copy()
    genes[genome.part("cache").genome.num_bits] = 2  # the reuse gene follows the schedule bits
    genes[cache_genes] = 1  # the first quant gene: 8 bits
    config = genome.decode(genes)
    assert (config.cache.reuse, config.cache.forecast_order) == ("forecast", 2) and config.quant is not None
    assert genome.encode(config).tolist() == genes.tolist()
    assert genome.signature() != plain.signature()


def test_a_single_forecast2_choice_searches_the_schedule_genome_at_order_2(tmp_path, pixart, tiny_call, one_thread):
    result = search_schedule(pixart, ["a red cat", "a blue dog"], call_kwargs=tiny_call, reuse="forecast2",
                             num_steps=4, population=4, generations=1, seed=0, batch_size=2, generalise=False,
                             progress=False, out=None)
    configs = [AccelerationConfig.from_dict(e["config"]) for e in result.frontier]
    assert configs and all((c.cache.reuse, c.cache.forecast_order) == ("forecast", 2) for c in configs)
    ev = CandidateEvaluator(pixart, make_items(load_prompts(["a red cat", "a blue dog"]), seed=0),
                            {**tiny_call, "num_inference_steps": 4}, batch_size=2)
    ev.prepare()
    assert [ev.evaluate_config(c).quality for c in configs] == [e["quality"] for e in result.frontier]
    with pytest.raises(ValueError, match="forecast_order must be one of"):
        CandidateEvaluator(pixart, ev.items, ev.call_kwargs, reuse="block_residual", forecast_order=2)
