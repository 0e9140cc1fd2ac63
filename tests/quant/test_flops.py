"""MAC counts see quantized linears: a W8A8 layer (oneDNN, fbgemm or ``torch._int_mm``) counts the MACs of the
float layer it replaces."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from diffusion_accel.eval.latency import count_macs
from diffusion_accel.quant import QuantLinear
from diffusion_accel.quant.gemm import backend_problem

BACKENDS = [pytest.param(name, marks=pytest.mark.skipif(backend_problem(name, torch.device("cpu")) is not None,
                                                        reason=f"{name} is not correct on this CPU"))
            for name in ("int_mm", "fbgemm", "onednn")]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(5, 96), (2, 7, 96)])
def test_w8a8_linear_counts_the_float_macs(shape, backend):
    torch.manual_seed(0)
    lin = torch.nn.Linear(96, 80)
    layer = QuantLinear.from_linear(lin, weight_bits=8, backend=backend)
    x = torch.randn(*shape)
    with FlopCounterMode(display=False) as ref:
        lin(x)
    result = count_macs(lambda: layer(x), [layer])
    assert result.uncounted_ops == [] and result.uncounted_in_modules == []
    assert result.modules == ref.get_total_flops() // 2 == 80 * 96 * (x.numel() // 96)
