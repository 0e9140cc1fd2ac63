"""SLA fine-tuning hooks: the trainable projections, and a closed-form per-layer fit.

SLA's output is ``o_sparse + proj(o_linear)`` with ``proj`` zero-initialised, so untrained SLA is
plain block-sparse attention. Two ways to train ``proj``:

* :func:`sla_parameters` returns the projections' parameters for your own training loop (the
  PyTorch backend is differentiable; freeze the rest of the model);
* :func:`fit_sla_projections` runs the pipeline once and fits each layer's projection by ridge
  regression so that ``o_sparse + proj(o_linear)`` matches dense attention on those inputs — a
  few seconds of "fine-tuning" that needs no optimiser.

Example:
    >>> import torch, diffusion_accel
    >>> from diffusion_accel import AccelerationConfig
    >>> from diffusion_accel.sparse_attn import SparseAttentionConfig, fit_sla_projections
    >>> from diffusion_accel.testing import tiny_pipeline, tiny_call_kwargs
    >>> pipe = tiny_pipeline("wan")
    >>> cfg = SparseAttentionConfig(method="sla", density=0.5, block_q=16, block_k=16)
    >>> pipe = diffusion_accel.apply(pipe, AccelerationConfig(attention=cfg))
    >>> fitted = fit_sla_projections(pipe, **tiny_call_kwargs("wan"))
    >>> len(fitted) > 0
    True
"""

from __future__ import annotations

import torch

from .layer import _RidgeFit
from .technique import sparse_layers

__all__ = ["fit_sla_projections", "sla_parameters"]


def _sla_layers(pipe):
    layers = [layer for layer in sparse_layers(pipe) if layer.proj is not None]
    if not layers:
        raise ValueError(
            "The pipeline has no SLA layers: apply AccelerationConfig(attention=SparseAttentionConfig("
            "method='sla', ...)) with diffusion_accel.apply(pipe, ...) first."
        )
    return layers


def sla_parameters(pipe) -> list[torch.nn.Parameter]:
    """Trainable parameters of every SLA projection of an accelerated pipeline."""
    return [p for layer in _sla_layers(pipe) for p in layer.proj.parameters()]


@torch.no_grad()
def fit_sla_projections(pipe, *, ridge: float = 1e-3, **call_kwargs) -> dict[str, int]:
    """Run ``pipe(**call_kwargs)`` once and fit each SLA layer's projection to dense attention.

    Per layer, solves ``min_W ||(o_dense - o_sparse) - [o_linear, 1] W||^2 + ridge * ||W||^2``
    over every query seen in sparse calls. Returns ``{layer name: rows fitted}``; layers that saw
    no sparse call keep their projection.
    """
    layers = _sla_layers(pipe)
    for layer in layers:
        layer.sla_fit = _RidgeFit(layer.proj.in_features, layer.proj.weight.device)
    try:
        pipe(**call_kwargs)
        fitted = {}
        for layer in layers:
            if layer.sla_fit.rows:
                weight, bias = layer.sla_fit.solve(ridge)
                layer.proj.weight.copy_(weight)
                layer.proj.bias.copy_(bias)
                fitted[layer.name] = layer.sla_fit.rows
        return fitted
    finally:
        for layer in layers:
            layer.sla_fit = None
