"""Captioned digit scenes: the data recipe of the bundled benchmark model.

Each 32x32 RGB scene places one or two real handwritten digits (scikit-learn's bundled 8x8
scans, upscaled) with a colour, a size and a position on a plain background, and a templated
caption states them, e.g. ``"a large red seven in the top left on a black background"`` or
``"a small blue three in the top right and a large green zero in the bottom left on a white
background"``.

Everything here is deterministic for a given seed. Only :func:`load_digit_scans` needs
scikit-learn (imported lazily); the caption helpers and :data:`RECIPE` work without it, so the
runtime (which reads the exported ``benchmark_data.npz``) never imports scikit-learn.

Splits (see :func:`make_split`):

* ``"train"``: scans from the training part of the scan split, and never a held-out
  (colour, digit, position) combination;
* ``"heldout"``: scans never used by ``"train"``; half of the single-digit scenes use a
  held-out (colour, digit, position) combination, so generalisation to unseen combinations is
  measured too.

Example::

    >>> from diffusion_accel.assets.digits import make_split
    >>> scenes = make_split("heldout", 4, seed=0)          # needs scikit-learn
    >>> scenes.images.shape, scenes.images.dtype
    ((4, 32, 32, 3), dtype('uint8'))
    >>> scenes.captions[0]                                 # doctest: +SKIP
    'a large cyan four in the centre on a black background'
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

__all__ = [
    "RECIPE",
    "SceneRecipe",
    "DigitScenes",
    "caption_for",
    "caption_vocabulary",
    "load_digit_scans",
    "split_scan_indices",
    "heldout_combinations",
    "make_split",
    "SPLITS",
]

SPLITS = ("train", "heldout")
NO_OBJECT = -1  # attribute value of the absent second digit in a one-digit scene


def names_of(pairs) -> tuple[str, ...]:
    """The names of ``(name, value)`` pairs, in order (the caption words of a recipe vocabulary)."""
    return tuple(name for name, _ in pairs)


class SizeNames:
    """``size_names`` of a recipe whose ``sizes`` are ``(name, side in pixels)`` pairs (scenes and clips)."""

    sizes: tuple[tuple[str, int], ...]

    @property
    def size_names(self) -> tuple[str, ...]:
        return names_of(self.sizes)


@dataclass(frozen=True)
class SceneRecipe(SizeNames):
    """Attribute vocabularies and geometry of the scenes (names are caption words)."""

    image_size: int = 32
    digit_names: tuple[str, ...] = (
        "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
    )
    colours: tuple[tuple[str, tuple[int, int, int]], ...] = (
        ("red", (235, 35, 35)),
        ("green", (35, 200, 45)),
        ("blue", (45, 95, 255)),
        ("yellow", (240, 220, 25)),
        ("magenta", (225, 45, 225)),
        ("cyan", (30, 215, 230)),
    )
    backgrounds: tuple[tuple[str, tuple[int, int, int]], ...] = (
        ("black", (0, 0, 0)),
        ("white", (255, 255, 255)),
    )
    # name -> side length in pixels of the upscaled 8x8 scan
    sizes: tuple[tuple[str, int], ...] = (("small", 12), ("large", 16))
    # name -> centre (row, column) of the digit in the 32x32 canvas
    positions: tuple[tuple[str, tuple[int, int]], ...] = (
        ("top left", (8, 8)),
        ("top right", (8, 24)),
        ("bottom left", (24, 8)),
        ("bottom right", (24, 24)),
        ("centre", (16, 16)),
    )
    two_digit_fraction: float = 0.3
    heldout_scan_fraction: float = 0.2
    heldout_combination_fraction: float = 0.15

    @property
    def colour_names(self) -> tuple[str, ...]:
        return names_of(self.colours)

    @property
    def background_names(self) -> tuple[str, ...]:
        return names_of(self.backgrounds)

    @property
    def position_names(self) -> tuple[str, ...]:
        return names_of(self.positions)

    @property
    def corner_positions(self) -> tuple[int, ...]:
        """Indices of the four quadrant positions (two-digit scenes use two of these)."""
        return tuple(i for i, name in enumerate(self.position_names) if name != "centre")


RECIPE = SceneRecipe()


class AttributeBatch:
    """``len`` and :meth:`attribute_arrays` of a dataclass whose fields are the pixels, the coverage,
    the captions, then the integer attribute arrays (:class:`DigitScenes`, ``DigitClips``)."""

    captions: list[str]

    def __len__(self) -> int:
        return len(self.captions)

    def attribute_arrays(self) -> dict[str, np.ndarray]:
        """The integer attribute arrays by name, in field order (what the exported asset stores)."""
        return {field.name: getattr(self, field.name) for field in fields(self)[3:]}


@dataclass
class DigitScenes(AttributeBatch):
    """A batch of scenes. Attribute arrays are ``(N, 2)`` ints (``-1`` = no second digit).

    ``images``: uint8 ``(N, 32, 32, 3)``; ``alpha``: float32 ``(N, 32, 32)`` digit coverage in
    [0, 1] (a foreground mask); ``digits``/``colours``/``sizes``/``positions``/``scans``: per
    digit slot; ``backgrounds``: ``(N,)``; ``novel``: ``(N,)`` bool, True when a digit uses a
    held-out (colour, digit, position) combination.
    """

    images: np.ndarray
    alpha: np.ndarray
    captions: list[str]
    digits: np.ndarray
    colours: np.ndarray
    sizes: np.ndarray
    positions: np.ndarray
    scans: np.ndarray
    backgrounds: np.ndarray
    novel: np.ndarray


def _object_phrase(digit: int, colour: int, size: int, position: int, recipe: SceneRecipe) -> str:
    return (
        f"a {recipe.size_names[size]} {recipe.colour_names[colour]} {recipe.digit_names[digit]}"
        f" in the {recipe.position_names[position]}"
    )


def caption_for(
    digits, colours, sizes, positions, background: int, recipe: SceneRecipe = RECIPE
) -> str:
    """Canonical caption of one scene from attribute indices (one entry per digit, ``-1`` skipped).

    Digits are stated in the order of :attr:`SceneRecipe.positions`, so a scene has exactly one
    caption.

    >>> caption_for([7], [0], [1], [0], 0)
    'a large red seven in the top left on a black background'
    """
    objects = [
        (int(p), int(d), int(c), int(s))
        for d, c, s, p in zip(digits, colours, sizes, positions)
        if int(d) != NO_OBJECT
    ]
    if not objects:
        raise ValueError("a scene needs at least one digit")
    objects.sort()
    phrases = [_object_phrase(d, c, s, p, recipe) for p, d, c, s in objects]
    return " and ".join(phrases) + f" on a {recipe.background_names[int(background)]} background"


def caption_vocabulary(recipe: SceneRecipe = RECIPE) -> list[str]:
    """Sorted list of every word a caption can contain."""
    words = {"a", "in", "the", "and", "on", "background"}
    for group in (
        recipe.digit_names,
        recipe.colour_names,
        recipe.background_names,
        recipe.size_names,
        recipe.position_names,
    ):
        for name in group:
            words.update(name.split())
    return sorted(words)


def load_digit_scans() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1797 real 8x8 digit scans as float32 coverage in [0, 1], and labels.

    Returns ``(scans (1797, 8, 8), labels (1797,))``. Needs scikit-learn.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "regenerating the digit scenes needs scikit-learn: pip install 'diffusion-accel[train]'"
        ) from error
    bunch = load_digits()
    return (bunch.images / 16.0).astype(np.float32), bunch.target.astype(np.int64)


def split_scan_indices(labels: np.ndarray, recipe: SceneRecipe = RECIPE, seed: int = 0):
    """Disjoint ``(train_indices, heldout_indices)`` of the scans, stratified by digit."""
    rng = np.random.default_rng(seed)
    train, heldout = [], []
    for digit in range(len(recipe.digit_names)):
        members = np.flatnonzero(labels == digit)
        members = members[rng.permutation(len(members))]
        n_heldout = int(round(recipe.heldout_scan_fraction * len(members)))
        heldout.append(members[:n_heldout])
        train.append(members[n_heldout:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(heldout))


def heldout_combinations(recipe: SceneRecipe = RECIPE, seed: int = 0) -> np.ndarray:
    """Boolean ``(colours, digits, positions)`` table: True = combination never shown in training.

    Every colour, digit and position still appears in training through other combinations.
    """
    shape = (len(recipe.colours), len(recipe.digit_names), len(recipe.positions))
    rng = np.random.default_rng(seed + 1)
    table = rng.random(shape) < recipe.heldout_combination_fraction
    return table


def _upscaled(scan: np.ndarray, side: int) -> np.ndarray:
    """Bilinear upscale of an 8x8 coverage map to ``side x side`` (pure numpy, deterministic)."""
    source = scan.shape[0]
    coords = (np.arange(side) + 0.5) * source / side - 0.5
    coords = np.clip(coords, 0, source - 1)
    low = np.floor(coords).astype(int)
    high = np.minimum(low + 1, source - 1)
    frac = (coords - low).astype(np.float32)
    rows = scan[low] * (1 - frac)[:, None] + scan[high] * frac[:, None]
    return rows[:, low] * (1 - frac)[None, :] + rows[:, high] * frac[None, :]


def blank_canvas(recipe: SceneRecipe, background: int, shape: tuple[int, ...]):
    """A float ``shape + (3,)`` canvas of background colour ``background`` in [0, 1] and a zero
    coverage map of ``shape`` (the two arrays :func:`paint_glyph` draws into)."""
    background_rgb = np.asarray(recipe.backgrounds[background][1], dtype=np.float32) / 255.0
    return np.broadcast_to(background_rgb, shape + (3,)).copy(), np.zeros(shape, dtype=np.float32)


def paint_glyph(canvas: np.ndarray, coverage: np.ndarray, glyph: np.ndarray, rgb: np.ndarray, window) -> None:
    """Draw ``glyph`` (coverage in [0, 1]) in colour ``rgb`` over ``canvas[window]`` and keep the
    larger coverage in ``coverage[window]`` (in place; ``window`` indexes both arrays)."""
    canvas[window] = canvas[window] * (1 - glyph[..., None]) + rgb * glyph[..., None]
    coverage[window] = np.maximum(coverage[window], glyph)


def colour_rgb(recipe: SceneRecipe, colour: int) -> np.ndarray:
    """Colour ``colour`` of ``recipe`` as float32 RGB in [0, 1]."""
    return np.asarray(recipe.colours[colour][1], dtype=np.float32) / 255.0


def to_uint8(canvas: np.ndarray) -> np.ndarray:
    """A float canvas in [0, 1] rounded to uint8."""
    return np.clip(np.rint(canvas * 255.0), 0, 255).astype(np.uint8)


def _render(scan_images, digit_slots, recipe: SceneRecipe, background: int):
    """Compose one scene. ``digit_slots``: list of (scan_index, colour, size, position)."""
    n = recipe.image_size
    canvas, alpha_total = blank_canvas(recipe, background, (n, n))
    for scan_index, colour, size, position in digit_slots:
        side = recipe.sizes[size][1]
        centre_row, centre_col = recipe.positions[position][1]
        top, left = centre_row - side // 2, centre_col - side // 2
        window = (slice(top, top + side), slice(left, left + side))
        glyph = _upscaled(scan_images[scan_index], side)
        paint_glyph(canvas, alpha_total, glyph, colour_rgb(recipe, colour), window)
    return to_uint8(canvas), alpha_total


def scan_pool(split: str, count: int, seed: int, recipe: SceneRecipe,
              scans: tuple[np.ndarray, np.ndarray] | None) -> tuple[np.ndarray, list[np.ndarray]]:
    """Check ``split``/``count`` and return ``(scan_images, by_digit)``: the scans, and per digit the
    indices of the scans ``split`` may draw (scan split fixed by ``seed``)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    scan_images, labels = scans if scans is not None else load_digit_scans()
    train_scans, heldout_scans = split_scan_indices(labels, recipe, seed)
    pool = train_scans if split == "train" else heldout_scans
    return scan_images, [pool[labels[pool] == d] for d in range(len(recipe.digit_names))]


def make_split(
    split: str,
    count: int,
    seed: int = 0,
    recipe: SceneRecipe = RECIPE,
    scans: tuple[np.ndarray, np.ndarray] | None = None,
    sample_seed: int | None = None,
) -> DigitScenes:
    """Generate ``count`` scenes of ``split`` (``"train"`` or ``"heldout"``), deterministically.

    ``seed`` fixes the scan split and the held-out combinations (seed 0 is the shipped recipe);
    ``sample_seed`` (default: ``seed``) fixes which scenes are drawn, so another sample of the
    same split is ``make_split(split, n, seed, sample_seed=other)``. ``scans`` may pass
    pre-loaded ``load_digit_scans()`` output.
    """
    scan_images, by_digit = scan_pool(split, count, seed, recipe, scans)
    novel_table = heldout_combinations(recipe, seed)
    rng = np.random.default_rng([seed if sample_seed is None else sample_seed, SPLITS.index(split), 2024])

    n_colours, n_digits = len(recipe.colours), len(recipe.digit_names)
    corners = np.asarray(recipe.corner_positions)

    def draw_object(position: int, want_novel: bool | None):
        """(digit, colour) for a position; ``want_novel``: True/False forces the combination kind."""
        while True:
            digit, colour = int(rng.integers(n_digits)), int(rng.integers(n_colours))
            novel = bool(novel_table[colour, digit, position])
            if want_novel is None or novel == want_novel:
                return digit, colour, novel

    shape = (count, 2)
    digits = np.full(shape, NO_OBJECT, np.int64)
    colours, sizes, positions, scan_ids = (np.full(shape, NO_OBJECT, np.int64) for _ in range(4))
    backgrounds = np.zeros(count, np.int64)
    novel = np.zeros(count, bool)
    images = np.zeros((count, recipe.image_size, recipe.image_size, 3), np.uint8)
    alpha = np.zeros((count, recipe.image_size, recipe.image_size), np.float32)
    captions = []
    for i in range(count):
        two = rng.random() < recipe.two_digit_fraction
        if two:
            slots = np.sort(rng.choice(corners, size=2, replace=False))
        else:
            slots = np.asarray([rng.integers(len(recipe.positions))])
        # train never shows a held-out combination; held-out single-digit scenes are half novel
        if split == "train":
            want_novel = False
        else:
            want_novel = None if two else bool(rng.random() < 0.5)
        objects = []
        for slot, position in enumerate(slots):
            digit, colour, is_novel = draw_object(int(position), want_novel)
            size = int(rng.integers(len(recipe.sizes)))
            scan = int(by_digit[digit][rng.integers(len(by_digit[digit]))])
            digits[i, slot], colours[i, slot], sizes[i, slot] = digit, colour, size
            positions[i, slot], scan_ids[i, slot] = int(position), scan
            novel[i] |= is_novel
            objects.append((scan, colour, size, int(position)))
        backgrounds[i] = int(rng.integers(len(recipe.backgrounds)))
        images[i], alpha[i] = _render(scan_images, objects, recipe, int(backgrounds[i]))
        captions.append(caption_for(digits[i], colours[i], sizes[i], positions[i], backgrounds[i], recipe))
    return DigitScenes(images, alpha, captions, digits, colours, sizes, positions, scan_ids, backgrounds, novel)
