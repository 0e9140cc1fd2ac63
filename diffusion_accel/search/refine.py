"""Target refinement: a surrogate-guided local search at each pick speed-up, after NSGA-II.

NSGA-II spreads its population over the whole cost axis, so at one speed-up the frontier can
have a hole: on the bundled model, nothing lay between FORA-2 at 1.95x and a 2.41x schedule, so
the best schedule reaching 2x was far worse than FORA-2 plus two more reused blocks would be.
Refinement spends ``rounds`` more rounds of evaluations on the targets (``pick_speedups``). For a
target ``t`` (MAC budget ``1 / t`` of the full loop), one round:

1. **Parents**: the best evaluated schedules (calibration objective) that reach ``t``, and the
   best that *almost* reach it (speed-up down to ``t / (1 + band)``).
2. **Children**: a parent with 0-2 random genes flipped, then **repaired to the budget
   boundary**: while it costs more than the budget, reuse the computed gene that saves MACs at
   the least predicted harm; then recompute reused genes, most predicted harm first, while the
   budget still holds. A child thus spends its whole budget (quality rises with compute).
3. **Surrogate**: predicted harm comes from a ridge regression of the calibration objective on
   which genes a schedule reuses, fitted on every schedule evaluated so far, weighted towards
   costs near the budget, negative harms set to 0 (reusing more never helps in expectation).
   Noise on the harms (a fresh draw per child) diversifies the repairs.
   The surrogate only compares children of the same parent that change as many genes (by the
   predicted harm of the genes they changed: a linear model is trusted for small steps, not
   across the space): a parent's children are ranked smallest move first, then by prediction.
   Evaluation slots go round-robin over the parents, best measured parent first, each time to
   that parent's next child not yet evaluated.

Costs here are MAC fractions from the caching engine's profile (:func:`gene_savings`), also when
the search's cost objective is measured latency (then they are its proxy). Candidates depend
only on the archive and ``(seed, round)``, so a resumed or multi-process search refines exactly
as an uninterrupted one.

Example:
    >>> import numpy as np
    >>> savings = np.full(6, 0.1)                      # 6 genes, each saves 10 % of the MACs
    >>> archive = {"111111": {"objective": 0.0}, "010101": {"objective": 3.0}}
    >>> kids = refine_candidates(archive, savings, [2.0], count=2, rng=np.random.default_rng(0))
    >>> all(1.0 - savings[~k].sum() <= 0.5 + 1e-9 for k in kids)   # every child reaches 2x
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .problem import ScheduleGenome, bits_to_str, str_to_bits

__all__ = ["fit_surrogate", "gene_savings", "refine_candidates", "repair", "schedule_cost"]

#: children drawn per requested candidate, before the surrogate keeps the best.
POOL_FACTOR = 16


def gene_savings(genome: ScheduleGenome, profile: Any) -> np.ndarray:
    """``(num_bits,)`` fraction of the full loop's MACs that reusing each gene saves.

    ``profile`` is a :class:`~diffusion_accel.cost.MacProfile` of the searched model, so
    ``1 - savings[~bits].sum()`` is the cost (``1 / macs_ratio``) of the genome ``bits``.
    """
    per_step = np.asarray(profile.component_macs, dtype=float).sum(axis=0)  # (blocks, components)
    if per_step.shape != genome.applicable.shape:
        raise ValueError(f"MAC profile of shape {per_step.shape} does not match the genome's blocks x "
                         f"components {genome.applicable.shape}.")
    full = profile.full_macs(genome.num_steps)
    if genome.granularity == "block":
        step = (per_step * genome.applicable).sum(axis=1)
    else:
        step = per_step[genome.applicable]
    return np.tile(step / full, genome.num_steps - 1)


def schedule_cost(bits: np.ndarray, savings: np.ndarray) -> float:
    """MAC cost (fraction of full compute) of the genome ``bits`` given :func:`gene_savings`."""
    return float(1.0 - savings[~np.asarray(bits, dtype=bool)].sum())


def fit_surrogate(X: np.ndarray, y: np.ndarray, weights: np.ndarray | None = None,
                  ridge: float = 0.1) -> tuple[float, np.ndarray]:
    """Weighted ridge regression ``y ~ b + reused @ w`` on genomes ``X`` ``(n, bits)`` bool.

    ``w[j]`` is the predicted change of the (minimised) objective when gene ``j`` is reused; the
    ridge penalty is ``ridge`` times the mean weighted variance of a gene. Returns ``(b, w)``.
    """
    R = ~np.asarray(X, dtype=bool)
    y = np.asarray(y, dtype=float)
    sw = np.ones(len(y)) if weights is None else np.asarray(weights, dtype=float)
    sw = sw / sw.sum()
    mean_r, mean_y = sw @ R, float(sw @ y)
    Rc, yc = R - mean_r, y - mean_y
    gram = Rc.T @ (Rc * sw[:, None])
    penalty = ridge * max(float(np.trace(gram)) / max(gram.shape[0], 1), 1e-12)
    w = np.linalg.solve(gram + penalty * np.eye(gram.shape[0]), Rc.T @ (yc * sw))
    return mean_y - float(mean_r @ w), w


def repair(bits: np.ndarray, savings: np.ndarray, budget: float, harm: np.ndarray) -> np.ndarray:
    """``bits`` changed as little as the greedy allows to cost at most ``budget``, then filled up to it.

    Over budget: reuse computed genes in order of ``harm / saving`` (least first) until the cost
    fits. Then recompute reused genes in order of ``harm / saving`` (most first) that still fit.
    """
    bits = np.asarray(bits, dtype=bool).copy()
    ratio = harm / np.maximum(savings, 1e-30)
    excess = schedule_cost(bits, savings) - budget
    if excess > 1e-12:
        computed = np.flatnonzero(bits)
        order = computed[np.argsort(ratio[computed], kind="stable")]
        take = np.searchsorted(np.cumsum(savings[order]), excess - 1e-12) + 1
        bits[order[:take]] = False
    slack = budget - schedule_cost(bits, savings)
    reused = np.flatnonzero(~bits)
    for j in reused[np.argsort(-ratio[reused], kind="stable")]:
        if savings[j] <= slack + 1e-12:
            bits[j] = True
            slack -= savings[j]
    return bits


def refine_candidates(archive: dict[str, dict[str, Any]], savings: np.ndarray, targets: Sequence[float],
                      count: int, rng: np.random.Generator, parents: int = 4, band: float = 0.25,
                      noise: float = 0.5) -> list[np.ndarray]:
    """Up to ``count`` new genomes (not in ``archive``), split evenly over ``targets``, each reaching its
    target.

    Args:
        archive: genome key -> record with a minimised ``"objective"`` (every evaluated schedule).
        savings: :func:`gene_savings`.
        targets: speed-ups to refine at.
        count: candidates of the round.
        rng: the round's random generator (seed it from the search seed and round).
        parents: parents per target from each side of the budget.
        band: near parents are at most ``1 + band`` times over the budget.
        noise: standard deviation of the harm noise, relative to the spread of the fitted harms.
    """
    keys = list(archive)
    X = np.stack([str_to_bits(k) for k in keys])
    y = np.array([float(archive[k]["objective"]) for k in keys])
    costs = 1.0 - (~X) @ savings  # schedule_cost of every row
    fit_y = np.minimum(y, np.quantile(y, 0.9))  # the worst schedules must not dominate the fit
    per_target = _split(count, len(targets))
    seen = set(keys)
    out: list[np.ndarray] = []
    for target, n in zip(targets, per_target):
        budget = 1.0 / float(target)
        near = np.exp(-((np.log(costs) - np.log(budget)) / 0.35) ** 2) + 0.05
        # Reusing never helps in expectation (less compute, further from the full model): fitted
        # negative harms are noise, and would make children that reuse more look better.
        w = np.maximum(fit_surrogate(X, fit_y, near)[1], 0.0)
        order = np.lexsort((costs, y))
        reach = [i for i in order if costs[i] <= budget + 1e-12][:parents]
        almost = [i for i in order if budget < costs[i] <= budget * (1 + band)][:parents]
        pool = sorted(reach + almost, key=lambda i: (y[i], costs[i]))  # best measured first
        if not pool or n == 0:
            continue
        scale = noise * float(np.std(w)) if w.size > 1 else 0.0
        children: list[dict[str, tuple[int, float, np.ndarray]]] = [{} for _ in pool]  # (moved, change, bits)
        for draw in range(n * POOL_FACTOR):
            slot = draw % len(pool)
            parent = X[pool[slot]]
            child = parent.copy()
            flips = rng.choice(child.size, size=min(int(rng.integers(0, 3)), child.size), replace=False)
            child[flips] = ~child[flips]
            child = repair(child, savings, budget, w + rng.normal(0.0, scale, size=w.size))
            key = bits_to_str(child)
            if key not in seen:
                change = float(w[parent & ~child].sum() - w[~parent & child].sum())
                children[slot][key] = (int((parent != child).sum()), change, child)
        ranked = [sorted(c.items(), key=lambda kv: (kv[1][0], kv[1][1], kv[0])) for c in children]
        taken = 0
        for rank in range(max(len(r) for r in ranked)):
            for options in ranked:
                if taken < n and rank < len(options) and options[rank][0] not in seen:
                    seen.add(options[rank][0])
                    out.append(options[rank][1][2])
                    taken += 1
    return out


def _split(count: int, parts: int) -> list[int]:
    base, extra = divmod(count, max(parts, 1))
    return [base + (i < extra) for i in range(parts)]
