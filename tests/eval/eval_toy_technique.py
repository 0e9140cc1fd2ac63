"""A toy cache technique for the evaluation tests: blocks reuse their previous-step output.

``EvalToyReuseCache(reuse_steps=(2, 4))`` makes every transformer block return, on the listed
denoising steps, the output it computed at the previous step for the same guidance branch — a
real speed-up (the blocks do not run) with a real quality cost. Importing this module registers it
(the CLI tests pass ``--import eval_toy_technique``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from diffusers.hooks import ModelHook

from diffusion_accel.hooks import add_hook, remove_hook
from diffusion_accel.techniques import TechniqueConfig, TechniqueHandle, register_technique

HOOK = "eval_toy_reuse"


@dataclass(frozen=True)
class EvalToyReuseCache(TechniqueConfig):
    field_name = "cache"
    reuse_steps: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if any((not isinstance(s, int)) or s < 1 for s in self.reuse_steps):
            raise ValueError("reuse_steps must be step indices >= 1.")


class _ReuseHook(ModelHook):
    _is_stateful = True

    def __init__(self, tracker, reuse_steps) -> None:
        super().__init__()
        self.tracker = tracker
        self.reuse_steps = set(reuse_steps)
        self.cache: dict[str, Any] = {}
        self.skipped = 0

    def new_forward(self, module, *args, **kwargs):
        call = self.tracker.current
        if call is not None and call.step in self.reuse_steps and call.branch in self.cache:
            self.skipped += 1
            return self.cache[call.branch]
        out = self.fn_ref.original_forward(*args, **kwargs)
        if call is not None:
            self.cache[call.branch] = out
        return out

    def reset_state(self, module):
        self.cache = {}
        return module


@register_technique(EvalToyReuseCache)
def _apply(pipe, config, denoisers) -> TechniqueHandle:
    hooked = []
    for d in denoisers:
        for block in d.blocks():
            add_hook(block.module, _ReuseHook(d.tracker, config.reuse_steps), HOOK)
            hooked.append(block.module)

    def remove() -> None:
        for module in hooked:
            remove_hook(module, HOOK)

    return TechniqueHandle(remove=remove)
