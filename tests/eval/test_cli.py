"""The command line end to end: kill + resume and two processes (subprocesses), bad input.

The reference run is in-process; every run uses the same settings on a saved tiny PixArt pipeline, a saved tiny CLIP and the toy
cache technique (loaded with ``--import``); ``OMP_NUM_THREADS=1`` in every process so that float
reductions happen in the same order in every run.
"""

import json
import signal
import subprocess
import sys
import time

import pytest
from eval_helpers import TINY_CALL, subprocess_env, toy_config

from diffusion_accel.eval import deterministic_view, load_results
from diffusion_accel.eval.cli import main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, pipeline_dir, clip_dir):
    from conftest import scenes
    from PIL import Image

    root = tmp_path_factory.mktemp("cli-inputs")
    (root / "prompts.txt").write_text("a red cat\na blue dog\na green tree\n")
    (root / "reuse.json").write_text(toy_config(1, 2).to_json())
    (root / "ref").mkdir()
    for i, img in enumerate(scenes(6)):
        Image.fromarray(img).save(root / "ref" / f"{i}.png")
    return root, pipeline_dir, clip_dir


def cli_args(inputs, out):
    root, pipeline_dir, clip_dir = inputs
    return ["--model", pipeline_dir, "--prompts", str(root / "prompts.txt"), "--config", str(root / "reuse.json"),
            "--num-images", "1", "--out", str(out), "--clip", clip_dir, "--reference", str(root / "ref"),
            "--call-kwargs", json.dumps(TINY_CALL), "--latency-runs", "1", "--warmup", "0",
            "--import", "eval_toy_technique", "--no-progress"]


def launch(args, **env):
    return subprocess.Popen([sys.executable, "-m", "diffusion_accel.eval.cli", *args], env=subprocess_env(**env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc, timeout=1200):  # a hang guard only: generous for a loaded machine
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    return out


def run_here(args):
    """Run the command in this process with one torch thread, as the subprocesses."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return main(args)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def uninterrupted(inputs, tmp_path_factory):
    """The reference: one uninterrupted run, in this process."""
    out = tmp_path_factory.mktemp("cli") / "full"
    assert run_here(cli_args(inputs, out)) == 0
    return load_results(out)


def test_uninterrupted_run_writes_every_result(uninterrupted):
    assert [r["name"] for r in uninterrupted] == ["baseline", "reuse"]
    assert uninterrupted[1]["macs_ratio"] > 1.5 and uninterrupted[1]["fid"] is not None


def test_killed_run_resumes_to_the_same_results(inputs, uninterrupted, tmp_path):
    out = tmp_path / "killed"
    hold = tmp_path / "holding"  # the toy technique waits at its second pipeline call (eval_toy_technique.HOLD_ENV)
    proc = launch(cli_args(inputs, out), EVAL_TOY_HOLD_FILE=str(hold))
    deadline = time.monotonic() + 1200  # a hang guard only
    while time.monotonic() < deadline and proc.poll() is None and not hold.exists():
        time.sleep(0.05)
    assert proc.poll() is None and hold.exists(), "the run ended (or never got) to its second accelerated call"
    lines = [p for p in (out / "reuse").glob("manifest*.jsonl") for _ in p.read_text().splitlines()]
    assert lines, "the first batch of the accelerated variant is on disk"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "results.json").exists()
    baseline_images = {p: p.stat().st_mtime_ns for p in (out / "baseline" / "images").iterdir()}
    assert len(baseline_images) == 3

    assert main(cli_args(inputs, out)) == 2  # without --resume: refused, nothing touched

    assert run_here(cli_args(inputs, out) + ["--resume"]) == 0
    assert {p: p.stat().st_mtime_ns for p in (out / "baseline" / "images").iterdir()} == baseline_images
    assert deterministic_view(load_results(out)) == deterministic_view(uninterrupted)



def test_two_processes_give_the_same_metrics_as_one(inputs, uninterrupted, tmp_path, master_port):
    out = tmp_path / "two"
    procs = [launch(cli_args(inputs, out), RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                    MASTER_ADDR="127.0.0.1", MASTER_PORT=master_port) for r in range(2)]
    outputs = [finish(p) for p in procs]
    assert "results:" in outputs[0] and "results:" not in outputs[1]  # gathered on the main process
    assert deterministic_view(load_results(out)) == deterministic_view(uninterrupted)
    for variant in ("baseline", "reuse"):
        lines = (out / variant / "manifest.jsonl").read_text().splitlines()
        assert sorted({json.loads(line)["process"] for line in lines}) == [0, 1]  # prompts were split


def test_bad_input_is_one_clear_error(inputs, tmp_path, capsys):
    (tmp_path / "p.csv").write_text("words\na cat\n")
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "noimg").mkdir()
    base = cli_args(inputs, tmp_path / "out")
    cases = [
        (["--prompts", str(tmp_path / "p.csv")], "no prompt column"),
        (["--prompts", str(tmp_path / "p.csv"), "--prompt-column", "text"], "no prompt column 'text'"),
        (["--prompts", str(tmp_path / "empty.txt")], "holds no prompts"),
        (["--config", str(tmp_path / "missing.json")], "Cannot read acceleration config file"),
        (["--reference", str(tmp_path / "noimg")], "holds no images"),
        (["--call-kwargs", "{x"], "--call-kwargs is not valid JSON"),
        (["--import", "no_such_plugin_module"], "--import no_such_plugin_module"),
    ]
    for extra, message in cases:
        assert main(base + extra) == 2
        err = capsys.readouterr().err
        assert err.startswith("diffusion-accel eval: error:") and message in err, (extra, err)
        assert err.count("\n") == 1  # one line, no traceback
    assert not (tmp_path / "out").exists()


def test_diffusion_accel_eval_is_the_same_command(tmp_path, capsys):
    from diffusion_accel.cli import COMMANDS
    from diffusion_accel.cli import main as top_main

    assert COMMANDS["eval"][0] == "diffusion_accel.eval.cli"
    (tmp_path / "empty.txt").write_text("")
    assert top_main(["eval", "--prompts", str(tmp_path / "empty.txt"), "--out", str(tmp_path / "o")]) == 2
    assert "diffusion-accel eval: error:" in capsys.readouterr().err
