"""Non-dominated filtering, pick and the frontier file format (readable by the eval sweep)."""

import json

import numpy as np
import pytest

from diffusion_accel import AccelerationConfig
from diffusion_accel.caching import CacheSchedule, StaticCacheConfig
from diffusion_accel.search import non_dominated, pick, pick_entry
from diffusion_accel.search.frontier import load_frontier, plot_frontier, save_frontier


def brute_force(F):
    keep = []
    for i, f in enumerate(F):
        dominated = any(np.all(g <= f) and np.any(g < f) for g in F)
        if not dominated and not any(np.array_equal(F[j], f) for j in keep):
            keep.append(i)
    return keep


def test_non_dominated_matches_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(20):
        F = rng.integers(0, 5, (15, 2)).astype(float)
        assert non_dominated(F).tolist() == brute_force(F)
    with pytest.raises(ValueError, match="2-D"):
        non_dominated([1.0, 2.0])


def entries(pixart):
    out = []
    for i, (speedup, quality) in enumerate([(1.0, 0.0), (1.8, 0.01), (2.2, 0.03), (2.6, 0.02), (3.5, 0.2)]):
        schedule = CacheSchedule.fora(pixart, 4, 1 + i % 3).with_name(f"s{i}")
        out.append({"name": f"s{i}", "config": AccelerationConfig(cache=StaticCacheConfig(schedule)).to_dict(),
                    "speedup": speedup, "objectives": [1 / speedup, quality], "quality": quality})
    return out


def test_pick_returns_the_best_quality_at_or_above_the_target(pixart, tmp_path):
    frontier = entries(pixart)
    assert pick_entry(frontier, 2.0)["name"] == "s3"  # 2.6x beats 2.2x on quality
    assert pick_entry(frontier, 2.6)["name"] == "s3"
    assert pick_entry(frontier, 1.0)["name"] == "s0"
    assert pick_entry(frontier, 3.0)["name"] == "s4"
    with pytest.raises(ValueError, match="fastest is 3.5x"):
        pick_entry(frontier, 4.0)
    path = tmp_path / "frontier.json"
    save_frontier(path, frontier, metric={"metric": "latent_mse"})
    config = pick(str(path), 2.0)
    assert isinstance(config, AccelerationConfig) and config.cache.schedule.name == "s3"
    assert pick(str(tmp_path), 2.0) == config  # a search folder works too


def test_frontier_file_is_read_by_the_eval_sweep(pixart, tmp_path):
    from diffusion_accel.eval.sweep import load_configs

    path = tmp_path / "frontier.json"
    save_frontier(path, entries(pixart))
    configs = load_configs([str(path)])
    assert [n for n, _ in configs] == [f"s{i}" for i in range(5)]
    assert configs[3][1] == AccelerationConfig.from_dict(entries(pixart)[3]["config"])


def test_bad_frontier_input(tmp_path):
    with pytest.raises(ValueError, match="Cannot read frontier"):
        load_frontier(str(tmp_path / "missing.json"))
    (tmp_path / "x.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(ValueError, match="Not a search frontier"):
        load_frontier(str(tmp_path / "x.json"))
    with pytest.raises(ValueError, match="non-empty"):
        load_frontier([])
    with pytest.raises(ValueError, match="positive"):
        pick_entry([{"config": {}, "speedup": 1.0, "objectives": [1, 0]}], 0)


def test_plot_is_a_png(tmp_path):
    pts = np.array([[1.0, 0.0], [2.0, 0.1], [3.0, 0.3]])
    plot_frontier(tmp_path / "p.png", pts, pts[:2], pts, {"fora-2": (2.0, 0.2)}, metric="latent_mse", title="t")
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
