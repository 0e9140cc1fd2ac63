"""Imports every built-in model family so their adapters are registered.

A family is any module of this package besides the machinery below: adding ``models/<family>.py``
that calls :func:`~diffusion_accel.models.register_model_adapter` is all it takes.
"""

import importlib
import pkgutil

_MACHINERY = {"base", "registry", "families"}

for _module in pkgutil.iter_modules(importlib.import_module(__package__).__path__):
    if _module.name not in _MACHINERY:
        importlib.import_module(f"{__package__}.{_module.name}")
