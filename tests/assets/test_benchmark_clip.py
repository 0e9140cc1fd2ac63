"""The bundled CLIP recognises the held-out scenes' captions and serves as an FID feature."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import CLIPModel, CLIPProcessor

from diffusion_accel.assets import benchmark_clip_dir, benchmark_images
from diffusion_accel.assets.clip_features import ClipImageFeatures, clip_text_embeddings, uint8_to_unit


@pytest.fixture(scope="module")
def clip():
    path = benchmark_clip_dir()
    return CLIPModel.from_pretrained(path).eval(), CLIPProcessor.from_pretrained(path), ClipImageFeatures.from_pretrained(path)


def test_true_caption_beats_nine_random_ones_on_real_heldout_images(clip):
    model, processor, features = clip
    images, captions = benchmark_images("heldout")
    rng = np.random.default_rng(0)
    count = 48
    image_embeddings = F.normalize(features(uint8_to_unit(images[:count])), dim=-1)
    hits = 0
    for i in range(count):
        others = [c for c in rng.choice(captions, size=12, replace=False) if c != captions[i]][:9]
        text = F.normalize(clip_text_embeddings(model, processor.tokenizer, [captions[i], *others]), dim=-1)
        hits += int((text @ image_embeddings[i]).argmax() == 0)
    assert hits / count >= 0.8


def test_processor_path_matches_feature_module(clip):
    model, processor, features = clip
    images, _ = benchmark_images("heldout")
    pixel_values = processor(images=list(images[:4]), return_tensors="pt").pixel_values
    with torch.no_grad():
        via_processor = model.get_image_features(pixel_values=pixel_values)
    via_processor = via_processor if isinstance(via_processor, torch.Tensor) else via_processor.pooler_output
    via_module = features(uint8_to_unit(images[:4]))
    assert via_module.shape == (4, features.num_features)
    torch.testing.assert_close(via_module, via_processor, atol=2e-2, rtol=0)


def test_feature_module_accepts_other_sizes_and_rejects_bad_shapes(clip):
    features = clip[2]
    assert features(torch.rand(2, 3, 299, 299)).shape == (2, features.num_features)
    with pytest.raises(ValueError):
        features(torch.rand(2, 32, 32))
