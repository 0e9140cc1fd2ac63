"""``diffusion-accel search`` end to end: two processes = one, SIGKILL + --resume = uninterrupted
(generations and a refinement round).

Every run searches the tiny PixArt pipeline with the same settings; ``OMP_NUM_THREADS=1`` and
``--threads 1`` in every process (the in-process runs pin one thread too) so that float
reductions happen in the same order everywhere. Subprocesses are used only where they are the
point (several processes, a real kill); the rest runs ``main`` in this process.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from diffusion_accel.cli import main

pytestmark = pytest.mark.slow

#: the test-side launcher that stops a search at a known point (see its docstring).
HOLD_LAUNCHER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "search_hold.py")

GENERATIONS = 5


def cli_args(prompts, out, *extra):
    return ["--model", "tiny:pixart-alpha", "--prompts", str(prompts), "--steps", "4", "--population", "4",
            "--generations", str(GENERATIONS), "--out", str(out), "--batch-size", "2", "--threads", "1",
            "--call-kwargs", json.dumps({"height": 32, "width": 32}), "--no-generalise", "--no-progress",
            "--pick-speedup", "1.2", "--refine-rounds", "1", *extra]


def launch(env, args, **extra_env):
    return subprocess.Popen([sys.executable, "-m", "diffusion_accel.cli", "search", *args], env=env(**extra_env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc, timeout=1200):  # a hang guard only: generous for a loaded machine
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    return out


def frontier(out):
    return json.loads((out / "frontier.json").read_text())["frontier"]


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    path.write_text("a red cat\na blue dog\na green tree\na yellow car\n")
    return path


@pytest.fixture(scope="module")
def reference(prompts, tmp_path_factory):
    """The uninterrupted one-process search, run in this process on one thread."""
    import torch

    out = tmp_path_factory.mktemp("reference") / "out"
    threads = torch.get_num_threads()
    try:
        assert main(["search", *cli_args(prompts, out)]) == 0
    finally:
        torch.set_num_threads(threads)
    return out



def test_two_processes_give_the_same_frontier_as_one(prompts, reference, tmp_path, subprocess_env, master_port):
    out = tmp_path / "two"
    procs = [launch(subprocess_env, cli_args(prompts, out), RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE="2",
                    LOCAL_WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=master_port) for r in range(2)]
    outputs = [finish(p) for p in procs]
    assert "frontier:" in outputs[0] and "frontier:" not in outputs[1]  # reported once, by the main process
    assert frontier(out) == frontier(reference)
    archive = json.loads((out / "checkpoint.json").read_text())["archive"]
    assert {r["process"] for r in archive.values()} == {0, 1}  # candidates were split
    refined = [r for r in archive.values() if r.get("origin") == "refine"]
    assert refined and all(r["generation"] == GENERATIONS + 1 for r in refined)  # the refinement round ran too
    assert (out / "picked-1.2x.json").read_text() == (reference / "picked-1.2x.json").read_text()


def test_killed_search_resumes_to_the_same_frontier(prompts, reference, tmp_path, subprocess_env, capsys,
                                                    one_thread):
    out = tmp_path / "killed"
    hold = tmp_path / "holding"  # written by search_hold.py once generation 1 is checkpointed; it then waits
    with open(tmp_path / "killed.log", "w") as log:  # a file, not a pipe nobody reads while the test waits
        proc = subprocess.Popen([sys.executable, HOLD_LAUNCHER, str(hold), "1", *cli_args(prompts, out)],
                                env=subprocess_env(), stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 1200  # a hang guard only
    while time.monotonic() < deadline and proc.poll() is None and not hold.exists():
        time.sleep(0.05)
    assert proc.poll() is None and hold.exists(), \
        f"the search did not stop after generation 1: {(tmp_path / 'killed.log').read_text()[-3000:]}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    completed = json.loads((out / "checkpoint.json").read_text())["completed"]
    assert completed == 2 and not (out / "frontier.json").exists()  # killed where it was held

    assert main(["search", *cli_args(prompts, out)]) == 2  # without --resume: refused
    assert "pass --resume" in capsys.readouterr().err
    assert main(["search", *cli_args(prompts, out, "--resume")]) == 0
    assert frontier(out) == frontier(reference)


def test_pick_from_a_finished_search(reference, tmp_path, capsys):
    from diffusion_accel import AccelerationConfig

    path = tmp_path / "fast.json"
    assert main(["search", "--pick-from", str(reference / "frontier.json"), "--pick-speedup", "1.2",
                 "--pick-out", str(path)]) == 0
    assert AccelerationConfig.load(path) == AccelerationConfig.load(reference / "picked-1.2x.json")
    assert main(["search", "--pick-from", str(reference / "frontier.json"), "--pick-speedup", "50"]) == 2
    assert "No schedule on the frontier reaches a 50x speed-up" in capsys.readouterr().err


def test_bad_input_is_one_clear_error(prompts, tmp_path, capsys):
    (tmp_path / "empty.txt").write_text("")
    base = cli_args(prompts, tmp_path / "out")
    cases = [
        (["--population", "1"], "population must be an integer >= 2"),
        (["--generations", "0"], "generations must be an integer >= 1"),
        (["--refine-rounds", "-1"], "refine_rounds must be an integer >= 0"),
        (["--prompts", str(tmp_path / "empty.txt")], "holds no prompts"),
        (["--call-kwargs", "{x"], "--call-kwargs is not valid JSON"),
        (["--generalise-resolution", "big"], "--generalise-resolution must look like 48x48"),
    ]
    for extra, message in cases:
        assert main(["search", *base, *extra]) == 2
        err = capsys.readouterr().err
        assert err.startswith("diffusion-accel search: error:") and message in err, (extra, err)
        assert err.count("\n") == 1  # one line, no traceback
    assert not (tmp_path / "out").exists()
