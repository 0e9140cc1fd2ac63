"""Shared fixtures: tiny pipelines, call kwargs, and a helper to compare outputs exactly."""

from __future__ import annotations

import os

import pytest
import torch

# The suite runs under pytest-xdist with one worker per core: one thread per worker avoids
# oversubscription (it made tiny-pipeline calls 10x slower).
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else max(1, min(2, os.cpu_count() or 1)))


def run(pipe, name, seed=0, **overrides):
    """Call ``pipe`` with the tiny defaults of ``name`` and return the output tensor."""
    from diffusion_accel.testing import tiny_call_kwargs

    kwargs = tiny_call_kwargs(name, **overrides)
    out = pipe(**kwargs, generator=torch.Generator().manual_seed(seed))
    return out.frames if hasattr(out, "frames") else out.images


@pytest.fixture
def run_pipe():
    return run
