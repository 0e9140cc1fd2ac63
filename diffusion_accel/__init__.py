"""diffusion-accel: faster, leaner diffusers pipelines without retraining.

``AccelerationConfig``, ``apply`` and ``remove`` are imported on first use (PEP 562), so that
``import diffusion_accel`` -- and ``diffusion-accel --help`` / ``--version`` -- do not load torch
and diffusers.

Example:
    >>> import diffusion_accel
    >>> from diffusion_accel import AccelerationConfig
    >>> config = AccelerationConfig()          # add cache=..., quant=..., attention=...
    >>> # diffusion_accel.apply(pipe, config); pipe(...); diffusion_accel.remove(pipe)
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .api import apply, remove
    from .config import AccelerationConfig

__version__ = "0.1.0"
__all__ = ["AccelerationConfig", "apply", "remove", "__version__"]

#: public name -> the module defining it (imported when the name is first used)
_LAZY = {"AccelerationConfig": ".config", "apply": ".api", "remove": ".api"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    # A submodule, as the eager imports gave (``diffusion_accel.caching`` after ``import diffusion_accel``).
    if not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
