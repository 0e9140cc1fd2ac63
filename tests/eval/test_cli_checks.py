"""``diffusion-accel eval`` checks every input before any work (issue #17): one clear error, nothing
written, and a corrected rerun is accepted. Runs on a saved tiny PixArt pipeline, 2 steps."""

import json
import os

import pytest
from eval_helpers import TINY_CALL

from diffusion_accel.eval import evaluate
from diffusion_accel.eval.cli import main

CALL = {**TINY_CALL, "num_inference_steps": 2}


@pytest.fixture
def prompt_file(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("a red cat\na blue dog\n")
    return path


def cli_args(pipeline_dir, clip_dir, prompt_file, out, call=CALL):
    return ["--model", pipeline_dir, "--prompts", str(prompt_file), "--out", str(out), "--clip", clip_dir,
            "--reference", "none", "--call-kwargs", json.dumps(call), "--latency-runs", "1", "--warmup", "0",
            "--no-progress"]


def one_error(capsys, message, prefix="diffusion-accel eval: error:"):
    err = capsys.readouterr().err
    assert err.startswith(prefix) and message in err, err
    assert "Traceback" not in err and err.count("\n") == 1, err  # one line, no traceback
    return err


@pytest.mark.parametrize("steps", ["0", "-1"])
def test_steps_below_one_is_an_error(pipeline_dir, clip_dir, prompt_file, tmp_path, capsys, steps):
    with pytest.raises(SystemExit) as exc:
        main(cli_args(pipeline_dir, clip_dir, prompt_file, tmp_path / "out") + ["--steps", steps])
    assert exc.value.code == 2
    assert f"argument --steps: must be an integer >= 1, got {steps}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("steps", [0, -1])
def test_zero_steps_in_call_kwargs_is_an_error(pipeline_dir, tmp_path, steps):
    with pytest.raises(ValueError, match="num_inference_steps .* must be an integer >= 1"):
        evaluate(model=pipeline_dir, prompts=["a cat"], out=tmp_path / "out",
                 call_kwargs={**CALL, "num_inference_steps": steps})
    assert not (tmp_path / "out").exists()


def bad_outs(tmp_path):
    (tmp_path / "a-file").write_text("x")
    cases = [(tmp_path / "a-file", "is a file, not a folder"),
             (tmp_path / "a-file" / "sub", "cannot be created")]
    if os.path.isdir("/proc/self"):  # unwritable even for root
        cases.append(("/proc/self/eval-out", "is not writable"))
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        cases.append((locked / "out", "is not writable"))
    return cases


def test_a_bad_out_is_one_clear_error(pipeline_dir, clip_dir, prompt_file, tmp_path, capsys):
    for out, message in bad_outs(tmp_path):
        assert main(cli_args(pipeline_dir, clip_dir, prompt_file, out)) == 2, out
        one_error(capsys, message)
