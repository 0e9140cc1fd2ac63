"""The joint search's error-correction gene and seed configs (issue #21): a cache+W8A8 config given as a
seed is in generation 0 as is and with the trajectory correction, the corrected one is fitted (on other
seeds of the calibration prompts) before it is scored, and its frontier entry is the fitted config."""

import dataclasses
import json

import pytest
import torch

from diffusion_accel import AccelerationConfig, apply, remove
from diffusion_accel.caching import CacheSchedule, CorrectedCacheConfig, DynamicCacheConfig, StaticCacheConfig
from diffusion_accel.quant import QuantConfig
from diffusion_accel.search import SearchSettings, search_schedule

PROMPTS = ["a red cat", "a blue dog"]
W8A8 = QuantConfig(weight_bits=8, act_bits=8, keep_original="memory")


@pytest.fixture(scope="module")
def latency(pixart):
    from diffusion_accel.cost.latency import calibrate_latency_model
    from diffusion_accel.testing import tiny_call_kwargs

    return calibrate_latency_model(pixart, tiny_call_kwargs("pixart-alpha", num_inference_steps=4), repeats=1)


def seeds(pixart):
    fora = StaticCacheConfig(CacheSchedule.fora(pixart.transformer, 4, 2), reuse="block_residual")
    plain = AccelerationConfig(cache=fora, quant=W8A8)
    return {"fora-2+w8a8": plain, "fora-2+w8a8+corrected": dataclasses.replace(plain, cache=CorrectedCacheConfig(fora))}


@pytest.mark.slow
def test_seed_configs_are_scored_and_the_corrected_one_is_fitted(pixart, tiny_call, tmp_path, one_thread, latency):
    given = seeds(pixart)
    search_schedule(pixart, PROMPTS, num_steps=4, population=6, generations=1, seed=0, call_kwargs=tiny_call,
                    batch_size=2, generalise=False, progress=False, space="cache,quant", granularity="block",
                    pick_speedups=(), latency_model=latency, seed_configs=given, out=tmp_path / "out")
    checkpoint = json.loads((tmp_path / "out" / "checkpoint.json").read_text())
    by_name = {r["name"]: r for r in checkpoint["archive"].values() if r.get("name")}
    assert {"full", "fora-2+w8a8", "fora-2+w8a8+corrected"} <= set(by_name)
    assert by_name["fora-2+w8a8"]["generation"] == 0 and "correction" not in by_name["fora-2+w8a8"]
    maps = by_name["fora-2+w8a8+corrected"]["correction"]
    assert len(maps["step_scale"]) == 4 and len(maps["step_scale"][1]) == 4  # 4 steps x 4 latent channels
    # same schedule and bits: the same predicted cost (the maps cost nothing in the latency model)
    assert by_name["fora-2+w8a8+corrected"]["cost"] == by_name["fora-2+w8a8"]["cost"]
    for entry in json.loads((tmp_path / "out" / "frontier.json").read_text())["frontier"]:
        config = AccelerationConfig.from_dict(entry["config"])
        if isinstance(config.cache, CorrectedCacheConfig):
            assert config.cache.fitted  # a frontier entry holds the fitted maps, not the gene
        apply(pixart, config)
        out = pixart(prompt="a cat", num_inference_steps=4, output_type="latent",
                     generator=torch.Generator().manual_seed(0), **tiny_call)
        assert torch.isfinite(out.images).all()
        remove(pixart)


def test_bad_seed_configs_are_one_clear_error(pixart, tiny_call, one_thread, latency):
    with pytest.raises(ValueError, match="seed_configs seed a joint search"):
        SearchSettings(seed_configs=[AccelerationConfig(quant=W8A8)])
    with pytest.raises(ValueError, match="must be an AccelerationConfig"):
        SearchSettings(space="cache,quant", seed_configs=[3])
    odd = AccelerationConfig(cache=DynamicCacheConfig())  # the cache genes are a static schedule
    with pytest.raises(ValueError, match=r"seed_configs\['odd'\] cannot be expressed"):
        search_schedule(pixart, PROMPTS, num_steps=4, population=4, generations=1, call_kwargs=tiny_call,
                        batch_size=2, generalise=False, progress=False, space="cache,quant", pick_speedups=(),
                        latency_model=latency, seed_configs={"odd": odd})
