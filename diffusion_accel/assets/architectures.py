"""Configs of the bundled benchmark model's parts, built from scratch (nothing downloaded).

Every part is a stock diffusers / transformers class, so the saved folders load with the
libraries' own ``from_pretrained`` and acceleration code sees standard PixArt blocks.

Example::

    >>> from diffusion_accel.assets.architectures import BenchmarkArchitecture
    >>> arch = BenchmarkArchitecture()
    >>> vae = arch.build_vae()
    >>> arch.latent_size, arch.latent_channels
    (8, 8)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, PixArtTransformer2DModel
from transformers import CLIPConfig, CLIPModel, T5Config, T5EncoderModel

__all__ = ["BenchmarkArchitecture"]


@dataclass(frozen=True)
class BenchmarkArchitecture:
    """Sizes of every part; ``asdict(arch)`` goes into the model card."""

    image_size: int = 32
    # VAE: len(vae_channels) - 1 downsamplings -> latent_size = image_size / 2**(len - 1)
    vae_channels: tuple[int, ...] = (16, 32, 64)
    vae_layers_per_block: int = 1
    latent_channels: int = 8
    # T5 text encoder
    text_width: int = 128
    text_layers: int = 2
    text_heads: int = 4
    text_ff: int = 256
    max_caption_tokens: int = 32
    # PixArt-alpha transformer
    transformer_layers: int = 8
    transformer_heads: int = 5
    transformer_head_dim: int = 32
    patch_size: int = 1
    # noise schedule / sampler
    prediction_type: str = "epsilon"
    beta_schedule: str = "linear"
    beta_start: float = 0.0001
    beta_end: float = 0.02
    train_timesteps: int = 1000
    # CLIP
    clip_width: int = 128
    clip_layers: int = 4
    clip_heads: int = 4
    clip_patch: int = 4
    clip_projection: int = 128
    extra: dict = field(default_factory=dict)

    @property
    def latent_size(self) -> int:
        return self.image_size // 2 ** (len(self.vae_channels) - 1)

    @property
    def transformer_width(self) -> int:
        return self.transformer_heads * self.transformer_head_dim

    def as_dict(self) -> dict:
        return asdict(self)

    def build_vae(self) -> AutoencoderKL:
        n = len(self.vae_channels)
        return AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * n,
            up_block_types=("UpDecoderBlock2D",) * n,
            block_out_channels=tuple(self.vae_channels),
            layers_per_block=self.vae_layers_per_block,
            latent_channels=self.latent_channels,
            norm_num_groups=16,
            sample_size=self.image_size,
        )

    def build_text_encoder(self, vocab_size: int) -> T5EncoderModel:
        config = T5Config(
            vocab_size=vocab_size,
            d_model=self.text_width,
            d_kv=self.text_width // self.text_heads,
            d_ff=self.text_ff,
            num_layers=self.text_layers,
            num_heads=self.text_heads,
            relative_attention_num_buckets=16,
            relative_attention_max_distance=32,
            dropout_rate=0.0,
            feed_forward_proj="gated-gelu",
            is_encoder_decoder=False,
            use_cache=False,
            pad_token_id=0,
            eos_token_id=1,
        )
        return T5EncoderModel(config)

    def build_transformer(self) -> PixArtTransformer2DModel:
        return PixArtTransformer2DModel(
            num_attention_heads=self.transformer_heads,
            attention_head_dim=self.transformer_head_dim,
            in_channels=self.latent_channels,
            out_channels=self.latent_channels,
            num_layers=self.transformer_layers,
            dropout=0.0,
            norm_num_groups=32,
            cross_attention_dim=self.transformer_width,
            attention_bias=True,
            sample_size=self.latent_size,
            patch_size=self.patch_size,
            activation_fn="gelu-approximate",
            num_embeds_ada_norm=self.train_timesteps,
            upcast_attention=False,
            norm_type="ada_norm_single",
            norm_elementwise_affine=False,
            norm_eps=1e-6,
            caption_channels=self.text_width,
            use_additional_conditions=False,
        )

    def build_scheduler(self) -> DPMSolverMultistepScheduler:
        return DPMSolverMultistepScheduler(
            num_train_timesteps=self.train_timesteps,
            beta_start=self.beta_start,
            beta_end=self.beta_end,
            beta_schedule=self.beta_schedule,
            prediction_type=self.prediction_type,
            solver_order=2,
            algorithm_type="dpmsolver++",
        )

    def build_clip(self, vocab_size: int, pad_token_id: int, bos_token_id: int, eos_token_id: int) -> CLIPModel:
        text = dict(
            vocab_size=vocab_size,
            hidden_size=self.clip_width,
            intermediate_size=4 * self.clip_width,
            num_hidden_layers=self.clip_layers,
            num_attention_heads=self.clip_heads,
            max_position_embeddings=self.max_caption_tokens,
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            projection_dim=self.clip_projection,
        )
        vision = dict(
            hidden_size=self.clip_width,
            intermediate_size=4 * self.clip_width,
            num_hidden_layers=self.clip_layers,
            num_attention_heads=self.clip_heads,
            image_size=self.image_size,
            patch_size=self.clip_patch,
            projection_dim=self.clip_projection,
        )
        config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=self.clip_projection)
        return CLIPModel(config)
