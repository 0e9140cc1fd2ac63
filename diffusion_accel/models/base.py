"""What a model adapter declares: block lists, addressable components, how data flows.

A denoiser (transformer or UNet) is described by a :class:`ModelAdapter`: an ordered tuple of
:class:`BlockGroup` (e.g. Flux's ``transformer_blocks`` then ``single_transformer_blocks``),
each naming the :class:`Component` submodules inside one of its blocks that techniques can
address (self-attention, cross-attention, feed-forward, ...). Blocks are numbered across groups
in execution order; that numbering is the ``block`` axis of a cache schedule.

Example (describing a custom DiT whose blocks hold ``attn`` and ``mlp``):

    >>> from diffusion_accel.models import BlockGroup, Component, ModelAdapter
    >>> adapter = ModelAdapter(
    ...     family="my-dit",
    ...     groups=(BlockGroup("blocks", "blocks", (
    ...         Component("attn", "attn", "self_attn"),
    ...         Component("mlp", "mlp", "ffn"),
    ...     )),),
    ... )
    >>> adapter.component_names
    ('attn', 'mlp')
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ..utils import get_submodule_or_none

__all__ = ["COMPONENT_KINDS", "CallDefaults", "Component", "BlockIO", "BlockGroup", "Block", "LatentLayout",
           "ModelAdapter", "TokenGrid", "forward_argument", "patch_size_2d", "patched_grid_2d",
           "ModulatedInput", "map_arguments"]

#: ``fn(model, args, kwargs) -> (frames, height, width)`` or ``None``: the latent token grid of a
#: denoiser call (after patching), read from the call's inputs.
TokenGrid = Callable[[torch.nn.Module, tuple, dict], "tuple[int, int, int] | None"]

#: ``fn(pipe, denoiser) -> {argument: (value, reason)}``: pipeline-call arguments a checkpoint of the
#: family needs when the caller leaves them out (e.g. PixArt checkpoints whose sample size has no
#: aspect-ratio bins: ``use_resolution_binning=False``), each with a note saying why.
CallDefaults = Callable[[Any, torch.nn.Module], "dict[str, tuple[Any, str]]"]
#: ``fn(block, args, kwargs) -> tensor``: the timestep-modulated input of a block — the input of its
#: first attention after the adaLN modulation by the timestep embedding, ``(B, tokens, dim)`` —
#: computed from the block's call ``(args, kwargs)`` without running the block (TeaCache's signal).
ModulatedInput = Callable[[torch.nn.Module, tuple, dict], torch.Tensor]

#: Roles a component can play. ``joint_attn`` is attention over image and text tokens together
#: (MMDiT); ``block`` is a whole block (UNet blocks, DeepCache-style caching).
COMPONENT_KINDS = ("self_attn", "cross_attn", "joint_attn", "ffn", "ffn_context", "mlp", "block")


@dataclass(frozen=True)
class Component:
    """A submodule of a block whose output a technique may compute, reuse or replace.

    Args:
        name: stable name used in schedules and reports (``"attn1"``, ``"ff"``...).
        path: attribute path inside the block (``""`` is the block itself).
        kind: one of :data:`COMPONENT_KINDS`.
    """

    name: str
    path: str
    kind: str

    def __post_init__(self) -> None:
        if self.kind not in COMPONENT_KINDS:
            raise ValueError(f"Component {self.name!r}: kind must be one of {COMPONENT_KINDS}, got {self.kind!r}.")


@dataclass(frozen=True)
class BlockIO:
    """How hidden states enter and leave a block (used to skip whole blocks).

    ``output_hidden_states_index=None`` means the block returns the hidden-states tensor itself;
    otherwise it returns a tuple and the indices say where the image and text streams are.
    ``batch_args`` names the forward arguments that hold one row per sample (leading batch
    dimension): running the block on some rows of the batch slices exactly these (per-sample
    dynamic caching); ``None`` if unknown (the block then always runs on the whole batch).
    """

    hidden_states_arg: str = "hidden_states"
    encoder_hidden_states_arg: str | None = None
    output_hidden_states_index: int | None = None
    output_encoder_hidden_states_index: int | None = None
    batch_args: tuple[str, ...] | None = None


@dataclass(frozen=True)
class BlockGroup:
    """A list of same-shaped blocks on the denoiser.

    Args:
        name: group name used in reports (``"transformer_blocks"``).
        path: attribute path of a ``ModuleList`` (or of a single block, e.g. ``"mid_block"``).
        components: the addressable components inside each block.
        io: block input/output contract, or ``None`` if blocks cannot be skipped as a unit.
    """

    name: str
    path: str
    components: tuple[Component, ...]
    io: BlockIO | None = None


@dataclass(frozen=True)
class Block:
    """One block of a concrete model: global ``index``, its group and the module."""

    index: int
    group: BlockGroup
    name: str
    module: torch.nn.Module

    def components(self) -> dict[str, torch.nn.Module]:
        """Components present in this block (e.g. SD3's last block has no ``ff_context``)."""
        out = {}
        for comp in self.group.components:
            sub = get_submodule_or_none(self.module, comp.path)
            if sub is not None:
                out[comp.name] = sub
        return out


@dataclass(frozen=True)
class LatentLayout:
    """How a family's pipeline latents are laid out, for techniques that change their resolution
    between denoising steps (:mod:`diffusion_accel.sampling`).

    The latents the pipeline's loop holds (and hands to the scheduler) are the denoiser's
    ``hidden_states`` (less the guidance-batch concatenation), with height and width as the last
    two dimensions.

    Args:
        ndim: 4 for image latents ``(B, C, H, W)``, 5 for video latents ``(B, C, F, H, W)``.
        patch_size: ``fn(model) -> (ph, pw)``: the spatial patch size; a resized latent's height and
            width must be multiples of it.
        positions: how the denoiser's position embedding follows a smaller grid (documentation: the
            reason a resolution change needs nothing else from the pipeline).
    """

    ndim: int
    patch_size: Callable[[torch.nn.Module], "tuple[int, int]"]
    positions: str = ""


@dataclass(frozen=True)
class ModelAdapter:
    """Declaration of a denoiser family for all techniques.

    Args:
        family: short family name (``"pixart"``, ``"sd3"``, ``"flux"``...).
        groups: block groups in execution order.
        timestep_arg: name of the forward argument carrying the timestep.
        text_tokens_first: in joint attention, whether text tokens precede image tokens in the
            concatenated sequence (Flux, CogVideoX) or follow them (SD3).
        timestep_scale: the denoiser receives the scheduler's timesteps multiplied by this
            (Flux takes ``t / 1000``: ``1e-3``); used to find a call's place in the scheduler's
            ``timesteps``.
        token_grid: how to read the latent token grid ``(frames, height, width)`` of a call from its
            inputs (:data:`TokenGrid`; e.g. :func:`patched_grid_2d`), for techniques that reorder
            tokens spatially (sparse attention's PARO); ``None`` if unknown.
        latent_layout: how the pipeline's latents can be resized between steps
            (:class:`LatentLayout`), or ``None`` if they cannot (then ``latent_layout_note`` says why).
        call_defaults: pipeline-call arguments a checkpoint needs unless the caller sets them
            (:data:`CallDefaults`); the tools and the accelerated pipeline classes add them
            (:func:`diffusion_accel.pipeline_state.with_call_defaults`). ``None``: none.
        modulated_input: how to compute a block's timestep-modulated input from its call
            (:data:`ModulatedInput`), for dynamic caching's ``policy="teacache"``; ``None`` if the
            family has none (UNets) or it is not described yet.
    """

    family: str
    groups: tuple[BlockGroup, ...]
    timestep_arg: str = "timestep"
    text_tokens_first: bool = True
    timestep_scale: float = 1.0
    notes: str = field(default="", compare=False)
    token_grid: TokenGrid | None = field(default=None, compare=False)
    latent_layout: LatentLayout | None = field(default=None, compare=False)
    latent_layout_note: str = field(default="", compare=False)
    call_defaults: CallDefaults | None = field(default=None, compare=False)
    modulated_input: ModulatedInput | None = field(default=None, compare=False)

    @property
    def component_names(self) -> tuple[str, ...]:
        """Union of component names over groups, in declaration order."""
        names: list[str] = []
        for group in self.groups:
            for comp in group.components:
                if comp.name not in names:
                    names.append(comp.name)
        return tuple(names)

    def component_kinds(self) -> dict[str, str]:
        return {c.name: c.kind for g in self.groups for c in g.components}

    def blocks(self, model: torch.nn.Module) -> list[Block]:
        """The model's blocks, numbered across groups in execution order."""
        blocks: list[Block] = []
        for group in self.groups:
            container = get_submodule_or_none(model, group.path)
            if container is None:
                continue
            if isinstance(container, (torch.nn.ModuleList, torch.nn.Sequential)):
                members = [(f"{group.path}.{i}", m) for i, m in enumerate(container)]
            else:
                members = [(group.path, container)]
            for name, module in members:
                blocks.append(Block(len(blocks), group, name, module))
        return blocks

    def applicable(self, model: torch.nn.Module) -> list[tuple[bool, ...]]:
        """``[block][component]`` mask of which components exist in which block."""
        names = self.component_names
        return [tuple(n in block.components() for n in names) for block in self.blocks(model)]

    @torch.compiler.disable
    def timestep_value(self, model: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> float | None:
        """The call's timestep as a Python float (the max over a per-token/batch tensor).

        Reading a tensor as a Python number is data-dependent: under ``torch.compile`` it runs
        eagerly (``torch.compiler.disable``) instead of breaking the graph on ``float(...)``.
        """
        value = kwargs.get(self.timestep_arg)
        if value is None:
            position = _positional_index(type(model), self.timestep_arg)
            if position is not None and position < len(args):
                value = args[position]
        if value is None:
            return None
        if torch.is_tensor(value):
            return float(value.detach().max()) if value.numel() else None
        return float(value)


@functools.lru_cache(maxsize=None)
def _positional_index(model_class: type, arg: str) -> int | None:
    params = list(inspect.signature(model_class.forward).parameters)[1:]  # drop self
    return params.index(arg) if arg in params else None


def forward_argument(model: torch.nn.Module, name: str, args: tuple, kwargs: dict[str, Any]) -> Any:
    """The value of ``model.forward``'s argument ``name`` in a call ``(args, kwargs)``, or ``None``."""
    if name in kwargs:
        return kwargs[name]
    position = _positional_index(type(model), name)
    return args[position] if position is not None and position < len(args) else None


def patch_size_2d(model: torch.nn.Module) -> tuple[int, int]:
    """``model.config.patch_size`` as ``(ph, pw)``: an int (PixArt, SD3, DiT) or ``(pt, ph, pw)`` (Wan)."""
    p = model.config.patch_size
    if isinstance(p, int):
        return (p, p)
    return (int(p[-2]), int(p[-1]))
def map_arguments(model: torch.nn.Module, names: tuple[str, ...], args: tuple, kwargs: dict[str, Any],
                  fn: Callable[[Any], Any]) -> tuple[tuple, dict[str, Any]]:
    """``(args, kwargs)`` of a call of ``model.forward`` with ``fn`` applied to the arguments ``names``."""
    positions = {_positional_index(type(model), name) for name in names} - {None}
    args = tuple(fn(v) if i in positions else v for i, v in enumerate(args))
    return args, {k: fn(v) if k in names else v for k, v in kwargs.items()}


def patched_grid_2d(model: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple[int, int, int]:
    """Token grid of an image transformer that patches ``hidden_states`` ``(B, C, H, W)`` with
    ``model.config.patch_size`` (PixArt, SD3, DiT): ``(1, H // p, W // p)``."""
    x = forward_argument(model, "hidden_states", args, kwargs)
    p = model.config.patch_size
    ph, pw = (p, p) if isinstance(p, int) else (int(p[0]), int(p[1]))
    return (1, x.shape[-2] // ph, x.shape[-1] // pw)
