"""The calibrated latency model: positive per-op costs, predictions consistent with its own measurements."""

import json

import numpy as np
import pytest
import torch

from diffusion_accel import AccelerationConfig
from diffusion_accel.caching import CacheSchedule, StaticCacheConfig
from diffusion_accel.cost.latency import LINEAR_MODES, LatencyModel, calibrate_latency_model
from diffusion_accel.quant import QuantConfig, QuantPlan
from diffusion_accel.quant.technique import FLOAT_BY_DEFAULT
from diffusion_accel.sparse_attn import SparseAttentionConfig
from diffusion_accel.testing import tiny_call_kwargs, tiny_pipeline


@pytest.fixture(scope="module")
def model():
    pipe = tiny_pipeline("pixart-alpha")
    return calibrate_latency_model(pipe, tiny_call_kwargs("pixart-alpha", num_inference_steps=4), repeats=2,
                                   attention=[("block_sparse", 0.5)]), pipe


def test_every_op_has_a_positive_measured_cost(model):
    model, pipe = model
    assert model.linears and model.attention and all(s > 0 for s in model.call_seconds)
    for times in model.linear_seconds.values():
        assert set(times) == set(LINEAR_MODES) and all(t > 0 for t in times.values())
    for times in model.attention_seconds.values():
        assert set(times) == {"dense", "block_sparse@0.5"} and all(t > 0 for t in times.values())
    # every linear of the transformer is a site, once per step-0 call
    assert len(model.linears) == sum(isinstance(m, torch.nn.Linear) for m in pipe.transformer.modules())
    assert LatencyModel.from_dict(json.loads(json.dumps(model.to_dict()))) == model


def every_linear_w8a8(**rules):
    """W8A8 on every linear, the :data:`FLOAT_BY_DEFAULT` ones too (each named by a rule; ``rules`` override)."""
    plan = QuantPlan.from_mapping({**{name: 8 for name in FLOAT_BY_DEFAULT}, **rules}, default=8)
    return AccelerationConfig(quant=QuantConfig(weight_bits=8, act_bits=8, plan=plan))


def test_int8_versus_float_is_ordered_as_its_own_measurements(model):
    """The whole step-0 call was timed with every linear in W8A8 and in float (interleaved): the model
    predicts exactly that difference per step for W8A8 on every linear (``proj_out`` named by a rule:
    :data:`FLOAT_BY_DEFAULT` keeps it float otherwise), so it orders W8A8 and float as its measurement does."""
    model, _ = model
    w8a8 = every_linear_w8a8()
    measured = sum(model.in_situ["w8a8"])
    predicted = model.seconds(w8a8) - model.seconds(None)
    assert np.sign(predicted) == np.sign(measured)
    assert predicted == pytest.approx(measured * model.num_steps, rel=1e-9)
    # without the in-situ timings, the isolated per-op differences price the mode
    isolated = LatencyModel.from_dict({**model.to_dict(), "in_situ": {}})
    ops = sum(isolated.linear_seconds["x".join(map(str, r[4:7]))]["w8a8"]
              - isolated.linear_seconds["x".join(map(str, r[4:7]))]["float"] for r in isolated.linears)
    assert isolated.seconds(w8a8) - isolated.seconds(None) == pytest.approx(ops * model.num_steps, rel=1e-9)
    sparse = AccelerationConfig(attention=SparseAttentionConfig(density=0.5))
    op = [t["block_sparse@0.5"] - t["dense"] for t in model.attention_seconds.values()]
    assert np.sign(model.seconds(sparse) - model.seconds(None)) == np.sign(sum(op) or 1.0)


def test_macs_follow_the_schedule_and_sparsity_not_the_bits(model):
    model, pipe = model
    assert model.macs(AccelerationConfig(quant=QuantConfig())) == model.macs(None)
    assert model.macs(AccelerationConfig(attention=SparseAttentionConfig(density=0.5))) < model.macs(None)
    fora = AccelerationConfig(cache=StaticCacheConfig(CacheSchedule.fora(pipe.transformer, 4, 2)))
    assert model.macs(fora) < model.macs(None) and model.seconds(fora) < model.seconds(None)
    full = AccelerationConfig(cache=StaticCacheConfig(CacheSchedule.full(pipe.transformer, 4)))
    assert model.seconds(full) == pytest.approx(model.seconds(None)) and model.macs(full) == model.macs(None)


def test_an_unpriced_density_is_a_clear_error(model):
    model, _ = model
    with pytest.raises(ValueError, match="calibrate it with"):
        model.seconds(AccelerationConfig(attention=SparseAttentionConfig(density=0.25)))
    with pytest.raises(ValueError, match="repeats"):
        calibrate_latency_model(None, {}, repeats=0)


def test_w8a8_prices_proj_out_in_full_precision_as_quant_keeps_it(model):
    """Regression: ``apply`` keeps ``proj_out`` in full precision under plain W8A8 (unless a plan rule names
    it); the latency model priced it as int8. It now prices the layers ``apply`` quantizes."""
    model, _ = model
    assert "proj_out" in {r[1] for r in model.linears}
    w8a8 = AccelerationConfig(quant=QuantConfig(weight_bits=8, act_bits=8))
    # exact: the same mode at every site
    assert model.seconds(w8a8) == model.seconds(every_linear_w8a8(proj_out=None))
    assert model.seconds(w8a8) != model.seconds(every_linear_w8a8())
    # proj_out priced float: its float-time share of the in-situ W8A8 difference is not charged
    rows = [r for r in model.linears if r[1] == "proj_out"]
    float_seconds = {c: sum(model.linear_seconds["x".join(map(str, r[4:7]))]["float"] for r in model.linears
                            if r[0] == c) for c in range(len(model.call_seconds))}
    share = sum(model.in_situ["w8a8"][r[0]] * model.linear_seconds["x".join(map(str, r[4:7]))]["float"]
                / float_seconds[r[0]] for r in rows)
    assert model.seconds(every_linear_w8a8()) - model.seconds(w8a8) == pytest.approx(share * model.num_steps,
                                                                                     rel=1e-9)
