"""Applying ``SparseAttentionConfig`` to a pipeline: find attention sites, swap processors.

Sites come from the model adapters: ``self_attn`` and ``joint_attn`` components are sparsified,
``cross_attn`` components stay dense, and whole-block components (UNets) are searched for their
self-attention ``attn1`` modules. Each site gets a :class:`SparseLayer` and the sparse processor
registered for its current processor class; ``remove`` puts the original processors back.

Example:
    >>> import torch, diffusion_accel
    >>> from diffusion_accel import AccelerationConfig
    >>> from diffusion_accel.sparse_attn import SparseAttentionConfig
    >>> from diffusion_accel.testing import tiny_pipeline, tiny_call_kwargs
    >>> pipe = tiny_pipeline("wan")
    >>> pipe = diffusion_accel.apply(pipe, AccelerationConfig(attention=SparseAttentionConfig(density=0.5)))
    >>> out = pipe(**tiny_call_kwargs("wan"), generator=torch.Generator().manual_seed(0))
    >>> diffusion_accel.remove(pipe) is pipe
    True
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..hooks import add_hook, remove_hook
from ..pipeline_state import acceleration_state
from ..techniques import TechniqueHandle, register_technique
from .config import NO_DENSITY_METHODS, SparseAttentionConfig
from .context import DenoiserContextHook
from .layer import SparseLayer
from .paro_plan import attach_calibration
from .processors import sparse_processor_for

__all__ = ["AttentionSite", "apply_sparse_attention", "attention_sites", "install_sparse_layers", "sparse_layers"]

CONTEXT_HOOK = "sparse_attn.context"
_SPARSE_KINDS = ("self_attn", "joint_attn")


@dataclass(frozen=True)
class AttentionSite:
    """One attention module to sparsify: global block index and a dotted name for reports."""

    block_index: int
    name: str
    module: torch.nn.Module


def _is_attention(module: torch.nn.Module) -> bool:
    return hasattr(module, "set_processor") and hasattr(module, "processor")


def attention_sites(denoiser) -> list[AttentionSite]:
    """Self/joint attention modules of a :class:`~diffusion_accel.hooks.Denoiser`, in block order."""
    sites = []
    kinds = denoiser.adapter.component_kinds()
    for block in denoiser.blocks():
        for comp_name, module in block.components().items():
            kind = kinds[comp_name]
            if kind in _SPARSE_KINDS and _is_attention(module):
                sites.append(AttentionSite(block.index, f"{denoiser.name}.{block.name}.{comp_name}", module))
            elif kind == "block":
                for sub_name, sub in module.named_modules():
                    if sub_name.split(".")[-1] == "attn1" and _is_attention(sub) and not getattr(sub, "is_cross_attention", False):
                        sites.append(AttentionSite(block.index, f"{denoiser.name}.{block.name}.{sub_name}", sub))
    return sites


def _head_dim(module: torch.nn.Module) -> int:
    head_dim = getattr(module, "head_dim", None)
    if head_dim is None:
        head_dim = module.to_q.out_features // module.heads
    return int(head_dim)


@register_technique(SparseAttentionConfig)
def apply_sparse_attention(pipe, config: SparseAttentionConfig, denoisers) -> TechniqueHandle:
    """Swap the processors of every sparsifiable attention site; returns the undo handle.

    ``method="paro"``: the layers get their plans from ``config.calibration`` (a ValueError naming
    the fix when it does not match the model)."""
    handle = install_sparse_layers(config, denoisers)
    if config.method == "paro":
        try:
            attach_calibration(handle.layers, handle.heads, config)
        except BaseException:
            handle.remove()
            raise
    return handle


def install_sparse_layers(config: SparseAttentionConfig, denoisers) -> TechniqueHandle:
    """The processors and :class:`SparseLayer` objects of ``config`` (no calibration attached)."""
    heads: list[int] = []
    installed: list[tuple[torch.nn.Module, object]] = []
    hooked: list[torch.nn.Module] = []
    layers: list[SparseLayer] = []

    def remove() -> None:
        for module, original in reversed(installed):
            module.set_processor(original)
        for module in hooked:
            remove_hook(module, CONTEXT_HOOK)
        installed.clear()
        hooked.clear()

    try:
        for denoiser in denoisers:
            sites = attention_sites(denoiser)
            # Check every site before changing anything: unknown processors fail cleanly.
            plans = [(site, sparse_processor_for(site.name, site.module.processor)) for site in sites]
            den_layers: list[SparseLayer] = []
            context_hook = DenoiserContextHook(denoiser.adapter, den_layers)
            add_hook(denoiser.module, context_hook, CONTEXT_HOOK)
            hooked.append(denoiser.module)
            device = next(denoiser.module.parameters()).device
            for site, processor_cls in plans:
                layer = SparseLayer(
                    site.name, site.block_index, config, head_dim=_head_dim(site.module),
                    tracker=denoiser.tracker, context=lambda h=context_hook: h.current, device=device,
                )
                den_layers.append(layer)
                heads.append(int(site.module.heads))
                original = site.module.processor
                site.module.set_processor(processor_cls(layer, original))
                installed.append((site.module, original))
            layers.extend(den_layers)
    except BaseException:
        remove()
        raise

    def report() -> dict:
        sparse = sum(layer.stats["sparse_calls"] for layer in layers)
        density = sum(layer.stats["density_sum"] for layer in layers)
        return {
            "method": config.method,
            "layers": len(layers),
            "sparse_calls": sparse,
            "dense_calls": sum(layer.stats["dense_calls"] for layer in layers),
            "mean_density": (density / sparse) if sparse and config.method not in NO_DENSITY_METHODS else None,
        }

    handle = TechniqueHandle(remove=remove, report=report)
    handle.layers = layers  # used by sparse_layers() / the SLA fine-tuning helpers
    handle.heads = heads  # attention heads of each layer (PARO checks its calibration against them)
    return handle


def sparse_layers(pipe) -> list[SparseLayer]:
    """The :class:`SparseLayer` objects of an accelerated pipeline (empty if none)."""
    state = acceleration_state(pipe)
    if state is None:
        return []
    out = []
    for _, handle in state.handles:
        out.extend(getattr(handle, "layers", []))
    return out
