"""The bundled benchmark model: a small PixArt-alpha pipeline and CLIP trained on digit scenes.

Everything is offline and ships in the package (see ``MODEL_CARD.md`` next to this file;
retrain with ``scripts/train_benchmark_model.py``).

Example::

    >>> import torch
    >>> from diffusers import PixArtAlphaPipeline
    >>> from diffusion_accel.assets import (BENCHMARK_GENERATION_KWARGS, benchmark_model_dir,
    ...                                     benchmark_prompts)
    >>> pipe = PixArtAlphaPipeline.from_pretrained(benchmark_model_dir())
    >>> prompts = benchmark_prompts("heldout")[:2]
    >>> out = pipe(prompts, generator=[torch.Generator().manual_seed(i) for i in range(2)],
    ...            output_type="np", **BENCHMARK_GENERATION_KWARGS)
    >>> out.images.shape
    (2, 32, 32, 3)
"""

from __future__ import annotations

import functools
import json
import os

import numpy as np

__all__ = [
    "BENCHMARK_GENERATION_KWARGS",
    "BENCHMARK_SPLITS",
    "benchmark_model_dir",
    "benchmark_clip_dir",
    "benchmark_prompts",
    "benchmark_images",
    "benchmark_attributes",
    "model_card_path",
    "benchmark_search_config",
    "benchmark_search_config_path",
    "BENCHMARK_VIDEO_GENERATION_KWARGS",
    "benchmark_video_model_dir",
    "benchmark_video_prompts",
    "benchmark_video_attributes",
    "benchmark_video_clips",
    "video_model_card_path",
]

BENCHMARK_SPLITS = ("train", "heldout")

#: Keyword arguments of the reference ``pipe(...)`` call. ``use_resolution_binning=False`` is
#: required: PixArt's aspect-ratio bins only exist for 256 px and larger.
BENCHMARK_GENERATION_KWARGS = dict(
    num_inference_steps=20, guidance_scale=4.5, height=32, width=32, use_resolution_binning=False
)

#: Keyword arguments of the reference ``WanPipeline(...)`` call of the bundled video model.
#: ``max_sequence_length`` must match training (the caption states are zero-padded to it).
BENCHMARK_VIDEO_GENERATION_KWARGS = dict(
    num_inference_steps=20, guidance_scale=4.0, height=32, width=32, num_frames=9, max_sequence_length=24
)

_HERE = os.path.dirname(os.path.abspath(__file__))
_RETRAIN = "run scripts/train_benchmark_model.py to (re)build it"
_RETRAIN_VIDEO = "run scripts/train_video_benchmark_model.py to (re)build it"


def _existing(name: str, marker: str, retrain: str = _RETRAIN) -> str:
    path = os.path.join(_HERE, name)
    if not os.path.exists(os.path.join(path, marker)):
        raise FileNotFoundError(f"bundled asset {name!r} is missing at {path}; {retrain}")
    return path


def benchmark_model_dir() -> str:
    """Folder of the diffusers-format ``PixArtAlphaPipeline`` (load with ``from_pretrained``)."""
    return _existing("benchmark_model", "model_index.json")


def benchmark_clip_dir() -> str:
    """Folder of the ``CLIPModel`` + ``CLIPProcessor`` trained on the same data."""
    return _existing("benchmark_clip", "config.json")


def model_card_path() -> str:
    """Path of ``MODEL_CARD.md`` (data recipe, configs, training time, metrics)."""
    path = os.path.join(_HERE, "MODEL_CARD.md")
    if not os.path.exists(path):
        raise FileNotFoundError(f"MODEL_CARD.md is missing at {path}; {_RETRAIN}")
    return path


def benchmark_search_config_path() -> str:
    """Path of ``benchmark_search_config.json``: the ``AccelerationConfig`` (a static cache
    schedule) the NSGA-II schedule search picked for the bundled model at 20 steps; how it was
    found is in ``MODEL_CARD.md``."""
    path = os.path.join(_HERE, "benchmark_search_config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"bundled asset 'benchmark_search_config.json' is missing at {path}; "
                                "run benchmarks/search.py and save a picked config there")
    return path


def benchmark_search_config():
    """The searched :class:`~diffusion_accel.AccelerationConfig` of the bundled model.

    >>> config = benchmark_search_config()  # doctest: +SKIP
    >>> config.cache.schedule.num_steps  # doctest: +SKIP
    20
    """
    from ..config import AccelerationConfig

    return AccelerationConfig.load(benchmark_search_config_path())


@functools.lru_cache(maxsize=1)
def _data() -> dict[str, np.ndarray]:
    path = os.path.join(_HERE, "benchmark_data.npz")
    if not os.path.exists(path):
        raise FileNotFoundError(f"bundled asset 'benchmark_data.npz' is missing at {path}; {_RETRAIN}")
    with np.load(path) as data:
        return {key: data[key] for key in data.files}


def _check_split(split: str) -> str:
    if split not in BENCHMARK_SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(repr(s) for s in BENCHMARK_SPLITS)}")
    return split


def benchmark_prompts(split: str) -> list[str]:
    """Captions of the bundled scenes of ``split`` (``"train"`` sample or ``"heldout"``).

    >>> benchmark_prompts("heldout")[0]  # doctest: +SKIP
    'a small cyan one in the bottom left on a white background'
    """
    return [str(caption) for caption in _data()[f"{_check_split(split)}_captions"]]


def benchmark_images(split: str) -> tuple[np.ndarray, list[str]]:
    """Real scenes of ``split``: uint8 images ``(N, 32, 32, 3)`` and their N captions.

    The held-out images are the FID reference set (scans never seen in training).
    """
    images = _data()[f"{_check_split(split)}_images"].copy()
    return images, benchmark_prompts(split)


def benchmark_attributes(split: str) -> dict[str, np.ndarray | tuple[str, ...]]:
    """Per-scene attributes of ``split`` for judges, aligned with :func:`benchmark_images`.

    ``digits``, ``colours``, ``sizes``, ``positions``: int ``(N, 2)`` indices (``-1`` = no
    second digit); ``backgrounds``: ``(N,)``; ``novel``: bool ``(N,)`` (a colour x digit x
    position combination never shown in training); ``*_names``: the index -> word tables,
    e.g. ``attrs["colour_names"][attrs["colours"][0, 0]]``.
    """
    data, split = _data(), _check_split(split)
    out: dict[str, np.ndarray | tuple[str, ...]] = {
        key: data[f"{split}_{key}"].copy()
        for key in ("digits", "colours", "sizes", "positions", "backgrounds", "novel")
    }
    for key in ("digit_names", "colour_names", "size_names", "position_names", "background_names"):
        out[key] = tuple(str(name) for name in data[key])
    return out


def benchmark_video_model_dir() -> str:
    """Folder of the diffusers-format ``WanPipeline`` text-to-video model (9 frames x 32x32).

    >>> from diffusers import WanPipeline  # doctest: +SKIP
    >>> pipe = WanPipeline.from_pretrained(benchmark_video_model_dir())  # doctest: +SKIP
    >>> pipe(benchmark_video_prompts("heldout")[:2], output_type="np",
    ...      **BENCHMARK_VIDEO_GENERATION_KWARGS).frames.shape  # doctest: +SKIP
    (2, 9, 32, 32, 3)
    """
    return _existing("benchmark_video_model", "model_index.json", _RETRAIN_VIDEO)


def video_model_card_path() -> str:
    """Path of ``VIDEO_MODEL_CARD.md`` (data recipe, configs, training time, metrics)."""
    return os.path.join(_existing("", "VIDEO_MODEL_CARD.md", _RETRAIN_VIDEO), "VIDEO_MODEL_CARD.md")


@functools.lru_cache(maxsize=1)
def _video_data() -> dict:
    path = os.path.join(_existing("", "benchmark_video_data.json", _RETRAIN_VIDEO), "benchmark_video_data.json")
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def benchmark_video_prompts(split: str) -> list[str]:
    """Captions of the bundled video clips of ``split`` (``"train"`` sample or ``"heldout"``).

    >>> benchmark_video_prompts("heldout")[0]  # doctest: +SKIP
    'a small blue five moving right on a black background'
    """
    return list(_video_data()[_check_split(split)]["captions"])


def benchmark_video_attributes(split: str) -> dict[str, np.ndarray | tuple[str, ...]]:
    """Per-clip attributes of ``split`` for the judges (:mod:`.video_judges`), aligned with the prompts.

    ``digits``, ``colours``, ``sizes``, ``motions``: int ``(N, 2)`` (``-1`` = no second digit);
    ``backgrounds``: ``(N,)``; ``novel``: bool ``(N,)``; ``*_names``: index -> word tables.
    """
    data = _video_data()
    entry = data[_check_split(split)]
    out: dict[str, np.ndarray | tuple[str, ...]] = {
        key: np.asarray(entry[key], dtype=bool if key == "novel" else np.int64)
        for key in ("digits", "colours", "sizes", "motions", "backgrounds", "novel")
    }
    for key, names in data["names"].items():
        out[f"{key.rstrip('s')}_names"] = tuple(names)
    return out


def benchmark_video_clips(split: str) -> tuple[np.ndarray, list[str]]:
    """Real clips of ``split``: uint8 videos ``(N, 9, 32, 32, 3)`` and their N captions -- the
    clips :func:`benchmark_video_prompts` describes, re-rendered from the data recipe (the held-out
    ones are the FVD reference set; scans never seen in training). Needs scikit-learn (the digit
    scans are not stored).

    Raises:
        ValueError: scikit-learn is missing, or the recipe no longer renders the stored captions.
    """
    from .video_clips import make_video_split

    captions = benchmark_video_prompts(split)
    try:
        clips = make_video_split(split, len(captions), seed=0, sample_seed=0 if split == "heldout" else 1)
    except ImportError as exc:
        raise ValueError(f"The bundled {split} clips are rendered from scikit-learn's digit scans: {exc}") from None
    if clips.captions != captions:
        raise ValueError(f"The video recipe no longer renders the stored {split} captions; {_RETRAIN_VIDEO}.")
    return clips.videos, captions
