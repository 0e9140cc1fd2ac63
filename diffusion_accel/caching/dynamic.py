"""Dynamic caching (FBCache / TeaCache / MagCache family): skip the blocks of a denoiser call
while a cheap signal says its output will barely change since the last computed step.

The skip rule is a **policy** chosen by name (``DynamicCacheConfig(policy=...)``, registry in
:mod:`.policies`):

* ``"first_block"`` (default): the first block runs at every call; the relative L1 change of its
  residual (output - input; for UNets, its output) since the previous step is **accumulated**
  over consecutive skipped steps, and the remaining blocks are skipped while the sum stays below
  ``threshold`` (``compare_to="last_computed"``: its change since the last computed step, not
  summed, as diffusers' FirstBlockCache);
* ``"teacache"``: the first block's timestep-modulated input (from the model adapter) is compared
  with the previous step's, its relative L1 change rescaled by a calibrated polynomial
  (:func:`~.calibrate.calibrate_teacache`) and accumulated; every block is skipped while the sum
  stays below ``threshold``;
* ``"magcache"``: the calibrated per-step magnitude ratios of the blocks' residual
  (:func:`~.calibrate.calibrate_magcache`) give the error of reusing it; every block is skipped
  while the accumulated error stays at most ``threshold``.

Every policy skips at most ``max_consecutive_skips`` steps in a row, never in the first
``warmup_steps`` nor the last ``final_steps``. What a skipped call returns:

* transformers (every block group declares a ``BlockIO``): the skipped blocks pass their input
  through and the last block adds the residual the skipped blocks produced at the last
  computed step (for both streams of MMDiT blocks);
* UNets (``"first_block"`` only): all blocks but the first and the last return their outputs from
  the last computed step (DeepCache-like reuse), so the outermost blocks stay fresh.

With ``reuse="forecast"`` (transformers, ``decide_per="batch"``) the last block adds instead the
residual extrapolated to the current step from the last ``forecast_order + 1`` computed steps'
residuals (TaylorSeer's finite differences in step index, :func:`~.forecast.newton_extrapolate`):
the same skip rule, a better guess of what the skipped blocks would have added. Before
``forecast_order + 1`` computed steps it uses the highest order they allow (one: plain reuse).
``forecast_until`` < 1 forecasts only in the first part of the pass (the skipped calls at steps
below ``forecast_until`` x the pass's steps) and reuses the plain residual after it: on a
20-step DPM-Solver++ pass the residual is smooth early but not over the last steps.

Decisions are per guidance branch and, by default, per batch (the signal's change over the whole
batch). With ``decide_per="sample"`` each sample (row of the denoiser's batch; both guidance
halves of a batched-CFG call are rows too) keeps its own accumulators and the call skips only if
every row may skip: when some rows would skip and others compute, **all rows are computed** (the
blocks are not run on a slice of the batch) and every row's accumulation restarts.

State is kept per guidance branch, cleared at the start of each pipeline call and released at its
end (``report()["cache_bytes"]`` is then 0; ``"peak_cache_bytes"`` is what the last call held).

Example:
    >>> import torch, diffusion_accel
    >>> from diffusion_accel.caching import DynamicCacheConfig
    >>> from diffusion_accel.testing import tiny_pipeline, tiny_call_kwargs
    >>> pipe = tiny_pipeline("flux")
    >>> cfg = diffusion_accel.AccelerationConfig(cache=DynamicCacheConfig(threshold=0.1))
    >>> pipe = diffusion_accel.apply(pipe, cfg)
    >>> out = pipe(**tiny_call_kwargs("flux"), generator=torch.Generator().manual_seed(0))
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from diffusers.hooks import ModelHook

from ..hooks import Denoiser, HookSet, StepTracker
from ..models import Block, map_arguments
from ..techniques import TechniqueConfig, TechniqueHandle, register_technique
from .block_io import add_stream as _add
from .block_io import block_argument as _argument
from .block_io import block_streams as _streams
from .block_io import pack_block_output as _pack
from .block_io import sub_stream as _sub
from .forecast import newton_extrapolate
from .policies import SkipPolicy, skip_policy, skip_policy_names
from .state import tensor_bytes
from .static import scheduler_num_steps

__all__ = ["DECISION_UNITS", "DYNAMIC_REUSE_MODES", "REFERENCES", "DynamicCacheConfig", "apply_dynamic_cache"]

_HOOK_NAME = "dynamic_cache"

#: Values of :attr:`DynamicCacheConfig.decide_per`.
DECISION_UNITS = ("batch", "sample")
#: Values of :attr:`DynamicCacheConfig.compare_to`.
REFERENCES = ("previous", "last_computed")
#: Values of :attr:`DynamicCacheConfig.reuse`.
DYNAMIC_REUSE_MODES = ("residual", "forecast")


@dataclass(frozen=True)
class DynamicCacheConfig(TechniqueConfig):
    """Skip the blocks of a denoiser call while the chosen policy's signal changes little.

    Args:
        threshold: skip while the policy's accumulated change (``"first_block"``, ``"teacache"``) is below
            this, or its accumulated error (``"magcache"``) at most this (larger = faster, lossier).
        max_consecutive_skips: never skip more than this many steps in a row.
        warmup_steps: the first steps always compute (at least 1).
        final_steps: the last steps always compute (needs the call's step count, read from
            the pipeline's scheduler: see :func:`~diffusion_accel.caching.static.scheduler_num_steps`).
        policy: the skip rule, a name registered in :mod:`.policies`: ``"first_block"`` (default),
            ``"teacache"`` or ``"magcache"``.
        decide_per: ``"batch"`` (default: one decision from the whole batch's change) or ``"sample"``
            (each row of the batch accumulates its own change; the call skips only if all rows may).
        compare_to: what a policy with a signal (``"first_block"``, ``"teacache"``) compares the signal
            with: ``"previous"`` (default: the previous step's, the relative changes summed over the
            steps skipped since the last computed one) or ``"last_computed"`` (the signal of the last
            computed step, whose residual a skipped call reuses; its relative change is the score, not
            summed: FBCache as in ParaAttention and diffusers' ``FirstBlockCacheConfig``).
        teacache_coefficients: ``policy="teacache"`` only: polynomial (numpy order, highest degree first)
            mapping the modulated input's relative L1 change to the output's; fitted by
            :func:`~.calibrate.calibrate_teacache`.
        magcache_ratios: ``policy="magcache"`` only: per-step mean magnitude ratio of the blocks'
            residual to the previous step's (step 0: 1.0); measured by :func:`~.calibrate.calibrate_magcache`.
            Resampled linearly for calls with another step count.
        reuse: what a skipped call adds at the last block (transformers): ``"residual"`` (default: the
            residual of the last computed step) or ``"forecast"`` (that residual extrapolated to the
            current step from the last ``forecast_order + 1`` computed steps; ``decide_per="batch"`` only).
        forecast_order: ``reuse="forecast"`` only: 1 (linear) or 2 (also the curvature).
        forecast_until: ``reuse="forecast"`` only: fraction in (0, 1] of the pass's steps (read from the
            pipeline's scheduler) during which skipped calls forecast; skipped calls at later steps reuse
            the last computed residual. 1.0 (default): forecast everywhere (also when the step count
            is unknown).
    """

    field_name = "cache"

    threshold: float = 0.1
    max_consecutive_skips: int = 3
    warmup_steps: int = 1
    final_steps: int = 0
    policy: str = "first_block"
    decide_per: str = "batch"
    compare_to: str = "previous"
    teacache_coefficients: tuple[float, ...] = ()
    magcache_ratios: tuple[float, ...] = ()
    reuse: str = "residual"
    forecast_order: int = 1
    forecast_until: float = 1.0

    def __post_init__(self) -> None:
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, float)) or self.threshold < 0:
            raise ValueError(f"threshold must be a number >= 0, got {self.threshold!r}.")
        for name, minimum in (("max_consecutive_skips", 0), ("warmup_steps", 1), ("final_steps", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")
        if self.decide_per not in DECISION_UNITS:
            raise ValueError(f"decide_per must be one of {list(DECISION_UNITS)}, got {self.decide_per!r}.")
        if self.compare_to not in REFERENCES:
            raise ValueError(f"compare_to must be one of {list(REFERENCES)}, got {self.compare_to!r}.")
        self._check_reuse()
        for name in ("teacache_coefficients", "magcache_ratios"):
            object.__setattr__(self, name, _numbers(name, getattr(self, name)))
        policy = skip_policy(self.policy)
        for other in skip_policy_names():
            for name in skip_policy(other).config_fields:
                if name not in policy.config_fields and getattr(self, name):
                    raise ValueError(f"{name} only applies to policy={other!r} (got policy={self.policy!r}); "
                                     f"pass policy={other!r} or drop {name}.")
        policy.check_config(self)
        if self.compare_to != "previous" and policy.signal is None:
            raise ValueError(f"compare_to={self.compare_to!r} needs a policy with a signal; policy={self.policy!r} "
                             "has none: drop compare_to or use policy='first_block' or 'teacache'.")


    def _check_reuse(self) -> None:
        if self.reuse not in DYNAMIC_REUSE_MODES:
            raise ValueError(f"reuse must be one of {list(DYNAMIC_REUSE_MODES)}, got {self.reuse!r}.")
        if isinstance(self.forecast_order, bool) or self.forecast_order not in (1, 2):
            raise ValueError(f"forecast_order must be 1 or 2, got {self.forecast_order!r}.")
        if self.forecast_order != 1 and self.reuse != "forecast":
            raise ValueError(f"forecast_order={self.forecast_order} needs reuse='forecast'; pass reuse='forecast' "
                             "or drop forecast_order.")
        until = self.forecast_until
        if isinstance(until, bool) or not isinstance(until, (int, float)) or not 0 < until <= 1:
            raise ValueError(f"forecast_until must be a number in (0, 1], got {until!r}.")
        if until != 1 and self.reuse != "forecast":
            raise ValueError(f"forecast_until={until} needs reuse='forecast'; pass reuse='forecast' "
                             "or drop forecast_until.")
        if self.reuse == "forecast" and self.decide_per != "batch":
            raise ValueError("reuse='forecast' extrapolates the whole batch's residual: use decide_per='batch' "
                             "or reuse='residual'.")


def _numbers(name: str, values: Any) -> tuple[float, ...]:
    if not isinstance(values, (list, tuple)) or any(
            isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)) for v in values):
        raise ValueError(f"{name} must be a sequence of numbers, got {values!r}.")
    return tuple(float(v) for v in values)


@dataclass
class _BranchState:
    previous_signal: torch.Tensor | None = None  # compare_to="last_computed": the last computed step's
    accumulators: dict[str, np.ndarray] | None = None  # the policy's, per row, since the row last computed
    row_skips: np.ndarray | None = None  # per row: steps skipped in a row (None: all rows just computed)
    skipping: bool = False
    compute_rows: torch.Tensor | None = None  # this call computes only these rows (per-sample decisions)
    batch: int = 0  # rows of the call being decided
    # first block's output streams this call (policies deciding before it: its input streams)
    head_output: tuple[Any, Any] = (None, None)
    tail_residual: tuple[Any, Any] = (None, None)  # last block output - head_output, last computed step
    # reuse="forecast": (step, tail_residual) of the last forecast_order + 1 computed steps, oldest first
    tail_history: list[tuple[int, tuple[Any, Any]]] = field(default_factory=list)
    block_outputs: dict[int, Any] = field(default_factory=dict)  # reuse mode

    def tensor_bytes(self) -> int:
        history = [value for _, value in self.tail_history[:-1]]  # the newest is tail_residual
        return tensor_bytes((self.previous_signal, self.head_output, self.tail_residual, self.block_outputs, history))


class _Controller:
    """Shared decision state of one denoiser's block hooks."""

    def __init__(self, config: DynamicCacheConfig, denoiser: Denoiser, blocks: list[Block], pipe: Any):
        self.config = config
        self.policy: SkipPolicy = skip_policy(config.policy)
        self.adapter = denoiser.adapter
        self.tracker = denoiser.tracker
        self.first = blocks[0].index
        self.last = blocks[-1].index
        self.residual_mode = all(b.group.io is not None for b in blocks)
        #: per-sample decisions may run the blocks on the rows that compute only
        self.slicing = (config.decide_per == "sample" and self.residual_mode
                        and all(b.group.io.batch_args is not None for b in blocks))
        self._pipe = weakref.ref(pipe)
        self.branches: dict[str, _BranchState] = {}
        #: denoising step -> number of denoiser calls at that step that skipped (every call so far)
        self.skips_by_step: dict[int, int] = {}
        #: denoising step -> number of denoiser calls at that step (every call so far)
        self.calls_by_step: dict[int, int] = {}
        #: calls where some rows computed and the others skipped (per-sample decisions), and those skipped rows
        self.partial_calls = 0
        self.partial_rows_skipped = 0
        #: most bytes held at once during the last sampling pass
        self.peak_bytes = 0
        self._pass: Any = None
        self._pass_steps: int | None = None

    @property
    def skipped_steps(self) -> int:
        """Denoiser calls (all calls so far) that skipped the blocks after the first."""
        return sum(self.skips_by_step.values())

    @property
    def computed_steps(self) -> int:
        """Denoiser calls (all calls so far) that ran every block."""
        return sum(self.calls_by_step.values()) - self.skipped_steps

    def state(self) -> _BranchState:
        return self.branches.setdefault(self.tracker.current.branch, _BranchState())

    def reset(self) -> None:
        self.branches.clear()

    def held_bytes(self) -> int:
        """Bytes of the tensors held now (0 between pipeline calls)."""
        return sum(state.tensor_bytes() for state in self.branches.values())

    def record_bytes(self) -> None:
        self.peak_bytes = max(self.peak_bytes, self.held_bytes())

    def total_steps(self) -> int | None:
        """Steps of the current sampling pass (read once per pass from the pipeline's scheduler)."""
        first_call = self.tracker.history[0] if self.tracker.history else None
        if first_call is not self._pass:
            self._pass = first_call
            pipe = self._pipe()
            self._pass_steps = scheduler_num_steps(pipe, self.tracker) if pipe is not None else None
            self.peak_bytes = self.held_bytes()
        return self._pass_steps

    def decide(self, signal: torch.Tensor | None, batch: int) -> bool:
        """Record the policy's signal (``None`` if it has none) for a call of ``batch`` rows; return True to
        skip the blocks. With per-sample slicing, ``state().compute_rows`` is then set when only some rows compute."""
        state, call, cfg, policy = self.state(), self.tracker.current, self.config, self.policy
        previous = None
        ready = True
        if policy.signal is not None:
            signal = signal.detach()
            previous = state.previous_signal
            if cfg.compare_to == "previous":
                state.previous_signal = signal
            ready = previous is not None and previous.shape == signal.shape
        if policy.before_first_block:
            ready = ready and state.tail_residual[0] is not None
        total = self.total_steps()
        proposal = None
        if ready and call.step >= cfg.warmup_steps:
            in_final = total is not None and cfg.final_steps > 0 and call.step >= total - cfg.final_steps
            if not in_final:
                proposal = self._propose(state, previous, signal, total)
        skip = proposal is not None and bool(proposal[1].all())
        state.compute_rows, state.batch = None, batch
        if skip:
            state.accumulators, state.row_skips = proposal[0], proposal[2] + 1
        elif proposal is not None and proposal[1].any() and self._can_slice(state, len(proposal[1]), batch):
            self._partial(state, *proposal, device=signal.device)
        else:
            state.accumulators = state.row_skips = None
        state.skipping = skip
        if cfg.compare_to == "last_computed" and not skip:
            self._new_reference(state, previous, signal)
        self.calls_by_step[call.step] = self.calls_by_step.get(call.step, 0) + 1
        self.skips_by_step[call.step] = self.skips_by_step.get(call.step, 0) + int(skip)
        self.record_bytes()
        return skip

    def _propose(self, state: _BranchState, previous, signal, total) -> tuple[dict, np.ndarray, np.ndarray] | None:
        """(candidate accumulators, rows that may skip, rows' consecutive skips so far), or ``None`` when every
        row has skipped ``max_consecutive_skips`` steps in a row."""
        if state.row_skips is not None and bool((state.row_skips >= self.config.max_consecutive_skips).all()):
            return None
        change = None if previous is None else self._change(previous, signal)
        rows = 1 if change is None else len(change)
        accumulators, row_skips = state.accumulators, state.row_skips
        if accumulators is None or row_skips is None or len(row_skips) != rows:
            accumulators, row_skips = self.policy.initial(rows), np.zeros(rows, dtype=np.int64)
        if self.config.compare_to == "last_computed":  # the change since the reference is the score: no sum
            accumulators = self.policy.initial(rows)
        candidate, rows_skip = self.policy.propose(self.config, accumulators, change, self.tracker.current.step, total)
        rows_skip = np.broadcast_to(np.asarray(rows_skip, dtype=bool), row_skips.shape)
        return candidate, rows_skip & (row_skips < self.config.max_consecutive_skips), row_skips

    def _can_slice(self, state: _BranchState, rows: int, batch: int) -> bool:
        return self.slicing and rows == batch and state.tail_residual[0] is not None

    def _partial(self, state: _BranchState, candidate, rows_skip, row_skips, device) -> None:
        """Some rows skip, the others compute: keep each row's accumulators and run the blocks on the latter."""
        initial = self.policy.initial(len(rows_skip))
        state.accumulators = {k: np.where(rows_skip, candidate[k], initial[k]) for k in initial}
        state.row_skips = np.where(rows_skip, row_skips + 1, 0)
        state.compute_rows = torch.as_tensor(np.flatnonzero(~rows_skip), device=device)
        self.partial_calls += 1
        self.partial_rows_skipped += int(rows_skip.sum())

    @staticmethod
    def _new_reference(state: _BranchState, previous, signal: torch.Tensor) -> None:
        """``compare_to="last_computed"``: the rows that computed at this call take its signal as reference."""
        rows = state.compute_rows
        if rows is None or previous is None or previous.shape != signal.shape:
            state.previous_signal = signal
        else:
            state.previous_signal = previous.index_copy(0, rows, signal.index_select(0, rows))

    def remember_residual(self, state: _BranchState) -> None:
        """``reuse="forecast"``: keep the residual just computed with its step (the last ``order + 1``)."""
        if self.config.reuse != "forecast":
            return
        step = self.tracker.current.step
        if state.tail_history and state.tail_history[-1][0] >= step:
            state.tail_history.clear()  # another trajectory (a new pass without a reset)
        state.tail_history.append((step, state.tail_residual))
        del state.tail_history[:-(self.config.forecast_order + 1)]

    def reused_residual(self, state: _BranchState) -> tuple[Any, Any]:
        """What a skipped call adds at the last block: the last computed residual, or its forecast."""
        history = state.tail_history
        if self.config.reuse != "forecast" or len(history) < 2:
            return state.tail_residual
        steps = [s for s, _ in history]
        step = self.tracker.current.step
        total = self.total_steps()
        if total is not None and step >= self.config.forecast_until * total:
            return state.tail_residual
        return tuple(None if value[-1] is None else newton_extrapolate(steps, list(value), step)
                     for value in zip(*(v for _, v in history)))

    def _change(self, previous: torch.Tensor, signal: torch.Tensor) -> np.ndarray:
        """Relative L1 change of the signal: over the whole batch (1 row) or per sample (batch rows)."""
        if self.config.decide_per == "batch":
            return np.array([float((signal - previous).abs().mean() / previous.abs().mean().clamp_min(1e-12))])
        change = (signal - previous).abs().flatten(1).mean(1) / previous.abs().flatten(1).mean(1).clamp_min(1e-12)
        return change.double().cpu().numpy()


class DynamicBlockHook(ModelHook):
    """Hook on one block: decides (first block), passes through or adds residuals when skipping.

    Decisions and cached tensors live in Python, outside ``torch.compile`` graphs
    (``torch.compiler.disable``); only the block's own forward is traced.
    """

    _is_stateful = True

    def __init__(self, controller: _Controller, block: Block) -> None:
        super().__init__()
        self.controller = controller
        self.block = block
        self.io = block.group.io

    def new_forward(self, module, *args, **kwargs):
        shortcut = self._shortcut(module, args, kwargs)
        if shortcut is not None:
            return shortcut
        args, kwargs = self._rows_only(module, args, kwargs)
        output = self.fn_ref.original_forward(*args, **kwargs)
        return self._ran(module, args, kwargs, output)

    @torch.compiler.disable
    def _shortcut(self, module, args, kwargs) -> Any:
        """The block's output when the remaining blocks are skipped at this call, else ``None``."""
        ctl = self.controller
        index = self.block.index
        if ctl.tracker.current is None:
            return None
        if index == ctl.first:
            return self._decide_before(module, args, kwargs) if ctl.policy.before_first_block else None
        state = ctl.state()
        if not state.skipping:
            return None
        if ctl.residual_mode:
            hidden = _argument(module, self.io.hidden_states_arg, args, kwargs)
            encoder = _argument(module, self.io.encoder_hidden_states_arg, args, kwargs)
            if index == ctl.last:
                residual = ctl.reused_residual(state)
                hidden = _add(hidden, residual[0])
                encoder = _add(encoder, residual[1])
            return _pack(self.io, hidden, encoder)
        if index != ctl.last:
            return state.block_outputs.get(index)
        return None

    def _decide_before(self, module, args, kwargs) -> Any:
        """First block, policy deciding before it: pass the input through if skipping, else keep it."""
        ctl = self.controller
        hidden = _argument(module, self.io.hidden_states_arg, args, kwargs)
        encoder = _argument(module, self.io.encoder_hidden_states_arg, args, kwargs)
        signal = ctl.adapter.modulated_input(module, args, kwargs) if ctl.policy.signal == "modulated_input" else None
        if ctl.decide(signal, hidden.shape[0]):
            return _pack(self.io, hidden, encoder)
        ctl.state().head_output = (hidden, encoder)
        return None

    @torch.compiler.disable
    def _rows_only(self, module, args, kwargs) -> tuple[tuple, dict]:
        """The call's arguments, cut to the rows that compute when only some do (per-sample decisions)."""
        ctl = self.controller
        if ctl.tracker.current is None or (self.block.index == ctl.first and not ctl.policy.before_first_block):
            return args, kwargs
        state = ctl.state()
        rows, batch = state.compute_rows, state.batch
        if rows is None:
            return args, kwargs

        def take(value):
            per_sample = torch.is_tensor(value) and value.dim() and len(value) == batch
            return value.index_select(0, rows) if per_sample else value

        return map_arguments(module, self.io.batch_args, args, kwargs, take)

    @torch.compiler.disable
    def _ran(self, module, args, kwargs, output) -> Any:
        """Record what the decisions need after the block ran; returns the block's output (at the last
        block of a call that computed some rows only: merged with the skipped rows')."""
        ctl = self.controller
        if ctl.tracker.current is None:
            return output
        index = self.block.index
        state = ctl.state()
        if index == ctl.first:
            if ctl.policy.before_first_block:
                return output  # decided (and kept the input) in _decide_before
            if ctl.residual_mode:
                hidden_in = _argument(module, self.io.hidden_states_arg, args, kwargs)
                hidden_out, encoder_out = _streams(self.io, output)
                signal = hidden_out - hidden_in
                state.head_output = (hidden_out, encoder_out)
            else:
                signal = output[0] if isinstance(output, tuple) else output
            ctl.decide(signal, signal.shape[0])
        elif ctl.residual_mode:
            if index == ctl.last and state.compute_rows is not None:
                return self._merge_rows(state, output)
            if index == ctl.last:
                hidden, encoder = _streams(self.io, output)
                head_hidden, head_encoder = state.head_output
                state.tail_residual = (_sub(hidden, head_hidden), _sub(encoder, head_encoder))
                ctl.remember_residual(state)
                state.head_output = (None, None)
                ctl.record_bytes()
        elif index != ctl.last:
            state.block_outputs[index] = output
            ctl.record_bytes()
        return output

    def _merge_rows(self, state: _BranchState, output: Any) -> Any:
        """Last block, some rows computed: the full batch's output (computed rows as computed, the others
        their head plus cached residual); the computed rows' residuals replace theirs in the cache."""
        rows = state.compute_rows
        merged, residuals = [], []
        for head, residual, computed in zip(state.head_output, state.tail_residual, _streams(self.io, output)):
            if head is None or residual is None or computed is None:
                merged.append(computed)
                residuals.append(residual)
                continue
            merged.append((head + residual).index_copy(0, rows, computed))
            residuals.append(residual.index_copy(0, rows, computed - head.index_select(0, rows)))
        state.tail_residual = tuple(residuals)
        state.head_output = (None, None)
        state.compute_rows = None
        self.controller.record_bytes()
        return _pack(self.io, *merged)

    def reset_state(self, module):
        self.controller.reset()
        return module


@register_technique(DynamicCacheConfig)
def apply_dynamic_cache(pipe: Any, config: DynamicCacheConfig, denoisers: list[Denoiser]) -> TechniqueHandle:
    """Install a :class:`DynamicBlockHook` on every block of every denoiser."""
    hooks = HookSet(_HOOK_NAME, [d.module for d in denoisers])
    controllers: list[_Controller] = []
    for denoiser in denoisers:
        blocks = denoiser.blocks()
        if len(blocks) < 2:
            raise ValueError(f"Dynamic caching needs at least 2 blocks; {denoiser.name} has {len(blocks)}.")
        controller = _Controller(config, denoiser, blocks, pipe)
        controller.policy.check_denoiser(denoiser.adapter, controller.residual_mode)
        if config.reuse == "forecast" and not controller.residual_mode:
            raise ValueError(f"reuse='forecast' extrapolates block residuals, which {denoiser.name} (blocks without "
                             "a BlockIO, e.g. a UNet) does not have; use reuse='residual'.")
        controllers.append(controller)
    for controller, denoiser in zip(controllers, denoisers):
        for block in denoiser.blocks():
            hooks.add(block.module, DynamicBlockHook(controller, block))
    hooks.added()

    def report() -> dict[str, Any]:
        return {
            "policy": config.policy,
            # bytes held now (released at the end of every pipeline call) / most held during the last call
            "cache_bytes": sum(c.held_bytes() for c in controllers),
            "peak_cache_bytes": sum(c.peak_bytes for c in controllers),
            "steps_computed": sum(c.computed_steps for c in controllers),
            "steps_skipped": sum(c.skipped_steps for c in controllers),
            # decide_per="sample": calls where only some rows computed, and the rows they skipped
            "partial_calls": sum(c.partial_calls for c in controllers),
            "partial_rows_skipped": sum(c.partial_rows_skipped for c in controllers),
            # per denoising step, the share of denoiser calls that skipped (all calls so far)
            "skip_share_by_step": {
                step: sum(c.skips_by_step.get(step, 0) for c in controllers)
                / sum(c.calls_by_step.get(step, 0) for c in controllers)
                for step in sorted({s for c in controllers for s in c.calls_by_step})
            },
        }

    return TechniqueHandle(remove=hooks.remove, report=report, details=controllers)
