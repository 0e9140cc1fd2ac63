"""Save / load of a quantized denoiser: safetensors + JSON plan, no pickle, identical outputs."""

import json
import os

import pytest
import torch

import diffusion_accel
from diffusion_accel import AccelerationConfig
from diffusion_accel.quant import QuantConfig, QuantLinear, load_quantized, save_quantized


def test_round_trip_gives_identical_outputs(pixart, tmp_path):
    pipe, _, _ = pixart
    config = QuantConfig(weight_bits=4, group_size=32, plan={"re:.*attn2\\..*": 8, "proj_out": None})
    diffusion_accel.apply(pipe, AccelerationConfig(quant=config))
    try:
        model = pipe.transformer
        inputs = dict(hidden_states=torch.randn(2, 4, 8, 8), encoder_hidden_states=torch.randn(2, 7, 32),
                      timestep=torch.tensor([500, 500]), added_cond_kwargs={"resolution": None, "aspect_ratio": None})
        with torch.no_grad():
            expected = model(**inputs).sample
        save_quantized(model, tmp_path)
    finally:
        diffusion_accel.remove(pipe)
    assert sorted(os.listdir(tmp_path)) == ["quant_plan.json", "quantized.safetensors"]
    meta = json.loads((tmp_path / "quant_plan.json").read_text())
    assert meta["layers"]["transformer_blocks.0.attn2.to_k"]["weight_bits"] == 8
    assert "proj_out" not in meta["layers"]
    fresh = type(pipe.transformer).from_config(pipe.transformer.config)
    load_quantized(fresh, tmp_path)
    assert isinstance(fresh.transformer_blocks[0].ff.net[2], QuantLinear)
    assert type(fresh.proj_out) is torch.nn.Linear
    with torch.no_grad():
        assert torch.equal(fresh(**inputs).sample, expected)


def test_load_rejects_other_model_class(pixart, tmp_path):
    pipe, _, _ = pixart
    model = torch.nn.Sequential(QuantLinear.from_linear(torch.nn.Linear(8, 8)))
    save_quantized(model, tmp_path)
    with pytest.raises(ValueError, match="Sequential"):
        load_quantized(type(pipe.transformer).from_config(pipe.transformer.config), tmp_path)
    with pytest.raises(ValueError, match="no QuantLinear"):
        save_quantized(torch.nn.Linear(2, 2), tmp_path / "x")
