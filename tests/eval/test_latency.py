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


def test_count_macs_lists_operators_it_cannot_count():
    @torch.library.custom_op("evaltest::mystery_mm", mutates_args=())
    def mystery_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a @ b

    a, b = torch.randn(4, 4), torch.randn(4, 4)
    result = count_macs(lambda: mystery_mm(a, b))
    assert any("evaltest::mystery_mm" in name for name in result.uncounted_ops)


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
