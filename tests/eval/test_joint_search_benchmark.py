"""benchmarks/joint_search.py's comparison rule: a joint point dominates a baseline point when its measured
speed-up is at least the baseline's within the stated noise floor and its held-out PSNR is strictly higher."""

from benchmark_scripts import load_benchmark

bench = load_benchmark("joint_search")


def record(name, series, speedup, psnr, compute=None):
    config = {"cache": {"schedule": {"compute": compute if compute is not None else name}}}
    return {"name": name, "series": series, "measured_speedup": speedup, "psnr": psnr, "config": config}


def test_dominance_needs_strictly_higher_psnr_at_matched_measured_speed():
    records = [record("joint/a", "joint", 1.48, 41.0), record("joint/b", "joint", 2.0, 30.0),
               record("base/x", "cache-only + W8A8", 1.50, 40.0),   # a: within 5 % and better
               record("base/y", "cache-only + W8A8", 1.95, 30.0),   # b: faster but only equal PSNR
               record("base/z", "cache-only + W8A8", 2.50, 20.0)]   # nothing that fast
    result = bench.dominance(records, "cache-only + W8A8", noise_floor=0.05)
    rows = {r["baseline"]: r for r in result["points"]}
    assert rows["base/x"]["dominated"] and rows["base/x"]["joint"] == "joint/a"
    assert not rows["base/x"]["strict_dominated"]  # without the noise tolerance a is too slow
    assert not rows["base/y"]["dominated"]
    assert not rows["base/z"]["dominated"] and rows["base/z"]["joint"] is None
    assert (result["dominated"], result["strictly_dominated"], result["of"]) == (1, 0, 3)


def test_a_joint_point_running_a_baseline_config_does_not_count_and_gives_the_timing_noise():
    records = [record("base/x", "cache-only + W8A8", 1.50, 40.0, compute="X"),
               record("base/y", "cache-only + W8A8", 1.20, 35.0, compute="Y"),
               record("joint/x-seed", "joint", 1.60, 40.0, compute="X")]  # the seed x, timed again
    result = bench.dominance(records, "cache-only + W8A8", noise_floor=0.05)
    assert result["dominated"] == 0 and result["points"][1]["joint"] is None  # x itself cannot dominate y
    assert bench.twin_spread(records) == 1.60 / 1.50 - 1.0


def test_seeds_hold_every_baseline_point_with_w8a8_as_is_and_corrected():
    from types import SimpleNamespace

    from diffusion_accel.caching import CacheSchedule, CorrectedCacheConfig, StaticCacheConfig
    from diffusion_accel.testing import tiny_pipeline

    pipe = tiny_pipeline("pixart-alpha")
    entries = [{"name": f"s{k}", "config": {"cache": StaticCacheConfig(CacheSchedule.fora(pipe.transformer, 4, k))
                                            .to_dict()}} for k in (1, 2, 3)]
    seeds = bench.seed_configs(SimpleNamespace(frontier=entries), SimpleNamespace(max_points=7))
    assert sorted(seeds) == sorted([f"s{k}+w8a8" for k in (1, 2, 3)] + [f"s{k}+w8a8+corr" for k in (1, 2, 3)])
    assert seeds["s2+w8a8"].quant == bench.W8A8
    assert seeds["s2+w8a8+corr"].cache == CorrectedCacheConfig(seeds["s2+w8a8"].cache)
