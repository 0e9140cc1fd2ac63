"""Imports every built-in model family so their adapters are registered."""

from . import cogvideox, flux, pixart, sd3, unet, wan  # noqa: F401
