"""Per-item call inputs (prompts or call-argument mappings), deprecated names, acceleration_restored."""

import warnings

import pytest

import diffusion_accel
from diffusion_accel import AccelerationConfig
from diffusion_accel.api import acceleration_restored, acceleration_state
from diffusion_accel.call_inputs import batch_inputs, check_call_inputs, check_item_inputs, input_label
from diffusion_accel.caching import DynamicCacheConfig
from diffusion_accel.eval.generate import item_call_inputs, make_items
from diffusion_accel.eval.prompts import load_prompts
from diffusion_accel.testing import tiny_pipeline


def test_batches_of_prompts_and_of_call_arguments():
    assert batch_inputs(["a", "b"]) == {"prompt": ["a", "b"]}
    assert batch_inputs([{"class_labels": 1}, {"class_labels": 2}]) == {"class_labels": [1, 2]}
    assert input_label({"class_labels": 3, "guidance_scale": 2.0}) == "class_labels=3, guidance_scale=2.0"
    with pytest.raises(ValueError, match="same call arguments"):
        batch_inputs(["a", {"class_labels": 1}])
    with pytest.raises(ValueError, match=r"prompts\[1\]: .*non-empty mapping"):
        check_item_inputs(["a", {}], "prompts")
    with pytest.raises(ValueError, match="not one item"):
        check_item_inputs("a cat", "prompts")


def test_call_inputs_are_checked_against_the_pipelines_call():
    pixart, dit = tiny_pipeline("pixart-alpha"), tiny_pipeline("dit")
    check_call_inputs(pixart, ["prompt"], "the prompts")
    check_call_inputs(dit, ["class_labels"], "the prompts")
    diffusion_accel.apply(dit, AccelerationConfig())  # the accelerated class's (*args, **kwargs) is looked through
    with pytest.raises(ValueError, match=r"DiTPipeline takes no \['prompt'\] argument, which the prompts set"):
        check_call_inputs(dit, ["prompt"], "the prompts")
    check_call_inputs(pixart, ["class_labels"], "the prompts")  # PixArt's __call__ takes **kwargs: no check


def test_prompt_sources_with_per_item_call_arguments(tmp_path):
    listed = load_prompts([{"class_labels": 1}, {"class_labels": 5}])
    assert [(p.index, p.text, p.inputs) for p in listed] == [(0, "class_labels=1", {"class_labels": 1}),
                                                            (1, "class_labels=5", {"class_labels": 5})]
    path = tmp_path / "labels.jsonl"
    path.write_text('{"inputs": {"class_labels": 1}, "category": "fish"}\n{"inputs": {"class_labels": 5}}\n')
    read = load_prompts(path, categories=["fish"])
    assert [(p.text, p.inputs, p.category) for p in read] == [("class_labels=1", {"class_labels": 1}, "fish")]
    items = make_items(read, num_images=2, seed=0)
    assert item_call_inputs(items) == {"class_labels": [1, 1]}
    assert "inputs" in items[0].record() and "inputs" not in make_items(load_prompts(["a"]))[0].record()
    path.write_text('{"inputs": 3}\n')
    with pytest.raises(ValueError, match="entry 0: 'inputs' must be an object"):
        load_prompts(path)


def test_moved_names_still_resolve_with_a_deprecation_warning():
    import diffusion_accel.caching as caching
    from diffusion_accel import cost, search

    for name, new in [("search_schedule", search.search_schedule), ("pick", search.pick), ("macs", cost.macs),
                      ("profile_macs", cost.profile_macs), ("MacProfile", cost.MacProfile), ("search", search)]:
        with pytest.warns(DeprecationWarning, match=f"diffusion_accel.caching.{name} moved to"):
            assert getattr(caching, name) is new
    with pytest.raises(AttributeError):
        caching.no_such_name
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        from diffusion_accel.caching import CacheSchedule, StaticCacheConfig  # noqa: F401  (not moved)


def test_register_grid_reader_is_deprecated_and_sets_the_adapters_token_grid():
    from diffusers import DiTTransformer2DModel

    from diffusion_accel.models import adapter_for_class, register_model_adapter
    from diffusion_accel.sparse_attn.context import register_grid_reader

    original = adapter_for_class(DiTTransformer2DModel)
    try:
        with pytest.warns(DeprecationWarning, match="token_grid"):
            register_grid_reader("dit", lambda model, args, kwargs: (1, 2, 8))
        assert adapter_for_class(DiTTransformer2DModel).token_grid(None, (), {}) == (1, 2, 8)
    finally:
        register_model_adapter(DiTTransformer2DModel, original)
    with pytest.warns(DeprecationWarning), pytest.raises(ValueError, match="No model adapter of family 'sdxl'"):
        register_grid_reader("sdxl", lambda model, args, kwargs: None)


def test_acceleration_restored_gives_the_pipeline_its_config_back():
    pipe = tiny_pipeline("pixart-alpha")
    config = AccelerationConfig(cache=DynamicCacheConfig(threshold=0.1))
    with acceleration_restored(pipe) as before:
        assert before is None
        diffusion_accel.apply(pipe, config)
    assert acceleration_state(pipe) is None
    diffusion_accel.apply(pipe, config)
    state = acceleration_state(pipe)
    with acceleration_restored(pipe) as before:
        assert before == config
    assert acceleration_state(pipe) is state  # untouched: not re-applied
    with pytest.raises(RuntimeError), acceleration_restored(pipe):
        diffusion_accel.remove(pipe)
        raise RuntimeError
    assert acceleration_state(pipe).config == config
