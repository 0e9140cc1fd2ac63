"""Quantized execution and calibration under ``torch.inference_mode()``.

Regression: the shared-input cache and the calibration recorder read ``tensor._version``, which
raises ``RuntimeError: Inference tensors do not track version counter`` for every tensor created
under ``torch.inference_mode()`` — any quantized pipeline call inside it failed.
"""

import copy

import pytest
import torch

import diffusion_accel
from diffusion_accel import AccelerationConfig
from diffusion_accel.quant import QuantConfig, QuantLinear
from diffusion_accel.quant.runtime import QuantRuntime


def _counting_quantize(calls):
    def quantize(t):
        calls.append(1)
        return t.round(), None
    return quantize


def test_runtime_reuses_normal_tensors_and_requantizes_inference_tensors():
    from diffusion_accel.quant.runtime import tensor_version

    rt, calls = QuantRuntime(), []
    x = torch.randn(4, 8)
    rt.quantized_input("g", x, _counting_quantize(calls))
    rt.quantized_input("g", x, _counting_quantize(calls))
    assert len(calls) == 1  # same tensor, unmodified: reused
    with torch.inference_mode():
        y = torch.randn(4, 8)
        assert tensor_version(y) is None
        first = rt.quantized_input("g", y, _counting_quantize(calls))[0]
        y.mul_(3.0)  # an in-place write no version counter records
        second = rt.quantized_input("g", y, _counting_quantize(calls))[0]
    assert len(calls) == 3  # never reused: the write above must be seen
    assert torch.equal(second, y.round()) and not torch.equal(first, second)


def test_quantlinear_under_inference_mode_matches_no_grad():
    torch.manual_seed(0)
    q = QuantLinear.from_linear(torch.nn.Linear(64, 48), backend="auto")
    q._runtime = QuantRuntime()
    x = torch.randn(3, 10, 64)
    with torch.no_grad():
        expected = q(x)
    with torch.inference_mode():
        got = q(x.clone())
    assert torch.equal(got, expected)


def _generate(pipe, kwargs):
    return pipe(**kwargs, generator=torch.Generator().manual_seed(0)).images


@pytest.mark.parametrize("config", [
    QuantConfig(weight_bits=8, act_bits=8),
    QuantConfig(weight_bits=4, act_bits=8, group_size=32),
], ids=["W8A8", "W4A8"])
def test_pipeline_call_under_inference_mode(pixart, config):
    pipe, _, kwargs = pixart
    diffusion_accel.apply(pipe, AccelerationConfig(quant=config))
    try:
        expected = _generate(pipe, kwargs)
        with torch.inference_mode():
            got = _generate(pipe, kwargs)
    finally:
        diffusion_accel.remove(pipe)
    assert torch.equal(got, expected)  # same integers whether or not inputs are reused


def test_static_calibration_under_inference_mode(pixart):
    pipe, _, kwargs = pixart
    call = {k: v for k, v in kwargs.items() if k != "prompt"}
    config = QuantConfig(act_mode="static", smooth_alpha=0.5, timestep_ranges=2,
                         calibration_prompts=("a red cat", "a blue dog"), calibration_kwargs=call)
    layer_path = ("transformer_blocks", 0, "attn1")

    def scales_and_groups():
        attn = pipe.transformer.get_submodule(".".join(map(str, layer_path)))
        return ([attn.to_q.act_scale.clone(), attn.to_k.act_scale.clone()],
                {attn.to_q.act_group, attn.to_k.act_group, attn.to_v.act_group})

    diffusion_accel.apply(pipe, AccelerationConfig(quant=config))
    try:
        expected_scales, expected_groups = scales_and_groups()
        expected = _generate(pipe, kwargs)
    finally:
        diffusion_accel.remove(pipe)
    with torch.inference_mode():  # calibration runs the pipeline on inference tensors too
        diffusion_accel.apply(pipe, AccelerationConfig(quant=config))
        try:
            scales, groups = scales_and_groups()
            got = _generate(pipe, kwargs)
        finally:
            diffusion_accel.remove(pipe)
    assert len(expected_groups) == 1 and groups == expected_groups  # q, k, v still share one input group
    assert all(torch.equal(a, b) for a, b in zip(scales, expected_scales))
    assert torch.equal(got, expected)


@pytest.mark.parametrize("weight_bits", [8, 4])
def test_quantlinear_traces_into_one_graph(weight_bits):
    """A whole model under ``torch.compile`` traces its quantized linears without graph breaks (the
    shared-input cache, whose weak references and version checks dynamo cannot trace, is bypassed)."""
    torch.manual_seed(0)
    q = QuantLinear.from_linear(torch.nn.Linear(64, 48), weight_bits=weight_bits, group_size=32)
    q._runtime = QuantRuntime()
    fresh = copy.deepcopy(q)
    x = torch.randn(2, 10, 64)
    with torch.no_grad():
        expected = q(x)  # eager: may pack the weight for a backend that cannot be traced (fbgemm)
        got = torch.compile(fresh, backend="eager", fullgraph=True)(x)
        again = torch.compile(q, backend="eager")(x)  # already packed: graph breaks, same result
    assert torch.equal(got, expected) and torch.equal(again, expected)
