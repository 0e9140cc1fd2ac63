import json

import numpy as np
import pytest

from diffusion_accel.caching import CacheSchedule
from diffusion_accel.testing import tiny_pipeline


@pytest.fixture(scope="module")
def pixart():
    return tiny_pipeline("pixart-alpha").transformer


@pytest.fixture(scope="module")
def unet():
    return tiny_pipeline("sd15").unet


def test_full_and_fora(pixart):
    full = CacheSchedule.full(pixart, 5)
    assert full.compute.shape == (5, 2, 3) and full.compute.all()
    assert full.components == ("attn1", "attn2", "ff")
    fora = CacheSchedule.fora(pixart, 6, 3)
    assert fora.compute[:, 0, 0].tolist() == [True, False, False, True, False, False]
    assert (fora.compute == fora.compute[:, :1, :1]).all()


def test_delta_dit_caches_back_blocks_early_and_front_blocks_late(pixart):
    s = CacheSchedule.delta_dit(pixart, 8, interval=2, gate_step=4, num_cached_blocks=1)
    front, back = s.compute[:, 0, 0], s.compute[:, 1, 0]
    assert back.tolist() == [True, False, True, False, True, True, True, True]
    assert front.tolist() == [True, True, True, True, True, False, True, False]


def test_tgate_freezes_only_cross_attention(pixart):
    s = CacheSchedule.tgate(pixart, 6, gate_step=2)
    assert s.compute[:, :, 1].tolist() == [[True, True]] * 2 + [[False, False]] * 4
    assert s.compute[:, :, [0, 2]].all()


def test_tgate_on_a_joint_attention_model_is_refused():
    with pytest.raises(ValueError, match="have none: their text enters through joint attention"):
        CacheSchedule.tgate(tiny_pipeline("flux").transformer, 6, 2)


def test_tgate_on_the_unet_is_refused_with_the_true_reason(unet):
    """The SD1.5 UNet has cross-attention, inside whole-block components: it used to be refused
    because "text enters through joint attention", which is false for a UNet."""
    with pytest.raises(ValueError, match="schedules whole blocks") as error:
        CacheSchedule.tgate(unet, 6, 2)
    assert "joint attention" not in str(error.value) and "deepcache" in str(error.value)


def test_deepcache_and_encoder_propagation(unet):
    names = ["down_blocks", "mid_block", "up_blocks"]
    s = CacheSchedule.deepcache(unet, 4, interval=2)
    blocks = s.compute[1, :, 0]
    n_down = len(unet.down_blocks)
    assert blocks[0] and blocks[-1] and not blocks[1:-1].any()
    assert s.compute[0].all() and s.compute[2].all()
    e = CacheSchedule.encoder_propagation(unet, 4, key_steps=[0, 3])
    assert not e.compute[1, : n_down + 1, 0].any() and e.compute[1, n_down + 1 :, 0].all()
    assert e.compute[3].all()
    with pytest.raises(ValueError, match="UNet schedule"):
        CacheSchedule.deepcache(tiny_pipeline("pixart-alpha").transformer, 4, 2)
    del names


def test_step_zero_must_compute(pixart):
    compute = np.ones((3, 2, 3), dtype=bool)
    compute[0, 1, 2] = False
    with pytest.raises(ValueError, match="Step 0 must compute every component: there is no earlier output"):
        CacheSchedule.from_model(pixart, compute)


def test_wrong_shape(pixart):
    with pytest.raises(ValueError, match=r"shape \(steps, 2, 3\)"):
        CacheSchedule.from_model(pixart, np.ones((3, 4, 3), dtype=bool))
    with pytest.raises(ValueError, match="3-D"):
        CacheSchedule(np.ones((3, 2)), ("a",), "pixart")


def test_json_round_trip(tmp_path, pixart):
    s = CacheSchedule.random(pixart, 7, 0.4, seed=3)
    s.save(tmp_path / "s.json")
    data = json.loads((tmp_path / "s.json").read_text())
    assert data["family"] == "pixart" and data["steps"] == 7 and data["components"] == ["attn1", "attn2", "ff"]
    loaded = CacheSchedule.load(tmp_path / "s.json")
    assert loaded == s and loaded.name == s.name


def test_from_dict_errors(pixart):
    data = CacheSchedule.full(pixart, 2).to_dict()
    with pytest.raises(ValueError, match="Unknown field"):
        CacheSchedule.from_dict({**data, "extra": 1})
    with pytest.raises(ValueError, match="only '0' and '1'"):
        CacheSchedule.from_dict({**data, "compute": ["111 121", "111 111"]})
    with pytest.raises(ValueError, match="steps=3"):
        CacheSchedule.from_dict({**data, "steps": 3})


def test_check_model_rejects_other_family_and_unknown_components(pixart):
    flux = tiny_pipeline("flux").transformer
    s = CacheSchedule.full(pixart, 3)
    with pytest.raises(ValueError, match="made for the 'pixart' family"):
        s.check_model(flux)
    renamed = CacheSchedule(s.compute, ("attn1", "attn2", "mlp"), "pixart")
    with pytest.raises(ValueError, match=r"unknown: \['mlp'\]"):
        renamed.check_model(pixart)


def test_resample_keeps_relative_timing(pixart):
    s = CacheSchedule.tgate(pixart, 10, gate_step=5)
    r = s.resample(20)
    assert r.num_steps == 20 and r.compute[0].all()
    cross = r.compute[:, 0, 1]
    assert cross[:10].all() and not cross[11:].any()
    assert s.resample(10) is s
    assert s.resample(20).resample(10) == s
    with pytest.raises(ValueError, match="positive integer"):
        s.resample(0)


def _runs(column):
    """Lengths of the reuse runs of a bool column: interior runs, then the final run."""
    computes = np.flatnonzero(column)
    return [int(b - a - 1) for a, b in zip(computes[:-1], computes[1:])], int(len(column) - 1 - computes[-1])


def test_resample_keeps_fora_and_delta_dit_spacing(pixart):
    """FORA-2 from 20 steps used to give block 0 `1111100000` at 10 steps (five reuses in a row)."""
    resampled = CacheSchedule.fora(pixart, 20, 2).resample(10)
    assert resampled.compute[:, 0, 0].tolist() == [True, False] * 5
    for source, target in ((20, 10), (10, 20), (20, 7), (7, 20), (50, 28), (28, 50)):
        for interval in (2, 3):
            assert CacheSchedule.fora(pixart, source, interval).resample(target) == CacheSchedule.fora(
                pixart, target, interval
            ), (source, target, interval)
    assert CacheSchedule.delta_dit(pixart, 20, interval=3).resample(10) == CacheSchedule.delta_dit(
        pixart, 10, interval=3
    )


@pytest.mark.parametrize("source, target", [(20, 10), (10, 20), (20, 7), (7, 20), (50, 28), (28, 50), (9, 1)])
def test_resample_never_lengthens_reuse_runs_and_keeps_compute(pixart, source, target):
    schedules = [CacheSchedule.random(pixart, source, p, seed=s) for p in (0.2, 0.5, 0.8) for s in range(4)]
    schedules += [CacheSchedule.delta_dit(pixart, source, 2),
                  CacheSchedule.tgate(pixart, source, max(1, source // 2))]
    for schedule in schedules:
        new = schedule.resample(target)
        assert new.num_steps == target and new.compute[0].all()
        for b in range(schedule.num_blocks):
            for c in range(len(schedule.components)):
                old_col, new_col = schedule.compute[:, b, c], new.compute[:, b, c]
                (old_inner, old_final), (new_inner, new_final) = _runs(old_col), _runs(new_col)
                longest = max(old_inner + [old_final])
                # interior runs never longer than the source's; a final (frozen) run keeps its share of time
                assert max(new_inner, default=0) <= max(old_inner, default=0), (schedule.name, b, c)
                assert new_final <= max(longest, -(-old_final * target // source)), (schedule.name, b, c)
                # equal compute: the compute fraction of every column is kept
                assert abs(new_col.mean() - old_col.mean()) <= 1 / target + 1 / source, (schedule.name, b, c)
