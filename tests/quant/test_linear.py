"""QuantLinear: every GEMM path computes the fake-quant result (same integers, same rescale)."""

import pytest
import torch

from diffusion_accel.quant import QuantLinear, sqnr_db
from diffusion_accel.quant.gemm import onednn_available
from diffusion_accel.quant.memory import bf16_weight_bytes, weight_bytes
from diffusion_accel.quant.runtime import QuantRuntime

BACKENDS = ["int_mm"] + (["onednn"] if onednn_available() else [])


def _layer(k=96, n=80, bits=8, backend="fake", seed=0, **kw):
    torch.manual_seed(seed)
    lin = torch.nn.Linear(k, n)
    return lin, QuantLinear.from_linear(lin, weight_bits=bits, group_size=32, backend=backend, **kw)


def _rel_err(a, b):
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bits", [8, 4])
def test_int_gemm_equals_fake_quant(backend, bits):
    lin, fake = _layer(bits=bits)
    _, real = _layer(bits=bits, backend=backend)
    assert torch.equal(real.int_weight(), fake.int_weight())
    x = torch.randn(3, 17, 96)
    y_real, y_fake = real(x), fake(x)
    # same integers and scales: only float rounding differs (fp32: ~1e-6 relative)
    assert _rel_err(y_real, y_fake) < 1e-5


@pytest.mark.parametrize("backend", BACKENDS)
def test_integer_accumulation_is_exact(backend):
    _, layer = _layer(k=1152, n=64, backend=backend)
    layer.weight_scale.fill_(1.0)
    layer.bias.zero_()
    xq = torch.randint(-127, 128, (9, 1152), dtype=torch.int8)
    from diffusion_accel.quant.gemm import run_gemm

    y = run_gemm(layer, xq, torch.ones(9, 1), torch.float32)
    exact = (xq.long() @ layer.int_weight().long().t()).double()
    assert float((y.double() - exact).abs().max()) <= float(exact.abs().max()) * 2 ** -23


def test_static_activation_path_equals_fake():
    lin = torch.nn.Linear(64, 32)
    kw = dict(act_mode="static", act_scale=torch.tensor([0.02, 0.05]), smooth=torch.rand(64) + 0.5)
    fake = QuantLinear.from_linear(lin, backend="fake", **kw)
    real = QuantLinear.from_linear(lin, backend=BACKENDS[-1], **kw)
    runtime = QuantRuntime()
    fake._runtime = real._runtime = runtime
    x = torch.randn(10, 64)
    for index in (0, 1):
        runtime.range_index = index
        runtime._last.clear()
        assert _rel_err(real(x), fake(x)) < 1e-5
    runtime.range_index = 0
    runtime._last.clear()
    y0 = fake(x)
    runtime.range_index = 1
    runtime._last.clear()
    assert not torch.equal(y0, fake(x))  # each timestep range has its own scale


@pytest.mark.parametrize("bits,min_db", [(8, 30.0), (4, 15.0)])
def test_output_sqnr_vs_float_linear(bits, min_db):
    lin, q = _layer(k=512, n=256, bits=bits, backend=BACKENDS[-1])
    x = torch.randn(64, 512)
    assert sqnr_db(lin(x), q(x)) >= min_db


def test_weight_only_is_close_to_float():
    lin, q = _layer(act_bits=None)
    x = torch.randn(8, 96)
    assert sqnr_db(lin(x), q(x)) >= 38.0


def test_memory_is_measured_from_real_tensors():
    n, k = 1152, 1152  # a DiT attention projection
    lin = torch.nn.Linear(k, n).to(torch.bfloat16)
    w8 = QuantLinear.from_linear(lin, weight_bits=8)
    assert w8.memory_bytes() == n * k + 4 * n + 2 * n  # int8 + fp32 scales + bf16 bias
    w4 = QuantLinear.from_linear(lin, weight_bits=4, group_size=128)
    assert w4.memory_bytes() == n * k // 2 + n * (k // 128) + 4 * n + 2 * n
    bf16 = 2 * (n * k + n)
    assert bf16 / w8.memory_bytes() >= 1.95
    assert bf16 / w4.memory_bytes() >= 3.5
    model = torch.nn.Sequential(w4)
    assert weight_bytes(model) == w4.memory_bytes() and bf16_weight_bytes(model) == bf16


@pytest.mark.skipif(not onednn_available(), reason="needs oneDNN int8 ops")
def test_onednn_prepacked_weight_replaces_plain_copy():
    lin, q = _layer(k=128, n=64, backend="onednn")
    plain = q.int_weight().clone()
    before = q.memory_bytes()
    x = torch.randn(4, 128)
    y = q(x)
    assert q.qweight is None and q._packed is not None  # one copy only
    assert q.memory_bytes() == before
    assert torch.equal(q.state_dict()["qweight"], plain)
    q.to(torch.device("cpu"))  # device moves restore the plain buffer
    assert torch.equal(q.qweight, plain)
    assert torch.equal(q(x), y)


def test_first_tokens_kept_in_high_precision():
    lin, q = _layer(fp_tokens=1)
    x = torch.randn(2, 5, 96)
    y = q(x)
    head = torch.nn.functional.linear(x[:, :1], q.effective_weight(), q.bias)
    assert torch.equal(y[:, :1], head)


def test_shared_input_is_quantized_once():
    runtime = QuantRuntime()
    layers = [_layer(seed=i)[1] for i in range(3)]
    calls = []
    for layer in layers:
        layer._runtime = runtime
    x = torch.randn(4, 96)
    original = runtime.quantized_input

    def counting(group, t, fn):
        return original(group, t, lambda v: calls.append(1) or fn(v))

    runtime.quantized_input = counting
    for layer in layers:
        layer(x)
    assert len(calls) == 1
    x.mul_(2.0)  # modified in place: quantized again
    layers[0](x)
    assert len(calls) == 2


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="4 or 8"):
        QuantLinear(8, 8, weight_bits=3)
    with pytest.raises(ValueError, match="backend"):
        QuantLinear(8, 8, backend="cutlass")
    with pytest.raises(ValueError, match="calibrated act_scale"):
        QuantLinear.from_linear(torch.nn.Linear(8, 8), act_mode="static")


@pytest.mark.parametrize("approximate", ["tanh", "none"])
@pytest.mark.parametrize("mode", ["dynamic", "static"])
def test_fused_gelu_epilogue_equals_separate_gelu(approximate, mode):
    lin = torch.nn.Linear(64, 48)
    kw = dict(act_mode=mode, act_scale=torch.tensor([0.03]) if mode == "static" else None)
    fake = QuantLinear.from_linear(lin, backend="fake", **kw)
    real = QuantLinear.from_linear(lin, backend=BACKENDS[-1], **kw)
    x = torch.randn(12, 64)
    separate = torch.nn.functional.gelu(fake(x), approximate=approximate)
    fake.activation = real.activation = approximate
    assert _rel_err(fake(x), separate) < 1e-6
    assert _rel_err(real(x), separate) < 1e-4  # oneDNN's GELU post-op: its own float evaluation


def test_weight_placeholder_and_dtype_moves_keep_scales_float32():
    lin, q = _layer()
    w = q.weight
    assert w.shape == lin.weight.shape and w.dtype == torch.float32 and w.untyped_storage().nbytes() <= 4
    x = torch.randn(4, 96)
    y = q(x)
    q.to(torch.bfloat16)
    assert q.weight.dtype == torch.bfloat16 and q.bias.dtype == torch.bfloat16
    assert q.weight_scale.dtype == torch.float32  # scales are never rounded to bf16
    yb = q(x.to(torch.bfloat16))
    assert yb.dtype == torch.bfloat16
    assert sqnr_db(y, yb.float()) >= 35.0


@pytest.mark.skipif(not onednn_available(), reason="needs oneDNN int8 ops")
@pytest.mark.parametrize("amx", [True, False])
def test_auto_backend_takes_onednn_only_on_cpus_with_amx(monkeypatch, amx):
    from diffusion_accel.quant.gemm import resolve_backend

    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    layer = QuantLinear.from_linear(torch.nn.Linear(32, 16), weight_bits=8)
    assert layer.backend == "auto"
    assert resolve_backend(layer, torch.device("cpu")) == ("onednn" if amx else "int_mm")
    explicit = QuantLinear.from_linear(torch.nn.Linear(32, 16), weight_bits=8, backend="onednn")
    assert resolve_backend(explicit, torch.device("cpu")) == "onednn"
