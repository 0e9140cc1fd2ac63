"""`BottleneckSamplingConfig`: a high-low-high resolution schedule over the denoising steps.

Bottleneck Sampling (Tian et al. 2025) runs the first steps at full resolution, the middle ones at
a lower one (fewer tokens: cheaper denoiser calls) and the last ones at full resolution again. At
each resolution change the current clean-sample estimate is resized and re-noised to the next
stage's starting noise level; each stage may use its own flow-matching shift.

Example:
    >>> cfg = BottleneckSamplingConfig(stages=((0.25, 1), (0.5, 2), (0.25, 1)), renoise=0.3)
    >>> BottleneckSamplingConfig.from_dict(cfg.to_dict()) == cfg
    True
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..techniques import TechniqueConfig

__all__ = ["BottleneckSamplingConfig", "NOISE_SOURCES"]

#: Values of :attr:`BottleneckSamplingConfig.noise`.
NOISE_SOURCES = ("fresh", "initial")


@dataclass(frozen=True)
class BottleneckSamplingConfig(TechniqueConfig):
    """Run the denoising steps in resolution stages.

    The defaults are the best setting measured on the bundled model (``docs/sampling.md``).

    Args:
        stages: ``(fraction of the steps, downscale factor)`` per stage, in order. Fractions sum to
            1; factors are integers >= 1 (2: half the height and width, a quarter of the tokens).
            The first and last stages are at full resolution (factor 1). Consecutive stages with the
            same factor are one stage (a boundary without a resolution change is no transition), so
            ``((1.0, 1),)`` or ``((0.3, 1), (0.4, 1), (0.3, 1))`` is plain sampling. A stage (after
            merging) gets at least one step.
        renoise: how far back each stage after the first restarts: its first timestep sits this
            fraction of the way from the timestep plain sampling would be at (0: no extra noise) to
            the first timestep of the schedule (1: pure noise). One value for every resolution change,
            or one per stage boundary (``len(stages) - 1`` values; 0 where the factor does not change).
        shifts: ``None`` (every stage uses the scheduler's own schedule) or one value per stage:
            the flow-matching shift of that stage's timestep schedule (``None`` entries keep the
            scheduler's). Only flow-matching schedulers have a shift.
        noise: the noise added at a transition: ``"fresh"`` (Gaussian noise drawn from a generator
            seeded with ``seed`` at each pipeline call) or ``"initial"`` (the call's initial noise,
            subsampled for a smaller stage: the point of a straight flow's path at that noise level).
        seed: seed of the ``"fresh"`` noise.
    """

    field_name = "sampling"

    stages: tuple[tuple[float, int], ...] = ((0.3, 1), (0.4, 2), (0.3, 1))
    renoise: float | tuple[float, ...] = 0.5
    shifts: tuple[float | None, ...] | None = None
    noise: str = "initial"
    seed: int = 0

    def __post_init__(self) -> None:
        _check_stages(self.stages)
        object.__setattr__(self, "stages", tuple((float(f), int(d)) for f, d in self.stages))
        _check_renoise(self.renoise, len(self.stages))
        renoise = float(self.renoise) if isinstance(self.renoise, (int, float)) else tuple(map(float, self.renoise))
        object.__setattr__(self, "renoise", renoise)
        _check_shifts(self.shifts, len(self.stages))
        if self.shifts is not None:
            object.__setattr__(self, "shifts", tuple(None if v is None else float(v) for v in self.shifts))
        self._check_merged_boundaries()
        if self.noise not in NOISE_SOURCES:
            raise ValueError(f"noise must be one of {list(NOISE_SOURCES)}, got {self.noise!r}.")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {self.seed!r}.")

    def renoise_at(self, transition: int) -> float:
        """The re-noise strength of transition ``transition`` (0: from stage 0 to stage 1)."""
        return float(self.renoise if isinstance(self.renoise, (int, float)) else self.renoise[transition])

    def shift_of(self, stage: int) -> float | None:
        """The shift of stage ``stage`` (``None``: the scheduler's own)."""
        return None if self.shifts is None else self.shifts[stage]

    def resolution_stages(self) -> list[tuple[float, int, float | None, float]]:
        """The stages after merging consecutive equal factors, as ``(fraction, factor, shift, renoise)``
        (``renoise``: of the transition into the stage; 0 for the first)."""
        out: list[tuple[float, int, float | None, float]] = []
        for i, (fraction, factor) in enumerate(self.stages):
            if out and out[-1][1] == factor:
                out[-1] = (out[-1][0] + fraction, *out[-1][1:])
            else:
                out.append((fraction, factor, self.shift_of(i), 0.0 if i == 0 else self.renoise_at(i - 1)))
        return out

    def is_identity(self) -> bool:
        """True when the config changes nothing: one full-resolution stage with the scheduler's shift."""
        stages = self.resolution_stages()
        return len(stages) == 1 and stages[0][2] is None

    def _check_merged_boundaries(self) -> None:
        for i in range(1, len(self.stages)):
            if self.stages[i][1] != self.stages[i - 1][1]:
                continue
            if self.shift_of(i) != self.shift_of(i - 1):
                raise ValueError(
                    f"stages[{i - 1}] and stages[{i}] have the same factor, so they are one stage, but different "
                    f"shifts ({self.shift_of(i - 1)} and {self.shift_of(i)}); give them the same shift."
                )
            if isinstance(self.renoise, tuple) and self.renoise[i - 1] != 0:
                raise ValueError(
                    f"renoise[{i - 1}] = {self.renoise[i - 1]} is for the boundary between stages[{i - 1}] and "
                    f"stages[{i}], which has no resolution change (no transition); set it to 0."
                )


_EXAMPLE = "e.g. stages=((0.25, 1), (0.5, 2), (0.25, 1))"


def _check_stages(stages) -> None:
    if not isinstance(stages, (tuple, list)) or not stages:
        raise ValueError(f"stages must be a non-empty list of (fraction, factor) pairs, {_EXAMPLE}; got {stages!r}.")
    for i, stage in enumerate(stages):
        if not isinstance(stage, (tuple, list)) or len(stage) != 2:
            raise ValueError(f"stages[{i}] must be a (fraction, factor) pair, {_EXAMPLE}; got {stage!r}.")
        fraction, factor = stage
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
            raise ValueError(f"stages[{i}]: the fraction of the steps must be in (0, 1], got {fraction!r}.")
        if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
            raise ValueError(f"stages[{i}]: the downscale factor must be an integer >= 1, got {factor!r}.")
    total = sum(float(f) for f, _ in stages)
    if not math.isclose(total, 1.0, abs_tol=1e-6):
        raise ValueError(f"The stage fractions must sum to 1, got {total:g}; rescale them, {_EXAMPLE}.")
    if stages[0][1] != 1 or stages[-1][1] != 1:
        raise ValueError(
            "The first and last stages must be at full resolution (factor 1): the pipeline allocates "
            f"full-resolution noise and decodes full-resolution latents; {_EXAMPLE}."
        )


def _check_renoise(renoise, num_stages: int) -> None:
    if isinstance(renoise, (int, float)) and not isinstance(renoise, bool):
        values = [renoise]
    elif isinstance(renoise, (tuple, list)):
        if len(renoise) != num_stages - 1:
            raise ValueError(
                f"renoise has {len(renoise)} values but the {num_stages} stages have {num_stages - 1} "
                "transitions; give one value per transition or a single number for all."
            )
        values = renoise
    else:
        raise ValueError(f"renoise must be a number in [0, 1] or a list of them, got {renoise!r}.")
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise ValueError(f"renoise values must be numbers in [0, 1], got {value!r}.")


def _check_shifts(shifts, num_stages: int) -> None:
    if shifts is None:
        return
    if not isinstance(shifts, (tuple, list)) or len(shifts) != num_stages:
        raise ValueError(
            f"shifts must be None or one value (a number > 0 or None) per stage ({num_stages}), got {shifts!r}."
        )
    for value in shifts:
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(f"shifts values must be numbers > 0 or None, got {value!r}.")
