"""benchmarks/caching.py reports per-round wall-clock speed-ups (baseline / policy of the same round)
with their minimum and spread, besides the medians."""

import pytest
from benchmark_scripts import load_benchmark


def _caching():
    return load_benchmark("caching", "caching_benchmark")


def test_speedups_pair_each_round_with_the_baseline_of_the_same_round():
    base = [(4.0, 5.0), (2.0, 3.0), (6.0, 7.0)]
    policy = [(2.0, 3.0), (2.0, 2.0), (2.0, 4.0)]
    out = _caching().speedups(base, policy)
    assert out["denoiser_speedup_rounds"] == [2.0, 1.0, 3.0]
    assert out["denoiser_speedup_min"] == 1.0
    assert out["denoiser_speedup_spread"] == 2.0
    assert out["denoiser_s"] == 2.0 and out["pipeline_s"] == 3.0


def test_the_baseline_against_itself_is_one_in_every_round():
    base = [(1.5, 2.0), (3.0, 4.0)]
    out = _caching().speedups(base, base)
    assert out["denoiser_speedup_rounds"] == [1.0, 1.0]
    assert out["denoiser_speedup_spread"] == 0.0
    assert out["denoiser_s"] == pytest.approx(2.25)
