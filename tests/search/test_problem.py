"""The genome (schedule <-> bits) and the seeded initial population."""

import numpy as np
import pytest

from diffusion_accel.caching import CacheSchedule
from diffusion_accel.search import ScheduleGenome
from diffusion_accel.search.problem import bits_to_str, str_to_bits
from diffusion_accel.search.seeding import heuristic_schedules, initial_population
from diffusion_accel.testing import tiny_pipeline


@pytest.fixture(scope="module")
def sd3():
    return tiny_pipeline("sd3")


def test_genome_holds_only_free_bits_and_round_trips(pixart, sd3):
    g = ScheduleGenome.for_model(pixart, 5)
    assert g.num_bits == 4 * 2 * 3
    rng = np.random.default_rng(0)
    for _ in range(5):
        bits = rng.random(g.num_bits) < 0.5
        schedule = g.decode(bits)
        assert schedule.compute[0].all()
        assert np.array_equal(g.encode(schedule), bits)
    # SD3: block 1 has no ff_context and neither block has attn2 -> those entries are not genes.
    g3 = ScheduleGenome.for_model(sd3, 3)
    assert g3.num_bits == 2 * 5
    zeros = g3.decode(np.zeros(g3.num_bits, dtype=bool))
    assert zeros.compute[1:, :, 1].all() and zeros.compute[1:, 1, 3].all()
    assert not zeros.compute[1:, 0, 0].any()


def test_genome_rejects_bad_input(pixart, sd3):
    g = ScheduleGenome.for_model(pixart, 4)
    with pytest.raises(ValueError, match="at least 2 steps"):
        ScheduleGenome.for_model(pixart, 1)
    with pytest.raises(ValueError, match="18"):
        g.decode(np.zeros(5, dtype=bool))
    with pytest.raises(ValueError, match="does not fit"):
        g.encode(CacheSchedule.full(pixart, 5))
    with pytest.raises(ValueError, match="does not fit"):
        g.encode(CacheSchedule.full(sd3, 4))
    with pytest.raises(ValueError, match="only '0' and '1'"):
        str_to_bits("01x")
    assert bits_to_str(str_to_bits("0110")) == "0110"


def test_heuristics_apply_only_where_they_make_sense(pixart, sd3):
    names = [s.name for s in heuristic_schedules(pixart, 8)]
    assert names[:3] == ["full", "fora-2", "fora-3"] and "tgate-4" in names and "delta-dit-2" in names
    assert "tgate-2" in names and "tgate-6" in names
    assert not any(n.startswith(("deepcache", "encoder-propagation")) for n in names)
    sd3_names = [s.name for s in heuristic_schedules(sd3, 8)]
    assert not any(n.startswith("tgate") for n in sd3_names)  # joint attention, no cross-attention
    unet_names = [s.name for s in heuristic_schedules(tiny_pipeline("sd15"), 8)]
    assert "deepcache-2" in unet_names


def test_initial_population_is_seeded_distinct_and_reproducible(pixart):
    g = ScheduleGenome.for_model(pixart, 6)
    names, bits = initial_population(pixart, g, 10, seed=3)
    assert bits.shape == (10, g.num_bits) and len({b.tobytes() for b in bits}) == 10
    assert names[0] == "full" and bits[0].all()
    assert np.array_equal(bits[1], g.encode(CacheSchedule.fora(pixart, 6, 2)))
    assert names[-1].startswith("random-")  # at least one random schedule for diversity
    again = initial_population(pixart, g, 10, seed=3)
    other = initial_population(pixart, g, 10, seed=4)
    assert np.array_equal(again[1], bits) and not np.array_equal(other[1], bits)
    names2, bits2 = initial_population(pixart, g, 2, seed=0)
    assert names2 == ["full", "fora-2"] and bits2.shape == (2, g.num_bits)


def test_block_genome_switches_whole_blocks(pixart, sd3):
    g = ScheduleGenome.for_model(pixart, 5, granularity="block")
    assert g.num_bits == 4 * 2 and g.signature()["granularity"] == "block"
    rng = np.random.default_rng(1)
    for _ in range(5):
        bits = rng.random(g.num_bits) < 0.5
        schedule = g.decode(bits)
        assert schedule.compute[0].all()
        assert np.array_equal(schedule.compute[1:].all(axis=2), schedule.compute[1:].any(axis=2))  # whole blocks
        assert np.array_equal(schedule.compute[1:, :, 0].reshape(-1), bits)
        assert np.array_equal(g.encode(schedule), bits)
    fora = CacheSchedule.fora(pixart, 5, 2)
    assert g.decode(g.encode(fora)) == fora
    # SD3: components a block lacks stay True whatever the block's gene
    g3 = ScheduleGenome.for_model(sd3, 3, granularity="block")
    zeros = g3.decode(np.zeros(g3.num_bits, dtype=bool))
    assert zeros.compute[1:, :, 1].all() and zeros.compute[1:, 1, 3].all() and not zeros.compute[1:, 0, 0].any()
    assert g3.encode(zeros).tolist() == [False] * g3.num_bits


def test_block_genome_refuses_or_projects_partial_blocks(pixart):
    g = ScheduleGenome.for_model(pixart, 8, granularity="block")
    tgate = CacheSchedule.tgate(pixart, 8, 4)  # reuses cross-attention only: no whole-block gene
    with pytest.raises(ValueError, match="project=True"):
        g.encode(tgate)
    assert g.encode(tgate, project=True).all()  # its nearest block schedule computes everything
    with pytest.raises(ValueError, match="granularity"):
        ScheduleGenome.for_model(pixart, 8, granularity="layer")
    names, bits = initial_population(pixart, g, 12, seed=0)
    assert len({b.tobytes() for b in bits}) == 12 and not any(n.startswith("tgate") for n in names)
    assert names[:3] == ["full", "fora-2", "fora-3"]
