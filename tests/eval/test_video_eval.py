"""Video pipelines through the eval command line: FVD, per-frame CLIP, temporal scores (issue 18).

A saved tiny Wan, a saved tiny CLIP, the toy cache technique and a ``.npy`` of reference clips.
"""

import json

import numpy as np
import pytest
from eval_helpers import toy_config

from diffusion_accel.eval import load_results
from diffusion_accel.eval.cli import main

pytestmark = pytest.mark.slow

WAN_CALL = {"height": 32, "width": 32, "num_frames": 5, "num_inference_steps": 3, "guidance_scale": 5.0}
VIDEO_KEYS = ("clip_score", "frame_consistency", "fvd", "fvd_vs_baseline", "flicker", "temporal_error",
              "psnr_per_video", "ssim_per_video")


def moving_squares(n=4, frames=5, size=32, seed=0):
    rng = np.random.default_rng(seed)
    videos = np.zeros((n, frames, size, size, 3), np.uint8)
    for i in range(n):
        top, colour = int(rng.integers(0, size - 8)), rng.integers(64, 256, 3)
        for f in range(frames):
            videos[i, f, top : top + 8, 2 * f : 2 * f + 8] = colour
    return videos


@pytest.fixture(scope="module")
def video_run(tmp_path_factory, clip_dir):
    from eval_helpers import save_tiny_pipeline

    root = tmp_path_factory.mktemp("video-eval")
    wan = save_tiny_pipeline(str(root / "wan"), "wan")
    (root / "prompts.txt").write_text("a red cat\na blue dog\na green tree\n")
    (root / "reuse.json").write_text(toy_config(1, 2).to_json())
    np.save(root / "ref.npy", moving_squares())
    base = ["--model", wan, "--prompts", str(root / "prompts.txt"), "--config", str(root / "reuse.json"),
            "--clip", clip_dir, "--reference", "none", "--call-kwargs", json.dumps(WAN_CALL),
            "--latency-runs", "1", "--warmup", "0", "--import", "eval_toy_technique", "--no-progress"]
    with_ref = root / "with-ref"
    assert main(base + ["--out", str(with_ref), "--video-reference", str(root / "ref.npy")]) == 0
    return root, base, load_results(with_ref), with_ref


def test_video_scores_reach_results_json(video_run):
    _, _, records, _ = video_run
    baseline, reuse = records
    for key in VIDEO_KEYS:
        assert isinstance(reuse[key], float), key
    # Against itself the baseline is exact: no temporal error, identical videos, FVD 0 to its own clips.
    assert baseline["temporal_error"] == 0.0 and baseline["psnr_per_video"] == float("inf")
    assert baseline["ssim_per_video"] == pytest.approx(1.0)
    assert baseline["fvd_vs_baseline"] == pytest.approx(0.0, abs=1e-6)
    assert reuse["temporal_error"] > 0 and reuse["fvd_vs_baseline"] > 0 and np.isfinite(reuse["psnr_per_video"])
    assert baseline["fvd"] > 0  # random-weight clips are far from moving squares


def test_report_and_pareto_plot_show_the_video_scores(video_run):
    from diffusion_accel.eval.report import plot_pareto

    _, _, records, out = video_run
    report = (out / "report.md").read_text()
    header = next(line for line in report.splitlines() if line.startswith("| name"))
    for key in ("fvd", "fvd_vs_baseline", "flicker", "temporal_error", "psnr_per_video", "ssim_per_video"):
        assert f" {key} " in header, key
    assert ".gif" in report
    plotted = plot_pareto(records, out / "again.png")
    assert "fvd" in plotted and "temporal_error" in plotted and "fvd_vs_baseline" not in plotted


def test_without_reference_clips_fvd_vs_baseline_is_plotted_and_the_note_says_why(video_run, tmp_path):
    from diffusion_accel.eval.report import plot_pareto

    _, base, _, _ = video_run
    out = tmp_path / "no-ref"
    assert main(base + ["--out", str(out), "--video-reference", "none"]) == 0
    records = load_results(out)
    assert "fvd" not in records[1] and records[1]["fvd_vs_baseline"] > 0
    assert any("--video-reference" in note for note in records[1]["notes"])
    assert "fvd_vs_baseline" in plot_pareto(records, tmp_path / "p.png")
    assert json.loads((out / "run.json").read_text())["video_reference"] is None


def test_a_bad_video_reference_is_one_clear_error(video_run, tmp_path, capsys):
    _, base, _, _ = video_run
    assert main(base + ["--out", str(tmp_path / "x"), "--video-reference", str(tmp_path / "missing.npy")]) == 2
    assert "--video-reference" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
