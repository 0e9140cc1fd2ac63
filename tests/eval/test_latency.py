import pytest
import torch

from diffusion_accel.eval.latency import count_macs, measure_latency, operator_breakdown, peak_memory


def test_measure_latency_runs_warmup_then_timed_calls():
    calls = []
    result = measure_latency(lambda: calls.append(1), warmup=2, runs=5)
    assert len(calls) == 7 and result.runs == 5 and len(result.times_s) == 5
    assert result.min_s <= result.median_s <= result.max_s
    assert result.iqr_s >= 0 and result.std_s >= 0
    with pytest.raises(ValueError, match="runs"):
        measure_latency(lambda: None, runs=0)


def test_count_macs_total_and_inside_named_modules():
    inner = torch.nn.Linear(32, 16)
    outer = torch.nn.Linear(16, 8)
    x = torch.randn(4, 32)
    result = count_macs(lambda: outer(inner(x)), [inner])
    assert result.total == 4 * 32 * 16 + 4 * 16 * 8
    assert result.modules == 4 * 32 * 16
    conv = torch.nn.Conv2d(3, 8, 3, padding=1)
    img = torch.randn(1, 3, 8, 8)
    assert count_macs(lambda: conv(img), [conv]).total == 8 * 8 * 8 * 3 * 9
    nested = torch.nn.Sequential(inner, torch.nn.ReLU())
    assert count_macs(lambda: nested(x), [nested, inner]).modules == 4 * 32 * 16  # counted once


def test_count_macs_lists_operators_it_cannot_count_until_they_have_a_formula():
    from torch.utils.flop_counter import register_flop_formula

    @torch.library.custom_op("evaltest::mystery_mm", mutates_args=())
    def mystery_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a @ b

    class Inner(torch.nn.Module):
        def forward(self, a, b):
            return mystery_mm(a, b)

    inner = Inner()
    a, b = torch.randn(4, 8), torch.randn(8, 2)
    result = count_macs(lambda: (inner(a, b), mystery_mm(a, b)), [inner])
    assert result.uncounted_ops == ["evaltest::mystery_mm"] == result.uncounted_in_modules
    assert result.total == 0
    assert count_macs(lambda: mystery_mm(a, b), [inner]).uncounted_in_modules == []

    @register_flop_formula(torch.ops.evaltest.mystery_mm)
    def _flops(a_shape, b_shape, *args, out_shape=None, **kwargs):
        return 2 * a_shape[0] * a_shape[1] * b_shape[1]

    counted = count_macs(lambda: inner(a, b), [inner])
    assert counted.uncounted_ops == [] and counted.modules == counted.total == 4 * 8 * 2


def test_operator_breakdown_assigns_time_to_categories():
    conv = torch.nn.Conv2d(8, 8, 3, padding=1)
    lin = torch.nn.Linear(256, 256)
    x = torch.randn(4, 8, 64, 64)
    y = torch.randn(64, 256)

    def fn():
        conv(x)
        lin(y)
        q = torch.randn(1, 2, 64, 16)
        torch.nn.functional.scaled_dot_product_attention(q, q, q)

    shares = operator_breakdown(fn)
    assert set(shares) == {"attention", "linear", "convolution", "other"}
    assert sum(shares.values()) == pytest.approx(1.0)
    assert shares["convolution"] > 0 and shares["linear"] > 0 and shares["attention"] > 0


def test_peak_memory_on_cpu_is_process_rss_and_sees_allocations():
    base, source = peak_memory(lambda: None)
    assert source == "process RSS" and base > 0

    def allocate():
        t = torch.ones(64 * 2**20 // 4)  # 64 MiB
        t += 1

    peak, _ = peak_memory(allocate)
    assert peak >= base


def test_count_macs_is_the_same_under_inference_mode():
    layer = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.GELU(), torch.nn.Linear(8, 4))
    x = torch.randn(5, 16)
    plain = count_macs(lambda: layer(x), [layer])
    with torch.inference_mode():
        inference = count_macs(lambda: layer(x), [layer])
    assert plain.modules == inference.modules == plain.total == 5 * (16 * 8 + 8 * 4)
