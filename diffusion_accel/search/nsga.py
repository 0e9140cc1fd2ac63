"""NSGA-II from pymoo, driven in ask/tell steps, with a state that survives a restart.

pymoo 0.6.2 draws every random number of NSGA-II (tournament, crossover, mutation, survival
tie-breaks) from one ``numpy.random.Generator``, ``algorithm.random_state``, created from the
``seed`` passed to ``setup``. :meth:`NsgaDriver.state` saves exactly what the next ``ask`` depends
on: the surviving population (bits, objectives, rank, crowding distance), the generation counter
and that generator's bit-generator state; :meth:`NsgaDriver.load_state` puts them back into a freshly
set-up algorithm, so a resumed search draws the same offspring as an uninterrupted one.

Operators are configurable: crossover ``"uniform"`` (default), ``"hux"``, ``"one-point"``,
``"two-point"`` with probability ``crossover_prob``; bit-flip mutation applied to a child with
probability ``mutation_prob``, flipping each bit with probability ``bit_flip_prob`` (default
``1 / num_bits``).

Example:
    >>> import numpy as np
    >>> from pymoo.core.problem import Problem
    >>> problem = Problem(n_var=6, n_obj=2, xl=0, xu=1, vtype=bool)
    >>> start = np.eye(6, dtype=bool)[:4]
    >>> nsga = NsgaDriver(problem, start, seed=0)
    >>> X = nsga.ask()
    >>> nsga.tell(X, np.stack([X.sum(1), 1.0 - X[:, 0]], 1))
    >>> nsga.ask().shape
    (4, 6)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .problem import genes_to_str, str_to_bits, str_to_genes

__all__ = ["CROSSOVERS", "NsgaDriver", "Operators", "reset_mutation"]


def _uniform():
    from pymoo.operators.crossover.ux import UniformCrossover

    return UniformCrossover


def _hux():
    from pymoo.operators.crossover.hux import HalfUniformCrossover

    return HalfUniformCrossover


def _one_point():
    from pymoo.operators.crossover.pntx import SinglePointCrossover

    return SinglePointCrossover


def _two_point():
    from pymoo.operators.crossover.pntx import TwoPointCrossover

    return TwoPointCrossover


#: crossover name -> function returning the pymoo crossover class (binary genomes).
CROSSOVERS = {"uniform": _uniform, "hux": _hux, "one-point": _one_point, "two-point": _two_point}


@dataclass(frozen=True)
class Operators:
    """Variation operators of the search.

    Args:
        crossover: one of :data:`CROSSOVERS`.
        crossover_prob: probability that a pair of parents is recombined (else copied).
        mutation_prob: probability that a child is mutated at all.
        bit_flip_prob: per-bit flip probability of a mutated child (``None``: ``1 / num_bits``).
    """

    crossover: str = "uniform"
    crossover_prob: float = 0.9
    mutation_prob: float = 1.0
    bit_flip_prob: float | None = None

    def __post_init__(self) -> None:
        if self.crossover not in CROSSOVERS:
            raise ValueError(f"Unknown crossover {self.crossover!r}; choose one of {sorted(CROSSOVERS)}.")
        for name in ("crossover_prob", "mutation_prob"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}.")
        if self.bit_flip_prob is not None and not (
            isinstance(self.bit_flip_prob, (int, float)) and 0.0 < self.bit_flip_prob <= 1.0
        ):
            raise ValueError(f"bit_flip_prob must be in (0, 1] or None, got {self.bit_flip_prob!r}.")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class NsgaDriver:
    """A set-up pymoo ``NSGA2`` whose first :meth:`ask` returns ``initial`` ``(pop_size, n_var)`` bool.

    The population size is ``len(initial)``; offspring per generation = population size;
    duplicate genomes are eliminated; the algorithm never terminates on its own (the caller
    counts generations). Objectives are minimised.
    """

    def __init__(self, problem: Any, initial: np.ndarray, seed: int, operators: Operators | None = None) -> None:
        from pymoo.algorithms.moo.nsga2 import NSGA2
        from pymoo.core.termination import NoTermination
        from pymoo.operators.mutation.bitflip import BitflipMutation

        operators = operators or Operators()
        self.binary = _is_binary(problem)
        initial = self._genes(initial)
        self.problem = problem
        mutation = BitflipMutation if self.binary else reset_mutation()
        self.algorithm = NSGA2(
            pop_size=len(initial),
            sampling=initial,
            crossover=CROSSOVERS[operators.crossover]()(prob=operators.crossover_prob),
            mutation=mutation(prob=operators.mutation_prob, prob_var=operators.bit_flip_prob),
            eliminate_duplicates=True,
        )
        self.algorithm.setup(problem, termination=NoTermination(), seed=int(seed), verbose=False)
        self._pending: Any = None

    def _genes(self, X: Any) -> np.ndarray:
        """Candidates as the problem's genes: bool for a schedule genome, int64 for a joint genome."""
        return np.asarray(X).astype(bool) if self.binary else np.rint(np.asarray(X, dtype=float)).astype(np.int64)

    @property
    def generation(self) -> int:
        """Completed generations (0 before the initial population is told)."""
        return int(self.algorithm.n_iter or 1) - 1 if self.algorithm.is_initialized else 0

    def ask(self) -> np.ndarray:
        """The next candidates as ``(n, n_var)`` bool (kept until :meth:`tell`)."""
        pop = self.algorithm.ask()
        if pop is None or len(pop) == 0:
            raise RuntimeError(
                "NSGA-II produced no new distinct candidate (the population has converged); stop the "
                "search or raise bit_flip_prob."
            )
        self._pending = pop
        return self._genes(pop.get("X"))

    def tell(self, X: np.ndarray, F: np.ndarray) -> None:
        """Report objectives ``F`` ``(n, n_obj)`` (lower is better) of the candidates ``X`` of the last ask."""
        from pymoo.core.evaluator import Evaluator
        from pymoo.problems.static import StaticProblem

        pop = self._pending
        if pop is None or not np.array_equal(self._genes(pop.get("X")), self._genes(X)):
            raise ValueError("tell() must receive the candidates of the last ask(), in the same order.")
        F = np.asarray(F, dtype=float)
        if F.shape != (len(pop), self.problem.n_obj) or not np.isfinite(F).all():
            raise ValueError(f"Objectives must be finite, shape {(len(pop), self.problem.n_obj)}; got {F.shape}.")
        Evaluator().eval(StaticProblem(self.problem, F=F), pop)
        self._pending = None
        self.algorithm.tell(infills=pop)

    def population(self) -> tuple[np.ndarray, np.ndarray]:
        """The surviving population: bits ``(pop_size, n_var)`` and objectives ``(pop_size, n_obj)``."""
        pop = self.algorithm.pop
        return self._genes(pop.get("X")), np.asarray(pop.get("F"), dtype=float)

    def state(self) -> dict[str, Any]:
        """JSON-ready state after a :meth:`tell`: population, objectives, rank, crowding, RNG, counter."""
        X, F = self.population()
        pop = self.algorithm.pop
        return {
            "n_iter": int(self.algorithm.n_iter),
            "X": [genes_to_str(x) for x in X],
            "F": F.tolist(),
            "rank": [int(r) for r in pop.get("rank")],
            "crowding": [_encode_float(float(c)) for c in pop.get("crowding")],
            "rng": self.algorithm.random_state.bit_generator.state,
        }

    def load_state(self, state: dict[str, Any]) -> None:
        """Continue from a :meth:`state` dict (on a driver built with the same problem and seed)."""
        from pymoo.core.evaluator import Evaluator
        from pymoo.core.population import Population
        from pymoo.problems.static import StaticProblem

        algorithm = self.algorithm
        X = np.stack([(str_to_bits if self.binary else str_to_genes)(x) for x in state["X"]])
        F = np.asarray(state["F"], dtype=float)
        pop = Population.new(X=X)
        Evaluator().eval(StaticProblem(self.problem, F=F), pop, skip_already_evaluated=False)
        pop.set("rank", np.asarray(state["rank"], dtype=int),
                "crowding", np.asarray([float(c) for c in state["crowding"]], dtype=float))
        algorithm._initialize()
        algorithm.pop = pop
        algorithm.off = None
        algorithm.is_initialized = True
        algorithm.n_iter = int(state["n_iter"])
        algorithm._set_optimum()
        algorithm.random_state.bit_generator.state = state["rng"]
        self._pending = None


def _is_binary(problem: Any) -> bool:
    """Whether ``problem`` has boolean variables (a schedule genome) rather than integer genes."""
    return getattr(problem, "vtype", None) is bool


def reset_mutation():
    """The pymoo mutation of integer genes: each gene of a mutated child is, with probability
    ``prob_var`` (default ``1 / n_var``), replaced by another of its values drawn uniformly (on a
    two-valued gene: a bit flip). Draws from pymoo's ``random_state`` only, so it resumes exactly."""
    from pymoo.core.mutation import Mutation

    class ResetMutation(Mutation):
        def _do(self, problem, X, random_state=None, **kwargs):
            X = np.rint(np.asarray(X, dtype=float)).astype(np.int64)
            low, high = np.asarray(problem.xl, dtype=np.int64), np.asarray(problem.xu, dtype=np.int64)
            mutate = random_state.random(X.shape) < self.get_prob_var(problem, size=(len(X), 1))
            # another value: low + (offset + 1 .. span - 1) mod span, never the current one
            span = high - low + 1
            step = 1 + np.floor(random_state.random(X.shape) * (span - 1)).astype(np.int64)
            moved = low + (X - low + step) % span
            return np.where(mutate, moved, X)

    return ResetMutation


def _encode_float(x: float) -> float | str:
    """JSON has no infinity: the crowding distance of a front's end points is stored as ``"inf"``."""
    return x if np.isfinite(x) else ("inf" if x > 0 else "-inf")
