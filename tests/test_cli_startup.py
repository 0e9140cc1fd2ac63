"""``diffusion-accel --help`` / ``--version`` start fast: they import neither torch nor diffusers (issue #17)."""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PROBE = """
import contextlib, io, json, sys
from diffusion_accel.cli import main
out = io.StringIO()
with contextlib.redirect_stdout(out):
    try:
        main({argv!r})
    except SystemExit:
        pass
heavy = sorted(m for m in ("torch", "diffusers", "transformers", "numpy") if m in sys.modules)
print(json.dumps({{"heavy": heavy, "out": out.getvalue()}}))
"""


@pytest.mark.parametrize("argv", [["--help"], ["--version"], []])
def test_help_and_version_do_not_import_torch(argv):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", PROBE.format(argv=argv)], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["heavy"] == []
    if argv == ["--version"]:
        assert result["out"].startswith("diffusion-accel 0.")
    else:
        assert all(name in result["out"] for name in ("demo", "info", "eval", "search"))


def test_a_command_still_gets_its_options(capsys):
    from diffusion_accel.cli import main

    with pytest.raises(SystemExit):
        main(["info", "--help"])
    assert "usage: diffusion-accel info" in capsys.readouterr().out
    assert main(["info"]) == 0
    assert "Techniques:" in capsys.readouterr().out
