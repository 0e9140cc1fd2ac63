"""Caching under ``torch.compile`` (``aot_eager`` backend): both orders of compile and apply work,
give the eager results, and recompile only per shape and kind of hooked module, never per step,
block, branch or schedule."""

import pytest
import torch
from torch._dynamo.convert_frame import input_codes
from torch._dynamo.eval_frame import _debug_get_cache_entry_list

import diffusion_accel
from diffusion_accel import AccelerationConfig
from diffusion_accel.api import acceleration_state
from diffusion_accel.caching import CacheSchedule, DynamicCacheConfig, StaticCacheConfig
from diffusion_accel.testing import tiny_pipeline

NAME = "pixart-alpha"


def _configs(pipe):
    return {
        "fora": StaticCacheConfig(CacheSchedule.fora(pipe, 6, 2), auto_resample=True),
        "random-block-residual": StaticCacheConfig(
            CacheSchedule.random(pipe, 6, 0.5, seed=1), auto_resample=True, reuse="block_residual"
        ),
        "dynamic": DynamicCacheConfig(threshold=1e9, max_consecutive_skips=1),
    }


def _cache_entries() -> dict[str, int]:
    """Compiled variants per code object dynamo has seen."""
    out = {}
    for ref in input_codes.seen:
        code = ref()
        entries = _debug_get_cache_entry_list(code) if code is not None else []
        if entries:
            out[f"{code.co_name} {code.co_filename}:{code.co_firstlineno}"] = len(entries)
    return out


@pytest.mark.slow
@pytest.mark.parametrize(
    "kind, order",
    [("fora", "compile-first"), ("random-block-residual", "apply-first"), ("dynamic", "compile-first")],
)
def test_compiled_denoiser_with_caching(kind, order, run_pipe):
    torch._dynamo.reset()
    eager = tiny_pipeline(NAME)
    config = AccelerationConfig(cache=_configs(eager)[kind])
    diffusion_accel.apply(eager, config)
    pipe = tiny_pipeline(NAME)
    if order == "apply-first":
        diffusion_accel.apply(pipe, config)
        pipe.transformer = torch.compile(pipe.transformer, backend="aot_eager")
    else:  # used to raise "no model adapter for OptimizedModule"
        pipe.transformer = torch.compile(pipe.transformer, backend="aot_eager")
        diffusion_accel.apply(pipe, config)

    # Decisions that used to be guarded (step, block, component) hit the recompile limit: fail hard if any
    # code object needs more variants than the default limit allows.
    with torch._dynamo.config.patch(recompile_limit=8, fail_on_recompile_limit_hit=True):
        compiled = run_pipe(pipe, NAME, num_inference_steps=6)
    assert torch.allclose(compiled, run_pipe(eager, NAME, num_inference_steps=6), atol=1e-6)
    report = acceleration_state(pipe).report()["cache"]
    assert report.get("component_calls_reused", report.get("steps_skipped")) > 0  # caching really ran
    entries = _cache_entries()
    # The hooks' own code compiles one variant per kind of hooked module (attn1, attn2, ff): at most
    # 2 recompiles, however many steps, blocks and branches.
    ours = {k: n for k, n in entries.items() if "diffusion_accel" in k}
    assert ours and max(ours.values()) <= 3, ours

    # Same shapes, another step count (so, for static caching, another resampled schedule) and other
    # skip decisions: nothing recompiles, and the results are still the eager ones.
    with torch._dynamo.config.patch(error_on_recompile=True):
        for steps in (6, 4):
            compiled = run_pipe(pipe, NAME, num_inference_steps=steps)
            assert torch.allclose(compiled, run_pipe(eager, NAME, num_inference_steps=steps), atol=1e-6)
    assert _cache_entries() == entries
    torch._dynamo.reset()
