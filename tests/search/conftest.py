"""Fixtures of the schedule-search tests: tiny pipelines, a prompt file, one-thread torch."""

from __future__ import annotations

import os

import pytest
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))

# The tiny call every search test uses (prompt, generator and output_type are set per item).
TINY_CALL = {"height": 32, "width": 32, "guidance_scale": 4.5, "use_resolution_binning": False,
             "clean_caption": False}
PROMPTS = "a red cat\na blue dog\na green tree\na yellow car\n"


@pytest.fixture
def one_thread():
    """Torch on one thread (as in the subprocess runs), so float reductions happen in the same order."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture
def tiny_call():
    return dict(TINY_CALL)


@pytest.fixture
def subprocess_env():
    """``env(**extra)``: the environment of a CLI subprocess (repo on the path, one OMP thread)."""

    def env(**extra: str) -> dict[str, str]:
        out = dict(os.environ)
        out["PYTHONPATH"] = os.pathsep.join([REPO, out.get("PYTHONPATH", "")])
        out["OMP_NUM_THREADS"] = "1"
        for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
            out.pop(key, None)
        out.update(extra)
        return out

    return env


@pytest.fixture
def prompt_file(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text(PROMPTS)
    return path


@pytest.fixture(scope="session")
def pixart():
    from diffusion_accel.testing import tiny_pipeline

    return tiny_pipeline("pixart-alpha")

