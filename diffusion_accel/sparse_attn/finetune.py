"""Fine-tune a sparsified pipeline by distilling from its own dense model (SLA / LinVideo style).

:func:`finetune_sparse` takes a pipeline accelerated with a ``SparseAttentionConfig`` (apply it
with ``diffusion_accel.apply`` first: this technique layer does not apply configs) and:

1. **teacher trajectories** — runs the pipeline on the training prompts with sparse attention
   bypassed (the same model, dense), recording every denoiser call: its inputs (the noisy latents
   of the model's *own* sampling trajectory, the timestep, the text states) and its output;
2. **distillation** — trains the chosen parameters so that the sparse denoiser's output on those
   inputs matches the dense output (mean squared error), with AdamW, for ``minutes`` of wall
   clock or ``max_steps`` steps;
3. **report** — PSNR of the decoded outputs against the dense pipeline's on held-out prompts
   (same seeds) and the distillation loss on held-out trajectories, before and after.

What is trained (``FinetuneConfig.trainable``):

* ``"proj"`` — only SLA's linear-branch projections (``method="sla"``; few parameters, the rest
  of the model is untouched, so removing the config restores the original model exactly);
* ``"attention"`` (default) — the projections plus every parameter of the sparsified attention
  modules (q/k/v/out projections, qk-norms) of the selected blocks: the attention adapts to the
  sparsity, at the price of changing the model (dense calls of those modules use the new weights).

The trained tensors are saved with the sparse config (:func:`save_finetuned`: safetensors + JSON)
and put back on a freshly accelerated pipeline with :func:`load_finetuned`.

Example:
    >>> import torch, diffusion_accel
    >>> from diffusion_accel import AccelerationConfig
    >>> from diffusion_accel.sparse_attn import SparseAttentionConfig, FinetuneConfig, finetune_sparse
    >>> from diffusion_accel.testing import tiny_pipeline, tiny_call_kwargs
    >>> pipe = tiny_pipeline("wan")
    >>> cfg = SparseAttentionConfig(method="sla", density=0.5, block_q=16, block_k=16)
    >>> pipe = diffusion_accel.apply(pipe, AccelerationConfig(attention=cfg))
    >>> kw = tiny_call_kwargs("wan"); del kw["prompt"]
    >>> res = finetune_sparse(pipe, ["a cat"], ["a dog"], FinetuneConfig(max_steps=2), call_kwargs=kw)
    >>> sorted(res.report)[:3]
    ['after', 'before', 'config']
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from ..pipeline_state import find_denoisers
from .technique import sparse_layers

__all__ = [
    "TRAINABLE",
    "FinetuneConfig",
    "FinetuneResult",
    "dense_attention",
    "finetune_sparse",
    "load_finetuned",
    "save_finetuned",
]

TRAINABLE = ("proj", "attention")


@dataclass(frozen=True)
class FinetuneConfig:
    """How :func:`finetune_sparse` trains (frozen, JSON-serializable via ``asdict``).

    Args:
        trainable: ``"proj"`` (SLA projections only) or ``"attention"`` (projections + the
            sparsified attention modules' parameters).
        minutes: wall-clock budget of the distillation loop.
        max_steps: stop after this many optimiser steps (``None``: only ``minutes``).
        lr: AdamW learning rate; ``batch``: denoiser calls per step (gradients accumulated);
        grad_clip: gradient-norm clip; ``seed``: sampling of the calls and the pipelines' seeds.
    """

    trainable: str = "attention"
    minutes: float = 20.0
    max_steps: int | None = None
    lr: float = 3e-4
    batch: int = 4
    grad_clip: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.trainable not in TRAINABLE:
            raise ValueError(f"trainable must be one of {TRAINABLE}; got {self.trainable!r}.")
        if not (isinstance(self.minutes, (int, float)) and self.minutes > 0):
            raise ValueError(f"minutes must be a positive number; got {self.minutes!r}.")
        if self.max_steps is not None and (not isinstance(self.max_steps, int) or self.max_steps < 0):
            raise ValueError(f"max_steps must be None or a non-negative int; got {self.max_steps!r}.")
        for name in ("lr", "grad_clip"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive; got {getattr(self, name)!r}.")
        if not isinstance(self.batch, int) or self.batch < 1:
            raise ValueError(f"batch must be a positive int; got {self.batch!r}.")


@dataclass
class FinetuneResult:
    """``params``: trained tensors by name (what :func:`save_finetuned` writes); ``report``: JSON."""

    params: dict[str, torch.Tensor]
    report: dict = field(default_factory=dict)


@contextlib.contextmanager
def dense_attention(pipe):
    """Within the block, every sparse layer of ``pipe`` runs the model's own dense attention."""
    layers = sparse_layers(pipe)
    before = [layer.bypass for layer in layers]
    for layer in layers:
        layer.bypass = True
    try:
        yield
    finally:
        for layer, b in zip(layers, before):
            layer.bypass = b


def _first_tensor(output) -> torch.Tensor:
    if torch.is_tensor(output):
        return output
    if isinstance(output, (tuple, list)):
        return output[0]
    return output.sample


def _detach(x):
    if torch.is_tensor(x):
        return x.detach().clone()
    if isinstance(x, (tuple, list)):
        return type(x)(_detach(i) for i in x)
    if isinstance(x, dict):
        return {key: _detach(val) for key, val in x.items()}
    return x


@torch.no_grad()
def _record_calls(pipe, prompts, call_kwargs, seed) -> list[tuple]:
    """Dense-teacher denoiser calls ``(module, args, kwargs, output)`` over the prompts' trajectories."""
    records: list[tuple] = []
    handles = []
    for _, module in find_denoisers(pipe):
        def hook(mod, args, kwargs, output):
            records.append((mod, _detach(args), _detach(kwargs), _first_tensor(output).detach().clone()))

        handles.append(module.register_forward_hook(hook, with_kwargs=True))
    try:
        with dense_attention(pipe):
            for i, prompt in enumerate(prompts):
                pipe(prompt=prompt, **call_kwargs, generator=torch.Generator().manual_seed(seed + i))
    finally:
        for handle in handles:
            handle.remove()
    return records


def _selected_layers(pipe) -> list:
    """Sparse layers the config replaces (``blocks`` / ``dense_blocks``), whatever the step."""
    out = []
    for layer in sparse_layers(pipe):
        cfg = layer.config
        if layer.block_index not in cfg.dense_blocks and (cfg.blocks is None or layer.block_index in cfg.blocks):
            out.append(layer)
    return out


def _attention_modules(pipe) -> list[torch.nn.Module]:
    """The attention modules whose processor routes through an active (selected) sparse layer."""
    layers = {id(layer) for layer in _selected_layers(pipe)}
    found = []
    for _, denoiser in find_denoisers(pipe):
        for module in denoiser.modules():
            layer = getattr(getattr(module, "processor", None), "layer", None)
            if layer is not None and id(layer) in layers:
                found.append(module)
    return found


def trainable_parameters(pipe, trainable: str) -> dict[str, torch.nn.Parameter]:
    """``{name: parameter}`` trained for ``trainable`` (names are what :func:`save_finetuned` writes)."""
    layers = _selected_layers(pipe)
    if not layers:
        raise ValueError("The pipeline has no active sparse layers: apply AccelerationConfig(attention="
                         "SparseAttentionConfig(...)) with diffusion_accel.apply(pipe, ...) first.")
    params = {f"sla::{layer.name}.{n}": p for layer in layers if layer.proj is not None
              for n, p in layer.proj.named_parameters()}
    if trainable == "proj" and not params:
        raise ValueError("trainable='proj' trains SLA's projections, but the config's method is "
                         f"{layers[0].config.method!r}; use method='sla' or trainable='attention'.")
    if trainable == "attention":
        for den_name, denoiser in find_denoisers(pipe):
            wanted = {id(m) for m in _attention_modules(pipe)}
            for mod_name, module in denoiser.named_modules():
                if id(module) in wanted:
                    params.update({f"{den_name}::{mod_name}.{n}": p for n, p in module.named_parameters()})
    return params


def _distill_loss(records, grad: bool) -> torch.Tensor:
    """Mean over ``records`` of the sparse denoiser's MSE to the dense output."""
    total = 0.0
    with torch.set_grad_enabled(grad):
        for module, args, kwargs, target in records:
            out = _first_tensor(module(*args, **kwargs)).float()
            loss = torch.nn.functional.mse_loss(out, target.float()) / len(records)
            if grad:
                loss.backward()
            total += float(loss.detach())
    return torch.tensor(total)


def _heldout_loss(records) -> float:
    return float(_distill_loss(records, grad=False)) if records else float("nan")


@torch.no_grad()
def _psnr_vs_dense(pipe, prompts, call_kwargs, seed, dense_cache: dict) -> float:
    """Mean PSNR (dB, data range 1) of the sparse pipeline's outputs against the dense pipeline's
    (computed once per prompt, kept in ``dense_cache``)."""
    values = []
    for i, prompt in enumerate(prompts):
        kw = {**call_kwargs, "prompt": prompt, "output_type": "np"}
        if i not in dense_cache:
            with dense_attention(pipe):
                dense_cache[i] = _output_array(pipe(**kw, generator=torch.Generator().manual_seed(seed + i)))
        dense = dense_cache[i]
        sparse = _output_array(pipe(**kw, generator=torch.Generator().manual_seed(seed + i)))
        mse = float(np.mean((np.clip(dense, 0, 1) - np.clip(sparse, 0, 1)) ** 2))
        values.append(100.0 if mse == 0 else 10 * math.log10(1.0 / mse))
    return float(np.mean(values))


def _output_array(result) -> np.ndarray:
    for name in ("frames", "images"):
        if hasattr(result, name):
            return np.asarray(getattr(result, name), dtype=np.float64)
    return np.asarray(result[0], dtype=np.float64)


def _train(params, records, config: FinetuneConfig) -> dict:
    """The distillation loop; returns ``{"steps", "seconds", "loss_first", "loss_last"}``."""
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    rng = random.Random(config.seed)
    start, steps, losses = time.monotonic(), 0, []
    while (config.max_steps is None or steps < config.max_steps) and time.monotonic() - start < config.minutes * 60:
        opt.zero_grad(set_to_none=True)
        loss = _distill_loss(rng.sample(records, min(config.batch, len(records))), grad=True)
        torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        opt.step()
        losses.append(float(loss))
        steps += 1
    tail = losses[-max(1, len(losses) // 10):] if losses else [float("nan")]
    head = losses[: max(1, len(losses) // 10)] if losses else [float("nan")]
    return {"steps": steps, "seconds": round(time.monotonic() - start, 1),
            "loss_first_10pct": float(np.mean(head)), "loss_last_10pct": float(np.mean(tail))}


@contextlib.contextmanager
def _only_trainable(pipe, params: dict[str, torch.nn.Parameter]):
    """Freeze every denoiser parameter except ``params`` (restored on exit)."""
    every = [p for _, d in find_denoisers(pipe) for p in d.parameters()]
    every += [p for layer in sparse_layers(pipe) if layer.proj is not None for p in layer.proj.parameters()]
    before = [p.requires_grad for p in every]
    for p in every:
        p.requires_grad_(False)
    for p in params.values():
        p.requires_grad_(True)
    try:
        yield
    finally:
        for p, b in zip(every, before):
            p.requires_grad_(b)


def _quality(pipe, heldout_prompts, heldout_records, call_kwargs, seed, dense_cache) -> dict:
    return {"psnr_vs_dense_db": round(_psnr_vs_dense(pipe, heldout_prompts, call_kwargs, seed, dense_cache), 3),
            "distill_loss_heldout": _heldout_loss(heldout_records)}


def finetune_sparse(pipe, prompts, heldout_prompts, config: FinetuneConfig = FinetuneConfig(), *,
                    call_kwargs: dict | None = None, out_dir: str | None = None) -> FinetuneResult:
    """Distil the sparse pipeline from its dense self; see the module docstring.

    Args:
        pipe: a pipeline accelerated with ``AccelerationConfig(attention=SparseAttentionConfig(...))``
            (its ``blocks`` / ``dense_blocks`` select the layers that are replaced and trained).
        prompts: training prompts (teacher trajectories); ``heldout_prompts``: the report's prompts.
        config: :class:`FinetuneConfig`.
        call_kwargs: the pipeline's other call arguments (steps, size, guidance; no prompt/generator).
        out_dir: if given, :func:`save_finetuned` writes the result there.
    """
    if not prompts or not heldout_prompts:
        raise ValueError("finetune_sparse needs at least one training prompt and one held-out prompt.")
    call_kwargs = dict(call_kwargs or {})
    if "prompt" in call_kwargs or "generator" in call_kwargs:
        raise ValueError("Pass prompts as finetune_sparse(pipe, prompts, heldout_prompts, ...), not in call_kwargs "
                         "(and no generator: seeds come from FinetuneConfig.seed).")
    params = trainable_parameters(pipe, config.trainable)
    records = _record_calls(pipe, prompts, call_kwargs, config.seed)
    heldout = _record_calls(pipe, heldout_prompts, call_kwargs, config.seed + 10_000)
    dense_cache: dict = {}
    before = _quality(pipe, heldout_prompts, heldout, call_kwargs, config.seed + 10_000, dense_cache)
    with _only_trainable(pipe, params):
        training = _train(list(params.values()), records, config)
    after = _quality(pipe, heldout_prompts, heldout, call_kwargs, config.seed + 10_000, dense_cache)
    report = {"config": asdict(config), "sparse_config": sparse_layers(pipe)[0].config.to_dict(),
              "trainable_tensors": len(params), "trainable_numel": sum(p.numel() for p in params.values()),
              "train_prompts": len(prompts), "heldout_prompts": len(heldout_prompts),
              "teacher_calls": len(records), "training": training, "before": before, "after": after}
    result = FinetuneResult({n: p.detach().clone() for n, p in params.items()}, report)
    if out_dir is not None:
        save_finetuned(result, out_dir)
    return result


def save_finetuned(result: FinetuneResult, out_dir: str) -> None:
    """Write ``finetuned.safetensors`` (the trained tensors) and ``finetune.json`` (configs + report)."""
    from safetensors.torch import save_file

    os.makedirs(out_dir, exist_ok=True)
    save_file({n: t.contiguous() for n, t in result.params.items()}, os.path.join(out_dir, "finetuned.safetensors"))
    with open(os.path.join(out_dir, "finetune.json"), "w") as f:
        json.dump(result.report, f, indent=1)


@torch.no_grad()
def load_finetuned(pipe, out_dir: str) -> int:
    """Copy the tensors saved by :func:`save_finetuned` into ``pipe`` (accelerated with the same
    sparse config, see ``finetune.json``); returns how many were loaded."""
    from safetensors.torch import load_file

    saved = load_file(os.path.join(out_dir, "finetuned.safetensors"))
    targets = trainable_parameters(pipe, "attention" if any("::" in n and not n.startswith("sla::") for n in saved)
                                   else "proj")
    missing = sorted(set(saved) - set(targets))
    if missing:
        raise ValueError(f"{len(missing)} saved tensors have no place in this pipeline (e.g. {missing[0]!r}); "
                         "apply the sparse config recorded in finetune.json before loading.")
    for name, tensor in saved.items():
        targets[name].copy_(tensor.to(targets[name].device, targets[name].dtype))
    return len(saved)
