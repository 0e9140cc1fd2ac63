import json

import pytest

from diffusion_accel import AccelerationConfig
from diffusion_accel.caching import CacheSchedule, DynamicCacheConfig, StaticCacheConfig
from diffusion_accel.testing import tiny_pipeline


@pytest.fixture(scope="module")
def schedule():
    return CacheSchedule.fora(tiny_pipeline("pixart-alpha").transformer, num_steps=4, interval=2)


def test_empty_config_round_trips(tmp_path):
    cfg = AccelerationConfig()
    cfg.save(tmp_path / "c.json")
    assert AccelerationConfig.load(tmp_path / "c.json") == cfg
    assert json.loads((tmp_path / "c.json").read_text())["version"] == AccelerationConfig.version


def test_cache_configs_round_trip(tmp_path, schedule):
    for cache in (StaticCacheConfig(schedule, auto_resample=True), DynamicCacheConfig(threshold=0.2)):
        cfg = AccelerationConfig(cache=cache)
        cfg.save(tmp_path / "c.json")
        loaded = AccelerationConfig.load(tmp_path / "c.json")
        assert loaded == cfg
        assert type(loaded.cache) is type(cache)


def test_config_is_frozen(schedule):
    cfg = AccelerationConfig(cache=StaticCacheConfig(schedule))
    with pytest.raises(Exception):
        cfg.cache = None


def test_unknown_top_level_field_is_rejected():
    with pytest.raises(ValueError, match=r"Unknown field\(s\) \['cahce'\]"):
        AccelerationConfig.from_dict({"cahce": None})


def test_unknown_technique_field_is_rejected():
    data = AccelerationConfig(cache=DynamicCacheConfig()).to_dict()
    data["cache"]["treshold"] = 0.3
    with pytest.raises(ValueError, match="unknown field.*treshold.*Known fields"):
        AccelerationConfig.from_dict(data)


def test_wrong_type_is_rejected():
    data = AccelerationConfig(cache=DynamicCacheConfig()).to_dict()
    data["cache"]["max_consecutive_skips"] = "three"
    with pytest.raises(TypeError, match="max_consecutive_skips: expected an integer"):
        AccelerationConfig.from_dict(data)


def test_unknown_technique_type_is_rejected():
    with pytest.raises(ValueError, match="Unknown technique config type 'NoSuchCache'"):
        AccelerationConfig.from_dict({"cache": {"type": "NoSuchCache"}})


def test_config_of_the_wrong_kind_in_a_field():
    with pytest.raises(TypeError, match="is a 'cache' technique.*AccelerationConfig\\(cache=...\\)"):
        AccelerationConfig(quant=DynamicCacheConfig())
    with pytest.raises(TypeError, match="must be a technique config or None"):
        AccelerationConfig(cache="fora")


def test_technique_of_the_wrong_kind_in_json():
    data = {"quant": DynamicCacheConfig().to_dict()}
    with pytest.raises(TypeError, match="cannot go in AccelerationConfig.quant"):
        AccelerationConfig.from_dict(data)


def test_newer_version_is_refused():
    with pytest.raises(ValueError, match="Upgrade diffusion-accel"):
        AccelerationConfig.from_dict({"version": AccelerationConfig.version + 1})


def test_unreadable_and_invalid_files(tmp_path):
    with pytest.raises(ValueError, match="Cannot read acceleration config"):
        AccelerationConfig.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        AccelerationConfig.load(tmp_path / "bad.json")


def test_apply_rejects_a_bare_technique_config():
    import diffusion_accel

    with pytest.raises(TypeError, match="AccelerationConfig"):
        diffusion_accel.apply(tiny_pipeline("pixart-alpha"), DynamicCacheConfig())
