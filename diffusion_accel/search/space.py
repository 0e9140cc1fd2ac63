"""Search spaces: the parts of an :class:`~diffusion_accel.AccelerationConfig` a search varies, as genes.

A search space is named on the command line (``--space cache,quant,attention``); each name is a
registered :class:`SpacePart` factory (:data:`SPACES`) that lays out its genes for one model and
decodes them into its own field of the config. :class:`~diffusion_accel.search.genome.JointGenome`
concatenates the parts; nothing else knows which spaces exist.

* ``cache`` -- the free bits of a cache schedule (:class:`~.problem.ScheduleGenome`), decoded to a
  :class:`~diffusion_accel.caching.StaticCacheConfig`. Genes 0/1 (1 = compute); with several reuse
  choices (:mod:`.reuse`) one more gene picks the reuse mode and forecast order.
* ``quant`` -- weight bits per block of the denoiser plus one gene for every linear outside the
  blocks (embeddings, output projection), each one of :data:`QUANT_BITS` ``(16, 8, 4)``; and one
  activation gene (:data:`ACT_MODES`: 8-bit dynamic activations, or weight-only). Decoded to a
  :class:`~diffusion_accel.quant.QuantConfig` whose plan holds one ``re:`` rule per block that differs
  from the rest; ``None`` when every gene is 16 bits.
* ``attention`` -- a method gene (when more than one of ``methods``), a density gene
  (:data:`ATTENTION_DENSITIES`) and one gene per block (dense or sparse). Decoded to a
  :class:`~diffusion_accel.sparse_attn.SparseAttentionConfig` with ``blocks`` = the sparse blocks;
  ``None`` when no block is sparse. One config holds one density, so density and method are shared
  by the sparse blocks; which blocks are sparse is per block.

Gene value 0 is always "this technique off" (compute / 16 bits / dense), so the all-zero genome of
``quant`` and ``attention`` (and the all-one schedule) is the unaccelerated model.

Example:
    >>> from diffusion_accel.testing import tiny_pipeline
    >>> pipe = tiny_pipeline("pixart-alpha")
    >>> part = SPACES["quant"](SpaceContext(pipe, num_steps=4))
    >>> part.cardinalities               # 2 blocks + the rest at {16, 8, 4}, then the activation mode
    (3, 3, 3, 2)
    >>> part.decode(part.encode(part.decode([1, 1, 1, 0]))).weight_bits   # W8A8 everywhere
    8
    >>> parse_space("cache,quant")
    ('cache', 'quant')
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..caching.schedule import resolve_denoiser
from ..caching.correction import CorrectedCacheConfig, static_part
from ..caching.static import StaticCacheConfig
from ..models import get_model_adapter
from ..quant import QuantConfig, QuantPlan
from ..sparse_attn import SparseAttentionConfig
from .problem import ScheduleGenome
from .reuse import reuse_choices, reuse_kwargs, reuse_token
from .seeding import heuristic_schedules

__all__ = ["ACT_MODES", "ATTENTION_DENSITIES", "QUANT_BITS", "SPACES", "SpaceContext", "SpacePart", "parse_space",
           "register_space"]

#: weight bits of a quant gene's values 0, 1, 2 (16 = full precision).
QUANT_BITS = (16, 8, 4)
#: activation gene values: 8-bit dynamic per-token activations (W8A8 / W4A8), or weight-only.
ACT_MODES = ("a8-dynamic", "weight-only")
#: sparse-attention densities of the density gene.
ATTENTION_DENSITIES = (0.5, 0.25, 0.125)


@dataclass(frozen=True)
class SpaceContext:
    """What a space needs to lay out its genes: the pipeline, the schedules' step count, the cache
    genome's granularity and reuse choice (or a tuple of choices: a reuse gene, :mod:`.reuse`), the
    attention methods to choose from, and whether the cache space has an error-correction gene."""

    pipe: Any
    num_steps: int
    granularity: str = "component"
    reuse: str | tuple[str, ...] = "outputs"
    attention_methods: tuple[str, ...] = ("block_sparse",)
    correction: bool = False


class SpacePart:
    """One space's genes. Subclasses set ``name`` (the space), ``field`` (the config field it fills),
    ``cardinalities`` (values per gene) and implement :meth:`decode`, :meth:`encode`, :meth:`signature`
    and :meth:`seeds`."""

    name = ""
    field = ""
    cardinalities: tuple[int, ...] = ()

    @property
    def off(self) -> np.ndarray:
        """The genes of "technique off" (the unaccelerated model)."""
        return np.zeros(len(self.cardinalities), dtype=np.int64)

    def decode(self, genes: Any, name: str = "searched") -> Any:
        """``genes`` -> this part's technique config (``None``: technique off); ``name`` names a schedule."""
        raise NotImplementedError

    def encode(self, config: Any) -> np.ndarray:
        raise NotImplementedError

    def signature(self) -> dict[str, Any]:
        raise NotImplementedError

    def seeds(self) -> list[tuple[str, np.ndarray]]:
        """Named hand-made settings of this part for the initial population (most useful first)."""
        return []

    def _genes(self, genes: Any) -> np.ndarray:
        genes = np.asarray(genes).astype(np.int64).reshape(-1)
        card = np.asarray(self.cardinalities)
        if genes.size != card.size or (genes < 0).any() or (genes >= card).any():
            raise ValueError(f"The {self.name} genes must be {card.size} values below {card.tolist()}, "
                             f"got {genes.tolist()}.")
        return genes


class CacheSpace(SpacePart):
    """The free bits of a cache schedule (see :class:`~.problem.ScheduleGenome`); 1 = compute. When
    ``ctx.reuse`` holds several choices (:mod:`.reuse`), one last gene picks the candidate's reuse mode
    (and forecast order): its value indexes the choices. With ``ctx.correction`` (a joint search with
    quantization or sparse attention) one more, last, gene switches the trajectory error correction
    (:mod:`diffusion_accel.caching.step_correction`): 1 decodes to a
    :class:`~diffusion_accel.caching.CorrectedCacheConfig` without maps, which the search fits on its
    calibration prompts before scoring the candidate."""

    name = field = "cache"

    def __init__(self, ctx: SpaceContext) -> None:
        self.genome = ScheduleGenome.for_model(ctx.pipe, ctx.num_steps, ctx.granularity)
        self.reuse = ctx.reuse
        self.choices = reuse_choices(ctx.reuse)
        self.model = ctx.pipe
        self.correction = bool(ctx.correction)
        gene = (len(self.choices),) if len(self.choices) > 1 else ()
        self.cardinalities = (2,) * self.genome.num_bits + gene + ((2,) if self.correction else ())

    @property
    def off(self) -> np.ndarray:
        return np.concatenate([np.ones(self.genome.num_bits, dtype=np.int64),
                               np.zeros(len(self.cardinalities) - self.genome.num_bits, dtype=np.int64)])

    def decode(self, genes: Any, name: str = "searched") -> StaticCacheConfig | CorrectedCacheConfig:
        genes = self._genes(genes)
        bits = self.genome.num_bits
        choice = self.choices[genes[bits]] if len(self.choices) > 1 else self.choices[0]
        cache = StaticCacheConfig(self.genome.decode(genes[:bits].astype(bool), name=name), **reuse_kwargs(choice))
        return CorrectedCacheConfig(cache) if self.correction and genes[-1] else cache

    def encode(self, config: Any) -> np.ndarray:
        if config is None:
            return self.off
        corrected = isinstance(config, CorrectedCacheConfig)
        if corrected and not self.correction:
            raise ValueError("This cache space has no error-correction gene; encode the StaticCacheConfig inside "
                             "the CorrectedCacheConfig (config.cache).")
        if static_part(config) is None:
            raise ValueError(f"The cache space encodes a StaticCacheConfig, got {type(config).__name__}.")
        config = static_part(config)
        bits = self.genome.encode(config.schedule).astype(np.int64)
        if len(self.choices) > 1:
            choice = reuse_token(config)
            if choice not in self.choices:
                raise ValueError(f"The cache space's reuse gene chooses among {list(self.choices)}, got reuse="
                                 f"{config.reuse!r}, forecast_order={config.forecast_order}.")
            bits = np.append(bits, self.choices.index(choice))
        return np.append(bits, int(corrected)) if self.correction else bits

    def signature(self) -> dict[str, Any]:
        out = {**self.genome.signature(), "reuse": self.reuse if len(self.choices) == 1 else list(self.choices)}
        return {**out, "correction": "trajectory"} if self.correction else out

    def seeds(self) -> list[tuple[str, np.ndarray]]:
        """The heuristic schedules; with a reuse gene, each schedule with every choice in turn."""
        out = []
        tail = [0] if self.correction else []
        for s in heuristic_schedules(self.model, self.genome.num_steps):
            if s.compute.all():
                continue
            bits = self.genome.encode(s, project=True).astype(np.int64)
            if len(self.choices) == 1:
                out.append((s.name, np.append(bits, tail).astype(np.int64)))
            else:
                out += [(f"{s.name}-{c}", np.append(bits, [i, *tail]).astype(np.int64)) for i, c in enumerate(self.choices)]
        return out


class QuantSpace(SpacePart):
    """Weight bits per block and for the rest (:data:`QUANT_BITS`), then the activation mode."""

    name = field = "quant"

    def __init__(self, ctx: SpaceContext) -> None:
        model = resolve_denoiser(ctx.pipe)
        self.blocks = tuple(b.name for b in get_model_adapter(model).blocks(model))
        self.cardinalities = (len(QUANT_BITS),) * (len(self.blocks) + 1) + (len(ACT_MODES),)

    def decode(self, genes: Any, name: str = "searched") -> QuantConfig | None:
        genes = self._genes(genes)
        bits = [None if QUANT_BITS[g] == 16 else QUANT_BITS[g] for g in genes[:-1]]
        if all(b is None for b in bits):
            return None
        rest = bits[-1]
        rules = tuple((f"re:{re.escape(name)}\\..*", b) for name, b in zip(self.blocks, bits) if b != rest)
        act = 8 if ACT_MODES[genes[-1]] == "a8-dynamic" else None
        plan = QuantPlan(rules, default=rest) if rules else None
        return QuantConfig(weight_bits=rest, act_bits=act, plan=plan, keep_original="memory")

    def encode(self, config: Any) -> np.ndarray:
        if config is None:
            return self.off
        if not isinstance(config, QuantConfig) or config.act_mode != "dynamic" or config.act_bits not in (8, None):
            raise ValueError("The quant space encodes QuantConfigs with dynamic 8-bit or no activation quantization.")
        plan = config.resolved_plan()
        names = [f"{block}.x" for block in self.blocks]
        bits = [plan.bits_for(n) for n in names] + [plan.default]
        code = {None: 0, 16: 0, 8: 1, 4: 2}
        act = ACT_MODES.index("a8-dynamic" if config.act_bits == 8 else "weight-only")
        return np.array([code[b] for b in bits] + [act], dtype=np.int64)

    def signature(self) -> dict[str, Any]:
        return {"blocks": list(self.blocks), "bits": list(QUANT_BITS), "act_modes": list(ACT_MODES)}

    def seeds(self) -> list[tuple[str, np.ndarray]]:
        n = len(self.blocks) + 1
        return [("w8a8", np.array([1] * n + [0])), ("w4a8", np.array([2] * n + [0])),
                ("w8a8-w4-blocks", np.array([2] * (n - 1) + [1, 0]))]


class AttentionSpace(SpacePart):
    """Method (when several), density (:data:`ATTENTION_DENSITIES`), then dense / sparse per block."""

    name = field = "attention"

    def __init__(self, ctx: SpaceContext) -> None:
        model = resolve_denoiser(ctx.pipe)
        self.num_blocks = len(get_model_adapter(model).blocks(model))
        self.methods = tuple(ctx.attention_methods)
        head = ((len(self.methods),) if len(self.methods) > 1 else ()) + (len(ATTENTION_DENSITIES),)
        self.head = len(head)
        self.cardinalities = head + (2,) * self.num_blocks

    def decode(self, genes: Any, name: str = "searched") -> SparseAttentionConfig | None:
        genes = self._genes(genes)
        sparse = tuple(int(i) for i in np.flatnonzero(genes[self.head:]))
        if not sparse:
            return None
        method = self.methods[genes[0]] if len(self.methods) > 1 else self.methods[0]
        blocks = None if len(sparse) == self.num_blocks else sparse
        return SparseAttentionConfig(method=method, density=ATTENTION_DENSITIES[genes[self.head - 1]], blocks=blocks)

    def encode(self, config: Any) -> np.ndarray:
        if config is None:
            return self.off
        if not isinstance(config, SparseAttentionConfig) or config.method not in self.methods \
                or config.density not in ATTENTION_DENSITIES or config.dense_blocks:
            raise ValueError(f"The attention space encodes SparseAttentionConfigs of methods {list(self.methods)} "
                             f"at densities {list(ATTENTION_DENSITIES)} (blocks=..., no dense_blocks).")
        head = ([self.methods.index(config.method)] if len(self.methods) > 1 else []) + \
            [ATTENTION_DENSITIES.index(config.density)]
        sparse = range(self.num_blocks) if config.blocks is None else config.blocks
        return np.array(head + [int(i in sparse) for i in range(self.num_blocks)], dtype=np.int64)

    def signature(self) -> dict[str, Any]:
        return {"blocks": self.num_blocks, "methods": list(self.methods), "densities": list(ATTENTION_DENSITIES)}

    def seeds(self) -> list[tuple[str, np.ndarray]]:
        head = [0] * (self.head - 1)
        return [(f"sparse-{ATTENTION_DENSITIES[0]:g}", np.array(head + [0] + [1] * self.num_blocks)),
                (f"sparse-{ATTENTION_DENSITIES[1]:g}", np.array(head + [1] + [1] * self.num_blocks))]

    def pricing_keys(self) -> list[tuple[str, float]]:
        """The ``(method, density)`` pairs a latency model must price for this space."""
        return [(m, d) for m in self.methods for d in ATTENTION_DENSITIES]


#: space name -> factory(SpaceContext) -> SpacePart. Order of the names = order of the genes.
SPACES: dict[str, Callable[[SpaceContext], SpacePart]] = {}


def register_space(name: str, factory: Callable[[SpaceContext], SpacePart]) -> None:
    """Make ``--space <name>`` available (``factory`` builds the part for one model)."""
    if not isinstance(name, str) or not re.fullmatch(r"[a-z_]+", name):
        raise ValueError(f"A space name is lower-case letters and '_', got {name!r}.")
    SPACES[name] = factory


register_space("cache", CacheSpace)
register_space("quant", QuantSpace)
register_space("attention", AttentionSpace)


def parse_space(value: str | Sequence[str]) -> tuple[str, ...]:
    """``"cache,quant"`` (or a sequence of names) -> the space names, in :data:`SPACES` order.

    Raises:
        ValueError: an empty value, an unknown or repeated name (the message lists the valid choices).
    """
    names = [n.strip() for n in value.split(",")] if isinstance(value, str) else [str(n) for n in value]
    valid = ", ".join(SPACES)
    if not names or any(not n for n in names):
        raise ValueError(f"--space needs one or more of {valid}, comma-separated; got {value!r}.")
    unknown = [n for n in names if n not in SPACES]
    if unknown:
        raise ValueError(f"Unknown search space {unknown[0]!r} in --space {value!r}; valid choices: {valid} "
                         "(comma-separated, e.g. --space cache,quant,attention).")
    if len(set(names)) != len(names):
        raise ValueError(f"--space {value!r} names a space twice; valid choices: {valid}.")
    return tuple(n for n in SPACES if n in names)

