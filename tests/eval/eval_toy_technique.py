"""A toy cache technique for the evaluation tests: blocks reuse their previous-step output.

``EvalToyReuseCache(reuse_steps=(2, 4))`` makes every transformer block return, on the listed
denoising steps, the output it computed at the previous step for the same guidance branch — a
real speed-up (the blocks do not run) with a real quality cost. Importing this module registers it
(the CLI tests pass ``--import eval_toy_technique``).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

from diffusers.hooks import ModelHook

from diffusion_accel.hooks import add_hook, remove_hook
from diffusion_accel.techniques import TechniqueConfig, TechniqueHandle, register_technique

HOOK = "eval_toy_reuse"
#: With this environment variable set to a path, a process using the technique writes that file when its
#: first pipeline call is over and then waits (up to 10 min) instead of making its second call: a run the
#: kill/resume tests stop at a known point, however fast the machine (they raced the run's end before).
HOLD_ENV = "EVAL_TOY_HOLD_FILE"


@dataclass(frozen=True)
class EvalToyReuseCache(TechniqueConfig):
    field_name = "cache"
    reuse_steps: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if any((not isinstance(s, int)) or s < 1 for s in self.reuse_steps):
            raise ValueError("reuse_steps must be step indices >= 1.")


class _ReuseHook(ModelHook):
    _is_stateful = True

    def __init__(self, tracker, reuse_steps, holds: bool = False) -> None:
        super().__init__()
        self.holds = holds
        self.calls = 0
        self.tracker = tracker
        self.reuse_steps = set(reuse_steps)
        self.cache: dict[str, Any] = {}
        self.skipped = 0

    def new_forward(self, module, *args, **kwargs):
        call = self.tracker.current
        if self.holds and call is not None and call.index == 0:  # the first denoiser call of a pipeline call
            self.calls += 1
            if self.calls == 2 and os.environ.get(HOLD_ENV):
                _hold(os.environ[HOLD_ENV])
        if call is not None and call.step in self.reuse_steps and call.branch in self.cache:
            self.skipped += 1
            return self.cache[call.branch]
        out = self.fn_ref.original_forward(*args, **kwargs)
        if call is not None:
            self.cache[call.branch] = out
        return out

    def reset_state(self, module):  # noqa: D102
        self.cache = {}
        return module


@register_technique(EvalToyReuseCache)
def _apply(pipe, config, denoisers) -> TechniqueHandle:
    hooked = []
    for d in denoisers:
        for i, block in enumerate(d.blocks()):
            add_hook(block.module, _ReuseHook(d.tracker, config.reuse_steps, holds=i == 0), HOOK)
            hooked.append(block.module)

    def remove() -> None:
        for module in hooked:
            remove_hook(module, HOOK)

    return TechniqueHandle(remove=remove)


def _hold(path: str) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(str(os.getpid()))
    time.sleep(600)
