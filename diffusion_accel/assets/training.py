"""Training loops of the bundled benchmark model (CPU, bf16 autocast, seeded).

Used by ``scripts/train_benchmark_model.py``; nothing here runs at inference time. Each loop
takes plain tensors (images in [-1, 1] as ``(N, 3, 32, 32)`` float32, latents, token ids), so it
can be tried on a small sample first.

Example (tiny, a few seconds)::

    >>> import torch
    >>> from diffusion_accel.assets.architectures import BenchmarkArchitecture
    >>> from diffusion_accel.assets.training import train_vae
    >>> images = torch.rand(16, 3, 32, 32) * 2 - 1
    >>> vae, steps = train_vae(BenchmarkArchitecture().build_vae(), images, torch.ones(16, 32, 32),
    ...                 steps=2, batch_size=8)
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from contextlib import contextmanager

import torch
import torch.nn.functional as F

__all__ = [
    "MatmulAttnProcessor",
    "bf16_friendly_attention",
    "foreground_weights",
    "train_vae",
    "encode_latents",
    "latent_scaling_factor",
    "ExponentialMovingAverage",
    "train_diffusion",
    "train_clip",
]

Logger = Callable[[str], None]


class MatmulAttnProcessor:
    """Attention as two matmuls with an fp32 softmax (training only, never saved).

    Under CPU bf16 autocast, ``scaled_dot_product_attention``'s backward is ~10x slower than
    this; the matmuls run in bf16 on AMX. Same maths as diffusers' ``AttnProcessor2_0`` for
    PixArt's attention layers (no spatial/group norm, no q/k norm).
    """

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **kwargs):
        for name in ("spatial_norm", "group_norm", "norm_q", "norm_k"):
            if getattr(attn, name, None) is not None:
                raise ValueError(f"MatmulAttnProcessor does not support attention with {name}")
        batch, query_len, _ = hidden_states.shape
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        if attn.norm_cross and encoder_hidden_states is not None:
            context = attn.norm_encoder_hidden_states(context)
        query, key, value = attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context)
        heads, head_dim = attn.heads, key.shape[-1] // attn.heads
        query = query.view(batch, -1, heads, head_dim).transpose(1, 2)
        key = key.view(batch, -1, heads, head_dim).transpose(1, 2)
        value = value.view(batch, -1, heads, head_dim).transpose(1, 2)
        scores = (query @ key.transpose(-1, -2)).float() * (head_dim**-0.5)
        if attention_mask is not None:
            mask = attn.prepare_attention_mask(attention_mask, key.shape[2], batch)
            scores = scores + mask.view(batch, heads, -1, mask.shape[-1]).float()
        probs = scores.softmax(dim=-1).to(value.dtype)
        out = (probs @ value).transpose(1, 2).reshape(batch, query_len, heads * head_dim)
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + hidden_states
        return out / attn.rescale_output_factor


@contextmanager
def bf16_friendly_attention(transformer):
    """Temporarily use :class:`MatmulAttnProcessor`; restores the saved-model processors."""
    original = transformer.attn_processors
    transformer.set_attn_processor(MatmulAttnProcessor())
    try:
        yield transformer
    finally:
        transformer.set_attn_processor(original)


def foreground_weights(alpha: torch.Tensor, factor: int, boost: float) -> torch.Tensor:
    """``1 + boost * coverage`` pooled to the latent grid. alpha ``(N, H, W)`` -> ``(N, 1, H/f, W/f)``."""
    pooled = F.max_pool2d(alpha[:, None].float(), factor) if factor > 1 else alpha[:, None].float()
    return 1.0 + boost * pooled


def _log(log: Logger | None, message: str) -> None:
    if log is not None:
        log(message)


def foreground_pixel_weights(dilated_alpha: torch.Tensor, boost: float) -> torch.Tensor:
    """``1 + boost`` where the (dilated) digit coverage exceeds 0.05, else 1 (both VAE losses)."""
    return 1.0 + boost * (dilated_alpha > 0.05).float()


def vae_training_loop(vae, lr: float, steps: int, seconds: float, kl_weight: float,
                      batch_losses: Callable[[int, torch.optim.Optimizer], tuple[torch.Tensor, torch.Tensor]],
                      log: Logger | None, log_every: int):
    """The loop both VAE trainers share: AdamW on ``vae`` at ``lr``, at most ``steps`` steps or
    ``seconds``; ``batch_losses(step, optimiser)`` draws a batch and returns ``(reconstruction, kl)``;
    each step minimises ``reconstruction + kl_weight * kl``. Returns ``(vae, steps_done)`` (eval mode)."""
    vae.train()
    optimiser = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    start, done = time.time(), 0
    for step in range(steps):
        if time.time() - start > seconds:
            _log(log, f"vae stopped on time after {step} steps")
            break
        done = step + 1
        rec_loss, kl = batch_losses(step, optimiser)
        clipped_step(optimiser, rec_loss + kl_weight * kl, vae.parameters())
        if step % log_every == 0 or step == steps - 1:
            _log(log, f"vae step {step} rec {rec_loss.item():.5f} kl {kl.item():.1f} {time.time() - start:.0f}s")
    vae.eval()
    return vae, done


def train_vae(
    vae,
    images: torch.Tensor,
    alpha: torch.Tensor,
    steps: int,
    seconds: float = float("inf"),
    batch_size: int = 64,
    lr: float = 1e-3,
    foreground_boost: float = 9.0,
    kl_weight: float = 1e-6,
    seed: int = 0,
    log: Logger | None = None,
    bf16: bool = True,
):
    """Train ``vae`` to reconstruct ``images`` ``(N, 3, H, W)`` in [-1, 1]; returns ``(vae, steps_done)``.

    Stops after ``steps`` or ``seconds``, whichever comes first.

    Pixels under a digit (``alpha`` ``(N, H, W)``, dilated by one pixel) weigh
    ``1 + foreground_boost``: on mostly plain canvases an unweighted loss washes colours out.
    """
    if images.ndim != 4 or alpha.shape != (images.shape[0], images.shape[2], images.shape[3]):
        raise ValueError(f"images (N, 3, H, W) and alpha (N, H, W) expected, got {images.shape}, {alpha.shape}")
    generator = torch.Generator().manual_seed(seed)
    dilated = F.max_pool2d(alpha[:, None].float(), 3, stride=1, padding=1)
    weights = foreground_pixel_weights(dilated, foreground_boost)

    def batch_losses(step: int, optimiser) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.randint(len(images), (batch_size,), generator=generator)
        x, w = images[index], weights[index]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            posterior = vae.encode(x).latent_dist
            z = posterior.sample(generator=generator)
            recon = vae.decode(z).sample
        return (w * (recon.float() - x) ** 2).mean(), posterior.kl().float().mean()

    return vae_training_loop(vae, lr, steps, seconds, kl_weight, batch_losses, log, log_every=100)


@torch.no_grad()
def encode_latents(vae, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Posterior means of ``images`` ``(N, 3, H, W)`` -> ``(N, C, h, w)`` (unscaled), fp32."""
    vae.eval()
    chunks = [vae.encode(images[i : i + batch_size]).latent_dist.mode() for i in range(0, len(images), batch_size)]
    return torch.cat(chunks)


def latent_scaling_factor(latents: torch.Tensor) -> float:
    """``1 / std`` of the latents, rounded to 4 significant digits (diffusers' ``scaling_factor``)."""
    return float(f"{1.0 / latents.float().std().item():.4g}")


class ExponentialMovingAverage:
    """EMA of a module's parameters (fp32 shadow copy)."""

    def __init__(self, module: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = copy.deepcopy(module).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, module: torch.nn.Module, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))
        for ema_param, param in zip(self.shadow.parameters(), module.parameters()):
            ema_param.lerp_(param.detach(), 1.0 - decay)


def train_diffusion(
    transformer,
    text_encoder,
    latents: torch.Tensor,
    latent_weights: torch.Tensor,
    token_ids: torch.Tensor,
    token_mask: torch.Tensor,
    caption_index: torch.Tensor,
    empty_ids: torch.Tensor,
    empty_mask: torch.Tensor,
    scheduler_config: dict,
    seconds: float,
    max_steps: int = 10**9,
    batch_size: int = 64,
    lr: float = 5e-4,
    text_lr: float = 2e-4,
    warmup: int = 200,
    ema_decay: float = 0.999,
    caption_dropout: float = 0.1,
    min_snr_gamma: float = 5.0,
    seed: int = 0,
    log: Logger | None = None,
    bf16: bool = True,
    on_log: Callable[[int], None] | None = None,
):
    """Train the PixArt transformer and the T5 encoder jointly on a latent bank, for ``seconds``.

    latents ``(N, C, h, w)`` (already scaled), latent_weights ``(N, 1, h, w)`` (foreground
    emphasis), caption_index ``(N,)`` into token_ids/token_mask ``(K, L)`` (unique captions);
    empty_ids/empty_mask ``(L,)``: the tokenised empty prompt used for classifier-free guidance.
    Constant learning rate after ``warmup``, min-SNR-gamma loss weighting, EMA of both models.
    Returns ``(ema_transformer, ema_text_encoder, steps_done)``.
    """
    prediction_type, alphas_cumprod = _training_noise_schedule(scheduler_config)
    steps_total = len(alphas_cumprod)
    snr = alphas_cumprod / (1 - alphas_cumprod)
    generator = torch.Generator().manual_seed(seed)

    transformer.train()
    text_encoder.train()
    optimiser = joint_optimiser(transformer, text_encoder, lr, text_lr)
    base_lrs = [lr, text_lr]
    ema_transformer = ExponentialMovingAverage(transformer, ema_decay)
    ema_text = ExponentialMovingAverage(text_encoder, ema_decay)
    added = {"resolution": None, "aspect_ratio": None}
    start, step, running = time.time(), 0, 0.0
    with bf16_friendly_attention(transformer):
        while step < max_steps and time.time() - start < seconds:
            warm_up(optimiser, base_lrs, step, warmup)
            x0, weight, ids, mask, noise, t = _training_batch(
                generator, batch_size, steps_total, latents, latent_weights, token_ids, token_mask, caption_index,
                empty_ids, empty_mask, caption_dropout)
            a = alphas_cumprod[t].view(-1, 1, 1, 1)
            noisy = a.sqrt() * x0 + (1 - a).sqrt() * noise
            target = noise if prediction_type == "epsilon" else a.sqrt() * noise - (1 - a).sqrt() * x0
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                text = text_encoder(ids, attention_mask=mask)[0]
                pred = transformer(
                    noisy, encoder_hidden_states=text, encoder_attention_mask=mask, timestep=t,
                    added_cond_kwargs=added, return_dict=False,
                )[0]
            loss = _min_snr_loss(pred, target, weight, snr[t], min_snr_gamma, prediction_type)
            clipped_step(optimiser, loss, list(transformer.parameters()) + list(text_encoder.parameters()))
            ema_transformer.update(transformer, step)
            ema_text.update(text_encoder, step)
            running = loss.item() if step == 0 else 0.98 * running + 0.02 * loss.item()
            if step % 100 == 0:
                _log(log, f"diffusion step {step} loss {running:.4f} {time.time() - start:.0f}s")
                if on_log is not None:
                    on_log(step)
            step += 1
    _log(log, f"diffusion done: {step} steps in {time.time() - start:.0f}s, loss {running:.4f}")
    return ema_transformer.shadow, ema_text.shadow, step


def joint_optimiser(transformer, text_encoder, lr: float, text_lr: float) -> torch.optim.Optimizer:
    """AdamW over the denoiser (group 0, ``lr``) and the text encoder (group 1, ``text_lr``)."""
    return torch.optim.AdamW([{"params": transformer.parameters(), "lr": lr},
                              {"params": text_encoder.parameters(), "lr": text_lr}],
                             weight_decay=0.0, betas=(0.9, 0.99))


def warm_up(optimiser: torch.optim.Optimizer, base_lrs, step: int, warmup: int) -> None:
    """Linear learning-rate warm-up: group ``i`` at ``base_lrs[i] * min(1, (step + 1) / warmup)``."""
    for group, base in zip(optimiser.param_groups, base_lrs):
        group["lr"] = base * min(1.0, (step + 1) / warmup)


def clipped_step(optimiser: torch.optim.Optimizer, loss: torch.Tensor, params) -> None:
    """One optimiser step on ``loss`` with the gradients of ``params`` clipped to norm 1."""
    optimiser.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimiser.step()


def _training_batch(generator: torch.Generator, batch_size: int, steps_total: int, latents: torch.Tensor,
                    latent_weights: torch.Tensor, token_ids: torch.Tensor, token_mask: torch.Tensor,
                    caption_index: torch.Tensor, empty_ids: torch.Tensor, empty_mask: torch.Tensor,
                    caption_dropout: float):
    """One random batch ``(x0, weight, ids, mask, noise, t)``: latents with their captions' tokens (a
    ``caption_dropout`` share replaced by the empty prompt), noise and timesteps, drawn from
    ``generator`` in a fixed order (arguments as in :func:`train_diffusion`)."""
    x0, weight, ids, mask, noise = captioned_batch(generator, batch_size, latents, latent_weights, token_ids,
                                                   token_mask, caption_index, empty_ids, empty_mask,
                                                   caption_dropout)
    t = torch.randint(steps_total, (batch_size,), generator=generator)
    return x0, weight, ids, mask, noise, t


def captioned_batch(generator: torch.Generator, batch_size: int, latents: torch.Tensor,
                    latent_weights: torch.Tensor, token_ids: torch.Tensor, token_mask: torch.Tensor,
                    caption_index: torch.Tensor, empty_ids: torch.Tensor, empty_mask: torch.Tensor,
                    caption_dropout: float):
    """``(x0, weight, ids, mask, noise)``: random latents with their weights and their captions' tokens
    (a ``caption_dropout`` share replaced by the empty prompt) and Gaussian noise of their shape, drawn
    from ``generator`` in this order (the diffusion and the flow-matching trainers' batches)."""
    index = torch.randint(len(latents), (batch_size,), generator=generator)
    x0, weight = latents[index], latent_weights[index]
    ids, mask = token_ids[caption_index[index]].clone(), token_mask[caption_index[index]].clone()
    drop = torch.rand(batch_size, generator=generator) < caption_dropout
    ids[drop], mask[drop] = empty_ids, empty_mask
    noise = torch.randn(x0.shape, generator=generator)
    return x0, weight, ids, mask, noise


def _training_noise_schedule(scheduler_config: dict) -> tuple[str, torch.Tensor]:
    """``(prediction_type, alphas_cumprod (T,))`` of a DDPM-style scheduler config (linear or
    scaled-linear betas; epsilon or v-prediction)."""
    prediction_type = scheduler_config["prediction_type"]
    if prediction_type not in ("epsilon", "v_prediction"):
        raise ValueError(f"prediction_type must be epsilon or v_prediction, got {prediction_type!r}")
    steps_total = scheduler_config["num_train_timesteps"]
    betas = torch.linspace(scheduler_config["beta_start"], scheduler_config["beta_end"], steps_total)
    if scheduler_config["beta_schedule"] == "scaled_linear":
        betas = torch.linspace(scheduler_config["beta_start"] ** 0.5, scheduler_config["beta_end"] ** 0.5, steps_total) ** 2
    elif scheduler_config["beta_schedule"] != "linear":
        raise ValueError(f"unsupported beta_schedule {scheduler_config['beta_schedule']!r}")
    return prediction_type, torch.cumprod(1.0 - betas, dim=0)


def _min_snr_loss(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, snr_t: torch.Tensor,
                  gamma: float, prediction_type: str) -> torch.Tensor:
    """Weighted MSE with min-SNR-gamma weights ``(B,)``, expressed for the chosen target."""
    clipped = torch.clamp(snr_t, max=gamma)
    loss_weight = clipped / snr_t if prediction_type == "epsilon" else clipped / (snr_t + 1)
    per_pixel = weight * (pred.float() - target) ** 2
    return (per_pixel.mean(dim=(1, 2, 3)) * loss_weight).mean()


def _clip_pixels(images_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 ``(N, H, W, 3)`` -> CLIP input ``(N, 3, H, W)`` normalised with mean = std = 0.5."""
    return images_uint8.permute(0, 3, 1, 2).float().div(255.0).sub(0.5).div(0.5)


def train_clip(
    clip,
    images_uint8: torch.Tensor,
    token_ids: torch.Tensor,
    token_mask: torch.Tensor,
    caption_index: torch.Tensor,
    seconds: float,
    max_steps: int = 10**9,
    batch_size: int = 256,
    lr: float = 1e-3,
    warmup: int = 100,
    seed: int = 0,
    log: Logger | None = None,
    bf16: bool = True,
    reconstructions_uint8: torch.Tensor | None = None,
    reconstruction_fraction: float = 0.0,
):
    """Contrastive training; pairs with the same caption all count as matches (soft targets).

    With ``reconstructions_uint8`` (the same images passed through the VAE, same shape), a
    ``reconstruction_fraction`` of each batch shows the reconstruction instead, so the CLIP
    judges content rather than the VAE's softer rendering of strokes.

    images_uint8 ``(N, H, W, 3)``; caption_index ``(N,)`` into token_ids/token_mask ``(K, L)``.
    Cosine learning-rate decay over ``max_steps`` if given, else constant after warm-up.
    """
    generator = torch.Generator().manual_seed(seed)
    clip.train()
    # eager (matmul) attention: SDPA's CPU backward is ~10x slower under bf16 autocast
    original_attention = clip.config._attn_implementation
    clip.set_attn_implementation("eager")
    optimiser = torch.optim.AdamW(clip.parameters(), lr=lr, weight_decay=0.05)
    start, step, running = time.time(), 0, 0.0
    while step < max_steps and time.time() - start < seconds:
        scale = min(1.0, (step + 1) / warmup)
        if max_steps < 10**9:
            scale *= 0.5 * (1 + math.cos(math.pi * step / max_steps))
        for group in optimiser.param_groups:
            group["lr"] = lr * scale
        index = torch.randint(len(images_uint8), (batch_size,), generator=generator)
        captions = caption_index[index]
        batch_images = images_uint8[index]
        if reconstructions_uint8 is not None and reconstruction_fraction > 0:
            use = torch.rand(batch_size, generator=generator) < reconstruction_fraction
            batch_images = torch.where(use[:, None, None, None], reconstructions_uint8[index], batch_images)
        pixels = _clip_pixels(batch_images)
        same = (captions[:, None] == captions[None, :]).float()
        targets = same / same.sum(dim=1, keepdim=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            image_features = clip.get_image_features(pixel_values=pixels)
            text_features = clip.get_text_features(input_ids=token_ids[captions], attention_mask=token_mask[captions])
        image_features = F.normalize(_as_tensor(image_features).float(), dim=-1)
        text_features = F.normalize(_as_tensor(text_features).float(), dim=-1)
        logits = clip.logit_scale.exp().clamp(max=100) * image_features @ text_features.T
        loss = 0.5 * (
            torch.sum(-targets * logits.log_softmax(dim=1), dim=1).mean()
            + torch.sum(-targets * logits.T.log_softmax(dim=1), dim=1).mean()
        )
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        running = loss.item() if step == 0 else 0.95 * running + 0.05 * loss.item()
        if step % 100 == 0:
            _log(log, f"clip step {step} loss {running:.3f} {time.time() - start:.0f}s")
        step += 1
    clip.set_attn_implementation(original_attention)
    clip.eval()
    _log(log, f"clip done: {step} steps in {time.time() - start:.0f}s, loss {running:.3f}")
    return clip, step


def _as_tensor(features) -> torch.Tensor:
    """transformers 5 may return a model output instead of a tensor from get_*_features."""
    if isinstance(features, torch.Tensor):
        return features
    for name in ("pooler_output", "image_embeds", "text_embeds"):
        value = getattr(features, name, None)
        if isinstance(value, torch.Tensor):
            return value
    raise TypeError(f"unexpected feature output {type(features).__name__}")
