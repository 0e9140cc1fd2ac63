"""Mixed-precision plans and QuantConfig validation."""

import pytest

from diffusion_accel import AccelerationConfig
from diffusion_accel.quant import QuantConfig, QuantPlan

NAMES = ["transformer_blocks.0.attn1.to_q", "transformer_blocks.0.attn2.to_k", "transformer_blocks.1.ff.net.2",
         "proj_out"]


def test_resolution_order_exact_then_pattern_then_default():
    plan = QuantPlan.from_mapping({
        "re:transformer_blocks\\.0\\..*": 8,
        "transformer_blocks.0.attn1.to_q": None,   # exact beats the earlier pattern
        "re:.*attn.*": 4,
    }, default=4)
    assert plan.resolve(NAMES) == {
        "transformer_blocks.0.attn1.to_q": None,
        "transformer_blocks.0.attn2.to_k": 8,       # first matching pattern wins
        "transformer_blocks.1.ff.net.2": 4,
        "proj_out": 4,
    }


def test_patterns_must_match_whole_names():
    plan = QuantPlan.from_mapping({"re:attn1": 8}, default=4)
    with pytest.raises(ValueError, match="matches no linear module"):
        plan.resolve(NAMES)


def test_unmatched_entry_suggests_closest_names():
    plan = QuantPlan.from_mapping({"transformer_blocks.0.attn2.to_kk": 8})
    with pytest.raises(ValueError) as info:
        plan.resolve(NAMES)
    assert "transformer_blocks.0.attn2.to_k" in str(info.value)


def test_json_round_trip(tmp_path):
    plan = QuantPlan.from_mapping({"proj_out": None, "re:.*attn2.*": 8}, default=4)
    path = tmp_path / "plan.json"
    plan.save(path)
    assert QuantPlan.load(path) == plan
    assert list(QuantPlan.load(path).to_dict()["rules"]) == ["proj_out", "re:.*attn2.*"]


@pytest.mark.parametrize("bad", [{"x": 3}, {"x": 16}, {"x": "8"}])
def test_plan_rejects_bad_bits(bad):
    with pytest.raises(ValueError, match="4, 8 or None"):
        QuantPlan.from_mapping(bad)


def test_plan_rejects_bad_regex():
    with pytest.raises(ValueError, match="regular expression"):
        QuantPlan.from_mapping({"re:(": 8})


def test_average_bits():
    plan = QuantPlan.from_mapping({"a": 8, "b": None}, default=4)
    assert plan.average_bits({"a": 10, "b": 10, "c": 20}) == (80 + 160 + 80) / 40


def test_config_json_round_trip_with_plan():
    cfg = AccelerationConfig(quant=QuantConfig(weight_bits=4, plan={"re:.*attn2.*": 8, "proj_out": None}))
    back = AccelerationConfig.from_json(cfg.to_json())
    assert back == cfg
    assert back.quant.plan.bits_for("proj_out") is None and back.quant.plan.default == 4


@pytest.mark.parametrize("kwargs,match", [
    (dict(weight_bits=3), "4, 8 or None"),
    (dict(act_bits=4), "8 or None"),
    (dict(act_bits=16), "4, 8 or None"),
    (dict(group_size=0), "group_size"),
    (dict(act_mode="static"), "calibration_prompts is empty"),
    (dict(smooth_alpha=0.5, calibration_prompts=[]), "calibration_prompts is empty"),
    (dict(smooth_alpha=1.5, calibration_prompts=["x"]), "smooth_alpha"),
    (dict(backend="cutlass"), "backend"),
    (dict(calibration_prompts="a cat", act_mode="static"), "list of prompts"),
])
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        QuantConfig(**kwargs)
