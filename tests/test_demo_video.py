"""`diffusion-accel demo --video` end to end, on a tiny random Wan standing in for the bundled video model."""

from __future__ import annotations

import dataclasses

import pytest
from PIL import Image

from diffusion_accel.assets import bundled
from diffusion_accel.cli import main
from diffusion_accel.eval.report import load_results
from diffusion_accel.testing import tiny_pipeline


@pytest.fixture
def tiny_video_model(tmp_path, monkeypatch):
    folder = tmp_path / "wan"
    tiny_pipeline("wan").save_pretrained(folder)
    entry = dataclasses.replace(bundled.BUNDLED_MODELS["benchmark-video"], model_dir=lambda: str(folder))
    monkeypatch.setitem(bundled.BUNDLED_MODELS, "benchmark-video", entry)
    return folder


@pytest.mark.slow
def test_video_demo_prints_the_video_table_and_writes_gif_grids(tmp_path, capsys, tiny_video_model):
    out = tmp_path / "demo"
    argv = ["demo", "--video", "--out", str(out), "--num-prompts", "2", "--steps", "4", "--latency-runs", "1",
            "--no-progress"]
    assert main(argv) == 0
    table = (out / "table.txt").read_text()
    assert table.strip() in capsys.readouterr().out
    assert "frame consistency" in table and "flicker" in table.splitlines()[0]
    records = load_results(out / "eval")
    assert records[0]["name"] == "baseline" and records[0]["fid"] is None  # no real videos: no FID
    for record in records[1:]:
        assert record["frame_consistency"] is not None and record["temporal_error"] is not None, record["name"]
    for record in records:
        with Image.open(out / "grids" / f"{record['name']}.gif") as gif:
            assert gif.n_frames == 9  # the bundled video model's frame count, animated
