"""Skip policies of dynamic caching, by name: whether a denoiser call may skip its blocks.

A policy is an object registered under a name (``DynamicCacheConfig(policy=<name>)``); dynamic
caching looks it up in the registry and never branches on the name. Each policy says which
**signal** it reads at every call and **when** it decides:

* ``"first_block"`` — signal: the first block's residual (output − input), read after the first
  block ran; the relative L1 change since the previous step is accumulated over skipped steps;
  skip while the sum stays below ``threshold``. The first block always runs.
  (``DynamicCacheConfig(compare_to="last_computed")``: the controller measures every policy's
  change against the signal of the last computed step and passes :meth:`SkipPolicy.initial`
  accumulators, so the change is not summed.)
* ``"teacache"`` — signal: the first block's timestep-modulated input (computed from the block's
  call by the model adapter's ``modulated_input``, before any block runs); its relative L1 change
  since the previous step is rescaled by the calibrated polynomial ``teacache_coefficients``
  (numpy order, highest degree first; floored at 0), accumulated, and the whole block stack
  (first block included) is skipped while the sum stays below ``threshold`` (TeaCache).
* ``"magcache"`` — no signal: the calibrated per-step magnitude ratio ``magcache_ratios[t]`` of
  the stack's residual between consecutive steps. While skipping, the product of the ratios since
  the last computed step is kept and ``|1 − product|`` is accumulated as the error; skip (the
  whole stack) while the error stays ≤ ``threshold`` (MagCache; at most ``max_consecutive_skips``
  in a row, as every policy).

Guards common to every policy (warm-up and final steps, ``max_consecutive_skips``) live in the
dynamic-cache controller. A policy keeps its accumulators per decision row (one row per batch,
or one per sample with ``decide_per="sample"``) as float64 numpy arrays: :meth:`SkipPolicy.propose`
returns the candidate accumulators and the rows that would skip; the controller keeps the
candidate if the call skips and restarts from :meth:`SkipPolicy.initial` when it computes.

Example:
    >>> skip_policy_names()
    ['first_block', 'magcache', 'teacache']
    >>> skip_policy("teacache").signal, skip_policy("teacache").before_first_block
    ('modulated_input', True)

A policy of your own subclasses :class:`SkipPolicy` (class attributes ``name``, ``signal``,
``before_first_block``; methods ``initial`` and ``propose``) and is registered with
``register_skip_policy(MyPolicy())``; ``DynamicCacheConfig(policy="my-name")`` then selects it.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

__all__ = ["SkipPolicy", "register_skip_policy", "skip_policy", "skip_policy_names", "magcache_ratio_at"]

#: Values of :attr:`SkipPolicy.signal`.
SIGNALS = ("first_block_residual", "modulated_input", None)


class SkipPolicy:
    """A dynamic-cache skip rule (subclass, set the class attributes, register an instance).

    Attributes:
        name: registry name (``DynamicCacheConfig.policy``).
        signal: what the controller measures at each call: ``"first_block_residual"`` (after the
            first block ran), ``"modulated_input"`` (from the first block's call, before it runs)
            or ``None`` (the decision depends on the step only).
        before_first_block: decide before the first block runs and skip it too (the reused
            residual then spans every block); ``False``: the first block always runs.
        config_fields: :class:`~.dynamic.DynamicCacheConfig` fields only this policy reads.
    """

    name: ClassVar[str] = ""
    signal: ClassVar[str | None] = None
    before_first_block: ClassVar[bool] = False
    config_fields: ClassVar[tuple[str, ...]] = ()

    def check_config(self, config: Any) -> None:
        """Raise ``ValueError`` (naming the fix) if ``config`` lacks what this policy needs."""

    def check_denoiser(self, adapter: Any, residual_mode: bool) -> None:
        """Raise ``ValueError`` (naming the fix) if this policy cannot run on a denoiser."""
        if self.before_first_block and not residual_mode:
            raise ValueError(
                f"Dynamic caching policy={self.name!r} skips every block and adds their residual, which needs "
                f"blocks with declared input/output streams (BlockIO); the {adapter.family} adapter has none "
                "(UNets). Use policy='first_block' on this model."
            )

    def initial(self, rows: int) -> dict[str, np.ndarray]:
        """Accumulators right after a computed step, for ``rows`` decision rows."""
        raise NotImplementedError

    def propose(self, config: Any, state: dict[str, np.ndarray], change: np.ndarray | None, step: int,
                total: int | None) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """``(candidate accumulators, skip per row)`` at ``step`` of ``total`` (``None``: unknown).

        ``change`` is the relative L1 change of the signal since the previous step, per row
        (``None`` for a policy without a signal).
        """
        raise NotImplementedError


_POLICIES: dict[str, SkipPolicy] = {}


def register_skip_policy(policy: SkipPolicy) -> SkipPolicy:
    """Register ``policy`` under ``policy.name`` (replacing a policy of that name)."""
    if not isinstance(policy, SkipPolicy) or not policy.name:
        raise TypeError(f"Register a SkipPolicy instance with a non-empty name, got {policy!r}.")
    if policy.signal not in SIGNALS:
        raise ValueError(f"{type(policy).__name__}.signal must be one of {SIGNALS}, got {policy.signal!r}.")
    _POLICIES[policy.name] = policy
    return policy


def skip_policy_names() -> list[str]:
    return sorted(_POLICIES)


def skip_policy(name: str) -> SkipPolicy:
    """The policy registered under ``name``; ``ValueError`` listing the known names otherwise."""
    if not isinstance(name, str) or name not in _POLICIES:
        raise ValueError(f"Unknown dynamic caching policy {name!r}; use one of {skip_policy_names()} "
                         "(or register yours with diffusion_accel.caching.policies.register_skip_policy).")
    return _POLICIES[name]


def _accumulated(rows: int) -> dict[str, np.ndarray]:
    return {"accumulated": np.zeros(rows, dtype=np.float64)}


class FirstBlockPolicy(SkipPolicy):
    """FBCache: accumulate the first block's residual change; skip while below the threshold."""

    name, signal, before_first_block = "first_block", "first_block_residual", False

    def initial(self, rows):
        return _accumulated(rows)

    def propose(self, config, state, change, step, total):
        accumulated = state["accumulated"] + change
        return {"accumulated": accumulated}, accumulated < config.threshold


class TeaCachePolicy(SkipPolicy):
    """TeaCache: accumulate the polynomially rescaled change of the modulated input."""

    name, signal, before_first_block = "teacache", "modulated_input", True
    config_fields = ("teacache_coefficients",)

    def check_config(self, config):
        if not config.teacache_coefficients:
            raise ValueError(
                "policy='teacache' needs teacache_coefficients (the polynomial rescaling the modulated-input change): "
                "fit them on your model with diffusion_accel.caching.calibrate_teacache(pipe, prompts), or pass "
                "teacache_coefficients=(1.0, 0.0) for the unrescaled change."
            )

    def check_denoiser(self, adapter, residual_mode):
        super().check_denoiser(adapter, residual_mode)
        if adapter.modulated_input is None:
            raise ValueError(
                f"policy='teacache' needs the timestep-modulated input of the first block, which the {adapter.family} "
                "model adapter does not describe (ModelAdapter.modulated_input). Use policy='first_block' or "
                f"policy='magcache', or add modulated_input to the adapter in diffusion_accel/models/."
            )

    def initial(self, rows):
        return _accumulated(rows)

    def propose(self, config, state, change, step, total):
        rescaled = np.maximum(np.polyval(np.asarray(config.teacache_coefficients, dtype=np.float64), change), 0.0)
        accumulated = state["accumulated"] + rescaled
        return {"accumulated": accumulated}, accumulated < config.threshold


def magcache_ratio_at(ratios: tuple[float, ...], step: int, total: int | None) -> float:
    """Calibrated ratio at ``step``; resampled linearly when the call has ``total != len(ratios)`` steps."""
    n = len(ratios)
    if total is None or total == n or n == 1:
        return float(ratios[min(step, n - 1)])
    position = step * (n - 1) / max(total - 1, 1)
    return float(np.interp(position, np.arange(n), np.asarray(ratios, dtype=np.float64)))


class MagCachePolicy(SkipPolicy):
    """MagCache: accumulate ``|1 − product of calibrated magnitude ratios|`` while skipping."""

    name, signal, before_first_block = "magcache", None, True
    config_fields = ("magcache_ratios",)

    def check_config(self, config):
        if not config.magcache_ratios:
            raise ValueError(
                "policy='magcache' needs magcache_ratios (the residual's per-step magnitude ratios): measure them on "
                "your model with diffusion_accel.caching.calibrate_magcache(pipe, prompts)."
            )
        if any(not np.isfinite(r) or r <= 0 for r in config.magcache_ratios):
            raise ValueError(f"magcache_ratios must be finite and > 0, got {config.magcache_ratios!r}; "
                             "re-run calibrate_magcache.")

    def initial(self, rows):
        return {"ratio": np.ones(1, dtype=np.float64), "error": np.zeros(1, dtype=np.float64)}

    def propose(self, config, state, change, step, total):
        ratio = state["ratio"] * magcache_ratio_at(config.magcache_ratios, step, total)
        error = state["error"] + np.abs(1.0 - ratio)
        return {"ratio": ratio, "error": error}, error <= config.threshold


for _policy in (FirstBlockPolicy(), TeaCachePolicy(), MagCachePolicy()):
    register_skip_policy(_policy)
