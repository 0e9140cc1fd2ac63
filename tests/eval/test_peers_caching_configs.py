"""benchmarks/peers_caching.py --caching-configs: AccelerationConfig JSON files run as our methods."""

import numpy as np
import pytest

from diffusion_accel import AccelerationConfig
from diffusion_accel.caching import CacheSchedule, StaticCacheConfig
from benchmark_scripts import load_benchmark


def _peers_caching():
    return load_benchmark("peers_caching")


def test_each_name_path_pair_becomes_one_of_our_methods(tmp_path):
    module = _peers_caching()
    schedule = CacheSchedule(np.ones((4, 2, 3), dtype=bool), ("attn1", "attn2", "mlp"), "pixart")
    path = tmp_path / "picked-2.0x.json"
    AccelerationConfig(cache=StaticCacheConfig(schedule)).save(path)
    methods = module.config_methods(f"searched-2x={path}, ,")
    assert [(m.name, m.family, m.settings["config"]) for m in methods] == [("ours searched-2x", "ours", str(path))]
    assert module.config_methods("") == []


def test_a_malformed_or_missing_entry_names_the_fix(tmp_path):
    module = _peers_caching()
    with pytest.raises(ValueError, match="NAME=PATH"):
        module.config_methods("picked.json")
    with pytest.raises(ValueError, match="missing.json"):
        module.config_methods(f"x={tmp_path / 'missing.json'}")


def test_forecast_dynamic_picks_and_explored_variants_are_valid_configs():
    """Every dynamic-forecast method of the peers run and every variant low_speedup_dynamic.py explores
    builds a DynamicCacheConfig (a typo in a field would only surface minutes into a benchmark run)."""
    from diffusion_accel.caching import DynamicCacheConfig

    module = _peers_caching()
    for fields in module.FORECAST_DYNAMIC.values():
        kw = {k: 20 if v == "steps" else v for k, v in fields.items()}
        extra = {"teacache_coefficients": (1.0, 0.0)} if kw.get("policy") == "teacache" else {}
        assert DynamicCacheConfig(**kw, **extra).reuse == "forecast"
    explored = load_benchmark("low_speedup_dynamic").variants(20)
    assert len(explored) > 50
    for kw in explored.values():
        extra = {"teacache_coefficients": (1.0, 0.0)} if kw.get("policy") == "teacache" else {}
        DynamicCacheConfig(**kw, **extra)


def test_static_picks_skip_distinct_steps_after_the_first():
    """STATIC_PICKS: 11 of 20 steps skipped (2.22x), never step 0 (it has nothing to reuse), no repeats."""
    for skipped in _peers_caching().STATIC_PICKS.values():
        assert len(set(skipped)) == len(skipped) == 11 and 0 < min(skipped) and max(skipped) < 20


def test_skip_search_picks_become_our_methods_skipping_exactly_those_steps(tmp_path):
    """skip_search.json's pick per k runs as 'ours skip-search-<k>': a block-residual step skip of
    exactly the picked steps; entries of another step count and a missing file give no method."""
    import json

    import diffusion_accel
    from diffusion_accel.pipeline_state import acceleration_state
    from diffusion_accel.testing import tiny_pipeline

    module = _peers_caching()
    bench = load_benchmark("caching")
    pipe = tiny_pipeline("pixart-alpha")
    path = tmp_path / "skip_search.json"
    entry = {"steps": 6, "prompts": 8, "pick": [1, 2, 4], "pick_train_psnr_db": 40.0, "measured": [{}, {}]}
    path.write_text(json.dumps({"counts": {"3": entry, "2": {**entry, "steps": 20, "pick": [1, 2]}}}))
    methods = module._ours_skip_search(pipe, 6, bench, str(path))
    assert [(m.name, m.settings["skipped_steps"], m.settings["reuse"]) for m in methods] == [
        ("ours skip-search-3", [1, 2, 4], "block_residual")]
    methods[0].attach(pipe)
    cache = acceleration_state(pipe).config.cache
    diffusion_accel.remove(pipe)
    computed = cache.schedule.compute.all(axis=(1, 2))  # (step, block, component) -> whole steps computed
    assert cache.reuse == "block_residual" and [s for s in range(6) if not computed[s]] == [1, 2, 4]
    assert not cache.schedule.compute[[1, 2, 4]].any()
    assert module._ours_skip_search(pipe, 6, bench, str(tmp_path / "missing.json")) == []
