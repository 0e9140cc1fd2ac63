"""Swap ``nn.Linear`` layers for :class:`QuantLinear` (and back, exactly).

:func:`quantize_linears` replaces the named linears of a module according to a resolved plan
(name -> bits), using calibration statistics when given (channel balancing, static scales).
It returns :class:`Replacement` records; :func:`restore_linears` puts the very same original
module objects back. An :class:`OriginalStore` decides where the originals' tensors wait for the
restore, layer by layer as each one is replaced (so quantizing never holds the float model and
all its quantized copies at once): in place (``"memory"``), in CPU memory (``"cpu"``, freeing an
accelerator), or in temporary safetensors files (``"disk"``); ``"auto"`` (the default) takes
``"cpu"`` for layers on an accelerator and ``"disk"`` for layers on the CPU. Every kind restores
bit-exactly.

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
import shutil
import tempfile
import weakref
from collections import Counter
from dataclasses import dataclass

import torch

from .calibrate import CalibrationResult
from .linear import QuantLinear
from .smooth import smoothing_factors, static_scales

__all__ = ["Replacement", "OriginalStore", "KEEP_ORIGINAL", "linear_names", "quantize_linears", "restore_linears",
           "set_submodule"]

#: Where original float layers wait for ``remove`` (see :class:`OriginalStore`).
KEEP_ORIGINAL = ("auto", "memory", "cpu", "disk")


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
    store: "OriginalStore | None" = None,
) -> list[Replacement]:
    """Replace each ``name`` with bits 4/8 by a :class:`QuantLinear` (``None``: left as is).

    With a ``store``, each original layer's parameters are handed to it as soon as the layer is
    replaced (parameters that another module of ``root`` also uses stay where they are).
    """
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
    uses = Counter(id(p) for m in modules.values() for p in m.parameters(recurse=False))
    records = []
    try:
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
            if store is not None:
                store.offload(n, linear, skip={id(p) for p in linear.parameters() if uses[id(p)] > 1})
    except BaseException:
        if store is not None:
            store.restore()
        restore_linears(root, records)
        raise
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
    """Keeps the original layers' parameters until :meth:`restore`, where ``kind`` says.

    * ``"memory"``: left in place (fastest ``remove``; the process keeps the float weights);
    * ``"cpu"``: moved to CPU memory (frees an accelerator; on the CPU it changes nothing);
    * ``"disk"``: written to temporary safetensors files (one per layer, in one temporary directory)
      and released; :meth:`restore` reads them back;
    * ``"auto"``: ``"cpu"`` for a layer on an accelerator, ``"disk"`` for a layer on the CPU.

    Every kind restores the same ``Parameter`` objects bit-exactly. Files left behind by a process
    that never restores are deleted when the store is garbage-collected or the process exits.

    Example:
        >>> layer = torch.nn.Linear(4, 4)
        >>> weight = layer.weight.detach().clone()
        >>> store = OriginalStore("disk")
        >>> store.offload("layer", layer)
        >>> layer.weight.numel()
        0
        >>> store.restore(); torch.equal(layer.weight, weight)
        True
    """

    def __init__(self, kind: str = "auto") -> None:
        if kind not in KEEP_ORIGINAL:
            raise ValueError(f"OriginalStore kind must be one of {KEEP_ORIGINAL}; got {kind!r}.")
        self.kind = kind
        self.directory: str | None = None
        self._held: list[tuple[str, str, dict[str, tuple[torch.nn.Parameter, torch.device]]]] = []
        self._cleanup = None
        self._layouts: dict[int, tuple[torch.Size, tuple[int, ...]]] = {}
        self.offloaded_bytes = {"cpu": 0, "disk": 0}

    def kind_for(self, module: torch.nn.Module) -> str:
        """The kind used for ``module`` (``"auto"`` resolved from where its parameters live)."""
        if self.kind != "auto":
            return self.kind
        on_accelerator = any(p.device.type not in ("cpu", "meta") for p in module.parameters())
        return "cpu" if on_accelerator else "disk"

    def offload(self, name: str, module: torch.nn.Module, skip: set[int] = frozenset()) -> None:
        """Hand over ``module``'s own parameters (those whose ``id`` is not in ``skip``)."""
        kind = self.kind_for(module)
        params = {pname: p for pname, p in module.named_parameters(recurse=False)
                  if id(p) not in skip and p.numel() > 0}
        if kind == "memory" or not params:
            return
        held = {pname: (p, p.device) for pname, p in params.items()}
        self._layouts.update({id(p): (p.shape, p.stride()) for p in params.values()})
        nbytes = sum(p.numel() * p.element_size() for p in params.values())
        if kind == "cpu":
            for p in params.values():
                p.data = p.data.to("cpu")
        else:
            from safetensors.torch import save_file

            save_file({pname: p.detach().cpu().contiguous() for pname, p in params.items()},
                      os.path.join(self._directory(), f"{len(self._held)}.safetensors"))
            for p in params.values():
                p.data = torch.empty(0, dtype=p.dtype, device=p.device)
        self.offloaded_bytes[kind] += nbytes
        self._held.append((name, kind, held))

    def _directory(self) -> str:
        if self.directory is None:
            self.directory = tempfile.mkdtemp(prefix="diffusion-accel-originals-")
            self._cleanup = weakref.finalize(self, shutil.rmtree, self.directory, True)
        return self.directory

    def restore(self) -> None:
        """Put every held parameter back (bit-exact) and delete the temporary files."""
        for index, (_, kind, held) in enumerate(self._held):
            if kind == "cpu":
                for p, device in held.values():
                    p.data = p.data.to(device)
            else:
                from safetensors.torch import load_file

                loaded = load_file(os.path.join(self.directory, f"{index}.safetensors"))
                for pname, (p, device) in held.items():
                    size, stride = self._layouts[id(p)]
                    # a fresh allocation with the original layout: kernels may pick another path (and
                    # round differently) for the offset views into the file that load_file returns
                    fresh = torch.empty_strided(size, stride, dtype=p.dtype, device=device)
                    p.data = fresh.copy_(loaded[pname])
        self._held, self._layouts = [], {}
        self.offloaded_bytes = {"cpu": 0, "disk": 0}
        if self._cleanup is not None:
            self._cleanup()  # removes the directory
            self._cleanup, self.directory = None, None
