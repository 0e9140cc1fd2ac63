"""The search space: a :class:`CacheSchedule`'s free bits as a flat boolean genome.

A schedule is ``compute[step, block, component]``. Step 0 always computes and entries for
components a block lacks are forced ``True``, so the genome holds only the free entries:
``(steps - 1) x (number of applicable (block, component) pairs)`` bits, in C order of
``compute[1:, applicable]``. :class:`ScheduleGenome` encodes and decodes;
:class:`ScheduleProblem` is the matching pymoo problem (binary variables, two objectives, no
``_evaluate``: the search evaluates candidates itself in ask/tell steps).

Example:
    >>> from diffusion_accel.caching import CacheSchedule
    >>> from diffusion_accel.testing import tiny_pipeline
    >>> pipe = tiny_pipeline("pixart-alpha")
    >>> genome = ScheduleGenome.for_model(pipe.transformer, num_steps=4)
    >>> genome.num_bits                      # 3 free steps x 2 blocks x 3 components
    18
    >>> fora = CacheSchedule.fora(pipe.transformer, 4, 2)
    >>> genome.decode(genome.encode(fora)) == fora
    True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ...models import get_model_adapter
from ..schedule import CacheSchedule, resolve_denoiser

__all__ = ["ScheduleGenome", "ScheduleProblem", "bits_to_str", "str_to_bits"]


def bits_to_str(bits: Any) -> str:
    """``(n,)`` bool array -> ``"0110..."`` (the genome's key in checkpoints and caches)."""
    return "".join("1" if b else "0" for b in np.asarray(bits, dtype=bool).ravel())


def str_to_bits(text: str) -> np.ndarray:
    """Inverse of :func:`bits_to_str`; raises ``ValueError`` for characters other than 0/1."""
    if not isinstance(text, str) or set(text) - {"0", "1"}:
        raise ValueError(f"A genome string holds only '0' and '1', got {text!r:.60}.")
    return np.frombuffer(text.encode(), dtype=np.uint8) == ord("1")


@dataclass(frozen=True)
class ScheduleGenome:
    """Maps between :class:`CacheSchedule` and its free bits.

    Attributes:
        family, components: the model family and component names (schedule axes).
        num_steps: schedule steps (step 0 is not in the genome).
        applicable: ``(blocks, components)`` bool mask of components that exist.
    """

    family: str
    components: tuple[str, ...]
    num_steps: int
    applicable: np.ndarray

    @classmethod
    def for_model(cls, model: Any, num_steps: int) -> ScheduleGenome:
        """The genome of ``model`` (a denoiser or a pipeline) for ``num_steps`` steps."""
        if not isinstance(num_steps, int) or isinstance(num_steps, bool) or num_steps < 2:
            raise ValueError(
                f"A schedule search needs at least 2 steps (step 0 always computes), got num_steps={num_steps!r}."
            )
        model = resolve_denoiser(model)
        adapter = get_model_adapter(model)
        applicable = np.array(adapter.applicable(model), dtype=bool)
        applicable.setflags(write=False)
        return cls(adapter.family, tuple(adapter.component_names), num_steps, applicable)

    @property
    def num_blocks(self) -> int:
        return int(self.applicable.shape[0])

    @property
    def num_bits(self) -> int:
        return (self.num_steps - 1) * int(self.applicable.sum())

    def signature(self) -> dict[str, Any]:
        """JSON description of the layout; two genomes are interchangeable iff signatures match."""
        return {
            "family": self.family,
            "components": list(self.components),
            "steps": self.num_steps,
            "blocks": self.num_blocks,
            "applicable": bits_to_str(self.applicable),
            "num_bits": self.num_bits,
        }

    def encode(self, schedule: CacheSchedule) -> np.ndarray:
        """``schedule`` -> ``(num_bits,)`` bool genome (raises ``ValueError`` on a layout mismatch)."""
        if (
            schedule.family != self.family
            or schedule.components != self.components
            or schedule.compute.shape != (self.num_steps, *self.applicable.shape)
        ):
            raise ValueError(
                f"Schedule {schedule.name!r} ({schedule.family}, shape {schedule.compute.shape}) does not fit "
                f"the search layout ({self.family}, shape {(self.num_steps, *self.applicable.shape)})."
            )
        return schedule.compute[1:][:, self.applicable].reshape(-1).copy()

    def decode(self, bits: Any, name: str = "searched") -> CacheSchedule:
        """``(num_bits,)`` genome -> :class:`CacheSchedule` (step 0 and inapplicable entries ``True``)."""
        bits = np.asarray(bits).astype(bool).reshape(-1)
        if bits.size != self.num_bits:
            raise ValueError(f"Genome has {bits.size} bits, the layout needs {self.num_bits}.")
        compute = np.ones((self.num_steps, *self.applicable.shape), dtype=bool)
        free = compute[1:]
        free[:, self.applicable] = bits.reshape(self.num_steps - 1, -1)
        return CacheSchedule(compute, self.components, self.family, applicable=self.applicable, name=name)


def ScheduleProblem(genome: ScheduleGenome):
    """A pymoo ``Problem`` of ``genome.num_bits`` binary variables and 2 objectives (cost, quality).

    Candidates are evaluated outside pymoo (ask/tell), so the problem has no ``_evaluate``.
    """
    from pymoo.core.problem import Problem

    return Problem(n_var=genome.num_bits, n_obj=2, xl=0, xu=1, vtype=bool)
