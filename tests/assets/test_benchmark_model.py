"""The bundled PixArt-alpha pipeline loads offline and generates reproducibly."""

from __future__ import annotations

import pytest
import torch
from diffusers import PixArtAlphaPipeline, PixArtTransformer2DModel

from diffusion_accel.assets import BENCHMARK_GENERATION_KWARGS, benchmark_model_dir, benchmark_prompts


@pytest.fixture(scope="module")
def pipe():
    pipeline = PixArtAlphaPipeline.from_pretrained(benchmark_model_dir(), local_files_only=True)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def _generate(pipe, prompts, seeds, steps=4):
    kwargs = dict(BENCHMARK_GENERATION_KWARGS, num_inference_steps=steps)
    generators = [torch.Generator().manual_seed(seed) for seed in seeds]
    return pipe(prompts, generator=generators, output_type="pt", **kwargs).images


def test_architecture_is_standard_pixart_with_depth(pipe):
    transformer = pipe.transformer
    assert type(transformer) is PixArtTransformer2DModel
    assert len(transformer.transformer_blocks) >= 8
    assert transformer.config.num_attention_heads * transformer.config.attention_head_dim >= 128
    assert all(p.dtype == torch.float32 for p in pipe.transformer.parameters())


def test_generation_is_bit_for_bit_reproducible(pipe):
    prompts = benchmark_prompts("heldout")[:2]
    first = _generate(pipe, prompts, [0, 1])
    second = _generate(pipe, prompts, [0, 1])
    assert first.shape == (2, 3, 32, 32)
    assert torch.equal(first, second)
    other_seeds = _generate(pipe, prompts, [2, 3])
    assert not torch.equal(first, other_seeds)
