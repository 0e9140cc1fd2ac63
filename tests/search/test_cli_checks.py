"""``diffusion-accel search`` checks its inputs before any work (issue #17): one clear error, no traceback."""

import json
import os

import pytest

from diffusion_accel.cli import main


def cli_args(prompts, out, *extra):
    return ["search", "--model", "tiny:pixart-alpha", "--prompts", str(prompts), "--steps", "2", "--population", "2",
            "--generations", "1", "--out", str(out), "--batch-size", "2", "--threads", "1",
            "--call-kwargs", json.dumps({"height": 32, "width": 32}), "--no-generalise", "--no-progress",
            "--dynamic-seeds", *extra]


def one_error(capsys, message):
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "Loading" not in line and line.strip()]  # loading bars
    assert len(lines) == 1 and lines[0].startswith("diffusion-accel search: error:") and message in lines[0], err
    return lines[0]


@pytest.mark.parametrize("steps", ["0", "-1"])
def test_steps_below_one_is_an_error(prompt_file, tmp_path, capsys, steps):
    args = cli_args(prompt_file, tmp_path / "out")
    args[args.index("--steps") + 1] = steps
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    assert f"argument --steps: must be an integer >= 1, got {steps}" in capsys.readouterr().err


def test_a_bad_out_is_one_clear_error(prompt_file, tmp_path, capsys):
    (tmp_path / "a-file").write_text("x")
    cases = [(tmp_path / "a-file", "is a file, not a folder"), (tmp_path / "a-file" / "sub", "cannot be created")]
    if os.path.isdir("/proc/self"):  # unwritable even for root
        cases.append(("/proc/self/search-out", "is not writable"))
    for out, message in cases:
        assert main(cli_args(prompt_file, out)) == 2, out
        one_error(capsys, message)


def test_inputs_are_checked_before_any_work(prompt_file, tmp_path, capsys):
    import torch

    cases = [(["--model", str(tmp_path / "no-such-model")], "Cannot load a diffusers pipeline")]
    if not torch.cuda.is_available():
        cases.append((["--device", "cuda"], "--device 'cuda' is not available here"))
    for extra, message in cases:
        args = cli_args(prompt_file, tmp_path / "out")
        if extra[0] == "--model":
            args[args.index("--model") + 1] = extra[1]
        else:
            args += extra
        assert main(args) == 2, extra
        one_error(capsys, message)
        assert not (tmp_path / "out").exists()


def test_prompt_count_and_call_kwargs_are_checked(prompt_file, tmp_path, capsys):
    assert main(cli_args(prompt_file, tmp_path / "out", "--num-prompts", "10")) == 2
    one_error(capsys, "--num-prompts 10 asks for 10 prompts but")
    args = cli_args(prompt_file, tmp_path / "out")
    args[args.index("--call-kwargs") + 1] = json.dumps({"height": 32, "width": 32, "guidance_scael": 3.0})
    assert main(args) == 2
    err = one_error(capsys, "--call-kwargs sets ['guidance_scael'], which PixArtAlphaPipeline does not take")
    assert "'guidance_scale'" in err


@pytest.mark.slow
def test_a_saved_pixart_checkpoint_without_binning_arguments_is_searched(prompt_file, tmp_path, capsys):
    """Issue #17 item 15: a PixArt checkpoint whose sample size has no aspect-ratio bins runs without
    use_resolution_binning=False in --call-kwargs (the adapter turns binning off)."""
    from diffusion_accel.testing import tiny_pipeline

    tiny_pipeline("pixart-alpha", seed=0).save_pretrained(tmp_path / "model")
    args = cli_args(prompt_file, tmp_path / "out", "--num-prompts", "2", "--pick-speedup", "1.1")
    args[args.index("--model") + 1] = str(tmp_path / "model")
    assert main(args) == 0, capsys.readouterr().err
    settings = json.loads((tmp_path / "out" / "frontier.json").read_text())["settings"]
    assert settings["call_kwargs"]["use_resolution_binning"] is False
