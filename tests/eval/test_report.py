import csv
import json
import math

import numpy as np
import pytest

from diffusion_accel.eval.report import load_results, pareto_front, plot_pareto, write_results


def test_pareto_front_keeps_non_dominated_points():
    speed = [1.0, 1.5, 2.0, 2.0, 3.0]
    quality = [5.0, 12.0, 9.0, 11.0, 20.0]
    assert pareto_front(speed, quality, higher_is_better=False) == [0, 2, 4]  # e.g. FID
    assert pareto_front(speed, quality, higher_is_better=True) == [4]  # e.g. CLIP score
    assert pareto_front([1.0, 2.0], [math.inf, 30.0], higher_is_better=True) == [0, 1]


def test_pareto_front_matches_the_definition_with_ties_and_nan():
    """pymoo's sorting gives the points no other point dominates; equal points are all kept, NaN is kept."""
    rng = np.random.default_rng(0)
    for trial in range(30):
        speed = rng.integers(1, 5, 12).astype(float).tolist()
        quality = rng.integers(0, 5, 12).astype(float).tolist()
        if trial % 3 == 0:
            quality[trial % 12] = math.nan
        for higher in (True, False):
            q = [v if higher else -v for v in quality]
            expected = [i for i in range(12) if not any(
                speed[j] >= speed[i] and q[j] >= q[i] and (speed[j] > speed[i] or q[j] > q[i]) for j in range(12))]
            assert pareto_front(speed, quality, higher) == sorted(expected, key=lambda i: speed[i])


def test_results_json_and_csv_round_trip_infinity(tmp_path):
    records = [
        {"name": "baseline", "config": {"cache": None}, "speedup": 1.0, "psnr": math.inf, "fid": None},
        {"name": "fast", "config": {"cache": {"type": "X"}}, "speedup": 2.0, "psnr": 31.5, "fid": 4.0},
    ]
    write_results(records, tmp_path)
    raw = json.loads((tmp_path / "results.json").read_text())
    assert raw[0]["psnr"] == "inf"
    assert load_results(tmp_path) == records
    rows = list(csv.DictReader((tmp_path / "results.csv").open()))
    assert rows[0]["psnr"] == "inf" and rows[1]["psnr"] == "31.5" and rows[0]["fid"] == ""
    assert json.loads(rows[1]["config"]) == {"cache": {"type": "X"}}


def test_pareto_plot_is_a_png(tmp_path):
    records = [{"name": "baseline", "speedup": 1.0, "psnr": math.inf, "clip_score": 30.0},
               {"name": "a", "speedup": 1.8, "psnr": 35.0, "clip_score": 29.0}]
    assert plot_pareto(records, tmp_path / "p.png") == ["clip_score", "psnr"]
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_lpips_note_says_its_cause_and_fix_once(monkeypatch):
    """Without torchvision the LPIPS note is one sentence with one fix, not torchmetrics' message and
    ours run together (issue #17)."""
    import importlib.util

    from diffusion_accel.eval.metrics import lpips_metric

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torchvision" else real(name, *a))
    metric, reason = lpips_metric()
    assert metric is None
    assert reason.count("torchvision") == 1 and reason.count("pip install") == 1, reason


def _timing_record(name, speedup, times, **extra):
    median = sorted(times)[len(times) // 2]
    latency = {"median_s": median, "min_s": min(times), "max_s": max(times), "times_s": times, "runs": len(times)}
    return {"name": name, "speedup": speedup, "latency_s": median, "latency": latency, "psnr": 30.0, **extra}


def test_report_gives_the_environment_and_flags_noisy_speedups(tmp_path):
    """Latency spread per variant, the machine it was timed on, and a flag on a speed-up whose runs
    spread more than ±10 % (issue #17)."""
    from diffusion_accel.eval.report import write_report
    from diffusion_accel.eval.sweep import NOISY_SPREAD, latency_spread

    env = {"cpu": "Test CPU 9000", "cpu_count": 2, "torch_threads": 2, "torch": "2.13.0", "device": "cpu"}
    records = [_timing_record("baseline", 1.0, [1.0, 1.02, 0.99]), _timing_record("steady", 1.5, [0.66, 0.67, 0.68]),
               _timing_record("w8a8", 0.99, [11.1, 34.7, 12.0])]
    for r in records:
        r["latency_spread"] = latency_spread(r["latency"])
        r["speedup_noisy"] = max(r["latency_spread"], records[0]["latency_spread"]) > NOISY_SPREAD
        r["environment"] = env
    assert records[2]["latency_spread"] == pytest.approx((34.7 - 12.0) / 12.0)
    assert [r["speedup_noisy"] for r in records] == [False, False, True]
    write_report(records, tmp_path, [])
    report = (tmp_path / "report.md").read_text()
    assert "Test CPU 9000 (2 CPUs, 2 torch threads), torch 2.13.0, device cpu" in report
    rows = {}  # the first table: the results
    for line in report.splitlines():
        if line.startswith("| "):
            rows.setdefault(line.split(" | ")[0][2:], line)
    assert "0.99 ⚠" in rows["w8a8"] and "±189%" in rows["w8a8"]
    assert "⚠" not in rows["steady"] and "±1%" in rows["steady"]
    assert "Noisy speed-up (`w8a8`)" in report


def test_videos_get_gif_previews_and_frame_consistency_is_reported(tmp_path):
    """A video is shown as an animated GIF (not a bare .npy link); frame_consistency is in the table
    and the Pareto plot (issue #17)."""
    from PIL import Image

    from diffusion_accel.eval.generate import Item
    from diffusion_accel.eval.report import plot_pareto, write_report

    rng = np.random.default_rng(0)
    items = [Item("p00000-i00", 0, 0, "a cat", 1)]
    for name in ("baseline", "fast"):
        (tmp_path / name / "images").mkdir(parents=True)
        np.save(tmp_path / name / "images" / "p00000-i00.npy", rng.integers(0, 256, (5, 16, 16, 3), dtype=np.uint8))
        (tmp_path / name / "manifest.jsonl").write_text(json.dumps(
            {"key": "p00000-i00", "file": "images/p00000-i00.npy", "shape": [5, 16, 16, 3]}) + "\n")
    records = [{"name": "baseline", "speedup": 1.0, "psnr": math.inf, "frame_consistency": 95.0, "flicker": 0.1},
               {"name": "fast", "speedup": 1.8, "psnr": 30.0, "frame_consistency": 91.5, "flicker": 0.2}]
    write_report(records, tmp_path, items)
    report = (tmp_path / "report.md").read_text()
    assert '[<img src="fast/previews/p00000-i00.gif" width="128">](fast/images/p00000-i00.npy)' in report
    with Image.open(tmp_path / "fast" / "previews" / "p00000-i00.gif") as gif:
        assert gif.n_frames == 5 and gif.size == (128, 128)
    assert "frame_consistency" in report.splitlines()[4] and "91.5" in report
    assert "frame_consistency" in plot_pareto(records, tmp_path / "p.png")
