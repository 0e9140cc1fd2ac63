"""``SparseLayer``: what one attention layer computes in each denoiser call, and its state.

The model-specific processors (``processors.py``) compute q, k, v exactly as the model does and
hand them to :meth:`SparseLayer.attend` with a :class:`TokenLayout` (which token ranges are text,
which are the image/video tokens). The layer decides, from the config and the step tracker,
whether the call is dense, applies PARO reordering, and runs the configured method (a registry):

* ``block_sparse``: predicted block map -> block-sparse attention;
* ``sla``: critical blocks exact, marginal blocks linear attention through a per-layer projection
  ``proj`` (``Linear(head_dim, head_dim)``, zero-initialised: untrained SLA == block-sparse);
* ``rettention``: at a dense step, computes dense attention and caches, per guidance branch, the
  block map, the softmax-denominator ratio ``r = sum_sparse exp / sum_all exp`` per query and the
  residual ``o_dense - r * o_sparse``; at sparse steps returns ``r * o_sparse + residual``
  (exactly dense when q, k, v did not change);
* ``linear``: linear attention;
* ``vmoba``: VMoBA: the block's partition (``config.partition(block_index)``) of the call's token
  grid, blocks selected within ``selection_scope`` (``vmoba.py``); text tokens stay dense.
* ``paro``: the layer's calibrated :class:`~diffusion_accel.sparse_attn.paro_plan.ParoPlan`
  (``paro_plan``): tokens reordered per head, the static block mask, the order undone; optional
  INT8 Q/K. While ``paro_recorder`` is set (``calibrate_paro``) the call is dense and its block
  attention mass is recorded instead.
* ``int8``: dense attention with INT8 Q·Kᵀ (``int8_attention.py``); calls with fewer key tokens
  than the device's measured crossover (:func:`~.int8_attention.int8_min_tokens`) run SDPA.

Example:
    >>> import torch
    >>> from diffusion_accel.sparse_attn import SparseAttentionConfig
    >>> from diffusion_accel.sparse_attn.layer import SparseLayer, TokenLayout
    >>> layer = SparseLayer("blocks.0.attn1", 0, SparseAttentionConfig(density=1.0, block_q=64), head_dim=64)
    >>> q = k = v = torch.randn(1, 2, 256, 64)
    >>> out = layer.attend(q, k, v, TokenLayout())
    >>> torch.allclose(out, torch.nn.functional.scaled_dot_product_attention(q, k, v), atol=1e-5)
    True
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .config import SparseAttentionConfig
from .context import CallContext, grid_for_tokens
from .cpu import attention_with_lse
from .linear import linear_attention
from .defaults import resolve_block_shape
from .masks import block_constraints, block_density, block_scores, select_blocks
from .ops import run_block_sparse, sla_block_maps, sla_branches
from .paro import calibrate_orders, head_permutation, permute_heads, unpermute_heads
from .int8_attention import int8_attention, int8_attention_reference, int8_min_tokens
from .int8_qk import int8_qk
from .paro_plan import accumulate_block_mass
from .vmoba import run_vmoba
from .vmoba_blocks import BlockLayout, partition_layout
from .vmoba_select import vmoba_block_map

__all__ = ["LAYER_METHODS", "SparseLayer", "TokenLayout", "dense_with_lse"]


@dataclass(frozen=True)
class TokenLayout:
    """Token roles in one attention call's sequence.

    ``dense_tokens``: ``(start, stop)`` ranges always computed (text tokens of joint attention);
    ``span``: the ``(start, stop)`` range of image/video tokens (PARO reorders only these);
    ``None`` = the whole sequence.
    """

    dense_tokens: tuple[tuple[int, int], ...] = ()
    span: tuple[int, int] | None = None


def dense_with_lse(q, k, v, backend: str):
    """Dense attention with its log-sum-exp, memory-efficiently on every device."""
    if q.device.type == "cpu":
        return attention_with_lse(q, k, v)
    from .masks import num_blocks

    full = torch.ones(q.shape[0], q.shape[1], num_blocks(q.shape[2], 64), num_blocks(k.shape[2], 64),
                      dtype=torch.bool, device=q.device)
    return run_block_sparse(q, k, v, full, 64, 64, backend=backend, need_lse=True)


class _RidgeFit:
    """Accumulates normal equations of ``target ~ [x, 1] @ W`` for SLA's projection."""

    def __init__(self, dim: int, device) -> None:
        self.xtx = torch.zeros(dim + 1, dim + 1, dtype=torch.float64, device=device)
        self.xty = torch.zeros(dim + 1, dim, dtype=torch.float64, device=device)
        self.rows = 0

    def add(self, x: torch.Tensor, target: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).double()
        x = torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype, device=x.device)], 1)
        t = target.reshape(-1, target.shape[-1]).double()
        self.xtx += x.T @ x
        self.xty += x.T @ t
        self.rows += x.shape[0]

    def solve(self, ridge: float) -> tuple[torch.Tensor, torch.Tensor]:
        eye = torch.eye(self.xtx.shape[0], dtype=self.xtx.dtype, device=self.xtx.device)
        scale = self.xtx.diagonal().mean().clamp_min(1e-12)
        w = torch.linalg.solve(self.xtx + ridge * scale * eye, self.xty)  # (D+1, D)
        return w[:-1].T.float(), w[-1].float()  # Linear weight (out, in), bias


class SparseLayer:
    """Policy and state of one sparsified attention layer (see the module docstring)."""

    def __init__(
        self,
        name: str,
        block_index: int,
        config: SparseAttentionConfig,
        *,
        head_dim: int,
        tracker=None,
        context: Callable[[], CallContext] | None = None,
        device=None,
    ) -> None:
        self.name = name
        self.block_index = block_index
        self.config = config
        self.tracker = tracker
        self._context = context
        self.proj: torch.nn.Linear | None = None
        if config.method == "sla":
            self.proj = torch.nn.Linear(head_dim, head_dim, device=device)
            torch.nn.init.zeros_(self.proj.weight)
            torch.nn.init.zeros_(self.proj.bias)
        self.paro_orders: dict[tuple, torch.Tensor] = {}
        self.paro_plan = None  # ParoPlan of method="paro" (set by the technique from the calibration)
        self.paro_recorder: dict | None = None  # calibrate_paro: (grid, span, seq, block_q, block_k) -> mass
        self._paro_perm: tuple | None = None
        self.vmoba_layouts: dict[tuple, BlockLayout] = {}
        self.sla_fit: _RidgeFit | None = None
        #: True: every call is plain dense attention (the teacher of ``finetune.py``)
        self.bypass = False
        self.stats = {"sparse_calls": 0, "dense_calls": 0, "density_sum": 0.0}
        self.cache: dict[str, tuple] = {}

    # ----------------------------------------------------------------- state
    def reset(self) -> None:
        """Drop per-pipeline-call state (Re-ttention statistics); calibration is kept."""
        self.cache = {}

    def _call(self) -> tuple[int, str]:
        current = None if self.tracker is None else self.tracker.current
        return (0, "default") if current is None else (current.step, current.branch)

    def _dense_step(self, step: int) -> bool:
        cfg = self.config
        return step < cfg.dense_steps or (cfg.dense_every > 0 and step % cfg.dense_every == 0)

    def _has_dense_steps(self) -> bool:
        return self.config.dense_steps > 0 or self.config.dense_every > 0

    @torch.compiler.disable
    def count(self, kind: str, density: float | None = None) -> None:
        """Record one call (``"sparse_calls"`` or ``"dense_calls"``) and its density in ``stats``.

        Kept out of ``torch.compile`` graphs: counting in the graph made dynamo guard on the counts,
        recompiling the model on every call (measured: 47 ms instead of 9 ms per call on the bundled
        model's transformer)."""
        self.stats[kind] += 1
        if density is not None:
            self.stats["density_sum"] += float(density)

    def use_original(self) -> bool:
        """True when this call is plain dense attention (the model's own processor runs it)."""
        if self.bypass:
            return True
        if self.config.blocks is not None and self.block_index not in self.config.blocks:
            return True
        if self.block_index in self.config.dense_blocks:
            return True
        # the step is read only when it matters (under torch.compile a read step is a guard: a recompile per step)
        return self.config.method != "rettention" and self._has_dense_steps() and self._dense_step(self._call()[0])

    # ----------------------------------------------------------------- compute
    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
        """Attention over q ``(B, H, Sq, D)``, k/v ``(B, H, Sk, D)``; returns ``(B, H, Sq, D)``."""
        if k.shape[2] < self.config.min_tokens:
            self.count("dense_calls")
            return F.scaled_dot_product_attention(q, k, v)
        perm = None
        if self.config.reorder == "paro" and self.config.method != "linear":
            perm = self._paro_permutation(q, k, layout)
            q, k, v = permute_heads(q, perm), permute_heads(k, perm), permute_heads(v, perm)
        out = LAYER_METHODS[self.config.method](self, q, k, v, layout)
        return out if perm is None else unpermute_heads(out, perm)

    def block_shape(self, q: torch.Tensor) -> tuple[int, int]:
        """``(block_q, block_k)``: the config's, or the measured default of q's device."""
        return resolve_block_shape(self.config.block_q, self.config.block_k, q.device)

    def constraints(self, q, k, layout: TokenLayout) -> dict:
        """:func:`~diffusion_accel.sparse_attn.masks.block_constraints` of this call."""
        block_q, block_k = self.block_shape(q)
        threshold = self.config.similarity_threshold
        return block_constraints(q, k, block_q, block_k, layout.dense_tokens, threshold)

    def predict(self, q, k, layout: TokenLayout) -> tuple[torch.Tensor, float]:
        """``(block_map, density)``: the predicted map and its density over the image/video part."""
        block_q, block_k = self.block_shape(q)
        constraints = self.constraints(q, k, layout)
        scores = block_scores(q, k, block_q, block_k)
        block_map = select_blocks(scores, **self.config.selection(), **constraints)
        return block_map, block_density(block_map, constraints["dense_rows"], constraints["dense_cols"])

    def sparse(self, q, k, v, block_map, density: float, need_lse=False):
        self.count("sparse_calls", density)
        block_q, block_k = self.block_shape(q)
        return run_block_sparse(
            q, k, v, block_map, block_q, block_k, backend=self.config.backend, need_lse=need_lse
        )

    def video_grid(self, q, layout: TokenLayout, why: str, instead: str) -> tuple[tuple, tuple[int, int]]:
        """``(grid, span)`` of this call's image/video tokens (ValueError naming the fix if unknown)."""
        span = layout.span or (0, q.shape[2])
        context = self._context() if self._context is not None else CallContext()
        grid = grid_for_tokens(context.grid, span[1] - span[0])
        if grid is None:
            raise ValueError(
                f"{self.name}: {why} needs the token grid of the {span[1] - span[0]} image/video "
                f"tokens, but the model call gave {context.grid}. Declare how to read it in the model's adapter "
                f"(ModelAdapter(..., token_grid=fn)) or use {instead}."
            )
        return grid, span

    def vmoba_layout(self, q, layout: TokenLayout) -> BlockLayout:
        """The :class:`~diffusion_accel.sparse_attn.vmoba_blocks.BlockLayout` of this block and call."""
        cfg = self.config
        grid, span = self.video_grid(q, layout, "method='vmoba'", "method='block_sparse'")
        kind = cfg.partition(self.block_index)
        key = (grid, span, q.shape[2], kind, q.device)
        if key not in self.vmoba_layouts:
            sizes = (cfg.block_frames, cfg.block_spatial, cfg.block_cube)
            self.vmoba_layouts[key] = partition_layout(grid, kind, sizes, seq=q.shape[2], span=span).to(q.device)
        return self.vmoba_layouts[key]

    def _paro_permutation(self, q, k, layout: TokenLayout) -> torch.Tensor:
        seq = q.shape[2]
        grid, span = self.video_grid(q, layout, "reorder='paro'", "reorder='none'")
        key = (grid, span, q.shape[1])
        if key not in self.paro_orders:
            block_q, block_k = self.block_shape(q)
            self.paro_orders[key] = calibrate_orders(
                q, k, grid, span, block_q=block_q, block_k=block_k, density=self.config.density or 0.25
            ).cpu()
        return head_permutation(self.paro_orders[key], grid, seq, span, q.device)


def _paro_record(layer: SparseLayer, q, k, v, layout):
    grid, span = layer.video_grid(q, layout, "method='paro'", "method='block_sparse'")
    block_q, block_k = layer.paro_recorder["block_shape"]
    key = (grid, span, q.shape[2])
    mass = accumulate_block_mass(q, k, grid, span, block_q, block_k)
    sums = layer.paro_recorder.setdefault("mass", {})
    sums[key] = mass if key not in sums else sums[key] + mass
    layer.count("dense_calls")
    return F.scaled_dot_product_attention(q, k, v)


def _paro(layer: SparseLayer, q, k, v, layout):
    if layer.paro_recorder is not None:
        return _paro_record(layer, q, k, v, layout)
    plan = layer.paro_plan
    if plan is None:
        raise ValueError(f"{layer.name}: method='paro' needs a calibration; pass "
                         "SparseAttentionConfig(method='paro', calibration=path) made by calibrate_paro.")
    context = layer._context() if layer._context is not None else CallContext()
    span = layout.span or (0, q.shape[2])
    plan.check_call(q, grid_for_tokens(context.grid, span[1] - span[0]), span)
    if layer._paro_perm is None or layer._paro_perm[0] != q.device:
        layer._paro_perm = (q.device, plan.permutation(q.device), plan.mask.to(q.device))
    _, perm, mask = layer._paro_perm
    q, k, v = permute_heads(q, perm), permute_heads(k, perm), permute_heads(v, perm)
    block_q, block_k = layer.paro_block_shape
    if layer.config.int8_qk:
        q, k = int8_qk(q, k, block_q, block_k)
    layer.count("sparse_calls", layer.paro_density)
    block_map = mask.expand(q.shape[0], *mask.shape)
    out, _ = run_block_sparse(q, k, v, block_map, block_q, block_k, backend=layer.config.backend)
    return unpermute_heads(out, perm)


def _block_sparse(layer: SparseLayer, q, k, v, layout):
    out, _ = layer.sparse(q, k, v, *layer.predict(q, k, layout))
    return out


def _sla(layer: SparseLayer, q, k, v, layout):
    cfg = layer.config
    block_q, block_k = layer.block_shape(q)
    constraints = layer.constraints(q, k, layout)
    scores = block_scores(q, k, block_q, block_k)
    critical, marginal = sla_block_maps(scores, cfg.density, cfg.skip_fraction, **constraints)
    layer.count("sparse_calls", block_density(critical, constraints["dense_rows"], constraints["dense_cols"]))
    o_s, o_l = sla_branches(q, k, v, critical, marginal, block_q, block_k, cfg.feature_map, None, cfg.backend)
    if layer.sla_fit is not None:
        dense, _ = dense_with_lse(q, k, v, cfg.backend)
        layer.sla_fit.add(o_l, dense.float() - o_s.float())
    proj = layer.proj.to(device=o_l.device)
    return (o_s.float() + proj(o_l)).to(q.dtype)


def _rettention(layer: SparseLayer, q, k, v, layout):
    step, branch = layer._call()
    cached = layer.cache.get(branch)
    stale = cached is None or cached[1].shape != q.shape[:3] or cached[2].shape != q.shape
    if layer._dense_step(step) or stale:
        out, lse = dense_with_lse(q, k, v, layer.config.backend)
        block_map, density = layer.predict(q, k, layout)
        block_q, block_k = layer.block_shape(q)
        o_s, lse_s = run_block_sparse(
            q, k, v, block_map, block_q, block_k, backend=layer.config.backend, need_lse=True
        )
        ratio = torch.exp(lse_s - lse)  # sparse / full softmax denominator, per query
        residual = out.float() - ratio[..., None] * o_s.float()
        layer.cache[branch] = (block_map, ratio, residual, density)
        layer.count("dense_calls")
        return out
    block_map, ratio, residual, density = cached
    o_s, _ = layer.sparse(q, k, v, block_map, density)
    return (ratio[..., None] * o_s.float() + residual).to(q.dtype)


def _linear(layer: SparseLayer, q, k, v, layout):
    layer.count("sparse_calls")
    return linear_attention(q, k, v, feature_map=layer.config.feature_map)


def _vmoba(layer: SparseLayer, q, k, v, layout):
    cfg = layer.config
    blocks = layer.vmoba_layout(q, layout)
    block_map = vmoba_block_map(q, k, blocks, scope=cfg.selection_scope, **cfg.selection())
    video = ~blocks.dense
    layer.count("sparse_calls", block_map[..., video, :][..., video].float().mean())
    return run_vmoba(q, k, v, blocks, block_map, backend=cfg.backend)


def _int8(layer: SparseLayer, q, k, v, layout):
    if layer.config.backend == "reference":
        out = int8_attention_reference(q, k, v)
    elif k.shape[2] < int8_min_tokens(q.device):
        layer.count("dense_calls")
        return F.scaled_dot_product_attention(q, k, v)
    else:
        out = int8_attention(q, k, v)
    layer.count("sparse_calls")
    return out


#: method name -> fn(layer, q, k, v, layout) -> out
LAYER_METHODS: dict[str, Callable] = {
    "block_sparse": _block_sparse,
    "sla": _sla,
    "rettention": _rettention,
    "linear": _linear,
    "vmoba": _vmoba,
    "paro": _paro,
    "int8": _int8,
}
