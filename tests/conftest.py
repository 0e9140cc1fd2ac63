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


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range", encoding="ascii") as fh:
            return int(fh.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


@pytest.fixture
def master_port():
    """A free TCP port for ``MASTER_PORT`` of a multi-process test, outside the kernel's ephemeral range.

    ``bind(("", 0))`` hands out an *ephemeral* port; once that probe socket closes, the kernel may give
    the same port to any outgoing connection (e.g. gloo's, of a multi-process test in the other xdist
    worker) before rank 0 binds it, and the launch fails with "address already in use". Ports below
    the ephemeral range are only taken by explicit binds, so a random free one there cannot be stolen
    that way.
    """
    import random
    import socket

    low = _ephemeral_low()
    candidates = random.SystemRandom().sample(range(max(1024, low - 12000), low), 200)
    for port in candidates:
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return str(port)
    raise RuntimeError("no free TCP port below the ephemeral range")
