"""A latency model calibrated on this machine: measured per-op seconds at the model's shapes x counted ops.

MACs price every multiply-accumulate the same; on a real machine an int8 GEMM, a packed int4 GEMM
and a block-sparse attention run at their own speeds, which depend on the shapes. The model:

1. **Sites.** One replay of the denoiser's step-0 calls records every ``nn.Linear`` (name, block,
   component, rows x in x out) and every self/joint attention component (batch, heads, query and key
   tokens, head dim), and times the whole call (float, median of ``repeats``).
2. **Per-op seconds.** Every distinct linear shape is timed in each of :data:`LINEAR_MODES` (float,
   W8A8, W4A8 and weight-only W8 / W4 -- the library's own ``QuantLinear``, backend ``auto``) and every
   attention shape dense (SDPA) and sparse at each requested ``(method, density)`` (the library's
   ops), interleaved, median of ``repeats``.
   The whole step-0 call is also timed with every linear in each quantized mode, interleaved with
   the float call (**in situ**): at small widths isolated op timings mislead (on the bundled model
   every isolated int8 linear was slower than float, yet W8A8 made the pipeline 1.3x faster).
3. **Prediction.** A site costs its op's measured seconds in the mode a config gives it (a linear's bits
   are those ``apply`` gives it: :func:`~diffusion_accel.quant.technique.layer_bits`); a linear in a
   quantized mode costs its float time plus its share (by float time) of that mode's in-situ call
   difference. What the
   ops do not cover (norms, element-wise work, cross-attention, launches) is the measured call time
   minus the float ops; it is spread over the sites in proportion to their float time, so a reused
   component saves its share of it too. A cache schedule decides which (step, block, component)
   sites run; linears of a block outside its components run when any component of the block runs;
   linears outside the blocks run every step.

:meth:`LatencyModel.seconds` is the predicted time of the denoising loop, :meth:`LatencyModel.macs`
the MACs (sparse attention's skipped blocks removed). The model is plain JSON (``to_dict`` /
``from_dict``): calibrate once per machine and model shape, reuse it across searches.

Example:
    >>> from diffusion_accel import AccelerationConfig
    >>> from diffusion_accel.quant import QuantConfig
    >>> from diffusion_accel.testing import tiny_pipeline, tiny_call_kwargs
    >>> pipe = tiny_pipeline("pixart-alpha")
    >>> model = calibrate_latency_model(pipe, tiny_call_kwargs("pixart-alpha"), repeats=2)
    >>> model.seconds(AccelerationConfig()) > 0
    True
    >>> LatencyModel.from_dict(model.to_dict()) == model
    True
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from ..api import acceleration_restored, find_denoisers, remove
from ..caching.correction import static_part
from ..caching.schedule import CacheSchedule
from ..config import AccelerationConfig
from ..models import get_model_adapter
from ..quant.technique import layer_bits
from .macs import _capture_first_step, profile_macs

__all__ = ["ATTENTION_OPS", "LINEAR_MODES", "LatencyModel", "calibrate_latency_model", "linear_mode"]

#: linear execution modes: name -> (weight bits, activation bits); "float" is the original layer.
LINEAR_MODES = {"float": (None, None), "w8a8": (8, 8), "w4a8": (4, 8), "w8": (8, None), "w4": (4, None)}
_ATTENTION_KINDS = ("self_attn", "joint_attn")


def linear_mode(weight_bits: int | None, act_bits: int | None) -> str:
    """The :data:`LINEAR_MODES` name of a layer with these bits (``weight_bits=None``: float)."""
    if weight_bits is None:
        return "float"
    return next(k for k, v in LINEAR_MODES.items() if v == (weight_bits, act_bits))


def _sparse_op(method: str) -> Callable[..., torch.Tensor]:
    from ..sparse_attn import block_sparse_attention

    return lambda q, k, v, density: block_sparse_attention(q, k, v, density=density)


#: attention method -> factory of its op ``(q, k, v, density) -> out`` (Re-ttention runs the block-sparse op).
ATTENTION_OPS: dict[str, Callable[[str], Callable[..., torch.Tensor]]] = {
    "block_sparse": _sparse_op, "rettention": _sparse_op}


def _shape_key(shape: Sequence[int]) -> str:
    return "x".join(str(int(s)) for s in shape)


@dataclass
class LatencyModel:
    """Per-op seconds and sites of one denoiser call setting (see the module doc).

    Attributes:
        num_steps: steps of the calibrated call (the default loop length).
        linears: ``[call, name, block (-1: outside blocks), component ("" : none), rows, in, out]`` rows.
        attention: ``[call, block, component, batch, heads, q_len, k_len, head_dim]`` rows.
        linear_seconds: ``"rows x in x out"`` -> mode -> seconds.
        attention_seconds: ``"batch x heads x q x k x d"`` -> ``"dense"`` / ``"<method>@<density>"`` -> seconds.
        call_seconds: measured float seconds of each step-0 call.
        in_situ: linear mode -> per call, measured seconds of the call with every linear in that mode
            minus the float call (timed interleaved). When present it prices the mode: a linear in mode
            ``m`` adds ``in_situ[m][call] x`` its share of the call's float linear time, instead of its
            isolated op difference (small layers timed alone mislead: launch and quantize overheads
            overlap differently inside the real call).
        components: the model's component names (schedule axes); num_blocks: its blocks.
        component_macs: ``calls x blocks x components`` MACs; call_macs: MACs per call (one step).
    """

    num_steps: int
    components: list[str]
    num_blocks: int
    linears: list[list[Any]]
    attention: list[list[Any]]
    linear_seconds: dict[str, dict[str, float]]
    attention_seconds: dict[str, dict[str, float]]
    call_seconds: list[float]
    call_macs: list[float]
    component_macs: list[Any]
    device: str = "cpu"
    in_situ: dict[str, list[float]] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"format": "diffusion-accel/latency-model", "version": 1, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LatencyModel:
        if not isinstance(data, dict) or data.get("format") != "diffusion-accel/latency-model":
            raise ValueError("Not a latency model (expected format 'diffusion-accel/latency-model'); make one "
                             "with calibrate_latency_model(...).to_dict().")
        return cls(**{k: v for k, v in data.items() if k not in ("format", "version")})

    # --- prediction ---------------------------------------------------------------------------
    def seconds(self, config: AccelerationConfig | None = None) -> float:
        """Predicted seconds of the whole denoising loop under ``config`` (``None``: unaccelerated)."""
        compute = self._compute(config)
        site, block_other, rest = self._step_costs(config or AccelerationConfig())
        per_step = [rest + float((c[None] * site).sum()) + float((c.any(axis=1)[None] * block_other).sum())
                    for c in compute]
        return float(sum(per_step))

    def macs(self, config: AccelerationConfig | None = None) -> float:
        """MACs of the denoising loop under ``config`` (cache schedule and sparse attention; quantized
        MACs count as MACs)."""
        config = config or AccelerationConfig()
        compute = self._compute(config)
        comp = np.asarray(self.component_macs, dtype=float)
        saved = np.zeros_like(comp)
        sparse = self._sparse_blocks(config)
        for call, block, name, b, h, q, k, d in self.attention:
            density = sparse.get(int(block))
            if density is not None:
                saved[call, block, self.components.index(name)] += (1.0 - density[1]) * 2.0 * b * h * q * k * d
        per_call = float(np.sum(self.call_macs))
        return float(sum(per_call - ((~c)[None] * comp).sum() - (c[None] * saved).sum() for c in compute))

    def _compute(self, config: AccelerationConfig | None) -> np.ndarray:
        """``(steps, blocks, components)`` bool: which sites run (a static schedule, else all)."""
        cache = None if config is None else config.cache
        if static_part(cache) is not None:  # a corrected cache runs its schedule (the maps cost ~nothing)
            schedule: CacheSchedule = static_part(cache).schedule
            return np.asarray(schedule.compute, dtype=bool)
        if cache is not None:
            raise ValueError(f"The latency model prices static cache schedules; got {type(cache).__name__}.")
        return np.ones((self.num_steps, self.num_blocks, len(self.components)), dtype=bool)

    def _sparse_blocks(self, config: AccelerationConfig) -> dict[int, tuple[str, float]]:
        attention = config.attention
        if attention is None:
            return {}
        if attention.method not in ATTENTION_OPS or attention.density is None:
            raise ValueError(f"The latency model prices {sorted(ATTENTION_OPS)} attention at a fixed density; "
                             f"got method={attention.method!r}, density={attention.density!r}.")
        blocks = range(self.num_blocks) if attention.blocks is None else attention.blocks
        return {int(b): (attention.method, float(attention.density)) for b in blocks
                if b not in attention.dense_blocks}

    def _step_costs(self, config: AccelerationConfig) -> tuple[np.ndarray, np.ndarray, float]:
        """Seconds of one step: per (call, block, component) site, per (call, block) outside its
        components, and outside the blocks."""
        calls = len(self.call_seconds)
        site = np.zeros((calls, self.num_blocks, len(self.components)))
        block_other = np.zeros((calls, self.num_blocks))
        rest = np.zeros(calls)
        scale = self._remainder_scale()
        plan = None if config.quant is None else config.quant.resolved_plan()
        act = None if config.quant is None else config.quant.act_bits
        float_total = self._float_linear_seconds()
        for call, name, block, comp, rows, n_in, n_out in self.linears:
            mode = "float" if plan is None else linear_mode(layer_bits(plan, name), act)
            times = self.linear_seconds[_shape_key((rows, n_in, n_out))]
            if mode != "float" and mode in self.in_situ:
                share = times["float"] / float_total[call]
                t = _with_remainder(times, "float", scale[call]) + self.in_situ[mode][call] * share
            else:
                t = _with_remainder(times, mode, scale[call])
            if block < 0:
                rest[call] += t
            elif not comp:
                block_other[call, block] += t
            else:
                site[call, block, self.components.index(comp)] += t
        sparse = self._sparse_blocks(config)
        for call, block, comp, *shape in self.attention:
            times = self.attention_seconds[_shape_key(shape)]
            key = "dense" if block not in sparse else f"{sparse[block][0]}@{sparse[block][1]:g}"
            if key not in times:
                raise ValueError(f"The latency model has no timing for attention {key!r}; calibrate it with "
                                 f"attention=[{sparse[block]!r}, ...].")
            site[call, block, self.components.index(comp)] += _with_remainder(times, key, scale[call], "dense")
        return site, block_other, float(rest.sum())

    def _float_linear_seconds(self) -> np.ndarray:
        """Per call: the isolated float seconds of all its linears."""
        total = np.zeros(len(self.call_seconds))
        for call, _, _, _, rows, n_in, n_out in self.linears:
            total[call] += self.linear_seconds[_shape_key((rows, n_in, n_out))]["float"]
        return np.maximum(total, 1e-12)

    def _remainder_scale(self) -> np.ndarray:
        """Per call: measured call seconds / float seconds of the modelled ops (>= 1: the rest rides along)."""
        modelled = np.zeros(len(self.call_seconds))
        for call, _, _, _, rows, n_in, n_out in self.linears:
            modelled[call] += self.linear_seconds[_shape_key((rows, n_in, n_out))]["float"]
        for call, _, _, *shape in self.attention:
            modelled[call] += self.attention_seconds[_shape_key(shape)]["dense"]
        return np.maximum(np.asarray(self.call_seconds) / np.maximum(modelled, 1e-12), 1.0)


def _with_remainder(times: dict[str, float], key: str, scale: float, reference: str = "float") -> float:
    """An op's seconds in mode ``key`` plus its share of the unmodelled time (``(scale - 1) x`` its
    reference-mode seconds)."""
    return float(times[key] + (scale - 1.0) * times[reference])


# --- calibration --------------------------------------------------------------------------------


def calibrate_latency_model(pipe: Any, call_kwargs: dict[str, Any],
                            attention: Sequence[tuple[str, float]] = (), repeats: int = 5,
                            modes: Sequence[str] = tuple(LINEAR_MODES)) -> LatencyModel:
    """Measure a :class:`LatencyModel` for ``pipe(**call_kwargs)`` on this machine (``pipe`` is left as it was).

    Args:
        pipe: the pipeline (its first denoiser is modelled).
        call_kwargs: a full pipeline call (prompt, steps, size, generator...); only its first step runs.
        attention: ``(method, density)`` pairs to time sparse attention at (dense is always timed).
        repeats: timed repetitions per op (median), interleaved over the modes of one shape.
        modes: linear modes to time (:data:`LINEAR_MODES`; ``"float"`` is always timed).
    """
    if not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be a positive integer, got {repeats!r}.")
    unknown = [m for m, _ in attention if m not in ATTENTION_OPS]
    if unknown or any(m not in LINEAR_MODES for m in modes):
        raise ValueError(f"Unknown attention method {unknown} or linear mode in {list(modes)}; valid: "
                         f"{sorted(ATTENTION_OPS)} and {list(LINEAR_MODES)}.")
    denoiser = find_denoisers(pipe)[0][1]
    with acceleration_restored(pipe), torch.no_grad():
        remove(pipe)
        profile = profile_macs(pipe, **call_kwargs)
        calls = _capture_first_step(pipe, denoiser, dict(call_kwargs))
        linears, sites = _record_sites(denoiser, calls)
        modes = ["float", *(m for m in modes if m != "float")]
        call_seconds, in_situ = _time_calls_in_modes(denoiser, calls, linears, modes, repeats)
    device = next(denoiser.parameters()).device
    linear_seconds = {key: _time_linear(key, modes, repeats, device) for key in
                      dict.fromkeys(_shape_key(r[4:7]) for r in linears)}
    attention_seconds = {key: _time_attention(key, attention, repeats, device) for key in
                         dict.fromkeys(_shape_key(r[3:]) for r in sites)}
    return LatencyModel(profile.num_steps, list(profile.components), int(profile.component_macs.shape[1]),
                        linears, sites, linear_seconds, attention_seconds, call_seconds,
                        [float(m) for m in profile.call_macs], profile.component_macs.tolist(), str(device),
                        in_situ=in_situ, notes={"repeats": repeats, "threads": torch.get_num_threads()})


def _record_sites(denoiser: torch.nn.Module, calls: list[tuple[tuple, dict]]) -> tuple[list, list]:
    """Replay the step-0 ``calls``; return the linear rows and attention rows of :class:`LatencyModel`."""
    adapter = get_model_adapter(denoiser)
    kinds = adapter.component_kinds()
    where: dict[int, tuple[int, str]] = {}
    attention_modules: dict[int, tuple[int, str]] = {}
    for block in adapter.blocks(denoiser):
        for sub in block.module.modules():
            where[id(sub)] = (block.index, "")
        for comp, module in block.components().items():
            for sub in module.modules():
                where[id(sub)] = (block.index, comp)
            if kinds[comp] in _ATTENTION_KINDS and hasattr(module, "heads"):
                attention_modules[id(module)] = (block.index, comp)
    linears, sites, handles, current = [], [], [], [0]
    for name, module in denoiser.named_modules():
        if isinstance(module, torch.nn.Linear) and name:
            block, comp = where.get(id(module), (-1, ""))
            handles.append(module.register_forward_hook(
                lambda m, a, o, n=name, b=block, c=comp: linears.append(
                    [current[0], n, b, c, int(np.prod(a[0].shape[:-1])), m.in_features, m.out_features])))
        if id(module) in attention_modules:
            block, comp = attention_modules[id(module)]
            handles.append(module.register_forward_pre_hook(
                lambda m, a, k, b=block, c=comp: sites.append([current[0], b, c, *_attention_shape(m, a, k)]),
                with_kwargs=True))
    try:
        for i, (args, kwargs) in enumerate(calls):
            current[0] = i
            denoiser(*args, **kwargs)
    finally:
        for h in handles:
            h.remove()
    return linears, sites


def _time_calls_in_modes(denoiser: torch.nn.Module, calls: list, linears: list, modes: Sequence[str],
                         repeats: int) -> tuple[list[float], dict[str, list[float]]]:
    """Float seconds of each step-0 call, and per quantized mode the call's seconds with every linear
    in that mode minus the float seconds (the float call timed in the same interleaved rounds)."""
    from ..quant import QuantLinear
    from ..quant.replace import set_submodule

    modules = dict(denoiser.named_modules())
    names = list(dict.fromkeys(r[1] for r in linears))
    quantized = {m: {n: QuantLinear.from_linear(modules[n], weight_bits=LINEAR_MODES[m][0],
                                                act_bits=LINEAR_MODES[m][1]) for n in names} for m in modes[1:]}

    def in_mode(mode: str, args: tuple, kwargs: dict) -> None:
        layers = quantized.get(mode, {})
        try:
            for n, layer in layers.items():
                set_submodule(denoiser, n, layer)
            denoiser(*args, **kwargs)
        finally:
            for n in layers:
                set_submodule(denoiser, n, modules[n])

    call_seconds, in_situ = [], {m: [] for m in modes[1:]}
    for args, kwargs in calls:
        seconds = _median([lambda m=m: in_mode(m, args, kwargs) for m in modes], repeats)
        call_seconds.append(seconds[0])
        for m, t in zip(modes[1:], seconds[1:]):
            in_situ[m].append(t - seconds[0])
    return call_seconds, in_situ


def _attention_shape(module: torch.nn.Module, args: tuple, kwargs: dict) -> list[int]:
    """``[batch, heads, q_len, k_len, head_dim]`` of a self-attention call on ``hidden_states`` ``(B, L, C)``."""
    hidden = kwargs.get("hidden_states", args[0] if args else None)
    if hidden.ndim == 4:  # (B, C, H, W) feature maps (UNet attention)
        hidden = hidden.flatten(2).transpose(1, 2)
    heads = int(module.heads)
    head_dim = int(module.to_q.out_features) // heads
    return [int(hidden.shape[0]), heads, int(hidden.shape[1]), int(hidden.shape[1]), head_dim]


def _median(fns: Sequence[Callable[[], Any]], repeats: int) -> list[float]:
    """Median seconds of each of ``fns``, timed interleaved after one warm-up call each."""
    for fn in fns:
        fn()
    samples: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            fn()
            samples[i].append(time.perf_counter() - start)
    return [statistics.median(s) for s in samples]


@torch.no_grad()
def _time_linear(key: str, modes: Sequence[str], repeats: int, device: torch.device) -> dict[str, float]:
    from ..quant import QuantLinear

    rows, n_in, n_out = (int(v) for v in key.split("x"))
    generator = torch.Generator().manual_seed(0)
    layer = torch.nn.Linear(n_in, n_out)
    torch.nn.init.normal_(layer.weight, std=n_in ** -0.5, generator=generator)
    layer = layer.to(device)
    x = torch.randn(rows, n_in, generator=generator).to(device)
    ops = {"float": layer}
    for mode in modes:
        if mode != "float":
            bits, act = LINEAR_MODES[mode]
            ops[mode] = QuantLinear.from_linear(layer, weight_bits=bits, act_bits=act, group_size=128)
    seconds = _median([lambda op=op: op(x) for op in ops.values()], repeats)
    return dict(zip(ops, seconds))


@torch.no_grad()
def _time_attention(key: str, pairs: Sequence[tuple[str, float]], repeats: int,
                    device: torch.device) -> dict[str, float]:
    batch, heads, q_len, k_len, head_dim = (int(v) for v in key.split("x"))
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(batch, heads, n, head_dim, generator=generator).to(device)
               for n in (q_len, k_len, k_len))
    ops = {"dense": lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v)}
    for method, density in pairs:
        op = ATTENTION_OPS[method](method)
        ops[f"{method}@{float(density):g}"] = lambda op=op, d=float(density): op(q, k, v, d)
    return dict(zip(ops, _median(list(ops.values()), repeats)))
