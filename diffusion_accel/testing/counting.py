"""Count how many times each component really runs, independently of the cache hooks.

Example:
    >>> from diffusion_accel.testing import tiny_pipeline
    >>> from diffusion_accel.models import get_model_adapter
    >>> pipe = tiny_pipeline("pixart-alpha")
    >>> watched = watch_components(get_model_adapter(pipe.transformer), pipe.transformer)
    >>> # with ParameterUseCounter(watched) as counter: pipe(...)
    >>> # counter.counts[(block, component_index)] -> number of runs


A component "ran" when its first parameter (e.g. ``attn1.to_q.weight``) is an argument of a
torch function call; reused components never touch their weights.
"""

from __future__ import annotations

from collections import Counter

import torch
from torch.overrides import TorchFunctionMode


class ParameterUseCounter(TorchFunctionMode):
    def __init__(self, watched: dict[int, object]):
        super().__init__()
        self.watched = watched  # id(parameter) -> key
        self.counts: Counter = Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        for value in (*args, *kwargs.values()):
            key = self.watched.get(id(value))
            if key is not None:
                self.counts[key] += 1
        return func(*args, **kwargs)


def watch_components(adapter, model) -> dict[int, object]:
    watched = {}
    for block in adapter.blocks(model):
        for name, module in block.components().items():
            first = next(p for p in module.parameters())
            watched[id(first)] = (block.index, adapter.component_names.index(name))
    return watched


def expected_counts(schedule, history, applicable) -> Counter:
    """What the schedule says: per (block, component), computes over the calls in ``history``.

    ``applicable`` is ``adapter.applicable(model)``: components a block does not have never run.
    """
    counts: Counter = Counter()
    seen_branches = set()
    for call in history:
        first_of_branch = call.branch not in seen_branches
        seen_branches.add(call.branch)
        for b in range(schedule.num_blocks):
            for c in range(len(schedule.components)):
                if applicable[b][c] and (schedule.compute[call.step, b, c] or first_of_branch):
                    counts[(b, c)] += 1
    return counts
