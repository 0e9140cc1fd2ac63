"""The joint genome: the genes of several search spaces (:mod:`.space`) side by side.

A :class:`JointGenome` is data: the parts in :data:`~.space.SPACES` order, each owning a slice of
the integer gene vector and decoding it into its own field of an
:class:`~diffusion_accel.AccelerationConfig`. The fields outside the genome come from ``base`` (what
the user had applied: a sampling schedule, or sparse attention when attention is not searched), so
a decoded candidate is a complete config.

Example:
    >>> from diffusion_accel.testing import tiny_pipeline
    >>> pipe = tiny_pipeline("pixart-alpha")
    >>> genome = JointGenome.build(pipe, ("cache", "quant"), num_steps=4)
    >>> genome.num_bits      # 18 schedule bits + 1 correction gene + 3 quant bit genes + 1 activation gene
    23
    >>> config = genome.decode(genome.off)   # the unaccelerated model: full schedule, no quantization
    >>> config.quant is None, bool(config.cache.schedule.compute.all())
    (True, True)
    >>> bool((genome.encode(config) == genome.off).all())
    True
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..caching.step_correction import supports_step_correction
from ..config import AccelerationConfig
from .problem import GeneProblem
from .space import SPACES, SpaceContext, SpacePart

__all__ = ["JointGenome"]


@dataclass(frozen=True)
class JointGenome:
    """Integer genes of ``parts`` (one :class:`~.space.SpacePart` per searched space), concatenated."""

    parts: tuple[SpacePart, ...]

    @classmethod
    def build(cls, pipe: Any, spaces: tuple[str, ...], num_steps: int, granularity: str = "component",
              reuse: str | tuple[str, ...] = "outputs", attention_methods: tuple[str, ...] = ("block_sparse",)) -> JointGenome:
        """The genome of ``spaces`` (names of :data:`~.space.SPACES`, in that order) for ``pipe``; ``reuse``:
        one choice of :mod:`.reuse`, or a tuple of several (the cache space's reuse gene). With the cache
        and another space, the cache space has an error-correction gene (:class:`~.space.CacheSpace`) when
        the pipeline's scheduler gives the data prediction the correction fits (epsilon, v or flow matching with
        one model call per step: :func:`~diffusion_accel.caching.step_correction.supports_step_correction`)."""
        correction = "cache" in spaces and len(spaces) > 1 and \
            supports_step_correction(getattr(pipe, "scheduler", None))
        ctx = SpaceContext(pipe, num_steps, granularity, reuse, tuple(attention_methods), correction)
        return cls(tuple(SPACES[name](ctx) for name in spaces))

    @property
    def spaces(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.parts)

    @property
    def fields(self) -> tuple[str, ...]:
        """The config fields the genome decides (the rest comes from the base config)."""
        return tuple(p.field for p in self.parts)

    @property
    def cardinalities(self) -> np.ndarray:
        return np.concatenate([np.asarray(p.cardinalities, dtype=np.int64) for p in self.parts])

    @property
    def num_bits(self) -> int:
        """Number of genes (named like :attr:`ScheduleGenome.num_bits` for the search's bookkeeping)."""
        return int(sum(len(p.cardinalities) for p in self.parts))

    @property
    def off(self) -> np.ndarray:
        """The genes of the unaccelerated model (every part off)."""
        return np.concatenate([p.off for p in self.parts])

    def part(self, name: str) -> SpacePart | None:
        return next((p for p in self.parts if p.name == name), None)

    def split(self, genes: Any) -> dict[str, np.ndarray]:
        """Space name -> its slice of ``genes``."""
        genes = np.asarray(genes).astype(np.int64).reshape(-1)
        if genes.size != self.num_bits:
            raise ValueError(f"Genome has {genes.size} genes, the layout ({'+'.join(self.spaces)}) needs {self.num_bits}.")
        out, start = {}, 0
        for p in self.parts:
            out[p.name] = genes[start:start + len(p.cardinalities)]
            start += len(p.cardinalities)
        return out

    def decode(self, genes: Any, base: AccelerationConfig | None = None, name: str = "searched") -> AccelerationConfig:
        """``genes`` -> the complete config: the parts' fields from the genes, the others from ``base``."""
        values = {}
        for p, g in zip(self.parts, self.split(genes).values()):
            values[p.field] = p.decode(g, name=name)
        return dataclasses.replace(base or AccelerationConfig(), **values)

    def encode(self, config: AccelerationConfig) -> np.ndarray:
        """A config's genes (its fields outside the genome are ignored); raises ``ValueError`` for a
        setting no gene expresses."""
        return np.concatenate([p.encode(getattr(config, p.field)) for p in self.parts])

    def canonical(self, genes: Any) -> np.ndarray:
        """The genes :meth:`encode` gives for ``decode(genes)`` (genes that do not matter -- the
        activation mode when nothing is quantized, the density when nothing is sparse -- set to 0)."""
        return self.encode(self.decode(genes))

    def signature(self) -> dict[str, Any]:
        """JSON description of the layout; two genomes are interchangeable iff signatures match."""
        return {"spaces": list(self.spaces), "num_bits": self.num_bits,
                "parts": {p.name: p.signature() for p in self.parts}}

    def problem(self):
        """The pymoo problem of these genes (:func:`~.problem.GeneProblem`)."""
        return GeneProblem(self.cardinalities)

    def seeds(self) -> list[tuple[str, np.ndarray]]:
        """Named seed genomes: every part off, each part's seeds alone (interleaved so every part is
        represented early), then the first seeds of all parts together."""
        off = self.split(self.off)
        own = [[(n, {**off, p.name: np.asarray(g)}) for n, g in p.seeds()] for p in self.parts]
        out = [("full", off)]
        for i in range(max((len(s) for s in own), default=0)):
            out += [s[i] for s in own if i < len(s)]
        firsts = [s[0] for s in own if s]
        if len(firsts) > 1:
            merged = dict(off)
            for _, genes in firsts:
                merged.update({k: v for k, v in genes.items() if not np.array_equal(v, off[k])})
            out.insert(1 + len(firsts), ("+".join(n for n, _ in firsts), merged))
        return [(n, np.concatenate([g[p.name] for p in self.parts])) for n, g in out]
