"""Training loops of the bundled benchmark video model (CPU, seeded, resumable flow matching).

Used by ``scripts/train_video_benchmark_model.py``; nothing here runs at inference time.
Videos are float ``(N, 3, F, H, W)`` in [-1, 1] (diffusers' video layout), latents
``(N, C, f, h, w)``.

Flow matching as Wan and SD3 train it: ``x_t = (1 - t) x0 + t noise`` with ``t`` drawn
logit-normal (``sigmoid(N(0, 1))``, favouring mid noise, where motion is decided), the model
predicts ``noise - x0`` and is called with ``timestep = 1000 t`` (what
``FlowMatchEulerDiscreteScheduler`` passes at inference).

Example (tiny)::

    >>> import torch
    >>> from diffusion_accel.assets.video_architecture import VideoArchitecture
    >>> from diffusion_accel.assets.video_training import train_video_vae
    >>> videos = torch.rand(4, 3, 9, 32, 32) * 2 - 1
    >>> vae, steps = train_video_vae(VideoArchitecture().build_vae(), videos, torch.ones(4, 9, 32, 32),
    ...                              steps=1, batch_size=2)
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .training import (ExponentialMovingAverage, _log, captioned_batch, clipped_step, encode_latents,
                       foreground_pixel_weights, joint_optimiser, vae_training_loop, warm_up)

__all__ = ["latent_weights", "decode_unclamped", "decayed_lr", "train_video_vae", "encode_video_latents", "text_embeddings", "FlowSettings",
           "train_flow_matching"]

Logger = Callable[[str], None]


def latent_weights(alpha: torch.Tensor, temporal: int, spatial: int, boost: float) -> torch.Tensor:
    """``1 + boost * coverage`` on the latent grid: alpha ``(N, F, H, W)`` -> ``(N, 1, f, h, w)``.

    Latent frame 0 covers pixel frame 0, latent frame k the ``temporal`` frames before and at
    ``k * temporal`` (the Wan VAE's causal grouping); coverage is max-pooled.
    """
    first = alpha[:, :1]
    rest = alpha[:, 1:]
    if temporal > 1:
        rest = rest.reshape(rest.shape[0], -1, temporal, *rest.shape[2:]).amax(dim=2)
    grouped = torch.cat([first, rest], dim=1).float()
    pooled = F.max_pool2d(grouped, spatial) if spatial > 1 else grouped
    return 1.0 + boost * pooled[:, None]


def decode_unclamped(vae, z: torch.Tensor) -> torch.Tensor:
    """``AutoencoderKLWan.decode`` without its final clamp to [-1, 1] (training only).

    The clamp zeroes the gradient of every pixel pushed past the range, so a decoder that
    overshoots early (e.g. saturated frames on a black background) never recovers.
    """
    vae.clear_cache()
    x = vae.post_quant_conv(z)
    frames = []
    for i in range(z.shape[2]):
        vae._conv_idx = [0]
        frames.append(vae.decoder(x[:, :, i : i + 1], feat_cache=vae._feat_map, feat_idx=vae._conv_idx,
                                  first_chunk=i == 0))
    vae.clear_cache()
    return torch.cat(frames, dim=2)


def decayed_lr(lr: float, step: int, steps: int, elapsed: float, seconds: float, decay_share: float) -> float:
    """``lr`` held, then decayed linearly to 5 % of it over the last ``decay_share`` of the budget
    (``steps`` or ``seconds``, whichever runs out first); ``decay_share`` 0: constant.

    >>> decayed_lr(1.0, 0, 100, 0.0, float("inf"), 0.5), decayed_lr(1.0, 75, 100, 0.0, float("inf"), 0.5)
    (1.0, 0.5)
    """
    if decay_share <= 0:
        return lr
    left = (steps - step) / steps
    if seconds != float("inf"):
        left = min(left, (seconds - elapsed) / seconds)
    return lr * max(0.05, min(1.0, left / decay_share))


def train_video_vae(vae, videos: torch.Tensor, alpha: torch.Tensor, steps: int, seconds: float = float("inf"),
                    batch_size: int = 4, clip_frames: int | None = None, lr: float = 1e-3,
                    foreground_boost: float = 9.0, kl_weight: float = 1e-6, seed: int = 0,
                    log: Logger | None = None, deterministic: bool = True, lr_decay_share: float = 0.0):
    """Train a Wan VAE to reconstruct random ``clip_frames``-long windows of ``videos`` (default: whole clips).

    ``clip_frames`` must be 1 + 4k (the Wan encoder reads a first frame, then chunks of 4).
    Pixels under a digit (``alpha`` ``(N, F, H, W)``, dilated by one pixel) weigh
    ``1 + foreground_boost``. The loss is on the unclamped decoder output
    (:func:`decode_unclamped`). ``deterministic``: decode the posterior mean (a plain
    autoencoder; the sampling noise of an untrained posterior hid the digits for hundreds of
    steps) instead of a sample. ``lr_decay_share``: the last share of the budget decays the learning
    rate (:func:`decayed_lr`; a constant rate left black backgrounds grey). Returns ``(vae, steps_done)``.
    """
    clip_frames = videos.shape[2] if clip_frames is None else clip_frames
    if (clip_frames - 1) % 4 or clip_frames > videos.shape[2]:
        raise ValueError(f"clip_frames must be 1 + 4k and at most {videos.shape[2]}, got {clip_frames}")
    generator = torch.Generator().manual_seed(seed)
    dilated = F.max_pool3d(alpha[:, None].float(), (1, 3, 3), stride=1, padding=(0, 1, 1))
    weights = foreground_pixel_weights(dilated, foreground_boost)

    start = time.time()

    def batch_losses(step: int, optimiser) -> tuple[torch.Tensor, torch.Tensor]:
        warm_up(optimiser, [decayed_lr(lr, step, steps, time.time() - start, seconds, lr_decay_share)], step, 20)
        index = torch.randint(len(videos), (batch_size,), generator=generator)
        offset = int(torch.randint(videos.shape[2] - clip_frames + 1, (1,), generator=generator))
        window = slice(offset, offset + clip_frames)
        x, w = videos[index][:, :, window], weights[index][:, :, window]
        posterior = vae.encode(x).latent_dist
        recon = decode_unclamped(vae, posterior.mode() if deterministic else posterior.sample(generator=generator))
        return (w * (recon - x) ** 2).mean(), posterior.kl().mean()

    return vae_training_loop(vae, lr, steps, seconds, kl_weight, batch_losses, log, log_every=20)


def encode_video_latents(vae, videos: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
    """Posterior means of ``videos`` ``(N, 3, F, H, W)`` -> ``(N, C, f, h, w)`` (unnormalised):
    the image trainer's :func:`~.training.encode_latents` with a batch size for clips."""
    return encode_latents(vae, videos, batch_size)


def text_embeddings(text_encoder, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Encoder states with padded positions zeroed: what ``WanPipeline`` feeds the transformer."""
    states = text_encoder(ids, attention_mask=mask).last_hidden_state
    return states * mask[..., None].to(states.dtype)


@dataclass(frozen=True)
class FlowSettings:
    """Hyper-parameters of :func:`train_flow_matching`; ``seconds`` is the total budget over sessions."""

    seconds: float
    max_steps: int = 10**9
    batch_size: int = 16
    lr: float = 5e-4
    text_lr: float = 2e-4
    warmup: int = 200
    ema_decay: float = 0.998
    caption_dropout: float = 0.1
    logit_normal_std: float = 1.0
    #: training noise levels t are mapped by :func:`shift_noise_levels` with this shift; use the same value as
    #: the pipeline's ``FlowMatchEulerDiscreteScheduler(shift=...)`` so sampling visits the levels trained on
    timestep_shift: float = 1.0
    checkpoint_every_s: float = 180.0
    seed: int = 0
    #: wall-clock ``time.time()`` at which this session stops whatever the budget left (infinity: never)
    stop_at: float = float("inf")


def shift_noise_levels(t: torch.Tensor, shift: float) -> torch.Tensor:
    """Map noise levels ``t`` in [0, 1] towards pure noise: ``shift * t / (1 + (shift - 1) * t)``.

    The map ``FlowMatchEulerDiscreteScheduler(shift=shift)`` applies to its sigmas; ``shift > 1`` spends
    more training (and sampling) on high noise, where a clip's layout and motion are decided (SD3's
    argument for larger latents). ``shift=1`` is the identity.

    >>> shift_noise_levels(torch.tensor([0.0, 0.5, 1.0]), 3.0)
    tensor([0.0000, 0.7500, 1.0000])
    """
    if shift <= 0:
        raise ValueError(f"shift must be > 0 (1.0 = no shift), got {shift}")
    return shift * t / (1 + (shift - 1) * t)


def _flow_batch(generator, settings: FlowSettings, latents, weights, token_ids, token_mask, caption_index,
                empty_ids, empty_mask):
    x0, weight, ids, mask, noise = captioned_batch(generator, settings.batch_size, latents, weights, token_ids,
                                                   token_mask, caption_index, empty_ids, empty_mask,
                                                   settings.caption_dropout)
    t = torch.sigmoid(torch.randn(settings.batch_size, generator=generator) * settings.logit_normal_std)
    t = shift_noise_levels(t, settings.timestep_shift)
    return x0.float(), weight, ids, mask, noise, t


def _load_state(path: str, transformer, text_encoder, optimiser, emas, generator) -> dict:
    if not path or not os.path.exists(path):
        return {"step": 0, "elapsed": 0.0, "running": 0.0}
    state = torch.load(path, weights_only=False)
    transformer.load_state_dict(state["transformer"])
    text_encoder.load_state_dict(state["text_encoder"])
    optimiser.load_state_dict(state["optimiser"])
    for ema, shadow in zip(emas, state["emas"]):
        ema.shadow.load_state_dict(shadow)
    generator.set_state(state["generator"])
    return {key: state[key] for key in ("step", "elapsed", "running")}


def _save_state(path: str, transformer, text_encoder, optimiser, emas, generator, progress: dict) -> None:
    state = dict(progress, transformer=transformer.state_dict(), text_encoder=text_encoder.state_dict(),
                 optimiser=optimiser.state_dict(), emas=[ema.shadow.state_dict() for ema in emas],
                 generator=generator.get_state())
    torch.save(state, path + ".tmp")
    os.replace(path + ".tmp", path)


def train_flow_matching(transformer, text_encoder, latents, weights, token_ids, token_mask, caption_index,
                        empty_ids, empty_mask, settings: FlowSettings, checkpoint: str | None = None,
                        log: Logger | None = None):
    """Train the Wan transformer and the text encoder jointly; resumes from ``checkpoint`` if it exists.

    latents ``(N, C, f, h, w)`` (normalised), weights ``(N, 1, f, h, w)``, caption_index ``(N,)``
    into token_ids/token_mask ``(K, L)``; empty_ids/empty_mask ``(L,)``: the empty prompt
    (classifier-free guidance). Saves ``checkpoint`` every ``checkpoint_every_s`` and at the
    end. Returns ``(ema_transformer, ema_text_encoder, steps_done_in_total, seconds_in_total)``.
    """
    generator = torch.Generator().manual_seed(settings.seed)
    optimiser = joint_optimiser(transformer, text_encoder, settings.lr, settings.text_lr)
    emas = [ExponentialMovingAverage(transformer, settings.ema_decay),
            ExponentialMovingAverage(text_encoder, settings.ema_decay)]
    progress = _load_state(checkpoint, transformer, text_encoder, optimiser, emas, generator)
    if progress["step"]:
        _log(log, f"flow resumed at step {progress['step']} ({progress['elapsed']:.0f}s done)")
    transformer.train()
    text_encoder.train()
    params = list(transformer.parameters()) + list(text_encoder.parameters())
    session_start, last_save = time.time(), time.time()
    base = progress["elapsed"]
    while (progress["step"] < settings.max_steps and progress["elapsed"] < settings.seconds
           and time.time() < settings.stop_at):
        step = progress["step"]
        warm_up(optimiser, (settings.lr, settings.text_lr), step, settings.warmup)
        x0, weight, ids, mask, noise, t = _flow_batch(generator, settings, latents, weights, token_ids, token_mask,
                                                      caption_index, empty_ids, empty_mask)
        sigma = t.view(-1, 1, 1, 1, 1)
        noisy = (1 - sigma) * x0 + sigma * noise
        pred = transformer(noisy, timestep=t * 1000, encoder_hidden_states=text_embeddings(text_encoder, ids, mask),
                           return_dict=False)[0]
        loss = (weight * (pred - (noise - x0)) ** 2).mean()
        clipped_step(optimiser, loss, params)
        for ema, module in zip(emas, (transformer, text_encoder)):
            ema.update(module, step)
        progress["running"] = loss.item() if step == 0 else 0.98 * progress["running"] + 0.02 * loss.item()
        progress["step"] = step + 1
        progress["elapsed"] = base + time.time() - session_start
        if step % 50 == 0:
            _log(log, f"flow step {step} loss {progress['running']:.4f} {progress['elapsed']:.0f}s "
                      f"({progress['elapsed'] / (step + 1):.2f} s/step overall)")
        if checkpoint and time.time() - last_save > settings.checkpoint_every_s:
            _save_state(checkpoint, transformer, text_encoder, optimiser, emas, generator, progress)
            last_save = time.time()
    if checkpoint:
        _save_state(checkpoint, transformer, text_encoder, optimiser, emas, generator, progress)
    _log(log, f"flow done: {progress['step']} steps in {progress['elapsed']:.0f}s, loss {progress['running']:.4f}")
    return emas[0].shadow, emas[1].shadow, progress["step"], progress["elapsed"]
