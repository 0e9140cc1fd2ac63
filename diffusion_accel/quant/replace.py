"""Swap ``nn.Linear`` layers for :class:`QuantLinear` (and back, exactly).

:func:`quantize_linears` replaces the named linears of a module according to a resolved plan
(name -> bits), using calibration statistics when given (channel balancing, static scales).
It returns :class:`Replacement` records; :func:`restore_linears` puts the very same original
module objects back. With an :class:`OriginalStore` of kind ``"disk"`` the originals' tensors are
written to a temporary safetensors file and released until restored (bit-exact).

Example:
    >>> import torch
    >>> model = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.GELU(), torch.nn.Linear(16, 4))
    >>> records = quantize_linears(model, {"0": 8, "2": None})
    >>> type(model[0]).__name__, type(model[2]).__name__
    ('QuantLinear', 'Linear')
    >>> restore_linears(model, records); type(model[0]).__name__
    'Linear'
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass

import torch

from .calibrate import CalibrationResult
from .linear import QuantLinear
from .smooth import smoothing_factors, static_scales

__all__ = ["Replacement", "OriginalStore", "linear_names", "quantize_linears", "restore_linears", "set_submodule"]


@dataclass
class Replacement:
    name: str
    original: torch.nn.Module
    quantized: QuantLinear


def linear_names(module: torch.nn.Module) -> list[str]:
    """Names of the ``nn.Linear`` submodules of ``module`` (quantizable layers)."""
    return [n for n, m in module.named_modules() if isinstance(m, torch.nn.Linear) and n]


def set_submodule(root: torch.nn.Module, name: str, new: torch.nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


def quantize_linears(
    root: torch.nn.Module,
    bits_by_name: dict[str, int | None],
    act_bits: int | None = 8,
    group_size: int = 128,
    act_mode: str = "dynamic",
    smooth_alpha: float | None = None,
    calibration: CalibrationResult | None = None,
    backend: str = "auto",
    fp_tokens: int = 0,
) -> list[Replacement]:
    """Replace each ``name`` with bits 4/8 by a :class:`QuantLinear` (``None``: left as is)."""
    modules = dict(root.named_modules())
    targets = [n for n, b in bits_by_name.items() if b is not None]
    for n in targets:
        if not isinstance(modules.get(n), torch.nn.Linear):
            raise ValueError(f"{n!r} is not an nn.Linear of {type(root).__name__}; cannot quantize it.")
    needs_stats = act_bits is not None and (act_mode == "static" or smooth_alpha is not None)
    if needs_stats and calibration is None:
        raise ValueError("act_mode='static' or smooth_alpha need calibration statistics; calibrate first.")
    params = {}
    if needs_stats:
        params = _group_params(modules, targets, calibration, smooth_alpha, act_mode)
    records = []
    for n in targets:
        linear = modules[n]
        smooth, scale, group = params.get(n, (None, None, ""))
        q = QuantLinear.from_linear(
            linear, weight_bits=bits_by_name[n], act_bits=act_bits, group_size=group_size,
            act_mode=act_mode if act_bits is not None else "dynamic", smooth=smooth, act_scale=scale,
            backend=backend, act_group=group, fp_tokens=fp_tokens,
        )
        set_submodule(root, n, q)
        records.append(Replacement(n, linear, q))
    return records


def _group_params(modules, targets, calibration: CalibrationResult, alpha, act_mode):
    missing = [n for n in targets if n not in calibration.channel_absmax]
    if missing:
        raise ValueError(
            f"No calibration statistics for {missing[:3]} (these layers never ran during calibration); "
            "keep them in full precision with a plan entry, or calibrate with inputs that reach them."
        )
    members: dict[str, list[str]] = {}
    for n in targets:
        members.setdefault(calibration.groups.get(n, n), []).append(n)
    out = {}
    for group, names in members.items():
        act = torch.stack([calibration.channel_absmax[n] for n in names]).amax(dim=0)  # (R, K)
        smooth = None
        if alpha is not None:
            smooth = smoothing_factors(act, [modules[n].weight for n in names], alpha)
        scale = static_scales(act, smooth) if act_mode == "static" else None
        for n in names:
            out[n] = (smooth, scale, group)
    return out


def restore_linears(root: torch.nn.Module, records: list[Replacement]) -> None:
    """Put the original modules back (in reverse order)."""
    for rec in reversed(records):
        set_submodule(root, rec.name, rec.original)


class OriginalStore:
    """Keeps the original layers' tensors until restore: in memory, or offloaded to disk.

    ``kind="disk"`` writes every parameter of the given modules to a temporary safetensors file
    and replaces their data by empty tensors (the memory is really freed); :meth:`restore` loads
    them back bit-exactly into the same ``Parameter`` objects.
    """

    def __init__(self, kind: str = "memory") -> None:
        if kind not in ("memory", "disk"):
            raise ValueError(f"OriginalStore kind must be 'memory' or 'disk'; got {kind!r}.")
        self.kind = kind
        self.path: str | None = None
        self._params: dict[str, torch.nn.Parameter] = {}

    def offload(self, modules: dict[str, torch.nn.Module]) -> None:
        if self.kind != "disk" or not modules:
            return
        from safetensors.torch import save_file

        tensors = {}
        for name, module in modules.items():
            for pname, p in module.named_parameters(recurse=False):
                key = f"{name}.{pname}"
                self._params[key] = p
                tensors[key] = p.detach().cpu().contiguous()
        fd, self.path = tempfile.mkstemp(prefix="diffusion-accel-originals-", suffix=".safetensors")
        os.close(fd)
        save_file(tensors, self.path)
        for p in self._params.values():
            p.data = torch.empty(0, dtype=p.dtype, device=p.device)

    def restore(self) -> None:
        if self.kind != "disk" or self.path is None:
            return
        from safetensors.torch import load_file

        loaded = load_file(self.path)
        for key, p in self._params.items():
            p.data = loaded[key].to(p.device)
        os.unlink(self.path)
        self.path = None
        self._params = {}
