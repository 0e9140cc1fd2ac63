"""benchmarks/skip_search.py: its results file (picks per k, earlier runs kept) and --start parsing."""

import argparse
import json

from benchmark_scripts import load_benchmark


def _args(path, run):
    return argparse.Namespace(out=str(path), prompts=8, steps=20, max_evaluations=3, run=run)


def test_a_stopped_run_picks_its_best_set_and_a_second_run_keeps_the_first(tmp_path):
    module = load_benchmark("skip_search")
    path = tmp_path / "skip_search.json"
    measured = [{"skipped": [1, 2], "train_psnr_db": 30.0}, {"skipped": [1, 3], "train_psnr_db": 31.0}]
    module._save(_args(path, "run-1"), 2, measured[:1], None, 0.0)
    module._save(_args(path, "run-1"), 2, measured, None, 0.0)  # same run: replaced, not stacked
    entry = json.loads(path.read_text())["counts"]["2"]
    assert entry["pick"] == [1, 3] and entry["done"] is False and entry["earlier_runs"] == []
    assert entry["compute_ratio"] == round(20 / 18, 4)

    class Found:
        skipped, score = (1, 4), 32.0

    module._save(_args(path, "run-2"), 2, [{"skipped": [1, 4], "train_psnr_db": 32.0}], Found, 0.0)
    entry = json.loads(path.read_text())["counts"]["2"]
    assert entry["pick"] == [1, 4] and entry["done"] is True and entry["run"] == "run-2"
    assert [e["run"] for e in entry["earlier_runs"]] == ["run-1"] and entry["earlier_runs"][0]["pick"] == [1, 3]


def test_start_sets_parse_per_count():
    module = load_benchmark("skip_search")
    assert module._starts("13=1/2/4,14=1/3") == {13: (1, 2, 4), 14: (1, 3)}
    assert module._starts("") == {}
