"""``SparseAttentionConfig``: which sparse/linear attention to run in which layers (frozen data).

Example:
    >>> from diffusion_accel import AccelerationConfig
    >>> from diffusion_accel.sparse_attn import SparseAttentionConfig
    >>> cfg = AccelerationConfig(attention=SparseAttentionConfig(method="block_sparse", density=0.25))
    >>> AccelerationConfig.from_json(cfg.to_json()) == cfg
    True
"""

from __future__ import annotations

from dataclasses import dataclass

from ..techniques import TechniqueConfig
from ._validate import check_block_size, check_fraction, check_selection
from .features import FEATURE_MAPS
from .vmoba_blocks import PARTITION_KINDS
from .vmoba_select import SCOPES

__all__ = ["BACKEND_NAMES", "METHODS", "NO_DENSITY_METHODS", "REORDERS", "SparseAttentionConfig"]

#: ``block_sparse``: predicted block masks (SpargeAttn-style), optionally PARO-reordered.
#: ``sla``: critical blocks exact + marginal blocks linear (+ zero-initialised projection).
#: ``rettention``: sparse attention rescaled with statistics cached at the last dense step.
#: ``linear``: linear attention in the chosen layers (``blocks``).
#: ``vmoba``: VMoBA: blocks of layer-wise cycled 1d/2d/3d partitions of the video token grid,
#: selected per query block, per head or over all heads, by budget and/or score threshold.
#: ``paro``: offline calibrated per-head token orders and static block masks (``calibrate_paro``),
#: read from the safetensors file ``calibration``; optional INT8 Q/K (``int8_qk``).
#: ``int8``: dense attention whose scores come from INT8 Q and K (SageAttention-style, per-token
#: scales, K mean-smoothed; ``int8_attention.py``): quantized, not sparse — no density.
METHODS = ("block_sparse", "sla", "rettention", "linear", "vmoba", "paro", "int8")
#: methods that compute every key of a call they handle (no block density to report)
NO_DENSITY_METHODS = ("linear", "int8")
REORDERS = ("none", "paro")
BACKEND_NAMES = ("auto", "torch", "triton", "reference")


_VMOBA_FIELDS = ("partitions", "block_frames", "block_spatial", "block_cube", "selection_scope")


def _check_int_tuple(name: str, value) -> None:
    if not isinstance(value, tuple) or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in value):
        raise ValueError(f"{name} must be a tuple of non-negative block indices; got {value!r}.")


@dataclass(frozen=True)
class SparseAttentionConfig(TechniqueConfig):
    """Sparse / linear attention for the self- and joint-attention layers of a denoiser.

    Cross-attention always stays dense; in joint attention (SD3, Flux, CogVideoX) text tokens stay
    dense as queries and as keys: only image-image blocks are sparsified.

    Args:
        method: one of :data:`METHODS`.
        density: fraction of the image/video key blocks each query block computes (SLA: the
            critical blocks). Text blocks of joint attention are computed on top, outside this
            budget; a query block's own (diagonal) blocks are always kept, inside it.
            Default 0.25 when none of ``density``/``topk``/``cdf_threshold`` is given.
        topk: key blocks per query block, instead of ``density``.
        cdf_threshold: keep the fewest blocks holding this much predicted attention mass.
        block_q, block_k: block sizes in tokens (powers of two); ``None`` (default) = the measured
            default of the device the attention runs on
            (:data:`~diffusion_accel.sparse_attn.defaults.DEFAULT_BLOCK_SHAPES`).
        similarity_threshold: self-similarity guard (blocks whose tokens' mean cosine similarity is
            below it are always computed); ``None`` = off.
        reorder: ``"paro"`` permutes video/image tokens per head into the best of the axis orders
            (frames/height/width), chosen by calibrating on each layer's first sparse call.
        dense_steps: the first ``dense_steps`` denoising steps run dense attention.
        dense_every: also run a dense step every ``dense_every`` steps (0 = never); Re-ttention
            refreshes its statistics at dense steps.
        dense_blocks: block indices (adapter numbering) that stay dense.
        blocks: block indices the method applies to (``None`` = all); e.g. the layers chosen for
            ``method="linear"``.
        min_tokens: attention calls with fewer tokens stay dense.
        skip_fraction: SLA: fraction of key blocks skipped entirely (the rest beyond ``density`` are
            computed with linear attention).
        feature_map: linear-attention feature map (``"elu"``, ``"relu"``, ``"softmax"``).
        backend: ``"auto"`` (Triton on CUDA, else PyTorch, with or without gradients),
            ``"torch"``, ``"triton"``, ``"reference"`` (all differentiable; ``ops.resolve_backend``).
        calibration: ``method="paro"``: path of the safetensors file written by
            :func:`~diffusion_accel.sparse_attn.calibrate_paro` (per-layer, per-head token orders
            and static block masks); ``AccelerationConfig.save`` copies it beside the JSON.
        int8_qk: ``method="paro"``: compute the attention scores from INT8 Q and K (per-block
            scales, ``int8_qk.py``).

    ``method="int8"`` computes every key (no density, blocks or reordering): it takes only the
    layer and step choices (``blocks``, ``dense_blocks``, ``dense_steps``, ``dense_every``,
    ``min_tokens``) and ``backend`` ``"auto"`` or ``"reference"`` (fp32 maths of the same rounding).
    E.g. ``SparseAttentionConfig(method="int8")``.
    """

    field_name = "attention"

    method: str = "block_sparse"
    density: float | None = None
    topk: int | None = None
    cdf_threshold: float | None = None
    block_q: int | None = None
    block_k: int | None = None
    similarity_threshold: float | None = None
    reorder: str = "none"
    dense_steps: int = 0
    dense_every: int = 0
    dense_blocks: tuple[int, ...] = ()
    blocks: tuple[int, ...] | None = None
    min_tokens: int = 0
    skip_fraction: float = 0.0
    feature_map: str = "softmax"
    backend: str = "auto"
    partitions: tuple[str, ...] = ("1d", "2d", "3d")
    block_frames: int = 1
    block_spatial: tuple[int, int] = (8, 8)
    block_cube: tuple[int, int, int] = (4, 8, 8)
    selection_scope: str = "head"
    calibration: str | None = None
    int8_qk: bool = False

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"SparseAttentionConfig.method must be one of {METHODS}; got {self.method!r}.")
        self._check_paro()
        if self.method == "int8":
            self._check_int8()
        elif self.density is None and self.topk is None and self.cdf_threshold is None:
            object.__setattr__(self, "density", 0.25)
        self._check_vmoba()
        if self.method == "vmoba" and self.cdf_threshold is not None and self.density is not None:
            check_selection(None, None, self.cdf_threshold)
            check_fraction("density", self.density)
        elif self.method != "int8":
            check_selection(self.density, self.topk, self.cdf_threshold)
        for name in ("block_q", "block_k"):
            if getattr(self, name) is not None:
                check_block_size(name, getattr(self, name))
        if self.similarity_threshold is not None and (
            not isinstance(self.similarity_threshold, (int, float)) or not -1 <= self.similarity_threshold <= 1
        ):
            raise ValueError(f"similarity_threshold must be None or in [-1, 1]; got {self.similarity_threshold!r}.")
        if self.reorder not in REORDERS:
            raise ValueError(f"reorder must be one of {REORDERS}; got {self.reorder!r}.")
        for name in ("dense_steps", "dense_every", "min_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a non-negative int; got {value!r}.")
        if isinstance(self.dense_blocks, list):
            object.__setattr__(self, "dense_blocks", tuple(self.dense_blocks))
        if isinstance(self.blocks, list):
            object.__setattr__(self, "blocks", tuple(self.blocks))
        _check_int_tuple("dense_blocks", self.dense_blocks)
        if self.blocks is not None:
            _check_int_tuple("blocks", self.blocks)
        check_fraction("skip_fraction", self.skip_fraction, allow_zero=True)
        if self.method == "sla" and self.density is None:
            raise ValueError("method='sla' selects its critical blocks by density; pass density=..., not topk/cdf_threshold.")
        if self.feature_map not in FEATURE_MAPS:
            raise ValueError(f"feature_map must be one of {sorted(FEATURE_MAPS)}; got {self.feature_map!r}.")
        if self.backend not in BACKEND_NAMES:
            raise ValueError(f"backend must be one of {BACKEND_NAMES}; got {self.backend!r}.")

    def _check_vmoba(self) -> None:
        for name in ("partitions", "block_spatial", "block_cube"):
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        defaults = {f: SparseAttentionConfig.__dataclass_fields__[f].default for f in _VMOBA_FIELDS}
        if self.method != "vmoba":
            changed = [f for f, d in defaults.items() if getattr(self, f) != d]
            if changed:
                raise ValueError(f"{changed} only apply to method='vmoba' (got method={self.method!r}); "
                                 "remove them or set method='vmoba'.")
            return
        if not self.partitions or any(p not in PARTITION_KINDS for p in self.partitions):
            raise ValueError(f"partitions must be a non-empty tuple of {sorted(PARTITION_KINDS)} (the cycle "
                             f"over blocks, e.g. ('1d', '2d', '3d')); got {self.partitions!r}.")
        for name, length in (("block_frames", None), ("block_spatial", 2), ("block_cube", 3)):
            value = getattr(self, name)
            items = (value,) if length is None else value
            if (length is not None and (not isinstance(value, tuple) or len(value) != length)) or not all(
                isinstance(i, int) and not isinstance(i, bool) and i >= 1 for i in items
            ):
                shape = "a positive int" if length is None else f"a tuple of {length} positive ints"
                raise ValueError(f"{name} must be {shape} (tokens per block side); got {value!r}.")
        if self.selection_scope not in SCOPES:
            raise ValueError(f"selection_scope must be one of {sorted(SCOPES)}; got {self.selection_scope!r}.")
        for name, why in (("block_q", "block sizes come from block_frames/block_spatial/block_cube"),
                          ("block_k", "block sizes come from block_frames/block_spatial/block_cube"),
                          ("similarity_threshold", "it has no self-similarity guard")):
            if getattr(self, name) is not None:
                raise ValueError(f"method='vmoba' does not use {name} ({why}); leave it None.")
        if self.reorder != "none":
            raise ValueError("method='vmoba' partitions the token grid itself; use reorder='none'.")

    def _check_int8(self) -> None:
        fields = SparseAttentionConfig.__dataclass_fields__
        unused = [name for name in ("density", "topk", "cdf_threshold", "block_q", "block_k", "similarity_threshold",
                                    "reorder", "skip_fraction", "feature_map")
                  if getattr(self, name) != fields[name].default]
        if unused:
            raise ValueError(f"method='int8' computes every key with INT8 Q and K (no density, blocks or "
                             f"reordering): remove {unused}.")
        if self.backend not in ("auto", "reference"):
            raise ValueError(f"method='int8' runs its own integer GEMM: backend must be 'auto' (or 'reference' "
                             f"for fp32 maths of the same rounding); got {self.backend!r}.")

    def _check_paro(self) -> None:
        if self.method != "paro":
            for name, default in (("calibration", None), ("int8_qk", False)):
                if getattr(self, name) != default:
                    raise ValueError(f"{name} only applies to method='paro' (got method={self.method!r}); "
                                     "remove it or set method='paro'.")
            return
        if self.calibration is not None and (not isinstance(self.calibration, str) or not self.calibration):
            raise ValueError(f"calibration must be the path of a PARO calibration file (calibrate_paro); "
                             f"got {self.calibration!r}.")
        if not isinstance(self.int8_qk, bool):
            raise ValueError(f"int8_qk must be True or False; got {self.int8_qk!r}.")
        if self.reorder != "none":
            raise ValueError("method='paro' applies its calibrated per-head orders itself; use reorder='none'.")
        if self.topk is not None or self.cdf_threshold is not None:
            raise ValueError("method='paro' uses the static masks built at the calibration's density; "
                             "leave topk and cdf_threshold None (set the density in calibrate_paro).")
        if self.similarity_threshold is not None:
            raise ValueError("method='paro' masks are static; leave similarity_threshold None.")

    def with_files_saved(self, json_path: str) -> "SparseAttentionConfig":
        """The config to write into the JSON at ``json_path``: the calibration file copied beside it
        (``<name>.paro.safetensors``) and named relative to it."""
        if self.calibration is None:
            return self
        import dataclasses
        import os
        import shutil

        directory = os.path.dirname(os.path.abspath(json_path))
        stem = os.path.splitext(os.path.basename(json_path))[0]
        target = os.path.join(directory, f"{stem}.paro.safetensors")
        source = os.path.abspath(self.calibration)
        if not os.path.isfile(source):
            raise ValueError(f"PARO calibration file {self.calibration!r} does not exist; rerun calibrate_paro.")
        if source != target:
            shutil.copyfile(source, target)
        return dataclasses.replace(self, calibration=os.path.basename(target))

    def with_files_resolved(self, directory: str) -> "SparseAttentionConfig":
        """A relative ``calibration`` path read from a JSON file in ``directory``, made absolute."""
        import dataclasses
        import os

        if self.calibration is None or os.path.isabs(self.calibration):
            return self
        return dataclasses.replace(self, calibration=os.path.join(os.path.abspath(directory), self.calibration))

    def partition(self, block_index: int) -> str:
        """VMoBA: the partition (``"1d"``/``"2d"``/``"3d"``) of block ``block_index``."""
        return self.partitions[block_index % len(self.partitions)]

    def selection(self) -> dict:
        """The block-selection keyword (``density``, ``topk`` or ``cdf_threshold``) as a dict
        (VMoBA: ``cdf_threshold`` and the ``density`` capping it)."""
        if self.method == "vmoba":
            return {n: getattr(self, n) for n in ("density", "topk", "cdf_threshold") if getattr(self, n) is not None}
        for name in ("density", "topk", "cdf_threshold"):
            if getattr(self, name) is not None:
                return {name: getattr(self, name)}
        raise AssertionError("unreachable: __post_init__ guarantees one selection rule")  # pragma: no cover
