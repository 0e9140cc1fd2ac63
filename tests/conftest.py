"""Shared fixtures: tiny pipelines, call kwargs, and a helper to compare outputs exactly."""

from __future__ import annotations

import os

# Triton kernels run on CPU tensors only in interpreter mode, which triton reads when a kernel
# is defined: set it before any test module imports a kernel (without CUDA only).
if not os.environ.get("CUDA_VISIBLE_DEVICES") and not os.path.exists("/dev/nvidia0"):
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

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
