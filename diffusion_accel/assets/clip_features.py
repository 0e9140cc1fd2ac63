"""The bundled CLIP as torch modules: image embeddings (FID features) and caption embeddings.

``ClipImageFeatures`` plugs into torchmetrics' FID as a custom feature extractor::

    >>> from torchmetrics.image.fid import FrechetInceptionDistance
    >>> from diffusion_accel.assets.clip_features import ClipImageFeatures
    >>> features = ClipImageFeatures.from_pretrained()          # the bundled CLIP
    >>> fid = FrechetInceptionDistance(feature=features, normalize=True)
    >>> # fid.update(real_float_images_in_0_1, real=True); fid.update(fake, real=False); fid.compute()
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ClipImageFeatures", "clip_text_embeddings", "uint8_to_unit"]


def uint8_to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``(N, H, W, 3)`` (numpy or torch) -> float ``(N, 3, H, W)`` in [0, 1]."""
    images = torch.as_tensor(images)
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected uint8 (N, H, W, 3) images, got {images.dtype} {tuple(images.shape)}")
    return images.permute(0, 3, 1, 2).float() / 255.0


class ClipImageFeatures(nn.Module):
    """Projected CLIP image embeddings of float images ``(N, 3, H, W)`` in [0, 1] -> ``(N, D)``.

    Images of another size are resized (bilinear, antialiased) to the CLIP input size, then
    normalised with the processor's mean/std. Not L2-normalised (FID wants raw features; use
    ``F.normalize`` for cosine scores). ``num_features`` tells torchmetrics the width.
    """

    def __init__(self, clip_model, image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5)):
        super().__init__()
        self.clip = clip_model.eval().requires_grad_(False)
        self.image_size = int(clip_model.config.vision_config.image_size)
        self.num_features = int(clip_model.config.projection_dim)
        self.register_buffer("mean", torch.tensor(image_mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(image_std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    @classmethod
    def from_pretrained(cls, path: str | None = None) -> "ClipImageFeatures":
        """Load from a ``CLIPModel`` + ``CLIPProcessor`` folder (default: the bundled CLIP)."""
        from transformers import CLIPImageProcessor, CLIPModel

        if path is None:
            from . import benchmark_clip_dir

            path = benchmark_clip_dir()
        processor = CLIPImageProcessor.from_pretrained(path)
        return cls(CLIPModel.from_pretrained(path), processor.image_mean, processor.image_std)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected float images (N, 3, H, W), got {tuple(images.shape)}")
        images = images.float()
        if images.shape[-2:] != (self.image_size, self.image_size):
            images = F.interpolate(images, size=(self.image_size, self.image_size), mode="bilinear", antialias=True)
        pixels = (images - self.mean) / self.std
        output = self.clip.get_image_features(pixel_values=pixels)
        return output if isinstance(output, torch.Tensor) else output.pooler_output


@torch.no_grad()
def clip_text_embeddings(clip_model, tokenizer, captions: list[str], max_length: int | None = None) -> torch.Tensor:
    """Projected CLIP caption embeddings ``(len(captions), D)`` (not normalised)."""
    max_length = max_length or int(clip_model.config.text_config.max_position_embeddings)
    tokens = tokenizer(captions, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt")
    output = clip_model.get_text_features(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask)
    return output if isinstance(output, torch.Tensor) else output.pooler_output
