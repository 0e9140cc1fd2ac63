"""Sparse and linear attention for diffusion transformers (training-free, plus SLA fine-tuning).

* :func:`block_sparse_attention` — the op: predicted block masks, backends reference/torch/triton.
* :func:`linear_attention`, :func:`sla_attention` — linear and sparse+linear attention ops.
* :class:`SparseAttentionConfig` — ``AccelerationConfig(attention=SparseAttentionConfig(...))``:
  block-sparse (+ PARO reordering), SLA, Re-ttention, linear attention, through diffusers
  attention processors for PixArt, SD3, Flux, CogVideoX, Wan and SD1.5.
* :func:`vmoba_attention` — VMoBA: 1d/2d/3d partitions of the video token grid, global and
  threshold block selection (``method="vmoba"``).
* :func:`calibrate_paro` — PARO: offline per-head token orders and static block masks
  (``method="paro"``, saved as safetensors beside the config JSON), optional INT8 Q/K.
* :func:`sla_parameters`, :func:`fit_sla_projections` — SLA's fine-tuning hooks.
* :func:`finetune_sparse` — distil the sparsified layers from the dense model (``finetune.py``);
  every op is differentiable (explicit backward passes, ``autograd.py``).

Example:
    >>> import torch
    >>> from diffusion_accel.sparse_attn import block_sparse_attention
    >>> q = k = v = torch.randn(1, 2, 512, 64)
    >>> out = block_sparse_attention(q, k, v, density=1.0)
    >>> torch.allclose(out, torch.nn.functional.scaled_dot_product_attention(q, k, v), atol=1e-5)
    True

See ``docs/sparse_attn.md``.
"""

from .config import METHODS, SparseAttentionConfig
from .finetune import FinetuneConfig, FinetuneResult, finetune_sparse, load_finetuned, save_finetuned
from .linear import linear_attention
from .int8_attention import int8_attention
from .int8_qk import int8_qk
from .ops import SparseAttentionOutput, block_sparse_attention, sla_attention
from .paro_calibrate import calibrate_paro
from .paro_plan import ParoCalibration
from .technique import apply_sparse_attention, sparse_layers
from .training import fit_sla_projections, sla_parameters
from .vmoba import vmoba_attention

__all__ = [
    "FinetuneConfig",
    "FinetuneResult",
    "METHODS",
    "ParoCalibration",
    "SparseAttentionConfig",
    "SparseAttentionOutput",
    "apply_sparse_attention",
    "block_sparse_attention",
    "calibrate_paro",
    "finetune_sparse",
    "fit_sla_projections",
    "int8_attention",
    "int8_qk",
    "linear_attention",
    "load_finetuned",
    "save_finetuned",
    "sla_attention",
    "sla_parameters",
    "sparse_layers",
    "vmoba_attention",
]
