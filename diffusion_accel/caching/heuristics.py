"""Hand-made cache schedules from the literature, as plain :class:`CacheSchedule` data.

* **FORA** — every component runs every ``interval`` steps.
* **Δ-DiT** — early steps shape the outline, which the back blocks refine: cache the back
  blocks early; late steps add details from the front blocks: cache the front blocks late.
* **TGATE** — cross-attention converges early: freeze it after ``gate_step``.
* **DeepCache** (UNet) — between key steps only the outermost down/up blocks run; the deep
  features are reused.
* **Encoder propagation** (Faster Diffusion, UNet) — the encoder runs only at key steps, the
  decoder at every step.

Example:
    >>> from diffusion_accel.testing import tiny_pipeline
    >>> from diffusion_accel.caching import heuristics
    >>> s = heuristics.tgate(tiny_pipeline("pixart-alpha").transformer, num_steps=6, gate_step=3)
    >>> s.compute[:, 0, 1].tolist()   # attn2 (cross-attention) of block 0
    [True, True, True, False, False, False]
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..models import get_model_adapter
from .schedule import CacheSchedule, resolve_denoiser

__all__ = ["full_compute", "fora", "delta_dit", "tgate", "deepcache", "encoder_propagation", "random_schedule"]


def _layout(model: Any):
    model = resolve_denoiser(model)
    adapter = get_model_adapter(model)
    blocks = adapter.blocks(model)
    return model, adapter, blocks


def _check_steps(num_steps: Any) -> None:
    if not isinstance(num_steps, int) or isinstance(num_steps, bool) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}.")


def _check_interval(interval: Any) -> None:
    if not isinstance(interval, int) or isinstance(interval, bool) or interval < 1:
        raise ValueError(f"interval must be a positive integer (1 = compute every step), got {interval!r}.")


def _key_steps(num_steps: int, interval: int) -> np.ndarray:
    return np.arange(num_steps) % interval == 0


def full_compute(model: Any, num_steps: int) -> CacheSchedule:
    _check_steps(num_steps)
    _, adapter, blocks = _layout(model)
    compute = np.ones((num_steps, len(blocks), len(adapter.component_names)), dtype=bool)
    return CacheSchedule.from_model(model, compute, name="full")


def fora(model: Any, num_steps: int, interval: int) -> CacheSchedule:
    _check_steps(num_steps)
    _check_interval(interval)
    _, adapter, blocks = _layout(model)
    compute = np.broadcast_to(
        _key_steps(num_steps, interval)[:, None, None], (num_steps, len(blocks), len(adapter.component_names))
    )
    return CacheSchedule.from_model(model, compute, name=f"fora-{interval}")


def delta_dit(
    model: Any,
    num_steps: int,
    interval: int = 2,
    gate_step: int | None = None,
    num_cached_blocks: int | None = None,
) -> CacheSchedule:
    """Before ``gate_step`` the last ``num_cached_blocks`` blocks run every ``interval`` steps;
    from ``gate_step`` on, the first ``num_cached_blocks`` do (defaults: half the steps, half the blocks)."""
    _check_steps(num_steps)
    _check_interval(interval)
    _, adapter, blocks = _layout(model)
    n_blocks = len(blocks)
    gate_step = num_steps // 2 if gate_step is None else gate_step
    num_cached_blocks = max(1, n_blocks // 2) if num_cached_blocks is None else num_cached_blocks
    if not 0 <= gate_step <= num_steps:
        raise ValueError(f"gate_step must be in [0, {num_steps}], got {gate_step}.")
    if not 1 <= num_cached_blocks <= n_blocks:
        raise ValueError(f"num_cached_blocks must be in [1, {n_blocks}], got {num_cached_blocks}.")
    compute = np.ones((num_steps, n_blocks, len(adapter.component_names)), dtype=bool)
    reuse = ~_key_steps(num_steps, interval)
    early = reuse & (np.arange(num_steps) < gate_step)
    late = reuse & (np.arange(num_steps) >= gate_step)
    compute[np.ix_(early, np.arange(n_blocks - num_cached_blocks, n_blocks))] = False
    compute[np.ix_(late, np.arange(num_cached_blocks))] = False
    return CacheSchedule.from_model(model, compute, name=f"delta-dit-{interval}")


def tgate(model: Any, num_steps: int, gate_step: int) -> CacheSchedule:
    _check_steps(num_steps)
    _, adapter, blocks = _layout(model)
    if not isinstance(gate_step, int) or not 1 <= gate_step <= num_steps:
        raise ValueError(f"gate_step must be an integer in [1, {num_steps}], got {gate_step!r}.")
    kinds = adapter.component_kinds()
    cross = [i for i, name in enumerate(adapter.component_names) if kinds[name] == "cross_attn"]
    if not cross:
        raise ValueError(f"TGATE freezes cross-attention, but {_no_cross_attention_reason(adapter)}.")
    compute = np.ones((num_steps, len(blocks), len(adapter.component_names)), dtype=bool)
    compute[gate_step:, :, cross] = False
    return CacheSchedule.from_model(model, compute, name=f"tgate-{gate_step}")


def _no_cross_attention_reason(adapter) -> str:
    """Why ``adapter`` offers no cross-attention component, and what to use instead."""
    kinds = set(adapter.component_kinds().values())
    if "joint_attn" in kinds:
        return (f"{adapter.family!r} models have none: their text enters through joint attention. Use "
                "fora/delta_dit, a searched schedule or dynamic caching instead")
    if kinds == {"block"}:
        return (f"the {adapter.family!r} adapter schedules whole blocks (component 'block'), so the "
                "cross-attention layers inside them are not components of their own. Use deepcache, "
                "encoder_propagation, fora or dynamic caching instead")
    return (f"the {adapter.family!r} adapter declares no cross-attention component (components: "
            f"{', '.join(adapter.component_names)})")


def _unet_groups(model: Any, what: str):
    _, adapter, blocks = _layout(model)
    if adapter.family != "unet":
        raise ValueError(f"{what} is a UNet schedule; this model is a {adapter.family!r} transformer.")
    by_group: dict[str, list[int]] = {}
    for block in blocks:
        by_group.setdefault(block.group.name, []).append(block.index)
    return blocks, by_group


def deepcache(model: Any, num_steps: int, interval: int, depth: int = 1) -> CacheSchedule:
    _check_steps(num_steps)
    _check_interval(interval)
    blocks, groups = _unet_groups(model, "DeepCache")
    down, up = groups.get("down_blocks", []), groups.get("up_blocks", [])
    if not 1 <= depth < min(len(down), len(up)) + 1:
        raise ValueError(f"depth must be in [1, {min(len(down), len(up))}], got {depth}.")
    always = set(down[:depth]) | set(up[len(up) - depth:])
    compute = np.ones((num_steps, len(blocks), 1), dtype=bool)
    reuse = ~_key_steps(num_steps, interval)
    deep = [b.index for b in blocks if b.index not in always]
    compute[np.ix_(reuse, deep, [0])] = False
    return CacheSchedule.from_model(model, compute, name=f"deepcache-{interval}")


def encoder_propagation(
    model: Any, num_steps: int, key_steps: list[int] | tuple[int, ...] | None = None, interval: int = 2
) -> CacheSchedule:
    _check_steps(num_steps)
    blocks, groups = _unet_groups(model, "Encoder propagation")
    if key_steps is None:
        _check_interval(interval)
        keys = _key_steps(num_steps, interval)
    else:
        keys = np.zeros(num_steps, dtype=bool)
        for k in key_steps:
            if not isinstance(k, int) or not 0 <= k < num_steps:
                raise ValueError(f"key_steps must be step indices in [0, {num_steps}), got {k!r}.")
            keys[k] = True
        keys[0] = True
    encoder = groups.get("down_blocks", []) + groups.get("mid_block", [])
    compute = np.ones((num_steps, len(blocks), 1), dtype=bool)
    compute[np.ix_(~keys, encoder, [0])] = False
    return CacheSchedule.from_model(model, compute, name="encoder-propagation")


def random_schedule(model: Any, num_steps: int, compute_probability: float = 0.5, seed: int = 0) -> CacheSchedule:
    _check_steps(num_steps)
    if not 0.0 <= compute_probability <= 1.0:
        raise ValueError(f"compute_probability must be in [0, 1], got {compute_probability}.")
    _, adapter, blocks = _layout(model)
    rng = np.random.default_rng(seed)
    compute = rng.random((num_steps, len(blocks), len(adapter.component_names))) < compute_probability
    compute[0] = True
    return CacheSchedule.from_model(model, compute, name=f"random-{seed}")
