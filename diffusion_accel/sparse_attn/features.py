"""Feature maps ``phi`` of linear attention (positive, so the normaliser is positive).

* ``"elu"``: ``elu(x) + 1`` (Katharopoulos et al.);
* ``"relu"``: ``relu(x)`` (rows that are all zero give a zero output);
* ``"softmax"``: softmax over the head dimension (SLA's default).

Example:
    >>> import torch
    >>> from diffusion_accel.sparse_attn.features import feature_map_fn
    >>> bool((feature_map_fn("elu")(torch.randn(4, 8)) > 0).all())
    True
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

__all__ = ["FEATURE_MAPS", "feature_map_fn"]

FEATURE_MAPS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "elu": lambda x: F.elu(x) + 1.0,
    "relu": F.relu,
    "softmax": lambda x: x.softmax(-1),
}


def feature_map_fn(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The feature map called ``name`` (ValueError listing the choices otherwise)."""
    if name not in FEATURE_MAPS:
        raise ValueError(f"Unknown feature_map {name!r}; choose one of {sorted(FEATURE_MAPS)}.")
    return FEATURE_MAPS[name]
