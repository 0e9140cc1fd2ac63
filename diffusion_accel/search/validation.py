"""Choosing the picks on validation prompts the search never optimised on.

A search evaluates hundreds of schedules on the same calibration prompts and keeps the best:
the best at a speed-up is partly the one whose errors happened to be small on *those* prompts
(the winner's curse), so its calibration quality overstates what it does on other prompts --
on the bundled model the frontier's picks lost 1.5-3 dB from calibration to held-out prompts
while the hand-made schedules did not. Validation guards the choice: per target speed-up, the
``top`` candidates with the best calibration quality among those reaching the target are scored
again on separate validation prompts (their own seeds), and the pick is the best there.

* :func:`split_prompts` -- calibration and validation prompts from one source, disjoint.
* :func:`candidates_to_validate` -- which schedules to score again, per target.
* :func:`validated_entries` -- frontier-style entries with ``validation_quality`` /
  ``validation_objective`` and the ``targets`` they compete for; :func:`.frontier.pick_entry`
  ranks them by validation quality at those targets.

Example:
    >>> from diffusion_accel.eval.prompts import load_prompts
    >>> calibration, validation = split_prompts(load_prompts(["a", "b", "c", "d"]), 1, seed=0)
    >>> len(calibration), len(validation), {p.text for p in calibration} & {p.text for p in validation}
    (3, 1, set())
    >>> archive = {"k1": {"cost": 0.5, "objective": -30.0}, "k2": {"cost": 0.4, "objective": -28.0},
    ...            "k3": {"cost": 0.9, "objective": -40.0}}
    >>> candidates_to_validate(archive, [2.0], top=1)
    {'k1': [2.0]}
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["candidates_to_validate", "split_prompts", "validated_entries"]


def split_prompts(prompts: Sequence[Any], num_validation: int, seed: int) -> tuple[list[Any], list[Any]]:
    """``(calibration, validation)``: ``num_validation`` prompts drawn (seeded) for validation, source order kept.

    Raises:
        ValueError: fewer than ``num_validation + 1`` prompts (calibration needs at least one).
    """
    if not isinstance(num_validation, int) or isinstance(num_validation, bool) or num_validation < 0:
        raise ValueError(f"validation_prompts must be an integer >= 0, got {num_validation!r}.")
    if num_validation == 0:
        return list(prompts), []
    if len(prompts) <= num_validation:
        raise ValueError(
            f"The prompt source holds {len(prompts)} prompts; {num_validation} validation prompts leave none "
            "for calibration. Give more prompts or fewer validation prompts."
        )
    held = set(random.Random(f"validation-{seed}").sample(range(len(prompts)), num_validation))
    return ([p for i, p in enumerate(prompts) if i not in held], [p for i, p in enumerate(prompts) if i in held])


def candidates_to_validate(archive: dict[str, dict[str, Any]], targets: Sequence[float],
                           top: int) -> dict[str, list[float]]:
    """Genome key -> the targets it competes for: per target, the ``top`` evaluated schedules with the
    best calibration objective whose speed-up (``1 / cost``) reaches it. Keys in first-seen order."""
    chosen: dict[str, list[float]] = {}
    for target in targets:
        fast = [k for k, r in archive.items() if 1.0 / r["cost"] >= target * (1 - 1e-9)]
        for key in sorted(fast, key=lambda k: (archive[k]["objective"], archive[k]["cost"], k))[:top]:
            chosen.setdefault(key, []).append(float(target))
    return chosen


def validated_entries(chosen: dict[str, list[float]], entries: dict[str, dict[str, Any]],
                      evaluate: Callable[[list[str]], list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Score the ``chosen`` schedules with ``evaluate`` (keys -> evaluation dicts with ``quality`` and
    ``objective``) and return their frontier-style ``entries`` extended with ``validation_quality``,
    ``validation_objective`` and ``targets``, fastest last."""
    keys = list(chosen)
    results = evaluate(keys)
    out = [{**entries[k], "validation_quality": r["quality"], "validation_objective": r["objective"],
            "targets": chosen[k]} for k, r in zip(keys, results)]
    return sorted(out, key=lambda e: (e["speedup"], e["validation_objective"]))
