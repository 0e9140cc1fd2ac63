"""Layer sensitivity with decoupled metrics (MixDQ-style), measured one layer group at a time.

For each group of linears (one layer, or one block component), the group alone is quantized
(W·A8, dynamic per-token activations), the pipeline generates images for the calibration prompts
with fixed seeds, and the damage is measured against the full-precision images of the same seeds
with a metric chosen by the group's role:

* **content** layers — cross-attention and feed-forward (components of kind ``cross_attn``,
  ``ffn``, ``ffn_context``, ``mlp``), which decide *what* is drawn — against a content metric:
  ``1 - SSIM`` by default, or any ``content_metric(images, reference, prompts) -> loss`` (e.g. a
  CLIP-score drop);
* **fidelity** layers — everything else (self/joint attention, embedders, projections) — against
  the relative squared error ``|img - ref|² / |ref|²`` (``10^(-SQNR/10)``).

Each family is normalised by its mean loss at the lowest bit width, so the two are comparable, and
:meth:`SensitivityResult.allocate` hands the scores to the MILP allocator. Bit widths that were not
measured are extrapolated with the quantization-noise rule ``loss(b) = loss(b0) · 4^-(b - b0)``
(each extra bit quarters the noise power); ``None`` (full precision) costs 0.

Example::

    from diffusion_accel.quant import measure_sensitivity
    result = measure_sensitivity(pipe, prompts, num_inference_steps=10)
    plan = result.allocate(average_bits=5.0)      # QuantPlan, name -> bits
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch

from ..models import find_model_adapter
from .calibrate import run_prompts
from .plan import QuantPlan
from .replace import linear_names, quantize_linears, restore_linears

__all__ = ["CONTENT_KINDS", "SensitivityResult", "measure_sensitivity", "layer_kinds", "ssim_loss",
           "as_image_batch"]

#: Component kinds whose layers are judged by the content metric.
CONTENT_KINDS = ("cross_attn", "ffn", "ffn_context", "mlp")


@dataclass
class SensitivityResult:
    """Measured sensitivities.

    Attributes:
        losses: group -> {bits: raw loss} (content or fidelity metric, lower is better).
        kinds: group -> ``"content"`` or ``"fidelity"``.
        members: group -> layer names.
        sizes: group -> parameter count.
    """

    losses: dict[str, dict[Any, float]]
    kinds: dict[str, str]
    members: dict[str, list[str]]
    sizes: dict[str, int]
    extra: dict[str, Any] = field(default_factory=dict)

    def scores(self, choices: Sequence[int | None] = (4, 8), content_weight: float = 1.0) -> dict[str, dict]:
        """Normalised sensitivity per group and bit choice (see the module docstring)."""
        full = {g: _extrapolate(l, choices) for g, l in self.losses.items()}
        out = {}
        for family, weight in (("content", content_weight), ("fidelity", 1.0)):
            groups = [g for g in full if self.kinds[g] == family]
            if not groups:
                continue
            ref = sum(max(full[g].values()) for g in groups) / len(groups)  # mean worst-case loss
            ref = ref if ref > 0 else 1.0
            for g in groups:
                out[g] = {b: weight * v / ref for b, v in full[g].items()}
        return out

    def allocate(self, average_bits: float | None = None, memory_bytes: float | None = None,
                 choices: Sequence[int | None] = (4, 8), content_weight: float = 1.0,
                 default: int | None = None, layer_costs: Mapping[str, Mapping] | None = None) -> QuantPlan:
        """MILP plan (one exact rule per layer) under a budget; see :func:`allocate_bits`."""
        from .allocate import allocate_bits

        group_plan = allocate_bits(self.scores(choices, content_weight), self.sizes, average_bits=average_bits,
                                   memory_bytes=memory_bytes, layer_costs=layer_costs, default=default)
        rules = []
        for group, bits in group_plan.rules:
            rules.extend((name, bits) for name in self.members[group])
        return QuantPlan(tuple(rules), default=default)

    def to_dict(self) -> dict[str, Any]:
        return {"losses": {g: {str(b): v for b, v in l.items()} for g, l in self.losses.items()},
                "kinds": self.kinds, "members": self.members, "sizes": self.sizes}


def _extrapolate(losses: Mapping[Any, float], choices: Sequence[int | None]) -> dict:
    measured = {b: v for b, v in losses.items() if b is not None}
    if not measured:
        raise ValueError("No measured bit width to extrapolate from.")
    base = min(measured)
    out = {}
    for b in choices:
        if b is None:
            out[b] = 0.0
        elif b in measured:
            out[b] = float(measured[b])
        else:
            out[b] = float(measured[base]) * 4.0 ** (base - b)
    return out


def layer_kinds(model: torch.nn.Module, names: Sequence[str]) -> dict[str, tuple[str, str]]:
    """name -> (component prefix or the name itself, ``"content"``/``"fidelity"``) from the model adapter."""
    adapter = find_model_adapter(model)
    component_of: dict[int, tuple[str, str]] = {}
    if adapter is not None:
        kinds = adapter.component_kinds()
        modules = {id(m): n for n, m in model.named_modules()}
        for block in adapter.blocks(model):
            for comp_name, sub in block.components().items():
                if sub is block.module:
                    continue
                family = "content" if kinds.get(comp_name) in CONTENT_KINDS else "fidelity"
                component_of[id(sub)] = (modules.get(id(sub), comp_name), family)
    modules = dict(model.named_modules())
    out = {}
    for name in names:
        parts = name.split(".")
        found = None
        for i in range(len(parts), 0, -1):  # the layer itself may be a component (Flux's proj_mlp)
            sub = modules.get(".".join(parts[:i]))
            if sub is not None and id(sub) in component_of:
                found = component_of[id(sub)]
                break
        out[name] = found if found is not None else (name, "fidelity")
    return out


def as_image_batch(images: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)`` images, or video frames ``(B, F, C, H, W)`` flattened to ``(B * F, C, H, W)``."""
    if images.dim() == 5:
        return images.reshape(-1, *images.shape[2:])
    if images.dim() != 4:
        raise ValueError("Expected images (B, C, H, W) or video frames (B, F, C, H, W); "
                         f"got {tuple(images.shape)}.")
    return images


def ssim_loss(images: torch.Tensor, reference: torch.Tensor, prompts: Sequence[str] | None = None) -> float:
    """``1 - SSIM`` of two ``(B, C, H, W)`` image batches (or ``(B, F, C, H, W)`` videos) in ``[0, 1]``."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    value = structural_similarity_index_measure(as_image_batch(images.float()).clamp(0, 1),
                                                as_image_batch(reference.float()).clamp(0, 1),
                                                data_range=1.0, kernel_size=7)
    return float(1.0 - value)


def relative_error(images: torch.Tensor, reference: torch.Tensor) -> float:
    ref = reference.double()
    return float((images.double() - ref).pow(2).sum() / ref.pow(2).sum().clamp_min(1e-30))


def _images(outputs) -> torch.Tensor:
    parts = []
    for out in outputs:
        imgs = getattr(out, "images", None)
        if imgs is None:
            imgs = getattr(out, "frames")
        parts.append(torch.as_tensor(imgs))
    return torch.cat(parts).float()


def measure_sensitivity(
    pipe,
    prompts: Sequence[str],
    denoiser: str = "transformer",
    bits: Sequence[int] = (4,),
    group_by: str = "layer",
    act_bits: int | None = 8,
    group_size: int = 128,
    num_inference_steps: int | None = None,
    call_kwargs: dict[str, Any] | None = None,
    content_metric: Callable[[torch.Tensor, torch.Tensor, Sequence[str]], float] | None = None,
    layers: Sequence[str] | None = None,
    progress: Callable[[str], None] | None = None,
) -> SensitivityResult:
    """Quantize one group at a time and measure the decoupled metrics (module docstring).

    Args:
        pipe: a diffusers pipeline (not quantized).
        prompts: calibration prompts (at least one).
        denoiser: the pipeline component to probe.
        bits: weight bit widths to measure (others are extrapolated).
        group_by: ``"layer"`` (each linear) or ``"component"`` (each block component's linears).
        layers: restrict to these linear names (default: all).
        content_metric: ``(images, reference, prompts) -> loss`` for content layers (default 1-SSIM).

    Raises:
        ValueError: no prompts, unknown ``group_by`` or denoiser, or a layer name that is not a linear.
    """
    from .calibrate import _check_prompts

    prompts = _check_prompts(prompts)
    if group_by not in ("layer", "component"):
        raise ValueError(f"group_by must be 'layer' or 'component'; got {group_by!r}.")
    model = getattr(pipe, denoiser, None)
    if not isinstance(model, torch.nn.Module):
        raise ValueError(f"The pipeline has no {denoiser!r} module to probe.")
    all_names = linear_names(model)
    names = list(layers) if layers is not None else all_names
    unknown = [n for n in names if n not in all_names]
    if unknown:
        QuantPlan(tuple((n, 8) for n in unknown)).check_matches(all_names)
    kinds = layer_kinds(model, names)
    members: dict[str, list[str]] = {}
    group_kind: dict[str, str] = {}
    for n in names:
        group = kinds[n][0] if group_by == "component" else n
        members.setdefault(group, []).append(n)
        group_kind[group] = kinds[n][1]
    modules = dict(model.named_modules())
    sizes = {g: sum(modules[n].weight.numel() for n in ms) for g, ms in members.items()}
    content_metric = content_metric or ssim_loss
    reference = _images(run_prompts(pipe, prompts, num_inference_steps, call_kwargs, output_type="pt"))
    losses: dict[str, dict[Any, float]] = {}
    for i, (group, ms) in enumerate(members.items()):
        losses[group] = {}
        for b in bits:
            records = quantize_linears(model, {n: b for n in ms}, act_bits=act_bits, group_size=group_size)
            try:
                images = _images(run_prompts(pipe, prompts, num_inference_steps, call_kwargs, output_type="pt"))
            finally:
                restore_linears(model, records)
            if group_kind[group] == "content":
                losses[group][b] = float(content_metric(images, reference, prompts))
            else:
                losses[group][b] = relative_error(images, reference)
        if progress is not None:
            progress(f"{i + 1}/{len(members)} {group}: {losses[group]}")
    return SensitivityResult(losses, group_kind, members, sizes)
