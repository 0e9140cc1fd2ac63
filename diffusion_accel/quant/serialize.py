"""Save / load a quantized denoiser as safetensors + a JSON layer plan (no pickle).

``save_quantized(model, directory)`` writes

* ``quant_plan.json``: format, version, model class, and for every :class:`QuantLinear` its
  construction arguments (bits, group size, activation mode, ranges, smoothing, bias dtype, input
  group) plus the timestep-range edges;
* ``quantized.safetensors``: the model's full state dict (packed integer weights, scales, and the
  unquantized parameters).

``load_quantized(model, directory)`` takes a freshly built float model of the same architecture
(e.g. ``PixArtTransformer2DModel.from_config(config)``), swaps in empty QuantLinear layers of the
saved shapes, and loads the tensors strictly.

Example::

    save_quantized(pipe.transformer, "out/")
    fresh = PixArtTransformer2DModel.from_config(pipe.transformer.config)
    load_quantized(fresh, "out/")
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch

from .._diffusers import hook_registry
from ..hooks import add_hook
from ..models import find_model_adapter
from ..utils import atomic_write_json
from .fuse import FusedActivation
from .linear import QuantLinear
from .replace import set_submodule
from .runtime import QuantRuntime, TimestepRangeHook

__all__ = ["save_quantized", "load_quantized", "QUANTIZED_FORMAT"]

QUANTIZED_FORMAT = "diffusion-accel/quantized-model"
_VERSION = 1
_PLAN = "quant_plan.json"
_WEIGHTS = "quantized.safetensors"


def _layer_meta(m: QuantLinear) -> dict[str, Any]:
    return {
        "in_features": m.in_features, "out_features": m.out_features, "bias": m.bias is not None,
        "weight_bits": m.weight_bits, "act_bits": m.act_bits, "group_size": m.group_size,
        "act_mode": m.act_mode, "num_ranges": m.num_ranges, "smooth": m.inv_smooth is not None,
        "bias_dtype": str(m.compute_dtype).replace("torch.", ""),
        "act_group": m.act_group, "fp_tokens": m.fp_tokens, "activation": m.activation,
    }


def save_quantized(model: torch.nn.Module, directory: str | os.PathLike) -> None:
    """Write ``model`` (holding QuantLinear layers) to ``directory`` (see the module docstring)."""
    from safetensors.torch import save_file

    layers = {n: _layer_meta(m) for n, m in model.named_modules() if isinstance(m, QuantLinear)}
    if not layers:
        raise ValueError(f"{type(model).__name__} holds no QuantLinear layer; quantize it before saving.")
    edges = []
    registry = hook_registry(model)
    if registry is not None:
        for hook in registry.hooks.values():
            if isinstance(hook, TimestepRangeHook):
                edges = list(hook.edges)
    state, seen = {}, set()
    for key, value in model.state_dict().items():
        t = value.detach().cpu()
        ptr = t.untyped_storage().data_ptr()
        t = t.clone().contiguous() if ptr in seen else t.contiguous()
        seen.add(ptr)
        state[key] = t
    os.makedirs(directory, exist_ok=True)
    save_file(state, os.path.join(directory, _WEIGHTS))
    atomic_write_json(os.path.join(directory, _PLAN), {
        "format": QUANTIZED_FORMAT, "version": _VERSION, "model_class": type(model).__name__,
        "timestep_edges": edges, "layers": layers,
    })


def load_quantized(model: torch.nn.Module, directory: str | os.PathLike, backend: str = "auto",
                   compile: bool = False) -> torch.nn.Module:
    """Load a saved quantized state into a fresh float ``model`` of the same architecture; returns it.

    Raises:
        ValueError: missing/unknown files, a different model class, or layers that do not exist.
    """
    from safetensors.torch import load_file

    plan_path = os.path.join(directory, _PLAN)
    try:
        with open(plan_path, encoding="utf-8") as fh:
            meta = json.load(fh)
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"Cannot read {plan_path}: {exc}") from exc
    if meta.get("format") != QUANTIZED_FORMAT or not isinstance(meta.get("version"), int) \
            or meta["version"] > _VERSION:
        raise ValueError(f"{plan_path} is not a quantized model this diffusion-accel can read "
                         f"(format {meta.get('format')!r}, version {meta.get('version')!r}).")
    if meta.get("model_class") != type(model).__name__:
        raise ValueError(f"{directory} holds a quantized {meta.get('model_class')}, not a {type(model).__name__}.")
    modules = dict(model.named_modules())
    runtime = QuantRuntime(compile=compile)
    for name, args in meta["layers"].items():
        modules = dict(model.named_modules())
        if name not in modules:
            raise ValueError(f"The saved layer {name!r} does not exist in {type(model).__name__}.")
        args = dict(args)
        args["bias_dtype"] = getattr(torch, args["bias_dtype"])
        activation = args.pop("activation", None)
        layer = QuantLinear(**args, backend=backend)
        layer._runtime = runtime
        set_submodule(model, name, layer)
        if activation is not None:  # the GELU was fused into this layer's epilogue
            layer.activation = activation
            set_submodule(model, name.rpartition(".")[0], FusedActivation(layer))
    state = load_file(os.path.join(directory, _WEIGHTS))
    model.load_state_dict(state, strict=True)
    adapter = find_model_adapter(model)
    if adapter is not None:
        add_hook(model, TimestepRangeHook(runtime, adapter, meta.get("timestep_edges", [])), "quant_timestep_range")
    return model
