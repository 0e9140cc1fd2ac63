"""The bundled-model table: ``--model benchmark`` and ``--model benchmark-video`` by name (issue 18)."""

import pytest

from diffusion_accel.assets import (BENCHMARK_GENERATION_KWARGS, BENCHMARK_VIDEO_GENERATION_KWARGS, benchmark_model_dir,
                                    benchmark_video_prompts)
from diffusion_accel.assets.bundled import BUNDLED_MODELS, bundled_model, bundled_prompt_source
from diffusion_accel.eval.prompts import load_prompts
from diffusion_accel.eval.settings import EvalSettings
from diffusion_accel.eval.sweep import default_call_kwargs, is_bundled_model
from diffusion_accel.search.settings import SearchSettings


def test_each_bundled_model_has_its_call_arguments_prompts_and_clip():
    assert default_call_kwargs("benchmark") == {"clean_caption": False, **BENCHMARK_GENERATION_KWARGS}
    assert default_call_kwargs("benchmark-video") == dict(BENCHMARK_VIDEO_GENERATION_KWARGS)
    assert default_call_kwargs("some/other-model") == {}
    assert BUNDLED_MODELS["benchmark-video"].kind == "video" and BUNDLED_MODELS["benchmark"].kind == "image"
    assert BUNDLED_MODELS["benchmark-video"].fid_reference is None  # no bundled real videos to compare with


def test_a_bundled_model_is_found_by_name_or_folder():
    assert bundled_model("benchmark") is BUNDLED_MODELS["benchmark"]
    assert bundled_model(benchmark_model_dir()) is BUNDLED_MODELS["benchmark"]
    assert bundled_model("benchmark-video").name == "benchmark-video"
    assert not is_bundled_model("some/other-model") and not is_bundled_model(object())


def test_bundled_prompt_sources_and_tool_defaults_follow_the_model():
    assert bundled_prompt_source("benchmark-video:train")[1] == "train"
    assert bundled_prompt_source("benchmark-video")[1] == "heldout"
    assert bundled_prompt_source("prompts.txt") is None
    texts = [p.text for p in load_prompts("benchmark-video:heldout")]
    assert texts == benchmark_video_prompts("heldout")
    assert EvalSettings(model="benchmark-video", out="x").prompts == "benchmark-video"
    assert EvalSettings(model="some/model", out="x").prompts == "benchmark"
    assert SearchSettings(model="benchmark-video").prompts == "benchmark-video:train"
    assert SearchSettings(model="benchmark-video", prompts="mine.txt").prompts == "mine.txt"


def test_an_unknown_split_of_a_bundled_prompt_set_is_one_clear_error():
    with pytest.raises(ValueError, match="split"):
        load_prompts("benchmark-video:validation")
