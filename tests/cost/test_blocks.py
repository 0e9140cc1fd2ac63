"""BlockComputeCounter: counts the block computations that really ran, for any caching method."""

import pytest
import torch

import diffusion_accel
from diffusion_accel import AccelerationConfig
from diffusion_accel.caching import CacheSchedule, StaticCacheConfig
from diffusion_accel.cost.blocks import BlockComputeCounter, first_projection
from diffusion_accel.testing import tiny_call_kwargs, tiny_pipeline

STEPS = 4
#: denoiser calls per step: PixArt batches both CFG branches into one call, Wan calls twice
CALLS_PER_STEP = {"pixart-alpha": 1, "wan": 2}


def _run(pipe, name, steps=STEPS):
    kwargs = tiny_call_kwargs(name, num_inference_steps=steps)
    with BlockComputeCounter(pipe) as counter:
        pipe(**kwargs, generator=torch.Generator().manual_seed(0))
    return counter


def test_pixart_projections_are_the_first_inner_projections():
    pipe = tiny_pipeline("pixart-alpha")
    block = pipe.transformer.transformer_blocks[0]
    assert first_projection(block.attn1) is block.attn1.to_q
    assert first_projection(block.attn2) is block.attn2.to_q
    assert first_projection(block.ff) is block.ff.net[0].proj


def test_component_without_weights_is_a_value_error():
    with pytest.raises(ValueError, match="no weight matrix"):
        first_projection(torch.nn.GELU())


@pytest.mark.parametrize("name", ["pixart-alpha", "wan"])
def test_full_compute_counts_blocks_components_steps_calls(name):
    pipe = tiny_pipeline(name)
    counter = _run(pipe, name)
    blocks = len(pipe.transformer.transformer_blocks if name != "wan" else pipe.transformer.blocks)
    assert counter.num_slots == blocks * 3
    assert counter.total == blocks * 3 * STEPS * CALLS_PER_STEP[name]
    assert set(counter.counts.values()) == {STEPS * CALLS_PER_STEP[name]}


@pytest.mark.parametrize("name", ["pixart-alpha", "wan"])
@pytest.mark.parametrize("reuse", ["outputs", "block_residual"])
def test_fora2_counts_exactly_the_computed_steps(name, reuse):
    pipe = tiny_pipeline(name)
    full = _run(pipe, name)
    diffusion_accel.apply(pipe, AccelerationConfig(
        cache=StaticCacheConfig(CacheSchedule.fora(pipe, STEPS, 2), reuse=reuse)))
    accelerated = _run(pipe, name)
    diffusion_accel.remove(pipe)
    # FORA-2 over 4 steps computes steps 0 and 2 only
    assert accelerated.total == full.total // 2
    assert set(accelerated.counts.values()) == {2 * CALLS_PER_STEP[name]}
    assert BlockComputeCounter.ratio(full, accelerated) == 2.0
    assert BlockComputeCounter.ratio(full.total, accelerated.total) == 2.0


def test_removing_the_counter_removes_its_hooks():
    pipe = tiny_pipeline("pixart-alpha")
    projection = pipe.transformer.transformer_blocks[0].attn1.to_q
    before = dict(projection._forward_hooks)
    counter = BlockComputeCounter(pipe)
    with counter:
        assert len(projection._forward_hooks) == len(before) + 1
        assert counter.active
    assert dict(projection._forward_hooks) == before and not counter.active
    pipe(**tiny_call_kwargs("pixart-alpha", num_inference_steps=2), generator=torch.Generator().manual_seed(0))
    assert counter.total == 0


def test_attach_twice_is_an_error_and_baseline_must_have_run():
    pipe = tiny_pipeline("pixart-alpha")
    counter = BlockComputeCounter(pipe.transformer).attach()
    with pytest.raises(ValueError, match="already attached"):
        counter.attach()
    counter.remove()
    with pytest.raises(ValueError, match="baseline ran no block computations"):
        BlockComputeCounter.ratio(counter, 5)


def test_token_counts_weigh_calls_by_the_rows_projected_and_see_a_lower_resolution():
    """Calls alone miss Bottleneck Sampling (every block still runs, on fewer tokens)."""
    from diffusion_accel.sampling import BottleneckSamplingConfig

    pipe = tiny_pipeline("wan")
    full = _run(pipe, "wan")
    per_call = {full.token_counts[k] / full.counts[k] for k in full.counts}
    assert len(per_call) == 1 and full.token_total == full.total * per_call.pop()
    diffusion_accel.apply(pipe, AccelerationConfig(sampling=BottleneckSamplingConfig(stages=((0.25, 1), (0.5, 2), (0.25, 1)))))
    low = _run(pipe, "wan")
    diffusion_accel.remove(pipe)
    assert low.total == full.total  # every block ran at every step
    # the middle 2 of 4 steps at half the height and width: a quarter of the tokens
    assert low.token_total == full.token_total // 2 + full.token_total // 8
