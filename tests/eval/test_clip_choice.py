"""Which CLIP scores a run (issue #17 item 5): the bundled digits CLIP only for the bundled model; any
other model gets CLIP score and CLIP-feature FID only with --clip, else they are skipped with a note."""

import json

import pytest
from eval_helpers import TINY_CALL

from diffusion_accel.eval.cli import main


def test_auto_means_the_bundled_clip_for_the_bundled_model_only(pipeline_dir):
    from diffusion_accel.assets import benchmark_model_dir
    from diffusion_accel.eval.sweep import _resolved_clip, is_bundled_model

    assert is_bundled_model("benchmark") and is_bundled_model(benchmark_model_dir())
    assert not is_bundled_model(pipeline_dir) and not is_bundled_model("someone/a-hub-model")
    assert _resolved_clip("auto", "benchmark") == ("benchmark", None)
    assert _resolved_clip("auto", benchmark_model_dir()) == ("benchmark", None)
    clip, note = _resolved_clip("auto", pipeline_dir)
    assert clip is None and "--clip" in note
    assert _resolved_clip("my-clip", pipeline_dir) == ("my-clip", None)  # an explicit choice is kept


@pytest.mark.slow
def test_another_model_without_clip_is_not_scored_with_the_bundled_clip(pipeline_dir, tmp_path, capsys):
    (tmp_path / "p.txt").write_text("a red cat\na blue dog\n")
    out = tmp_path / "out"
    args = ["--model", pipeline_dir, "--prompts", str(tmp_path / "p.txt"), "--out", str(out), "--reference", "none",
            "--call-kwargs", json.dumps({**TINY_CALL, "num_inference_steps": 2}), "--latency-runs", "1",
            "--warmup", "0", "--no-progress"]
    assert main(args) == 0, capsys.readouterr().err
    record = json.loads((out / "results.json").read_text())
    record = record["records"][0] if isinstance(record, dict) else record[0]
    assert record["clip_score"] is None and record["fid_vs_baseline"] is None
    assert any("clip_score and CLIP-feature FID skipped" in n for n in record["notes"])
    assert "pass a CLIP model that fits this model with --clip" in (out / "report.md").read_text()
    assert json.loads((out / "run.json").read_text())["clip"] is None
