"""A short fingerprint of a pipeline: class, configs, acceleration and (sampled) weights.

An evaluation run records it in ``run.json``, so that resuming it with another model -- another
pipeline object, other weights, another dtype or acceleration -- is refused instead of silently
mixing the old outputs with the new model's.

The weights enter through a strided sample of at most :data:`SAMPLE` elements per tensor (with
every tensor's name, dtype and shape): fine-tuned or differently initialised weights change the
sample, and fingerprinting a large model reads only a few megabytes.

Example:
    >>> from diffusion_accel.testing import tiny_pipeline
    >>> a, b = tiny_pipeline("pixart-alpha", seed=0), tiny_pipeline("pixart-alpha", seed=0)
    >>> model_fingerprint(a) == model_fingerprint(b)
    True
    >>> model_fingerprint(a) == model_fingerprint(tiny_pipeline("pixart-alpha", seed=1))
    False
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch

from ..pipeline_state import acceleration_state

__all__ = ["SAMPLE", "model_fingerprint"]

#: Elements of each weight tensor that enter the fingerprint (evenly strided).
SAMPLE = 4096


def model_fingerprint(pipe: Any) -> str:
    """Hex SHA-256 of ``pipe``'s class, its config, its acceleration and every component's class,
    config and sampled weights."""
    h = hashlib.sha256()
    _add(h, f"{type(pipe).__module__}.{type(pipe).__qualname__}", _config(pipe))
    state = acceleration_state(pipe)
    _add(h, None if state is None else state.config.to_dict())
    components = getattr(pipe, "components", None) or {}
    for name in sorted(components):
        component = components[name]
        _add(h, name, type(component).__qualname__, _config(component))
        if isinstance(component, torch.nn.Module):
            for key, tensor in component.state_dict().items():
                _add(h, key, str(tensor.dtype), list(tensor.shape))
                h.update(_sample_bytes(tensor))
    return h.hexdigest()


def _add(h: Any, *values: Any) -> None:
    h.update(json.dumps(values, sort_keys=True, default=str).encode())


def _config(obj: Any) -> Any:
    config = getattr(obj, "config", None)
    if config is None:
        return None
    try:
        return dict(config) if not hasattr(config, "to_dict") else config.to_dict()
    except (TypeError, ValueError):
        return str(config)


def _sample_bytes(tensor: torch.Tensor) -> bytes:
    if tensor.device.type == "meta" or tensor.numel() == 0:
        return b""
    flat = tensor.detach().reshape(-1)
    sample = flat[:: max(1, flat.numel() // SAMPLE)][:SAMPLE].to("cpu").contiguous()
    return sample.view(torch.uint8).numpy().tobytes()
