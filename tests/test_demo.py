"""`diffusion-accel demo` end to end on the bundled model, in a reduced setting (2 prompts, 1 timed run)."""

from __future__ import annotations

import os

import pytest

from diffusion_accel.cli import main
from diffusion_accel.demo import demo_configs, format_table
from diffusion_accel.eval.report import load_results
from diffusion_accel.eval.sweep import load_pipeline


@pytest.mark.slow
def test_demo_runs_end_to_end_and_writes_its_table(tmp_path, capsys):
    out = tmp_path / "demo"
    argv = ["demo", "--out", str(out), "--num-prompts", "2", "--steps", "20", "--latency-runs", "1", "--no-progress"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    table = (out / "table.txt").read_text()
    assert table.strip() in printed

    records = load_results(out / "eval")
    variants = [name for name, _ in demo_configs(load_pipeline("benchmark"), 20)]
    assert [r["name"] for r in records] == ["baseline", *variants]
    assert records[0]["psnr"] == float("inf") and records[0]["macs_ratio"] == 1.0
    for record in records[1:]:
        assert record["speedup"] > 0, record["name"]
        assert 0 < record["psnr"] < float("inf"), record["name"]
        assert record["clip_score"] is not None and record["fid"] is not None, record["name"]
    # the static schedule variants really skip work
    cached = [r for r in records if r["name"].startswith("cache-") and "dynamic" not in r["name"]]
    assert cached and all(r["macs_ratio"] > 1.2 for r in cached)
    # int8 linears count the MACs of the float ones they replace
    quant = next(r for r in records if r["name"] == "quant-w8a8")
    assert quant["macs_ratio"] == pytest.approx(1.0, rel=1e-3)
    assert any(f.endswith(".png") for _, _, files in os.walk(out / "eval") for f in files)

    # a rerun replaces the previous demo folder; a foreign folder is refused with one clear error
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("x")
    assert main(["demo", "--out", str(foreign), "--num-prompts", "2", "--steps", "2", "--no-progress"]) == 2
    assert "not a demo output folder" in capsys.readouterr().err
    assert (foreign / "keep.txt").exists()


def test_demo_rejects_a_single_prompt(capsys):
    assert main(["demo", "--num-prompts", "1", "--no-progress"]) == 2
    assert "--num-prompts must be at least 2" in capsys.readouterr().err


def test_format_table_shows_missing_and_infinite_values():
    table = format_table([
        {"name": "full", "speedup": 1.0, "macs_ratio": 1.0, "clip_score": 25.0, "fid": 0.1, "psnr": float("inf")},
        {"name": "quant", "speedup": 1.5, "macs_ratio": None, "clip_score": 24.0, "fid": 0.2, "psnr": 40.0},
    ])
    lines = table.splitlines()
    assert lines[0].split()[:2] == ["variant", "speedup"]
    assert "inf" in lines[2] and "-" in lines[3].split()
