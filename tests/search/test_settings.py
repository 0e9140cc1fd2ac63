"""SearchSettings; searching a class-conditioned DiT (issue 16.5) and an accelerated pipeline (issue 16.6)."""

import dataclasses
import json

import pytest
import torch

import diffusion_accel
from diffusion_accel import AccelerationConfig
from diffusion_accel.api import acceleration_state
from diffusion_accel.caching import StaticCacheConfig
from diffusion_accel.eval.generate import make_items
from diffusion_accel.eval.prompts import load_prompts
from diffusion_accel.quant import QuantConfig
from diffusion_accel.search import CandidateEvaluator, SearchSettings, search_schedule
from diffusion_accel.testing import tiny_pipeline

SMALL = dict(num_steps=4, population=4, generations=1, seed=0, batch_size=2, generalise=False, progress=False)


def test_settings_are_frozen_validated_and_share_the_run_fields():
    settings = SearchSettings(model="tiny:pixart-alpha", population=4)
    assert (settings.prompts, settings.batch_size, settings.generations) == ("benchmark:train", 8, 10)
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.population = 8
    for field, value, message in [("population", 1, "population must be an integer >= 2"),
                                  ("num_images", 0, "num_images must be an integer >= 1"),
                                  ("num_steps", 1, "a search needs 2 steps or more"),
                                  ("reuse", "residual", "reuse must be 'auto' or one of"),
                                  ("pick_speedups", (2.0, -1.0), "pick_speedups must be positive"),
                                  ("quality", "sharpness", "Unknown quality metric")]:
        with pytest.raises(ValueError, match=message):
            dataclasses.replace(settings, **{field: value})
    with pytest.raises(TypeError, match=r"unexpected keyword argument\(s\) \['populaton'\]"):
        search_schedule("tiny:pixart-alpha", populaton=4)


@pytest.mark.slow
def test_settings_object_and_keyword_arguments_run_the_same_search(pixart, tiny_call, one_thread):
    by_keywords = search_schedule(pixart, ["a red cat", "a blue dog"], call_kwargs=tiny_call, **SMALL)
    settings = SearchSettings(model=pixart, prompts=("a red cat", "a blue dog"), call_kwargs=tiny_call, **SMALL)
    assert search_schedule(settings=settings).frontier == by_keywords.frontier
    # keyword arguments replace fields of the settings
    other = search_schedule(settings=dataclasses.replace(settings, seed=5), seed=0)
    assert other.frontier == by_keywords.frontier


@pytest.mark.slow
def test_search_takes_per_item_class_labels_on_dit(tmp_path, one_thread):
    """Issue 16.5: search_schedule on DiT called pipe(prompt=...) and got a raw TypeError."""
    pipe = tiny_pipeline("dit")
    labels = [{"class_labels": 1}, {"class_labels": 7}]
    with pytest.raises(ValueError, match=r"DiTPipeline takes no \['prompt'\].*'class_labels'"):
        search_schedule(pipe, ["a red cat"], out=tmp_path / "text", **SMALL)
    assert not (tmp_path / "text").exists()
    result = search_schedule(pipe, labels, out=tmp_path / "dit", call_kwargs={"guidance_scale": 4.0},
                             pick_speedups=(1.1,), **{**SMALL, "generalise": True, "generalise_steps": [6]})
    full = result.frontier[0]
    assert full["name"] == "full" and full["quality"] == 0.0 and result.frontier[-1]["speedup"] > 1.0
    saved = json.loads((tmp_path / "dit" / "checkpoint.json").read_text())
    assert saved["settings"]["prompts"] == [[0, "class_labels=1"], [1, "class_labels=7"]]
    assert {r["setting"] for r in result.generalisation} == {"steps=6"}  # DiT's size is fixed: no resolution


@pytest.mark.slow
def test_search_scores_on_top_of_the_pipelines_acceleration_and_gives_it_back(pixart, tiny_call, tmp_path,
                                                                           one_thread):
    """Issue 16.6: the search removed a user's W8A8 and scored candidates in full precision."""
    quant = AccelerationConfig(quant=QuantConfig(weight_bits=8, act_bits=8))
    diffusion_accel.apply(pixart, quant)
    try:
        result = search_schedule(pixart, ["a red cat", "a blue dog"], out=tmp_path, call_kwargs=tiny_call,
                                 pick_speedups=(1.1,), **SMALL)
        after = acceleration_state(pixart)
        assert after is not None and after.config == quant  # the pipeline got its acceleration back
    finally:
        diffusion_accel.remove(pixart)
    for entry in result.frontier:  # candidates ran on top of W8A8, and the picks keep it
        config = AccelerationConfig.from_dict(entry["config"])
        assert config.quant == quant.quant and isinstance(config.cache, StaticCacheConfig)
    assert AccelerationConfig.load(next(tmp_path.glob("picked-*.json"))).quant == quant.quant
    saved = json.loads((tmp_path / "checkpoint.json").read_text())
    assert AccelerationConfig.from_dict(saved["settings"]["base_config"]) == quant

    # The scores are those of the schedules on W8A8 (against the W8A8 full-compute output), not in float.
    items = make_items(load_prompts(["a red cat", "a blue dog"]), seed=0)
    kwargs = {**tiny_call, "num_inference_steps": 4}
    on_w8a8 = CandidateEvaluator(pixart, items, kwargs, batch_size=2, reuse="block_residual", base=quant)
    in_float = on_w8a8.variant()
    in_float.base = None
    on_w8a8.prepare()
    in_float.prepare()
    assert not torch.equal(on_w8a8.reference, in_float.reference)
    entry = result.frontier[-1]
    schedule = AccelerationConfig.from_dict(entry["config"]).cache.schedule
    assert entry["speedup"] > 1.0 and entry["quality"] > 0.0
    assert on_w8a8.evaluate(schedule).quality == entry["quality"] != in_float.evaluate(schedule).quality
    assert acceleration_state(pixart) is None
