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
    lines = [line for line in err.splitlines() if "Loading" not in line and line.strip()]  # loading bars
    assert len(lines) == 1 and lines[0].startswith(prefix) and message in lines[0], err  # one line, no traceback
    return lines[0]


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


def schedule_config(path, steps, blocks=None):
    """A FORA-2 cache config of the tiny PixArt pipeline for ``steps`` steps (``blocks``: keep only so many)."""
    from diffusion_accel import AccelerationConfig
    from diffusion_accel.caching import CacheSchedule, StaticCacheConfig
    from diffusion_accel.testing import tiny_pipeline

    schedule = CacheSchedule.fora(tiny_pipeline("pixart-alpha").transformer, steps, 2)
    if blocks is not None:
        schedule = CacheSchedule(schedule.compute[:, :blocks], schedule.components, schedule.family)
    AccelerationConfig(cache=StaticCacheConfig(schedule)).save(path)
    return str(path)


def test_every_input_is_checked_before_anything_is_written(pipeline_dir, clip_dir, prompt_file, tmp_path, capsys,
                                                             monkeypatch):
    import diffusion_accel.eval.sweep as sweep

    def no_generation(*args, **kwargs):
        raise AssertionError("generation started before every input was checked")

    monkeypatch.setattr(sweep, "generate_images", no_generation)
    out = tmp_path / "out"
    base = cli_args(pipeline_dir, clip_dir, prompt_file, out)
    cases = [
        (["--model", str(tmp_path / "no-such-model")], "Cannot load a diffusers pipeline"),
        (["--clip", str(tmp_path / "no-such-clip")], "Cannot load a CLIP model"),
        (["--config", schedule_config(tmp_path / "steps.json", 5)], "has 5 steps but this call runs 2"),
        (["--config", schedule_config(tmp_path / "blocks.json", 2, blocks=1)], "The schedule has 1 blocks"),
    ]
    import torch

    if not torch.cuda.is_available():
        cases.append((["--device", "cuda"], "--device 'cuda' is not available here"))
    for extra, message in cases:
        assert main(base + extra) == 2, extra
        one_error(capsys, message)
        assert not out.exists(), extra  # no run.json: nothing to refuse on the corrected rerun


@pytest.mark.slow
def test_a_rerun_after_a_failed_start_is_accepted(pipeline_dir, clip_dir, prompt_file, tmp_path, capsys,
                                                  monkeypatch):
    """A start that failed before any output (here: in the first pipeline call) leaves run.json; the
    corrected rerun -- other settings, without --resume -- is accepted."""
    import diffusion_accel.eval.sweep as sweep

    out = tmp_path / "out"
    real = sweep.generate_images

    def failing(*args, **kwargs):
        raise ValueError("the first call failed")

    monkeypatch.setattr(sweep, "generate_images", failing)
    assert main(cli_args(pipeline_dir, clip_dir, prompt_file, out) + ["--seed", "1"]) == 2
    one_error(capsys, "the first call failed")
    assert (out / "run.json").exists()
    monkeypatch.setattr(sweep, "generate_images", real)
    assert main(cli_args(pipeline_dir, clip_dir, prompt_file, out)) == 0
    assert json.loads((out / "run.json").read_text())["seed"] == 0
    assert json.loads((out / "results.json").read_text())


def test_more_prompts_than_the_file_holds_is_an_error(pipeline_dir, clip_dir, prompt_file, tmp_path, capsys):
    assert main(cli_args(pipeline_dir, clip_dir, prompt_file, tmp_path / "out") + ["--num-prompts", "10"]) == 2
    err = one_error(capsys, "--num-prompts 10 asks for 10 prompts but")
    assert "holds only 2; ask for at most 2, or leave --num-prompts out" in err
    with pytest.raises(ValueError, match=r"num_prompts=10 asks for 10 prompts .* holds only 2"):
        evaluate(model=pipeline_dir, prompts=["a", "b"], num_prompts=10, out=tmp_path / "out2")


def test_unknown_call_kwargs_name_the_valid_ones(pipeline_dir, clip_dir, prompt_file, tmp_path, capsys):
    args = cli_args(pipeline_dir, clip_dir, prompt_file, tmp_path / "out", call={**CALL, "guidance_scael": 3.0})
    assert main(args) == 2
    err = one_error(capsys, "--call-kwargs sets ['guidance_scael'], which PixArtAlphaPipeline does not take")
    assert "'guidance_scale'" in err and "'num_inference_steps'" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_the_category_error_names_the_flag(pipeline_dir, clip_dir, prompt_file, tmp_path, capsys):
    assert main(cli_args(pipeline_dir, clip_dir, prompt_file, tmp_path / "out") + ["--category", "Animals"]) == 2
    err = one_error(capsys, "has no category column")
    assert "--category-column" in err and "category_column=" not in err
    table = tmp_path / "p.csv"
    table.write_text("prompt,kind\na red cat,Animals\na green tree,Plants\na blue dog,Animals\n")
    with pytest.raises(ValueError, match="name the column with category_column="):
        evaluate(model=pipeline_dir, prompts=str(table), categories=["Animals"], out=tmp_path / "o")
    # The CLI can name it.
    args = cli_args(pipeline_dir, clip_dir, table, tmp_path / "out") + ["--category", "Animals", "--category-column",
                                                                       "kind"]
    assert main(args) == 0
    assert [p for _, p in json.loads((tmp_path / "out" / "run.json").read_text())["prompts"]] == ["a red cat",
                                                                                                 "a blue dog"]


@pytest.mark.parametrize("command", ["eval", "search"])
def test_help_examples_are_one_per_line(command, capsys):
    from diffusion_accel.cli import main as top_main

    with pytest.raises(SystemExit):
        top_main([command, "--help"])
    lines = capsys.readouterr().out.splitlines()
    examples = [line.strip() for line in lines if line.strip().startswith(("diffusion-accel ", "accelerate launch"))]
    assert len(examples) >= 2, lines[:20]  # each example on its own line, not run together into a paragraph
    assert all(line.count("diffusion-accel ") <= 1 for line in examples), examples
