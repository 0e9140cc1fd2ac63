"""The search space: a :class:`CacheSchedule`'s free bits as a flat boolean genome.

A schedule is ``compute[step, block, component]``. Step 0 always computes and entries for
components a block lacks are forced ``True``, so the genome holds only the free entries. Two
granularities (:data:`GRANULARITIES`):

* ``"component"`` (ECAD's): ``(steps - 1) x (number of applicable (block, component) pairs)`` bits,
  in C order of ``compute[1:, applicable]`` -- every component of every block at every step.
* ``"block"``: ``(steps - 1) x blocks`` bits -- a block computes or reuses all its components
  together (Δ-DiT's and FBCache's unit, which block-residual reuse serves exactly). A much smaller
  space: fewer evaluations to search it and less room to fit the calibration prompts' noise. :class:`ScheduleGenome` encodes and decodes;
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
    >>> ScheduleGenome.for_model(pipe.transformer, num_steps=4, granularity="block").num_bits  # 3 x 2 blocks
    6
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..models import get_model_adapter
from ..caching.schedule import CacheSchedule, resolve_denoiser

__all__ = ["GRANULARITIES", "GeneProblem", "ScheduleGenome", "ScheduleProblem", "bits_to_str", "genes_to_str",
           "str_to_bits", "str_to_genes"]

#: What one gene switches: one component of one block at one step, or a whole block at one step.
GRANULARITIES = ("component", "block")


def bits_to_str(bits: Any) -> str:
    """``(n,)`` bool array -> ``"0110..."`` (the genome's key in checkpoints and caches)."""
    return "".join("1" if b else "0" for b in np.asarray(bits, dtype=bool).ravel())


def str_to_bits(text: str) -> np.ndarray:
    """Inverse of :func:`bits_to_str`; raises ``ValueError`` for characters other than 0/1."""
    if not isinstance(text, str) or set(text) - {"0", "1"}:
        raise ValueError(f"A genome string holds only '0' and '1', got {text!r:.60}.")
    return np.frombuffer(text.encode(), dtype=np.uint8) == ord("1")


def genes_to_str(genes: Any) -> str:
    """``(n,)`` genes (bool, or integers 0-9) -> ``"0120..."``; a bool genome gives :func:`bits_to_str`'s string."""
    genes = np.asarray(genes).ravel()
    if genes.dtype == bool:
        return bits_to_str(genes)
    if genes.size and (genes.min() < 0 or genes.max() > 9):
        raise ValueError(f"A gene string holds one digit per gene (values 0-9), got values {genes.min()}..{genes.max()}.")
    return "".join(str(int(g)) for g in genes)


def str_to_genes(text: str) -> np.ndarray:
    """Inverse of :func:`genes_to_str` for integer genomes: ``"0120"`` -> ``array([0, 1, 2, 0])``."""
    if not isinstance(text, str) or (text and not (text.isascii() and text.isdigit())):
        raise ValueError(f"A genome string holds only digits, got {text!r:.60}.")
    return np.frombuffer(text.encode(), dtype=np.uint8).astype(np.int64) - ord("0")


@dataclass(frozen=True)
class ScheduleGenome:
    """Maps between :class:`CacheSchedule` and its free bits.

    Attributes:
        family, components: the model family and component names (schedule axes).
        num_steps: schedule steps (step 0 is not in the genome).
        applicable: ``(blocks, components)`` bool mask of components that exist.
        granularity: one of :data:`GRANULARITIES`.
    """

    family: str
    components: tuple[str, ...]
    num_steps: int
    applicable: np.ndarray
    granularity: str = "component"

    def __post_init__(self) -> None:
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {list(GRANULARITIES)}, got {self.granularity!r}.")

    @classmethod
    def for_model(cls, model: Any, num_steps: int, granularity: str = "component") -> ScheduleGenome:
        """The genome of ``model`` (a denoiser or a pipeline) for ``num_steps`` steps."""
        if not isinstance(num_steps, int) or isinstance(num_steps, bool) or num_steps < 2:
            raise ValueError(
                f"A schedule search needs at least 2 steps (step 0 always computes), got num_steps={num_steps!r}."
            )
        model = resolve_denoiser(model)
        adapter = get_model_adapter(model)
        applicable = np.array(adapter.applicable(model), dtype=bool)
        applicable.setflags(write=False)
        return cls(adapter.family, tuple(adapter.component_names), num_steps, applicable, granularity)

    @property
    def num_blocks(self) -> int:
        return int(self.applicable.shape[0])

    @property
    def num_bits(self) -> int:
        per_step = self.num_blocks if self.granularity == "block" else int(self.applicable.sum())
        return (self.num_steps - 1) * per_step

    def signature(self) -> dict[str, Any]:
        """JSON description of the layout; two genomes are interchangeable iff signatures match."""
        return {
            "family": self.family,
            "components": list(self.components),
            "steps": self.num_steps,
            "blocks": self.num_blocks,
            "applicable": bits_to_str(self.applicable),
            "granularity": self.granularity,
            "num_bits": self.num_bits,
        }

    def encode(self, schedule: CacheSchedule, project: bool = False) -> np.ndarray:
        """``schedule`` -> ``(num_bits,)`` bool genome.

        With ``granularity="block"`` a block whose components disagree at a step (e.g. TGATE
        reusing only cross-attention) has no exact gene: ``project=True`` makes it compute (the
        nearest block schedule that skips nothing the given one computes), otherwise it is an error.

        Raises:
            ValueError: the schedule's layout does not fit, or (block granularity, no ``project``)
                a block's components disagree.
        """
        if (
            schedule.family != self.family
            or schedule.components != self.components
            or schedule.compute.shape != (self.num_steps, *self.applicable.shape)
        ):
            raise ValueError(
                f"Schedule {schedule.name!r} ({schedule.family}, shape {schedule.compute.shape}) does not fit "
                f"the search layout ({self.family}, shape {(self.num_steps, *self.applicable.shape)})."
            )
        if self.granularity == "component":
            return schedule.compute[1:][:, self.applicable].reshape(-1).copy()
        free = schedule.compute[1:]
        any_computes = (free & self.applicable).any(axis=2)
        all_compute = (free | ~self.applicable).all(axis=2)
        if not project and not np.array_equal(any_computes, all_compute):
            step, block = np.argwhere(any_computes != all_compute)[0]
            raise ValueError(
                f"Schedule {schedule.name!r} reuses only some components of block {block} at step {step + 1}: "
                "a block-granularity genome switches whole blocks. Use granularity='component', or "
                "encode(..., project=True) to compute such blocks."
            )
        return any_computes.reshape(-1).copy()

    def decode(self, bits: Any, name: str = "searched") -> CacheSchedule:
        """``(num_bits,)`` genome -> :class:`CacheSchedule` (step 0 and inapplicable entries ``True``)."""
        bits = np.asarray(bits).astype(bool).reshape(-1)
        if bits.size != self.num_bits:
            raise ValueError(f"Genome has {bits.size} bits, the layout needs {self.num_bits}.")
        compute = np.ones((self.num_steps, *self.applicable.shape), dtype=bool)
        free = compute[1:]
        if self.granularity == "block":
            free[:] = bits.reshape(self.num_steps - 1, self.num_blocks, 1) | ~self.applicable
        else:
            free[:, self.applicable] = bits.reshape(self.num_steps - 1, -1)
        return CacheSchedule(compute, self.components, self.family, applicable=self.applicable, name=name)


def ScheduleProblem(genome: ScheduleGenome):
    """A pymoo ``Problem`` of ``genome.num_bits`` binary variables and 2 objectives (cost, quality).

    Candidates are evaluated outside pymoo (ask/tell), so the problem has no ``_evaluate``.
    """
    from pymoo.core.problem import Problem

    return Problem(n_var=genome.num_bits, n_obj=2, xl=0, xu=1, vtype=bool)


def GeneProblem(cardinalities: Any):
    """A pymoo ``Problem`` of integer genes, gene ``i`` in ``0 .. cardinalities[i] - 1``, 2 objectives
    (the joint search space, :mod:`.genome`). Evaluated outside pymoo, like :func:`ScheduleProblem`."""
    from pymoo.core.problem import Problem

    upper = np.asarray(cardinalities, dtype=int) - 1
    if upper.ndim != 1 or not len(upper) or (upper < 1).any() or (upper > 9).any():
        raise ValueError(f"Every gene needs 2 to 10 values, got cardinalities {np.asarray(cardinalities).tolist()}.")
    return Problem(n_var=len(upper), n_obj=2, xl=np.zeros_like(upper), xu=upper, vtype=int)
