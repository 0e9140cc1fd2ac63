"""Bit allocation by integer linear programming (``scipy.optimize.milp``).

Given, for each layer ``l`` and each bit choice ``b`` (4, 8, or ``None`` = full precision), a
sensitivity ``S[l][b]`` (lower is better) and the layer's parameter count ``n_l``, choose one
``b`` per layer minimising ``Σ S[l][b]`` subject to a budget:

* average bits: ``Σ n_l · bits(b) ≤ average_bits · Σ n_l`` (``bits(None) = 16``), or
* memory: ``Σ bytes(l, b) ≤ memory_bytes`` with ``bytes(l, b)`` the layer's stored bytes
  (weights, 4-bit group scales and float32 channel scales).

Example:
    >>> sens = {"a": {4: 10.0, 8: 0.1}, "b": {4: 1.0, 8: 0.05}}
    >>> plan = allocate_bits(sens, {"a": 100, "b": 100}, average_bits=6)
    >>> plan.bits_for("a"), plan.bits_for("b")
    (8, 4)
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np

from .plan import QuantPlan
from .quantizers import check_bits

__all__ = ["allocate_bits", "layer_bytes"]


def layer_bytes(in_features: int, out_features: int, bits: int | None, group_size: int = 128) -> float:
    """Stored bytes of one linear's weight at ``bits`` (``None``: bf16)."""
    n, k = out_features, in_features
    if bits is None:
        return 2.0 * n * k
    if bits == 8:
        return n * k + 4.0 * n
    return n * math.ceil(k / 2) + n * math.ceil(k / group_size) + 4.0 * n


def allocate_bits(
    sensitivity: Mapping[str, Mapping[int | None, float]],
    sizes: Mapping[str, int],
    average_bits: float | None = None,
    memory_bytes: float | None = None,
    layer_costs: Mapping[str, Mapping[int | None, float]] | None = None,
    default: int | None = None,
) -> QuantPlan:
    """Minimum-sensitivity plan under an average-bits or memory budget.

    Args:
        sensitivity: ``{layer: {bits: score}}``; every layer must list the same choices.
        sizes: ``{layer: parameter count}``.
        average_bits: budget on parameter-weighted average weight bits.
        memory_bytes: budget on total stored bytes (needs ``layer_costs``: ``{layer: {bits: bytes}}``).
        default: bits of layers not in ``sensitivity`` (the returned plan's default).

    Returns:
        A :class:`QuantPlan` with one exact rule per layer.

    Raises:
        ValueError: no budget or two budgets, unknown bits, missing sizes, or an infeasible budget.
    """
    from scipy.optimize import Bounds, LinearConstraint, milp

    if (average_bits is None) == (memory_bytes is None):
        raise ValueError("Give exactly one budget: average_bits=... or memory_bytes=....")
    layers = list(sensitivity)
    if not layers:
        raise ValueError("allocate_bits needs at least one layer's sensitivity.")
    missing = [name for name in layers if name not in sizes]
    if missing:
        raise ValueError(f"sizes has no parameter count for {missing[:5]}.")
    if memory_bytes is not None and layer_costs is None:
        raise ValueError("memory_bytes needs layer_costs={layer: {bits: bytes}} (see layer_bytes).")
    check_bits(default, "allocate_bits default")
    variables = []  # (layer, bits)
    for name in layers:
        choices = list(sensitivity[name])
        if not choices:
            raise ValueError(f"Layer {name!r} has no bit choices.")
        for b in choices:
            check_bits(b, f"bit choice of {name!r}")
            variables.append((name, b))
    cost = np.array([float(sensitivity[n][b]) for n, b in variables])
    if memory_bytes is not None:
        weight = np.array([float(layer_costs[n][b]) for n, b in variables])
        limit = float(memory_bytes)
    else:
        weight = np.array([sizes[n] * (16 if b is None else b) for n, b in variables], dtype=float)
        limit = float(average_bits) * sum(sizes[n] for n in layers)
    one_hot = np.zeros((len(layers), len(variables)))
    index = {name: i for i, name in enumerate(layers)}
    for j, (n, _) in enumerate(variables):
        one_hot[index[n], j] = 1.0
    constraints = [LinearConstraint(one_hot, 1, 1), LinearConstraint(weight[None, :], -np.inf, limit)]
    result = milp(cost, constraints=constraints, integrality=np.ones(len(variables)), bounds=Bounds(0, 1))
    if not result.success:
        cheapest = sum(min(weight[j] for j, (n, _) in enumerate(variables) if n == name) for name in layers)
        unit = "bytes" if memory_bytes is not None else "bit·params"
        raise ValueError(
            f"Bit allocation is infeasible: the budget allows {limit:.4g} {unit} but the cheapest "
            f"choice of every layer needs {cheapest:.4g}. Raise the budget."
        )
    chosen = {variables[j][0]: variables[j][1] for j in np.flatnonzero(result.x > 0.5)}
    return QuantPlan(tuple((name, chosen[name]) for name in layers), default=default)
