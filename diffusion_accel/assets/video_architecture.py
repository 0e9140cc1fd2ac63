"""Configs of the bundled benchmark video model's parts (stock diffusers Wan classes, built offline).

The VAE compresses 2x in time and space: a 9-frame 32x32 clip becomes latents (4, 5, 16, 16)
(320 tokens with the (1, 2, 2) patch). Temporal compression is needed for ``WanPipeline``:
it requires ``(num_frames - 1) % scale_factor_temporal == 0`` and rounds other frame counts,
so a VAE without it (factor 1) would turn 9 requested frames into 10.

Example::

    >>> from diffusion_accel.assets.video_architecture import VideoArchitecture
    >>> VideoArchitecture().latent_shape
    (4, 5, 16, 16)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanTransformer3DModel
from transformers import UMT5Config, UMT5EncoderModel

__all__ = ["VideoArchitecture"]


@dataclass(frozen=True)
class VideoArchitecture:
    """Sizes of every part; ``as_dict()`` goes into the model card."""

    num_frames: int = 9
    image_size: int = 32
    # AutoencoderKLWan
    vae_base_dim: int = 16
    latent_channels: int = 4
    vae_dim_mult: tuple[int, ...] = (1, 2)
    vae_res_blocks: int = 1
    temporal_downsample: bool = True
    # UMT5 text encoder
    text_width: int = 64
    text_layers: int = 2
    text_heads: int = 4
    text_ff: int = 128
    max_caption_tokens: int = 24
    # WanTransformer3DModel
    transformer_layers: int = 4
    transformer_heads: int = 4
    transformer_head_dim: int = 32
    transformer_ffn: int = 384
    freq_dim: int = 64
    # FlowMatchEulerDiscreteScheduler
    shift: float = 1.0
    train_timesteps: int = 1000

    @property
    def spatial_factor(self) -> int:
        return 2 ** (len(self.vae_dim_mult) - 1)

    @property
    def temporal_factor(self) -> int:
        return 2 if self.temporal_downsample else 1

    @property
    def latent_shape(self) -> tuple[int, int, int, int]:
        frames = (self.num_frames - 1) // self.temporal_factor + 1
        side = self.image_size // self.spatial_factor
        return (self.latent_channels, frames, side, side)

    def as_dict(self) -> dict:
        return asdict(self)

    def build_vae(self, latents_mean=None, latents_std=None) -> AutoencoderKLWan:
        downsample = [self.temporal_downsample] + [False] * (len(self.vae_dim_mult) - 2)
        return AutoencoderKLWan(
            base_dim=self.vae_base_dim, z_dim=self.latent_channels, dim_mult=list(self.vae_dim_mult),
            num_res_blocks=self.vae_res_blocks, attn_scales=[], temperal_downsample=downsample,
            latents_mean=list(latents_mean or [0.0] * self.latent_channels),
            latents_std=list(latents_std or [1.0] * self.latent_channels),
            scale_factor_temporal=self.temporal_factor, scale_factor_spatial=self.spatial_factor,
        )

    def build_text_encoder(self, vocab_size: int) -> UMT5EncoderModel:
        config = UMT5Config(
            vocab_size=vocab_size, d_model=self.text_width, d_kv=self.text_width // self.text_heads,
            d_ff=self.text_ff, num_layers=self.text_layers, num_heads=self.text_heads,
            relative_attention_num_buckets=16, relative_attention_max_distance=32, dropout_rate=0.0,
            feed_forward_proj="gated-gelu", is_encoder_decoder=False, use_cache=False,
            pad_token_id=0, eos_token_id=1,
        )
        return UMT5EncoderModel(config)

    def build_transformer(self) -> WanTransformer3DModel:
        return WanTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=self.transformer_heads,
            attention_head_dim=self.transformer_head_dim, in_channels=self.latent_channels,
            out_channels=self.latent_channels, text_dim=self.text_width, freq_dim=self.freq_dim,
            ffn_dim=self.transformer_ffn, num_layers=self.transformer_layers, cross_attn_norm=True,
            qk_norm="rms_norm_across_heads", rope_max_seq_len=256,
        )

    def build_scheduler(self) -> FlowMatchEulerDiscreteScheduler:
        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=self.train_timesteps, shift=self.shift)
