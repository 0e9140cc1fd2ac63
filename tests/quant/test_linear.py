"""QuantLinear: every GEMM path computes the fake-quant result (same integers, same rescale)."""

import pytest
import torch

from diffusion_accel.quant import QuantLinear, sqnr_db
from diffusion_accel.quant import cpu_support
from diffusion_accel.quant.gemm import backend_problem, resolve_backend, run_gemm
from diffusion_accel.quant.memory import bf16_weight_bytes, weight_bytes
from diffusion_accel.quant.runtime import QuantRuntime


def _correct_here(name):
    """The backend as a test parameter, skipped (with the reason) where it is not correct on this CPU."""
    problem = backend_problem(name, torch.device("cpu"))
    return pytest.param(name, marks=pytest.mark.skipif(problem is not None, reason=f"{name}: {problem}"))


BACKENDS = [_correct_here(name) for name in ("int_mm", "fbgemm", "onednn")]
#: the backend auto picks on this CPU (always correct here)
AUTO = resolve_backend(QuantLinear(8, 8), torch.device("cpu"))


def _layer(k=96, n=80, bits=8, backend="fake", seed=0, **kw):
    torch.manual_seed(seed)
    lin = torch.nn.Linear(k, n)
    return lin, QuantLinear.from_linear(lin, weight_bits=bits, group_size=32, backend=backend, **kw)


def _pair(backend, bits=8, **kw):
    """(float linear, real-backend layer, fake-quant layer holding the same integers)."""
    lin, real = _layer(bits=bits, backend=backend, **kw)
    _, fake = _layer(bits=bits, backend="fake", weight_qmax=real.weight_qmax if bits == 8 else None, **kw)
    return lin, real, fake


def _rel_err(a, b):
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bits", [8, 4])
def test_int_gemm_equals_fake_quant(backend, bits):
    _, real, fake = _pair(backend, bits)
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
    y = run_gemm(layer, xq, torch.ones(9, 1), torch.float32)
    exact = (xq.long() @ layer.int_weight().long().t()).double()
    assert float((y.double() - exact).abs().max()) <= float(exact.abs().max()) * 2 ** -23


@pytest.mark.parametrize("backend", BACKENDS)
def test_full_int8_range_is_exact(backend):
    # 8-bit weights now use [-128, 127] (see quantize_weight_per_channel): every backend that auto can
    # pick must multiply -128 weights and activations exactly (regression: its self-check saw only ±127)
    _, layer = _layer(k=256, n=32, backend=backend)
    layer.weight_scale.fill_(1.0)
    layer.bias.zero_()
    g = torch.Generator().manual_seed(1)
    w = torch.randint(-128, 128, (32, 256), dtype=torch.int8, generator=g)
    w[0], w[1, ::2], w[1, 1::2] = -128, -128, 127
    layer.qweight.copy_(w)
    xq = torch.randint(-128, 128, (9, 256), dtype=torch.int8, generator=g)
    xq[0], xq[1] = -128, 127
    y = run_gemm(layer, xq, torch.ones(9, 1), torch.float32)
    exact = (xq.long() @ w.long().t()).double()
    assert float((y.double() - exact).abs().max()) <= float(exact.abs().max()) * 2 ** -23


def test_quantized_weights_use_minus_128():
    _, layer = _layer(k=1152, n=256, backend="fake")
    assert int(layer.int_weight().min()) == -128 and int(layer.int_weight().max()) <= 127


@pytest.mark.parametrize("backend", BACKENDS)
def test_static_activation_path_equals_fake(backend):
    lin = torch.nn.Linear(64, 32)
    kw = dict(act_mode="static", act_scale=torch.tensor([0.02, 0.05]), smooth=torch.rand(64) + 0.5)
    real = QuantLinear.from_linear(lin, backend=backend, **kw)
    fake = QuantLinear.from_linear(lin, backend="fake", weight_qmax=real.weight_qmax, **kw)
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
    lin, q = _layer(k=512, n=256, bits=bits, backend=AUTO)
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


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b.values[0] != "int_mm"])
def test_prepacked_weight_replaces_plain_copy(backend):
    lin, q = _layer(k=128, n=64, backend=backend)
    plain = q.int_weight().clone()
    before = q.memory_bytes()
    x = torch.randn(4, 128)
    y = q(x)
    assert q.qweight is None and q._packed is not None  # one copy only
    assert before <= q.memory_bytes() <= before + 12 * 64  # + fbgemm's per-channel offsets / scales
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
    real = QuantLinear.from_linear(lin, backend=AUTO, **kw)
    fake = QuantLinear.from_linear(lin, backend="fake", weight_qmax=real.weight_qmax, **kw)
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


@pytest.mark.parametrize("kind,expected", [("amx", "onednn"), ("avx512_vnni", "fbgemm"), ("avx512", "fbgemm"),
                                           ("avx2", "fbgemm"), ("other", "fake")])
def test_auto_backend_per_cpu_kind(monkeypatch, kind, expected):
    monkeypatch.setattr(cpu_support, "cpu_kind", lambda: kind)
    monkeypatch.setattr(cpu_support, "onednn_problem", lambda: None)
    monkeypatch.setattr(cpu_support, "fbgemm_problem", lambda engine=None: None)
    assert resolve_backend(QuantLinear(32, 16), torch.device("cpu")) == expected


@pytest.mark.parametrize("kind,expected", [("avx512_vnni", "int_mm"), ("avx2", "fbgemm")])
def test_auto_prefers_full_8_bit_weights_over_a_saturating_fbgemm(monkeypatch, kind, expected):
    """Where fbgemm is exact only with 7-bit weights, ``auto`` takes ``torch._int_mm`` if it is fast here
    (VNNI: full 8-bit weights, ~6 dB better weight SQNR), and fbgemm only where nothing better runs."""
    monkeypatch.setattr(cpu_support, "cpu_kind", lambda: kind)
    monkeypatch.setattr(cpu_support, "fbgemm_problem", lambda engine=None: None)
    monkeypatch.setattr(cpu_support, "fbgemm_weight_level", lambda engine=None: 64)
    assert resolve_backend(QuantLinear(32, 16), torch.device("cpu")) == expected


def test_auto_runs_4_bit_weights_in_an_integer_kernel(monkeypatch):
    """fbgemm runs 4-bit weights only as fp32 GEMMs: on VNNI, W4 layers take ``torch._int_mm``."""
    monkeypatch.setattr(cpu_support, "cpu_kind", lambda: "avx512_vnni")
    monkeypatch.setattr(cpu_support, "fbgemm_problem", lambda engine=None: None)
    assert resolve_backend(QuantLinear(32, 16, weight_bits=8), torch.device("cpu")) == "fbgemm"
    assert resolve_backend(QuantLinear(32, 16, weight_bits=4, group_size=16), torch.device("cpu")) == "int_mm"


def test_auto_skips_a_backend_that_is_wrong_here(monkeypatch):
    monkeypatch.setattr(cpu_support, "cpu_kind", lambda: "amx")
    monkeypatch.setattr(cpu_support, "onednn_problem", lambda: "wrong results (self-check)")
    assert resolve_backend(QuantLinear(32, 16), torch.device("cpu")) == "int_mm"


def test_explicit_backend_that_is_wrong_here_is_refused_with_the_reason(monkeypatch):
    monkeypatch.setattr(cpu_support, "cpu_kind", lambda: "avx2")
    monkeypatch.setattr(cpu_support, "onednn_problem", lambda: "oneDNN's int8 linear returns wrong results here")
    with pytest.raises(ValueError, match="wrong results.*backend='auto' \\(here: 'fbgemm'\\)"):
        QuantLinear.from_linear(torch.nn.Linear(32, 16), backend="onednn")
    layer = QuantLinear(32, 16, backend="onednn")  # e.g. loaded from a file: refused at the first call
    with pytest.raises(ValueError, match="wrong results"):
        layer(torch.randn(2, 32))


def test_explicit_backend_that_is_slow_here_warns(monkeypatch):
    monkeypatch.setattr(cpu_support, "cpu_kind", lambda: "avx512_vnni")
    monkeypatch.setattr(cpu_support, "onednn_problem", lambda: None)
    with pytest.warns(UserWarning, match="slow here.*without AMX"):
        resolve_backend(QuantLinear(32, 16, backend="onednn"), torch.device("cpu"))


def test_onednn_on_this_cpu_is_right_or_refused():
    """The real self-check: wherever oneDNN's int8 linear is wrong (AVX2-only CPUs), it is never used."""
    if cpu_support.onednn_problem() is not None:
        with pytest.raises(ValueError, match="cannot be used here"):
            QuantLinear.from_linear(torch.nn.Linear(64, 32), backend="onednn")
        assert AUTO != "onednn"
    else:
        _, real, fake = _pair("onednn")
        x = torch.randn(5, 96)
        assert _rel_err(real(x), fake(x)) < 1e-5


def _saturating_u8s8_gemm(x, w):
    """AVX2 ``vpmaddubsw``: uint8 (x + 128) times int8, adjacent pairs summed with int16 saturation."""
    a = (x.long() + 128)[:, None, :]  # (M, 1, K)
    prod = a * w.long()[None]  # (M, N, K)
    pairs = prod.view(*prod.shape[:2], -1, 2).sum(-1).clamp(-32768, 32767)
    return pairs.sum(-1) - 128 * w.long().sum(-1)


@pytest.mark.parametrize("level,exact", [(127, False), (64, True)])
def test_self_check_operands_expose_int16_pair_saturation(level, exact):
    x, w = cpu_support._worst_case_operands(level)
    expected = x.long() @ w.long().t()
    assert torch.equal(_saturating_u8s8_gemm(x, w), expected) == exact


@pytest.mark.skipif(cpu_support.fbgemm_problem() is not None,
                    reason=f"fbgemm: {cpu_support.fbgemm_problem()}")
def test_fbgemm_weights_are_within_its_exact_range():
    level = cpu_support.fbgemm_weight_level()
    _, q = _layer(k=256, n=32, backend="fbgemm")
    assert q.weight_qmax == level and int(q.int_weight().abs().max()) == level
    _, wide = _layer(k=256, n=32, backend="fbgemm", weight_qmax=127)  # e.g. quantized for another device
    _, fake = _layer(k=256, n=32, backend="fake", weight_qmax=127)
    x = torch.randn(6, 256)
    assert _rel_err(wide(x), fake(x)) < 1e-5  # runs exactly in fp32 instead of saturating


def test_int_mm_guards_tiny_inner_dimensions(monkeypatch):
    """``QuantLinear.from_linear(nn.Linear(1, 5))`` returned garbage through ``torch._int_mm`` (VNNI CPU)."""
    garbage = lambda a, b: torch.full((a.shape[0], b.shape[1]), 12345, dtype=torch.int32)  # noqa: E731
    monkeypatch.setattr(torch, "_int_mm", garbage)
    torch.manual_seed(0)
    for k, n in ((1, 5), (3, 40), (40, 3)):
        lin = torch.nn.Linear(k, n)
        with pytest.warns(UserWarning) if cpu_support.int_mm_slow_reason() else _nothing():
            real = QuantLinear.from_linear(lin, backend="int_mm")
        fake = QuantLinear.from_linear(lin, backend="fake")
        x = torch.randn(4, k)
        assert _rel_err(real(x), fake(x)) < 1e-6
        assert _rel_err(real(x), lin(x).detach()) < 0.05


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
