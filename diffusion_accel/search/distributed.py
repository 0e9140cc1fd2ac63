"""Split a list of tasks across accelerate processes and give every process all the results.

Task ``i`` runs on process ``i % num_processes``; results are gathered with
``accelerate.utils.gather_object`` and put back in task order, so every process sees the same
list and the search that consumes it stays in lock-step. One process (plain ``python``) runs
everything itself. Launch several with ``accelerate launch --multi_gpu --num_processes N`` (also on
a CPU-only machine, where it uses gloo; without ``--multi_gpu`` accelerate starts one CPU process) or
``torchrun``.

Example:
    >>> from diffusion_accel.eval.generate import distributed_state
    >>> map_tasks(lambda x: x * x, [1, 2, 3], distributed_state("cpu"))
    [1, 4, 9]
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")

__all__ = ["check_agreement", "map_tasks"]


def map_tasks(
    fn: Callable[[T], R], tasks: Sequence[T], state: Any, progress: Any = None
) -> list[R]:
    """``[fn(t) for t in tasks]`` computed across processes, the full list returned on every process.

    Args:
        fn: the work of one task (its result must be picklable).
        tasks: the tasks, identical on every process.
        state: an ``accelerate.PartialState``.
        progress: optional tqdm bar advanced by this process's finished tasks (times the
            number of processes, an estimate of the overall progress).
    """
    rank, world = state.process_index, state.num_processes
    local = []
    for index in range(rank, len(tasks), world):
        local.append((index, fn(tasks[index])))
        if progress is not None:
            progress.update(min(world, len(tasks) - progress.n))
    if world == 1:
        return [result for _, result in local]
    from accelerate.utils import gather_object

    gathered = dict(gather_object(local))
    if sorted(gathered) != list(range(len(tasks))):
        raise RuntimeError(f"Gathered results for tasks {sorted(gathered)}, expected 0..{len(tasks) - 1}.")
    return [gathered[i] for i in range(len(tasks))]


def check_agreement(payload: bytes, state: Any, what: str) -> None:
    """Raise ``RuntimeError`` unless every process holds the same ``payload`` (e.g. a population)."""
    if state.num_processes == 1:
        return
    from accelerate.utils import gather_object

    digests = gather_object([hashlib.sha256(payload).hexdigest()])
    if len(set(digests)) != 1:
        raise RuntimeError(
            f"The processes disagree on {what} ({len(set(digests))} versions); they must run the same "
            "settings and the same code (and the same torch thread count for bit-identical outputs)."
        )
