"""Shared builders for the evaluation tests: a tiny random CLIP, a tiny saved pipeline, configs."""

from __future__ import annotations

import os
import string

import torch
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

from diffusion_accel import AccelerationConfig

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HERE = os.path.dirname(os.path.abspath(__file__))
PARTI = os.path.join(REPO, "..", "shared", "data", "parti", "PartiPrompts.tsv")

# The tiny pipelines' call, shrunk to 32x32 and 3 steps; prompt/generator/output_type are set per item.
TINY_CALL = {"height": 32, "width": 32, "num_inference_steps": 3, "guidance_scale": 4.5,
             "use_resolution_binning": False, "clean_caption": False}


def tiny_clip(seed: int = 0) -> tuple[CLIPModel, CLIPProcessor]:
    """A randomly initialised CLIP (32x32 images, projection 16) with an in-memory letter tokenizer."""
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for letter in string.ascii_lowercase + string.digits:
        vocab[letter] = len(vocab)
        vocab[letter + "</w>"] = len(vocab)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[])
    config = CLIPConfig(
        text_config={"vocab_size": len(vocab), "hidden_size": 32, "intermediate_size": 64,
                     "num_hidden_layers": 2, "num_attention_heads": 4, "max_position_embeddings": 64,
                     "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                       "num_attention_heads": 4, "image_size": 32, "patch_size": 4},
        projection_dim=16,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(config).eval()
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return model, CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)


def save_tiny_clip(path: str) -> str:
    model, processor = tiny_clip()
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def save_tiny_pipeline(path: str, name: str = "pixart-alpha") -> str:
    from diffusion_accel.testing import tiny_pipeline

    tiny_pipeline(name, seed=0).save_pretrained(path)
    return path


def toy_config(*reuse_steps: int) -> AccelerationConfig:
    from eval_toy_technique import EvalToyReuseCache

    return AccelerationConfig(cache=EvalToyReuseCache(reuse_steps=tuple(reuse_steps)))


def subprocess_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([HERE, REPO, env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"  # same float reduction order in every process
    env.update(extra)
    return env
