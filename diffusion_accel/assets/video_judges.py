"""Judges of generated digit clips: is each named digit the named colour, does it move as named?

Pure numpy; the palette and background colours are the clip recipe's (see :mod:`.video_clips`).
Each pixel is explained as the background blended with one palette colour,
``pixel = bg + a * (colour - bg)``; it belongs to the colour with the smallest residual when its
blend ``a`` is at least ``min_coverage``. The colour judge asks whether a named colour is among
the clip's dominant colours; the motion judge fits a line to the per-frame centroid of that
colour's pixels and reads its slope (px per frame) as left/right/up/down, or ``"static"`` when
it is under ``static_speed``.

Example::

    >>> from diffusion_accel.assets.video_clips import make_video_split
    >>> from diffusion_accel.assets.video_judges import judge_clips
    >>> clips = make_video_split("heldout", 8)                         # needs scikit-learn
    >>> judge_clips(clips.videos, clips.colours, clips.motions, clips.backgrounds)["motion_accuracy"]
    1.0
"""

from __future__ import annotations

import numpy as np

from .video_clips import VIDEO_RECIPE, VideoRecipe

__all__ = ["colour_assignment", "dominant_colours", "centroid_track", "motion_of", "judge_clips"]


def _palette(recipe: VideoRecipe) -> np.ndarray:
    return np.asarray([rgb for _, rgb in recipe.scenes.colours], np.float32)


def colour_assignment(video: np.ndarray, background: int, recipe: VideoRecipe = VIDEO_RECIPE,
                      min_coverage: float = 0.4) -> np.ndarray:
    """Per-pixel palette index of a uint8 clip ``(F, H, W, 3)`` -> int ``(F, H, W)``, ``-1`` = background."""
    if video.ndim != 4 or video.shape[-1] != 3:
        raise ValueError(f"a clip (F, H, W, 3) is expected, got shape {video.shape}")
    bg = np.asarray(recipe.scenes.backgrounds[int(background)][1], np.float32)
    offset = video.astype(np.float32) - bg                      # (F, H, W, 3)
    directions = _palette(recipe) - bg                          # (K, 3)
    blend = np.clip(offset @ directions.T / (directions**2).sum(axis=1), 0.0, 1.0)   # (F, H, W, K)
    residual = np.linalg.norm(offset[..., None, :] - blend[..., None] * directions, axis=-1)
    best = residual.argmin(axis=-1)
    best_blend = np.take_along_axis(blend, best[..., None], axis=-1)[..., 0]
    return np.where(best_blend >= min_coverage, best, -1)


def dominant_colours(assignment: np.ndarray, count: int) -> list[int]:
    """The ``count`` palette indices covering the most pixels of a clip (fewer if fewer appear)."""
    labels, sizes = np.unique(assignment[assignment >= 0], return_counts=True)
    order = np.argsort(-sizes, kind="stable")
    return [int(labels[i]) for i in order[:count]]


def centroid_track(mask: np.ndarray, min_pixels: int = 3) -> np.ndarray:
    """(row, col) centroid per frame of a boolean ``(F, H, W)`` mask; NaN where under ``min_pixels``."""
    track = np.full((mask.shape[0], 2), np.nan)
    rows, cols = np.mgrid[: mask.shape[1], : mask.shape[2]]
    for f, frame in enumerate(mask):
        if frame.sum() >= min_pixels:
            track[f] = rows[frame].mean(), cols[frame].mean()
    return track


def motion_of(track: np.ndarray, static_speed: float = 0.6) -> str:
    """``"static"``, ``"left"``, ``"right"``, ``"up"`` or ``"down"`` from a centroid track ``(F, 2)``.

    Least-squares slope over the frames where the object is visible; ``"none"`` when it is
    visible in fewer than half of the frames.
    """
    visible = ~np.isnan(track[:, 0])
    if visible.sum() < max(2, len(track) // 2):
        return "none"
    frames = np.arange(len(track))[visible].astype(np.float64)
    frames -= frames.mean()
    slopes = (frames[:, None] * track[visible]).sum(axis=0) / (frames**2).sum()
    d_row, d_col = slopes
    if max(abs(d_row), abs(d_col)) < static_speed:
        return "static"
    if abs(d_col) >= abs(d_row):
        return "right" if d_col > 0 else "left"
    return "down" if d_row > 0 else "up"


def judge_clips(videos: np.ndarray, colours: np.ndarray, motions: np.ndarray, backgrounds: np.ndarray,
                recipe: VideoRecipe = VIDEO_RECIPE) -> dict:
    """Judge clips ``(N, F, H, W, 3)`` uint8 against their named colours/motions ``(N, 2)`` (``-1`` = none).

    A digit's colour is correct when its colour is among the clip's ``k`` dominant colours
    (``k`` = digits named); its motion is correct when the track of its colour's pixels moves
    as named (static ones must stay still). Returns accuracies over digits and per-digit lists.
    """
    videos = np.asarray(videos)
    colours, motions = np.asarray(colours).reshape(len(videos), -1), np.asarray(motions).reshape(len(videos), -1)
    colour_ok, motion_ok, predicted = [], [], []
    for video, clip_colours, clip_motions, background in zip(videos, colours, motions, backgrounds):
        assignment = colour_assignment(video, int(background), recipe)
        named = [(int(c), int(m)) for c, m in zip(clip_colours, clip_motions) if int(c) >= 0]
        top = dominant_colours(assignment, len(named))
        for colour, motion in named:
            colour_ok.append(colour in top)
            observed = motion_of(centroid_track(assignment == colour))
            predicted.append(observed)
            motion_ok.append(observed == recipe.motion_names[motion])
    return {
        "colour_accuracy": float(np.mean(colour_ok)) if colour_ok else float("nan"),
        "motion_accuracy": float(np.mean(motion_ok)) if motion_ok else float("nan"),
        "colour_correct": colour_ok,
        "motion_correct": motion_ok,
        "predicted_motions": predicted,
    }
