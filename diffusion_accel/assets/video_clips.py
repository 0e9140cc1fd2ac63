"""Captioned digit clips: the data recipe of the bundled benchmark video model.

Each clip is 9 frames of 32x32 RGB: one or two real handwritten digits (scikit-learn's 8x8
scans, upscaled with :mod:`.digits`' helpers) in a named colour and size on a plain
background, each either standing still or moving 2 px per frame in a named direction, e.g.
``"a small red three moving right on a black background"`` or ``"a large cyan seven standing
still and a small yellow one moving up on a white background"``. Two digits in one clip always
have different colours, so a judge can tell them apart by colour.

Splits (see :func:`make_video_split`): ``"train"`` uses the training scans and never a held-out
(colour, motion, digit) combination; ``"heldout"`` uses the held-out scans, and half of its
one-digit clips use a held-out combination.

Example::

    >>> from diffusion_accel.assets.video_clips import make_video_split
    >>> clips = make_video_split("heldout", 4, seed=0)     # needs scikit-learn
    >>> clips.videos.shape, clips.videos.dtype
    ((4, 9, 32, 32, 3), dtype('uint8'))
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .digits import (NO_OBJECT, RECIPE, SPLITS, AttributeBatch, SceneRecipe, SizeNames, _upscaled, blank_canvas,
                     colour_rgb, names_of, paint_glyph, scan_pool, to_uint8)

__all__ = [
    "VIDEO_RECIPE",
    "VideoRecipe",
    "DigitClips",
    "video_caption_for",
    "video_caption_vocabulary",
    "heldout_video_combinations",
    "make_video_split",
]


@dataclass(frozen=True)
class VideoRecipe(SizeNames):
    """Vocabularies and geometry of the clips; colours, digits and backgrounds come from ``scenes``."""

    scenes: SceneRecipe = RECIPE
    num_frames: int = 9
    image_size: int = 32
    pixels_per_frame: int = 2
    # name -> side length in pixels (a glyph plus 8 frames x 2 px of travel fits in 32 px)
    sizes: tuple[tuple[str, int], ...] = (("small", 10), ("large", 14))
    # name -> (row, column) step per frame, in units of ``pixels_per_frame``
    motions: tuple[tuple[str, tuple[int, int]], ...] = (
        ("static", (0, 0)),
        ("left", (0, -1)),
        ("right", (0, 1)),
        ("up", (-1, 0)),
        ("down", (1, 0)),
    )
    two_digit_fraction: float = 0.2
    heldout_combination_fraction: float = 0.15

    @property
    def motion_names(self) -> tuple[str, ...]:
        return names_of(self.motions)


VIDEO_RECIPE = VideoRecipe()


@dataclass
class DigitClips(AttributeBatch):
    """A batch of clips. Per-digit attribute arrays are ``(N, 2)`` ints (``-1`` = no second digit).

    ``videos``: uint8 ``(N, F, H, W, 3)``; ``alpha``: float32 ``(N, F, H, W)`` digit coverage;
    ``backgrounds``: ``(N,)``; ``novel``: ``(N,)`` bool (a held-out colour x motion x digit
    combination is shown).
    """

    videos: np.ndarray
    alpha: np.ndarray
    captions: list[str]
    digits: np.ndarray
    colours: np.ndarray
    sizes: np.ndarray
    motions: np.ndarray
    scans: np.ndarray
    backgrounds: np.ndarray
    novel: np.ndarray


def _motion_phrase(motion: int, recipe: VideoRecipe) -> str:
    name = recipe.motion_names[motion]
    return "standing still" if name == "static" else f"moving {name}"


def video_caption_for(digits, colours, sizes, motions, background: int, recipe: VideoRecipe = VIDEO_RECIPE) -> str:
    """Caption of one clip from attribute indices (one entry per digit, ``-1`` skipped).

    >>> video_caption_for([3], [0], [0], [2], 0)
    'a small red three moving right on a black background'
    """
    scenes = recipe.scenes
    phrases = [
        f"a {recipe.size_names[int(s)]} {scenes.colour_names[int(c)]} {scenes.digit_names[int(d)]} "
        f"{_motion_phrase(int(m), recipe)}"
        for d, c, s, m in zip(digits, colours, sizes, motions)
        if int(d) != NO_OBJECT
    ]
    if not phrases:
        raise ValueError("a clip needs at least one digit")
    return " and ".join(phrases) + f" on a {scenes.background_names[int(background)]} background"


def video_caption_vocabulary(recipe: VideoRecipe = VIDEO_RECIPE) -> list[str]:
    """Sorted list of every word a clip caption can contain."""
    words = {"a", "and", "on", "background", "moving", "standing", "still"}
    scenes = recipe.scenes
    for group in (scenes.digit_names, scenes.colour_names, scenes.background_names, recipe.size_names,
                  recipe.motion_names):
        words.update(group)
    words.discard("static")
    return sorted(words)


def heldout_video_combinations(recipe: VideoRecipe = VIDEO_RECIPE, seed: int = 0) -> np.ndarray:
    """Boolean ``(colours, motions, digits)`` table: True = combination never shown in training."""
    shape = (len(recipe.scenes.colours), len(recipe.motions), len(recipe.scenes.digit_names))
    rng = np.random.default_rng([seed, 77])
    return rng.random(shape) < recipe.heldout_combination_fraction


def _start_corner(rng, side: int, step: tuple[int, int], recipe: VideoRecipe) -> tuple[int, int]:
    """Random top-left (row, col) such that the glyph stays inside the canvas for all frames."""
    travel = (recipe.num_frames - 1) * recipe.pixels_per_frame
    corner = []
    for axis_step in step:
        low = travel if axis_step < 0 else 0
        high = recipe.image_size - side - (travel if axis_step > 0 else 0)
        corner.append(int(rng.integers(low, high + 1)))
    return corner[0], corner[1]


def _render_clip(scan_images, objects, recipe: VideoRecipe, background: int):
    """Frames ``(F, H, W, 3)`` uint8 and coverage ``(F, H, W)``; objects: (scan, colour, size, motion, corner)."""
    n, frames = recipe.image_size, recipe.num_frames
    canvas, coverage = blank_canvas(recipe.scenes, background, (frames, n, n))
    for scan, colour, size, motion, (row, col) in objects:
        side = recipe.sizes[size][1]
        glyph = _upscaled(scan_images[scan], side)
        rgb = colour_rgb(recipe.scenes, colour)
        d_row, d_col = recipe.motions[motion][1]
        for f in range(frames):
            top = row + f * d_row * recipe.pixels_per_frame
            left = col + f * d_col * recipe.pixels_per_frame
            paint_glyph(canvas, coverage, glyph, rgb, (f, slice(top, top + side), slice(left, left + side)))
    return to_uint8(canvas), coverage


def make_video_split(split: str, count: int, seed: int = 0, recipe: VideoRecipe = VIDEO_RECIPE,
                     scans: tuple[np.ndarray, np.ndarray] | None = None,
                     sample_seed: int | None = None) -> DigitClips:
    """Generate ``count`` clips of ``split`` (``"train"`` or ``"heldout"``), deterministically.

    ``seed`` fixes the scan split and the held-out combinations; ``sample_seed`` (default
    ``seed``) which clips are drawn. ``scans``: optional pre-loaded ``load_digit_scans()``.
    """
    scan_images, by_digit = scan_pool(split, count, seed, recipe.scenes, scans)
    table = heldout_video_combinations(recipe, seed)
    rng = np.random.default_rng([seed if sample_seed is None else sample_seed, SPLITS.index(split), 2025])
    n_colours, n_motions, n_digits = table.shape

    attrs = {key: np.full((count, 2), NO_OBJECT, np.int64) for key in ("digits", "colours", "sizes", "motions", "scans")}
    backgrounds, novel = np.zeros(count, np.int64), np.zeros(count, bool)
    shape = (count, recipe.num_frames, recipe.image_size, recipe.image_size)
    videos, alpha = np.zeros(shape + (3,), np.uint8), np.zeros(shape, np.float32)
    captions = []
    for i in range(count):
        two = rng.random() < recipe.two_digit_fraction
        want_novel = False if split == "train" else (None if two else bool(rng.random() < 0.5))
        objects, used_colours = [], set()
        for slot in range(2 if two else 1):
            while True:
                digit, colour, motion = int(rng.integers(n_digits)), int(rng.integers(n_colours)), int(rng.integers(n_motions))
                is_novel = bool(table[colour, motion, digit])
                if colour not in used_colours and (want_novel is None or is_novel == want_novel):
                    break
            used_colours.add(colour)
            size = int(rng.integers(len(recipe.sizes)))
            scan = int(by_digit[digit][rng.integers(len(by_digit[digit]))])
            corner = _start_corner(rng, recipe.sizes[size][1], recipe.motions[motion][1], recipe)
            for key, value in zip(("digits", "colours", "sizes", "motions", "scans"), (digit, colour, size, motion, scan)):
                attrs[key][i, slot] = value
            novel[i] |= is_novel
            objects.append((scan, colour, size, motion, corner))
        backgrounds[i] = int(rng.integers(len(recipe.scenes.backgrounds)))
        videos[i], alpha[i] = _render_clip(scan_images, objects, recipe, int(backgrounds[i]))
        captions.append(video_caption_for(attrs["digits"][i], attrs["colours"][i], attrs["sizes"][i],
                                          attrs["motions"][i], backgrounds[i], recipe))
    return DigitClips(videos, alpha, captions, attrs["digits"], attrs["colours"], attrs["sizes"], attrs["motions"],
                      attrs["scans"], backgrounds, novel)
