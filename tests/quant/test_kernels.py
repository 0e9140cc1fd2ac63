"""Triton W8A8 / W4A8 kernel vs its PyTorch reference, under TRITON_INTERPRET=1 (small shapes)."""

import json
import os
import subprocess
import sys

import pytest
import torch

from diffusion_accel.quant.kernels import qgemm, qgemm_reference

pytest.importorskip("triton")

_SCRIPT = r"""
import json, torch
from diffusion_accel.quant.kernels import qgemm, qgemm_reference
from diffusion_accel.quant.packing import pack_int4
from diffusion_accel.quant.quantizers import quantize_weight_groupwise
g = torch.Generator().manual_seed(0)
out = {}
for (m, k, n, group) in [(33, 70, 45, 32), (16, 64, 32, 64), (5, 96, 17, 32)]:
    xq = torch.randint(-127, 128, (m, k), dtype=torch.int8, generator=g)
    xs, ws, b = torch.rand(m, generator=g), torch.rand(n, generator=g), torch.randn(n, generator=g)
    w8 = torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=g)
    ref8 = qgemm_reference(xq, xs, w8, ws, b)
    got8 = qgemm(xq, xs, w8, ws, b, block_sizes=(16, 16, 32))
    q4, z, cs = quantize_weight_groupwise(torch.randn(n, k, generator=g), 4, group)
    p = pack_int4(q4)
    ref4 = qgemm_reference(xq, xs, p, cs, None, z, group, k)
    got4 = qgemm(xq, xs, p, cs, None, group_scale=z, group_size=group, k=k, block_sizes=(16, 32, 16))
    out[f"{m}x{k}x{n}"] = {
        "w8": float((got8 - ref8).abs().max() / ref8.abs().max()),
        "w4": float((got4 - ref4).abs().max() / ref4.abs().max()),
    }
print(json.dumps(out))
"""


@pytest.mark.slow
def test_triton_kernel_matches_reference_in_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, "-c", _SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    errors = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(errors) == 3
    for shape, err in errors.items():
        # int32 accumulation is exact; only the float32 epilogue rounds
        assert err["w8"] <= 1e-6, (shape, err)
        assert err["w4"] <= 1e-6, (shape, err)


def test_public_op_validates_shapes():
    xq = torch.zeros(4, 8, dtype=torch.int8)
    with pytest.raises(ValueError, match="int8"):
        qgemm(xq.float(), torch.ones(4), torch.zeros(2, 8, dtype=torch.int8), torch.ones(2))
    with pytest.raises(ValueError, match="packed"):
        qgemm(xq, torch.ones(4), torch.zeros(2, 8, dtype=torch.uint8), torch.ones(2),
              group_scale=torch.ones(2, 1, dtype=torch.uint8), group_size=8)
    with pytest.raises(ValueError, match="powers of two"):
        qgemm(xq, torch.ones(4), torch.zeros(2, 8, dtype=torch.int8), torch.ones(2), block_sizes=(16, 24, 16))


def test_reference_matches_int64_matmul():
    g = torch.Generator().manual_seed(1)
    xq = torch.randint(-127, 128, (7, 40), dtype=torch.int8, generator=g)
    w = torch.randint(-127, 128, (9, 40), dtype=torch.int8, generator=g)
    out = qgemm_reference(xq, torch.ones(7), w, torch.ones(9))
    assert torch.equal(out, (xq.long() @ w.long().t()).float())
