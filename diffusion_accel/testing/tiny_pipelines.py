"""Tiny offline pipelines of real diffusers architectures, for tests and demos.

``tiny_pipeline(name, seed=0)`` returns a real diffusers pipeline (the genuine pipeline, denoiser,
VAE, text-encoder and scheduler classes, in their usual configuration shapes) with random weights,
in-memory tokenizers and nothing downloaded. ``tiny_call_kwargs(name)`` gives keyword arguments
for one fast call (a few steps, small resolution, classifier-free guidance on). Pass your own
generator::

    import torch
    from diffusion_accel.testing import tiny_call_kwargs, tiny_pipeline

    pipe = tiny_pipeline("flux", seed=0)
    out = pipe(**tiny_call_kwargs("flux"), generator=torch.Generator().manual_seed(0))
    print(out.images.shape)  # torch.Size([1, 3, 64, 64])

Defaults of ``tiny_call_kwargs`` (all calls also get ``num_inference_steps=3`` and
``output_type="pt"``; the text-conditioned ones ``prompt="a photo of a cat"``, DiT
``class_labels=[207]`` instead):

============  ========================  =========  ================  =======  ====================
name          pipeline                  H x W      guidance          frames   output ``.images`` /
                                                                              ``.frames`` shape
============  ========================  =========  ================  =======  ====================
pixart-alpha  PixArtAlphaPipeline       64 x 64    4.5 (batched)     --       (1, 3, 64, 64)
pixart-sigma  PixArtSigmaPipeline       64 x 64    4.5 (batched)     --       (1, 3, 64, 64)
sd3           StableDiffusion3Pipeline  64 x 64    7.0 (batched)     --       (1, 3, 64, 64)
flux          FluxPipeline              64 x 64    3.5 (embedded)    --       (1, 3, 64, 64)
cogvideox     CogVideoXPipeline         64 x 64    6.0 (batched)     9        (1, 9, 3, 64, 64)
wan           WanPipeline               64 x 64    5.0 (2 calls)     5        (1, 5, 3, 64, 64)
sd15          StableDiffusionPipeline   64 x 64    7.5 (batched)     --       (1, 3, 64, 64)
dit           DiTPipeline               64 x 64    4.0 (batched)     --       (1, 3, 64, 64)
============  ========================  =========  ================  =======  ====================

DiT is class-conditioned (no text encoder, no ``prompt``): its size is fixed by the transformer's
``sample_size`` (no ``height``/``width`` arguments) and ``id2label`` is absent (pass label ids).
PixArt calls also get ``use_resolution_binning=False`` (the bins exist only for the real sample
sizes) and ``clean_caption=False`` (so results do not depend on whether bs4/ftfy are installed).
Flux is guidance-distilled (``guidance_embeds=True``): its default call makes one transformer call
per step; for true classifier-free guidance (two transformer calls per step) pass
``true_cfg_scale=2.0, negative_prompt="..."``.

Components (random weights, hidden sizes 32-64):

============  ===========================  =================  ============  ======================
name          denoiser (blocks)            VAE                text encoder  scheduler
============  ===========================  =================  ============  ======================
pixart-alpha  PixArtTransformer2DModel     AutoencoderKL      T5            DPMSolverMultistep
              (2)                          (4 channels)
pixart-sigma  PixArtTransformer2DModel     AutoencoderKL      T5            DPMSolverMultistep
              (2)                          (4 channels)
sd3           SD3Transformer2DModel        AutoencoderKL      CLIP x2, T5   FlowMatchEulerDiscrete
              (2 MMDiT)                    (16 channels)
flux          FluxTransformer2DModel       AutoencoderKL      CLIP, T5      FlowMatchEulerDiscrete
              (2 double + 2 single)        (16 channels)                    (dynamic shift)
cogvideox     CogVideoXTransformer3DModel  AutoencoderKL-     T5            CogVideoXDDIM
              (2)                          CogVideoX
wan           WanTransformer3DModel (2)    AutoencoderKLWan   UMT5          UniPCMultistep (flow)
sd15          UNet2DConditionModel         AutoencoderKL      CLIP          DDIM
              (2 down, mid, 2 up)          (4 channels)
dit           DiTTransformer2DModel        AutoencoderKL      --            DDIM
              (2, adaLN-Zero)              (4 channels)
============  ===========================  =================  ============  ======================

Every VAE has the real compression (8x in space; 4x in time for video), so the real resolution
rules apply. Height and width: multiples of 16 (VAE 8x times patch size 2) for the transformer
pipelines -- SD3 and Wan raise for others, Flux rounds down with a warning, PixArt and CogVideoX
fail inside the transformer -- and multiples of 8 for SD1.5. ``num_frames``: Wan needs 4k+1
(others are rounded with a warning); CogVideoX returns exactly ``num_frames`` frames for 8k+1
(9, 17, ..., 49, as the real model's 49), otherwise a different count, as the real pipeline does.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    AutoencoderKLCogVideoX,
    AutoencoderKLWan,
    CogVideoXDDIMScheduler,
    CogVideoXPipeline,
    CogVideoXTransformer3DModel,
    DDIMScheduler,
    DiffusionPipeline,
    DiTPipeline,
    DiTTransformer2DModel,
    DPMSolverMultistepScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    PixArtAlphaPipeline,
    PixArtSigmaPipeline,
    PixArtTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
    UNet2DConditionModel,
    UniPCMultistepScheduler,
    WanPipeline,
    WanTransformer3DModel,
)
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
    T5Tokenizer,
    UMT5Config,
    UMT5EncoderModel,
)

from .._diffusers import fp32_module_names
from .tokenizers import tiny_clip_tokenizer, tiny_t5_tokenizer

__all__ = ["TINY_PIPELINES", "tiny_call_kwargs", "tiny_pipeline"]

TINY_PIPELINES: tuple[str, ...] = ("pixart-alpha", "pixart-sigma", "sd3", "flux", "cogvideox", "wan", "sd15", "dit")

_PIPELINE_CLASSES: dict[str, type[DiffusionPipeline]] = {
    "pixart-alpha": PixArtAlphaPipeline,
    "pixart-sigma": PixArtSigmaPipeline,
    "sd3": StableDiffusion3Pipeline,
    "flux": FluxPipeline,
    "cogvideox": CogVideoXPipeline,
    "wan": WanPipeline,
    "sd15": StableDiffusionPipeline,
    "dit": DiTPipeline,
}

_COMMON_KWARGS: dict[str, Any] = {
    "num_inference_steps": 3,
    "output_type": "pt",
}
_PROMPT: dict[str, Any] = {"prompt": "a photo of a cat"}

_CALL_KWARGS: dict[str, dict[str, Any]] = {
    "pixart-alpha": {
        "height": 64,
        "width": 64,
        "guidance_scale": 4.5,
        "use_resolution_binning": False,
        "clean_caption": False,
    },
    "pixart-sigma": {
        "height": 64,
        "width": 64,
        "guidance_scale": 4.5,
        "use_resolution_binning": False,
        "clean_caption": False,
    },
    "sd3": {"height": 64, "width": 64, "guidance_scale": 7.0},
    "flux": {"height": 64, "width": 64, "guidance_scale": 3.5},
    "cogvideox": {"height": 64, "width": 64, "num_frames": 9, "guidance_scale": 6.0},
    "wan": {"height": 64, "width": 64, "num_frames": 5, "guidance_scale": 5.0},
    "sd15": {"height": 64, "width": 64, "guidance_scale": 7.5},
    "dit": {"class_labels": [207], "guidance_scale": 4.0},
}


def _check_name(name: str) -> None:
    if name not in _PIPELINE_CLASSES:
        raise ValueError(f"Unknown tiny pipeline {name!r}; valid names are: {', '.join(TINY_PIPELINES)}.")


def tiny_call_kwargs(name: str, **overrides: Any) -> dict[str, Any]:
    """Default keyword arguments for one fast call of ``tiny_pipeline(name)``, updated by ``overrides``.

    No ``generator`` is included: pass ``generator=torch.Generator().manual_seed(s)`` yourself.
    Returns a new dict on every call. See the module docstring for the table of defaults.
    """
    _check_name(name)
    text = {} if "class_labels" in _CALL_KWARGS[name] else _PROMPT
    return {**_COMMON_KWARGS, **text, **_CALL_KWARGS[name], **overrides}


# ----------------------------------------------------------------------------------------------
# Building blocks. Every sub-model is created right after seeding torch with (seed, pipeline name,
# component), so a build is reproducible, independent of the order in which the components are
# made, and two pipelines (or two text encoders of one pipeline) never share weights.


class _Seeds:
    """``with seeds("vae"): ...`` runs the block with torch's CPU RNG seeded for that component."""

    def __init__(self, name: str, seed: int) -> None:
        self.name, self.seed = name, seed

    @contextmanager
    def __call__(self, component: str) -> Iterator[None]:
        salt = zlib.crc32(f"{self.name}/{component}".encode())
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed((self.seed * 1_000_003 + salt) % (2**63))
            yield


def _t5_encoder(seeds: _Seeds, tokenizer: T5Tokenizer, d_model: int, umt5: bool = False) -> torch.nn.Module:
    # T5 v1.1 / UMT5 layout (gated-GELU feed-forward, relative position buckets), tiny sizes.
    kwargs = {
        "vocab_size": len(tokenizer),
        "d_model": d_model,
        "d_kv": 8,
        "d_ff": 2 * d_model,
        "num_layers": 2,
        "num_heads": d_model // 8,
        "relative_attention_num_buckets": 8,
        "relative_attention_max_distance": 32,
        "dropout_rate": 0.0,
        "feed_forward_proj": "gated-gelu",
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "decoder_start_token_id": tokenizer.pad_token_id,
    }
    with seeds("text_encoder_t5"):
        if umt5:
            return UMT5EncoderModel(UMT5Config(**kwargs))
        return T5EncoderModel(T5Config(**kwargs))


def _clip_encoder(
    seeds: _Seeds, tokenizer: CLIPTokenizer, component: str, hidden: int = 32, with_projection: bool = False
) -> torch.nn.Module:
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        projection_dim=hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=tokenizer.model_max_length,
        hidden_act="quick_gelu",
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with seeds(component):
        return CLIPTextModelWithProjection(config) if with_projection else CLIPTextModel(config)


def _vae_kl(
    seeds: _Seeds, latent_channels: int, scaling_factor: float, shift_factor: float | None = None
) -> AutoencoderKL:
    # Four levels like the real SD/SD3/Flux VAEs (8x spatial compression), tiny channel counts.
    # SD3/Flux VAEs (16 latent channels) have no quant convs; the SD1.5/PixArt one (4) has them.
    real_sd_layout = latent_channels == 4
    with seeds("vae"):
        return AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(8, 16, 16, 16),
            layers_per_block=1,
            latent_channels=latent_channels,
            norm_num_groups=8,
            sample_size=64,
            scaling_factor=scaling_factor,
            shift_factor=shift_factor,
            use_quant_conv=real_sd_layout,
            use_post_quant_conv=real_sd_layout,
        )


# ----------------------------------------------------------------------------------------------
# One builder per pipeline; each returns the pipeline's components as keyword arguments.


def _pixart_components(seeds: _Seeds) -> dict[str, Any]:
    # PixArt-alpha and PixArt-Sigma share the architecture (here without the 1024px-only size
    # conditioning); the pipelines differ in text length (120 vs 300 tokens) and preprocessing.
    tokenizer = tiny_t5_tokenizer()
    with seeds("transformer"):
        transformer = PixArtTransformer2DModel(
            num_attention_heads=4,
            attention_head_dim=8,
            in_channels=4,
            out_channels=8,  # learned sigma, as in the real checkpoints
            num_layers=2,
            cross_attention_dim=32,
            caption_channels=32,
            sample_size=8,
            patch_size=2,
            norm_type="ada_norm_single",
            use_additional_conditions=False,
        )
    return {
        "tokenizer": tokenizer,
        "text_encoder": _t5_encoder(seeds, tokenizer, d_model=32),
        "vae": _vae_kl(seeds, latent_channels=4, scaling_factor=0.18215),
        "transformer": transformer,
        "scheduler": DPMSolverMultistepScheduler(
            beta_schedule="linear", beta_start=0.0001, beta_end=0.02, prediction_type="epsilon"
        ),
    }


def _sd3_components(seeds: _Seeds) -> dict[str, Any]:
    tokenizer, tokenizer_2, tokenizer_3 = tiny_clip_tokenizer(), tiny_clip_tokenizer(), tiny_t5_tokenizer()
    with seeds("transformer"):
        transformer = SD3Transformer2DModel(
            sample_size=8,
            patch_size=2,
            in_channels=16,
            num_layers=2,
            attention_head_dim=8,
            num_attention_heads=4,
            joint_attention_dim=64,  # T5 width; the two CLIP widths (32 + 32) are padded to it
            caption_projection_dim=32,
            pooled_projection_dim=64,  # the two CLIP projections, concatenated
            out_channels=16,
            pos_embed_max_size=32,
        )
    return {
        "transformer": transformer,
        "scheduler": FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0),
        "vae": _vae_kl(seeds, latent_channels=16, scaling_factor=1.5305, shift_factor=0.0609),
        "text_encoder": _clip_encoder(seeds, tokenizer, "text_encoder", with_projection=True),
        "tokenizer": tokenizer,
        "text_encoder_2": _clip_encoder(seeds, tokenizer_2, "text_encoder_2", with_projection=True),
        "tokenizer_2": tokenizer_2,
        "text_encoder_3": _t5_encoder(seeds, tokenizer_3, d_model=64),
        "tokenizer_3": tokenizer_3,
    }


def _flux_components(seeds: _Seeds) -> dict[str, Any]:
    clip_tokenizer = tiny_clip_tokenizer()
    t5_tokenizer = tiny_t5_tokenizer()
    with seeds("transformer"):
        transformer = FluxTransformer2DModel(
            patch_size=1,
            in_channels=64,  # 16 latent channels packed 2x2
            num_layers=2,
            num_single_layers=2,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=32,
            pooled_projection_dim=32,
            guidance_embeds=True,  # FLUX.1-dev style
            axes_dims_rope=(4, 6, 6),
        )
    return {
        "scheduler": FlowMatchEulerDiscreteScheduler(
            num_train_timesteps=1000,
            shift=3.0,
            use_dynamic_shifting=True,
            base_shift=0.5,
            max_shift=1.15,
            base_image_seq_len=256,
            max_image_seq_len=4096,
        ),
        "vae": _vae_kl(seeds, latent_channels=16, scaling_factor=0.3611, shift_factor=0.1159),
        "text_encoder": _clip_encoder(seeds, clip_tokenizer, "text_encoder"),
        "tokenizer": clip_tokenizer,
        "text_encoder_2": _t5_encoder(seeds, t5_tokenizer, d_model=32),
        "tokenizer_2": t5_tokenizer,
        "transformer": transformer,
    }


def _cogvideox_components(seeds: _Seeds) -> dict[str, Any]:
    tokenizer = tiny_t5_tokenizer()
    with seeds("transformer"):
        # CogVideoX-2b layout: sin-cos positional embeddings, no rotary embeddings.
        transformer = CogVideoXTransformer3DModel(
            num_attention_heads=4,
            attention_head_dim=8,
            in_channels=16,
            out_channels=16,
            time_embed_dim=32,
            text_embed_dim=32,
            num_layers=2,
            sample_width=8,
            sample_height=8,
            sample_frames=9,
            patch_size=2,
            temporal_compression_ratio=4,
            max_text_seq_length=226,  # must equal the pipeline's max_sequence_length
        )
    with seeds("vae"):
        vae = AutoencoderKLCogVideoX(
            block_out_channels=(4, 4, 8, 8),
            latent_channels=16,
            layers_per_block=1,
            norm_num_groups=4,
            temporal_compression_ratio=4,
            sample_height=64,
            sample_width=64,
        )
    return {
        "tokenizer": tokenizer,
        "text_encoder": _t5_encoder(seeds, tokenizer, d_model=32),
        "vae": vae,
        "transformer": transformer,
        "scheduler": CogVideoXDDIMScheduler(
            beta_schedule="scaled_linear",
            beta_start=0.00085,
            beta_end=0.012,
            clip_sample=False,
            prediction_type="v_prediction",
            rescale_betas_zero_snr=True,
            set_alpha_to_one=True,
            snr_shift_scale=3.0,
            steps_offset=0,
            timestep_spacing="trailing",
        ),
    }


def _wan_components(seeds: _Seeds) -> dict[str, Any]:
    tokenizer = tiny_t5_tokenizer()
    with seeds("transformer"):
        transformer = WanTransformer3DModel(
            patch_size=(1, 2, 2),
            num_attention_heads=2,
            attention_head_dim=16,
            in_channels=16,
            out_channels=16,
            text_dim=32,
            freq_dim=256,
            ffn_dim=64,
            num_layers=2,
            cross_attn_norm=True,
            qk_norm="rms_norm_across_heads",
        )
    with seeds("vae"):
        # Wan 2.1 VAE layout (8x spatial, 4x temporal, 16 latent channels), tiny widths.
        vae = AutoencoderKLWan(
            base_dim=4,
            z_dim=16,
            dim_mult=[1, 1, 1, 1],
            num_res_blocks=1,
            temperal_downsample=[False, True, True],
        )
    return {
        "tokenizer": tokenizer,
        "text_encoder": _t5_encoder(seeds, tokenizer, d_model=32, umt5=True),
        "vae": vae,
        # Wan 2.1 text-to-video checkpoints ship this scheduler.
        "scheduler": UniPCMultistepScheduler(
            prediction_type="flow_prediction", use_flow_sigmas=True, num_train_timesteps=1000, flow_shift=3.0
        ),
        "transformer": transformer,
    }


def _sd15_components(seeds: _Seeds) -> dict[str, Any]:
    tokenizer = tiny_clip_tokenizer()
    with seeds("unet"):
        unet = UNet2DConditionModel(
            sample_size=8,
            in_channels=4,
            out_channels=4,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            block_out_channels=(32, 64),
            layers_per_block=1,
            cross_attention_dim=32,
            attention_head_dim=4,
            norm_num_groups=16,
        )
    return {
        "vae": _vae_kl(seeds, latent_channels=4, scaling_factor=0.18215),
        "text_encoder": _clip_encoder(seeds, tokenizer, "text_encoder"),
        "tokenizer": tokenizer,
        "unet": unet,
        "scheduler": DDIMScheduler(
            beta_schedule="scaled_linear",
            beta_start=0.00085,
            beta_end=0.012,
            clip_sample=False,
            set_alpha_to_one=False,
            steps_offset=1,
        ),
        "safety_checker": None,
        "feature_extractor": None,
        "requires_safety_checker": False,
    }


def _dit_components(seeds: _Seeds) -> dict[str, Any]:
    # DiT-XL/2's layout (adaLN-Zero blocks, learned sigma, 1000 classes + the null class that
    # DiTPipeline uses for guidance), tiny widths; latent 8x8 -> 64x64 images.
    with seeds("transformer"):
        transformer = DiTTransformer2DModel(
            num_attention_heads=2,
            attention_head_dim=16,
            in_channels=4,
            out_channels=8,
            num_layers=2,
            sample_size=8,
            patch_size=2,
            num_embeds_ada_norm=1000,
        )
    return {
        "transformer": transformer,
        "vae": _vae_kl(seeds, latent_channels=4, scaling_factor=0.18215),
        "scheduler": DDIMScheduler(beta_schedule="linear", beta_start=0.0001, beta_end=0.02, clip_sample=False),
    }


_BUILDERS: dict[str, Callable[[_Seeds], dict[str, Any]]] = {
    "pixart-alpha": _pixart_components,
    "pixart-sigma": _pixart_components,
    "sd3": _sd3_components,
    "flux": _flux_components,
    "cogvideox": _cogvideox_components,
    "wan": _wan_components,
    "sd15": _sd15_components,
    "dit": _dit_components,
}


def tiny_pipeline(
    name: str,
    seed: int = 0,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> DiffusionPipeline:
    """Build the tiny pipeline ``name`` (one of :data:`TINY_PIPELINES`) with random weights.

    Weights depend only on ``(name, seed)``: they are created on the CPU in float32, then moved
    to ``device`` / ``dtype`` (keeping in float32 what ``from_pretrained(torch_dtype=dtype)`` would
    keep), so the same seed gives the same weights on every device. The global torch RNG state is
    left untouched. All modules are in eval mode and the progress bar is off
    (``pipe.set_progress_bar_config(disable=False)`` turns it back on).
    """
    _check_name(name)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}.")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating-point torch.dtype, got {dtype!r}.")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(
            f"device must be a torch.device or a device string like 'cuda:0', got {device!r}."
        ) from exc

    pipe = _PIPELINE_CLASSES[name](**_BUILDERS[name](_Seeds(name, seed)))
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval()
    pipe.set_progress_bar_config(disable=True)
    if device.type != "cpu" or dtype != torch.float32:
        for component in pipe.components.values():
            if isinstance(component, torch.nn.Module):
                _cast_like_from_pretrained(component, device, dtype)
    return pipe


def _cast_like_from_pretrained(module: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> None:
    """Move ``module`` to ``device`` and cast it to ``dtype`` as ``from_pretrained(torch_dtype=dtype)``
    would load it: the modules a class keeps in float32 (``_keep_in_fp32_modules``; for transformers
    models only under float16, plus ``_keep_in_fp32_modules_strict`` under float16/bfloat16) stay so.
    """
    keep = fp32_module_names(module, dtype)
    for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
        target = None  # integer buffers keep their dtype
        if tensor.is_floating_point():
            target = torch.float32 if keep & set(name.split(".")) else dtype
        tensor.data = tensor.data.to(device=device, dtype=target)
