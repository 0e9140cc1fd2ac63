"""Sparse-attention tests: Triton kernels run in the interpreter on CPU.

TRITON_INTERPRET must be set before the kernels are defined (``triton.jit`` reads it at
decoration time); the kernels module is imported lazily by the tests that need it.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """Small attention ops are faster on one thread (and CI runs two workers on two cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
