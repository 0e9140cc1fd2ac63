"""MILP bit allocation and decoupled sensitivity measurement."""

import pytest
import torch

from diffusion_accel.quant import QuantLinear, allocate_bits, measure_sensitivity
from diffusion_accel.quant.allocate import layer_bytes
from diffusion_accel.quant.sensitivity import layer_kinds


def test_milp_protects_the_most_sensitive_layers_within_budget():
    sens = {f"l{i}": {4: float(i), 8: 0.0} for i in range(10)}  # l9 most sensitive
    sizes = {f"l{i}": 100 for i in range(10)}
    plan = allocate_bits(sens, sizes, average_bits=5.2)  # room for 3 layers at 8 bits
    chosen = {n: plan.bits_for(n) for n in sens}
    assert [n for n, b in chosen.items() if b == 8] == ["l7", "l8", "l9"]
    assert plan.average_bits(sizes) <= 5.2


def test_milp_weighs_size_against_sensitivity():
    sens = {"big": {4: 5.0, 8: 0.0}, "small_a": {4: 3.0, 8: 0.0}, "small_b": {4: 3.0, 8: 0.0}}
    sizes = {"big": 200, "small_a": 100, "small_b": 100}
    plan = allocate_bits(sens, sizes, average_bits=6.0)  # 8 bits for 200 params only
    assert plan.bits_for("big") == 4 and plan.bits_for("small_a") == plan.bits_for("small_b") == 8


def test_memory_budget_and_none_choice():
    sens = {"a": {4: 9.0, 8: 1.0, None: 0.0}, "b": {4: 1.0, 8: 0.5, None: 0.0}}
    sizes = {"a": 64 * 64, "b": 64 * 64}
    costs = {n: {b: layer_bytes(64, 64, b, 32) for b in (4, 8, None)} for n in sens}
    budget = costs["a"][None] + costs["b"][4]
    plan = allocate_bits(sens, sizes, memory_bytes=budget, layer_costs=costs)
    assert plan.bits_for("a") is None and plan.bits_for("b") == 4


def test_infeasible_budget_and_bad_arguments():
    sens = {"a": {4: 1.0, 8: 0.0}}
    with pytest.raises(ValueError, match="infeasible"):
        allocate_bits(sens, {"a": 10}, average_bits=3.0)
    with pytest.raises(ValueError, match="exactly one budget"):
        allocate_bits(sens, {"a": 10})
    with pytest.raises(ValueError, match="4, 8 or None"):
        allocate_bits({"a": {2: 1.0}}, {"a": 10}, average_bits=8)


def test_layer_kinds_follow_the_adapter(pixart):
    pipe, _, _ = pixart
    kinds = layer_kinds(pipe.transformer, ["transformer_blocks.0.attn1.to_q", "transformer_blocks.0.attn2.to_k",
                                          "transformer_blocks.0.ff.net.2", "proj_out"])
    assert kinds["transformer_blocks.0.attn1.to_q"] == ("transformer_blocks.0.attn1", "fidelity")
    assert kinds["transformer_blocks.0.attn2.to_k"] == ("transformer_blocks.0.attn2", "content")
    assert kinds["transformer_blocks.0.ff.net.2"] == ("transformer_blocks.0.ff", "content")
    assert kinds["proj_out"] == ("proj_out", "fidelity")


@pytest.mark.slow
def test_sensitivity_measurement_and_plan(pixart):
    pipe, generate, kwargs = pixart
    reference = generate()
    call = {k: v for k, v in kwargs.items() if k != "prompt"}
    layers = ["transformer_blocks.0.attn1.to_q", "transformer_blocks.0.attn2.to_v",
              "transformer_blocks.1.ff.net.0.proj", "proj_out"]
    result = measure_sensitivity(pipe, ["a cat"], layers=layers, group_by="layer", group_size=32, call_kwargs=call)
    assert set(result.losses) == set(layers)
    assert result.kinds["transformer_blocks.0.attn2.to_v"] == "content"
    assert all(v[4] > 0 for v in result.losses.values())  # quantizing any layer perturbs the image
    scores = result.scores()
    assert all(scores[g][8] < scores[g][4] for g in scores)  # 8 bits extrapolated below 4 bits
    plan = result.allocate(average_bits=5.0)
    assert plan.average_bits(result.sizes) <= 5.0
    assert not any(isinstance(m, QuantLinear) for m in pipe.transformer.modules())  # probe left no trace
    assert torch.equal(generate(), reference)
    with pytest.raises(ValueError, match="at least one prompt"):
        measure_sensitivity(pipe, [], layers=layers)
