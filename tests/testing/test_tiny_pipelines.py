"""Tests for diffusion_accel.testing: tiny offline pipelines of real diffusers architectures."""

from __future__ import annotations

import socket

import diffusers
import pytest
import torch
import transformers

from diffusion_accel.testing import TINY_PIPELINES, tiny_call_kwargs, tiny_pipeline
from diffusion_accel.testing.tokenizers import PROMPT_WORDS, tiny_clip_tokenizer, tiny_t5_tokenizer

# name -> (pipeline class, denoiser attribute, VAE class, scheduler class, text encoder classes)
EXPECTED = {
    "pixart-alpha": (
        diffusers.PixArtAlphaPipeline,
        "transformer",
        diffusers.AutoencoderKL,
        diffusers.DPMSolverMultistepScheduler,
        {"text_encoder": transformers.T5EncoderModel},
    ),
    "pixart-sigma": (
        diffusers.PixArtSigmaPipeline,
        "transformer",
        diffusers.AutoencoderKL,
        diffusers.DPMSolverMultistepScheduler,
        {"text_encoder": transformers.T5EncoderModel},
    ),
    "sd3": (
        diffusers.StableDiffusion3Pipeline,
        "transformer",
        diffusers.AutoencoderKL,
        diffusers.FlowMatchEulerDiscreteScheduler,
        {
            "text_encoder": transformers.CLIPTextModelWithProjection,
            "text_encoder_2": transformers.CLIPTextModelWithProjection,
            "text_encoder_3": transformers.T5EncoderModel,
        },
    ),
    "flux": (
        diffusers.FluxPipeline,
        "transformer",
        diffusers.AutoencoderKL,
        diffusers.FlowMatchEulerDiscreteScheduler,
        {"text_encoder": transformers.CLIPTextModel, "text_encoder_2": transformers.T5EncoderModel},
    ),
    "cogvideox": (
        diffusers.CogVideoXPipeline,
        "transformer",
        diffusers.AutoencoderKLCogVideoX,
        diffusers.CogVideoXDDIMScheduler,
        {"text_encoder": transformers.T5EncoderModel},
    ),
    "wan": (
        diffusers.WanPipeline,
        "transformer",
        diffusers.AutoencoderKLWan,
        diffusers.UniPCMultistepScheduler,
        {"text_encoder": transformers.UMT5EncoderModel},
    ),
    "sd15": (
        diffusers.StableDiffusionPipeline,
        "unet",
        diffusers.AutoencoderKL,
        diffusers.DDIMScheduler,
        {"text_encoder": transformers.CLIPTextModel},
    ),
    "dit": (
        diffusers.DiTPipeline,
        "transformer",
        diffusers.AutoencoderKL,
        diffusers.DDIMScheduler,
        {},  # class-conditioned: no text encoder
    ),
}

# Denoiser calls per step and batch size per call with the default kwargs (one prompt, CFG on).
CALLS_PER_STEP = {
    "pixart-alpha": (1, 2),
    "pixart-sigma": (1, 2),
    "sd3": (1, 2),
    "flux": (1, 1),  # guidance-distilled: the guidance scale is an input, not a second branch
    "cogvideox": (1, 2),
    "wan": (2, 1),
    "sd15": (1, 2),
    "dit": (1, 2),
}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These models are far too small to gain from intra-op threads, and on a shared 2-core machine
    (or under ``pytest -n 2``) extra OpenMP threads make each call 10x+ slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True, scope="module")
def no_network():
    """Any attempt to open a network connection fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args!r}")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", refuse)
        mp.setattr(socket.socket, "connect_ex", refuse)
        mp.setattr(socket, "create_connection", refuse)
        yield


def _output(pipe, name, seed=0, **overrides):
    out = pipe(**tiny_call_kwargs(name, **overrides), generator=torch.Generator().manual_seed(seed))
    return out.frames if hasattr(out, "frames") else out.images


def _expected_shape(name):
    kw = tiny_call_kwargs(name)
    height, width = kw.get("height", 64), kw.get("width", 64)  # DiT: fixed by the transformer's sample_size
    if "num_frames" in kw:
        return (1, kw["num_frames"], 3, height, width)
    return (1, 3, height, width)


def test_names():
    assert TINY_PIPELINES == ("pixart-alpha", "pixart-sigma", "sd3", "flux", "cogvideox", "wan", "sd15", "dit")
    assert set(EXPECTED) == set(TINY_PIPELINES)


@pytest.mark.parametrize("name", TINY_PIPELINES)
def test_real_classes(name):
    pipe_cls, denoiser, vae_cls, scheduler_cls, encoders = EXPECTED[name]
    pipe = tiny_pipeline(name)
    assert type(pipe) is pipe_cls
    assert type(pipe.vae) is vae_cls
    assert type(pipe.scheduler) is scheduler_cls
    for attr, cls in encoders.items():
        assert type(getattr(pipe, attr)) is cls, attr
    model = getattr(pipe, denoiser)
    assert isinstance(model, diffusers.ModelMixin)
    assert all(not m.training for m in pipe.components.values() if isinstance(m, torch.nn.Module))
    assert all(p.dtype == torch.float32 and p.device.type == "cpu" for p in model.parameters())
    if name == "flux":
        assert len(model.transformer_blocks) == 2 and len(model.single_transformer_blocks) == 2
    elif name == "sd15":
        assert len(model.down_blocks) == 2 and len(model.up_blocks) == 2
    elif name == "wan":
        assert len(model.blocks) == 2
    else:
        assert len(model.transformer_blocks) == 2


@pytest.mark.parametrize("name", TINY_PIPELINES)
def test_runs_and_is_deterministic(name):
    """Default kwargs: finite outputs of the documented shape, CFG active (batched, or two calls
    per step), and two builds with the same seed give identical bits for the same generator."""
    rng_before = torch.get_rng_state()
    first = tiny_pipeline(name, seed=0)
    second = tiny_pipeline(name, seed=0)
    assert torch.equal(torch.get_rng_state(), rng_before), "building must not touch the global RNG"

    batches = []
    hook = getattr(first, EXPECTED[name][1]).register_forward_pre_hook(
        lambda module, args, kwargs: batches.append((args[0] if args else kwargs["hidden_states"]).shape[0]),
        with_kwargs=True,
    )
    try:
        out = _output(first, name, seed=1)
    finally:
        hook.remove()
    calls, batch = CALLS_PER_STEP[name]
    assert batches == [batch] * (calls * tiny_call_kwargs(name)["num_inference_steps"])

    assert out.shape == _expected_shape(name)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert out.min() >= 0 and out.max() <= 1 and out.std() > 0
    assert torch.equal(_output(second, name, seed=1), out)
    assert not torch.equal(_output(second, name, seed=2), out)


@pytest.mark.parametrize("name", TINY_PIPELINES)
def test_seed_changes_weights(name):
    a, b = tiny_pipeline(name, seed=0), tiny_pipeline(name, seed=1)
    denoiser = EXPECTED[name][1]
    pa, pb = getattr(a, denoiser).state_dict(), getattr(b, denoiser).state_dict()
    assert pa.keys() == pb.keys()
    assert any(not torch.equal(pa[k], pb[k]) for k in pa)


def test_flux_true_cfg_two_calls_per_step():
    pipe = tiny_pipeline("flux")
    calls = []
    hook = pipe.transformer.register_forward_pre_hook(lambda module, args: calls.append(1))
    try:
        plain = _output(pipe, "flux")
        n_plain = len(calls)
        cfg = _output(pipe, "flux", true_cfg_scale=2.0, negative_prompt="blurry dark")
    finally:
        hook.remove()
    steps = tiny_call_kwargs("flux")["num_inference_steps"]
    assert n_plain == steps and len(calls) - n_plain == 2 * steps
    assert cfg.shape == plain.shape and torch.isfinite(cfg).all()
    assert not torch.equal(cfg, plain)


def test_pixart_variants_differ():
    a = _output(tiny_pipeline("pixart-alpha"), "pixart-alpha")
    s = _output(tiny_pipeline("pixart-sigma"), "pixart-sigma")
    assert not torch.equal(a, s)


def test_unknown_name():
    with pytest.raises(ValueError, match="pixart-alpha.*sd15"):
        tiny_pipeline("sdxl")
    with pytest.raises(ValueError, match="Unknown tiny pipeline 'sdxl'"):
        tiny_call_kwargs("sdxl")


@pytest.mark.parametrize(
    "bad",
    [
        {"seed": -1},
        {"seed": 0.5},
        {"seed": True},
        {"dtype": torch.int8},
        {"dtype": "fp16"},
        {"device": "gpu7"},
    ],
)
def test_bad_arguments(bad):
    with pytest.raises(ValueError):
        tiny_pipeline("sd15", **bad)


def test_call_kwargs():
    for name in TINY_PIPELINES:
        kw = tiny_call_kwargs(name)
        assert "generator" not in kw
        assert kw["num_inference_steps"] >= 2 and kw["guidance_scale"] > 1
        assert kw["output_type"] == "pt"
        if name == "dit":  # class-conditioned
            assert "prompt" not in kw and kw["class_labels"] == [207]
        else:
            assert isinstance(kw["prompt"], str)
    kw = tiny_call_kwargs("wan", num_inference_steps=5, negative_prompt="x")
    assert kw["num_inference_steps"] == 5 and kw["negative_prompt"] == "x"
    kw["height"] = 0
    assert tiny_call_kwargs("wan")["height"] == 64  # a fresh dict every time
    assert (tiny_call_kwargs("wan")["num_frames"] - 1) % 4 == 0
    assert (tiny_call_kwargs("cogvideox")["num_frames"] - 1) % 4 == 0


def test_overrides_resolution_and_batch():
    out = _output(tiny_pipeline("sd3"), "sd3", height=96, width=32, prompt=["a red car", "a dog"])
    assert out.shape == (2, 3, 96, 32) and torch.isfinite(out).all()


def test_low_precision_cast_like_from_pretrained():
    pipe = tiny_pipeline("wan", dtype=torch.bfloat16)
    transformer_dtypes = {p.dtype for p in pipe.transformer.parameters()}
    assert transformer_dtypes == {torch.bfloat16, torch.float32}  # Wan keeps its norms etc. in fp32
    assert all(
        p.dtype == torch.float32 for p in pipe.transformer.condition_embedder.time_embedder.parameters()
    )
    assert all(p.dtype == torch.bfloat16 for p in pipe.vae.parameters())
    t5 = tiny_pipeline("flux", dtype=torch.float16).text_encoder_2
    assert t5.encoder.block[0].layer[1].DenseReluDense.wo.weight.dtype == torch.float32  # as in transformers
    assert t5.shared.weight.dtype == torch.float16


PROMPTS = ["a photo of a cat", "an astronaut riding a horse", "two red flowers near a blue lake"]


@pytest.mark.parametrize("name", [n for n in TINY_PIPELINES if n != "dit"])  # DiT has no tokenizer
def test_tokenizers_round_trip(name):
    pipe = tiny_pipeline(name)
    tokenizers = [
        getattr(pipe, a) for a in ("tokenizer", "tokenizer_2", "tokenizer_3") if getattr(pipe, a, None)
    ]
    assert tokenizers
    for tok in tokenizers:
        for prompt in PROMPTS:
            ids = tok(prompt).input_ids
            assert tok.unk_token_id not in ids or isinstance(tok, transformers.CLIPTokenizer)
            assert tok.decode(ids, skip_special_tokens=True) == prompt
        ids = tok("quizzical xylophones").input_ids  # unknown words fall back to characters
        assert tok.decode(ids, skip_special_tokens=True) == "quizzical xylophones"


def test_tokenizer_details():
    t5, clip = tiny_t5_tokenizer(), tiny_clip_tokenizer()
    assert (t5.pad_token_id, t5.eos_token_id, t5.unk_token_id) == (0, 1, 2)
    assert clip.model_max_length == 77 and clip.eos_token_id == len(clip) - 1
    for word in PROMPT_WORDS:  # every listed word is a single token
        assert len(t5(word, add_special_tokens=False).input_ids) == 1, word
        assert len(clip(word, add_special_tokens=False).input_ids) == 1, word
    assert t5("Hello World 42!").input_ids[-1] == t5.eos_token_id
    assert t5.decode(t5("Hello World 42!").input_ids, skip_special_tokens=True) == "Hello World 42!"
    assert clip.decode(clip("A Photo").input_ids, skip_special_tokens=True) == "a photo"  # CLIP lower-cases
    assert t5("a cat").input_ids == tiny_t5_tokenizer()("a cat").input_ids
    assert clip("a cat").input_ids == tiny_clip_tokenizer()("a cat").input_ids
    padded = t5("a cat", padding="max_length", max_length=8, truncation=True)
    assert padded.input_ids[3:] == [0] * 5 and sum(padded.attention_mask) == 3
