"""The bundled models by name, as data: what ``--model benchmark`` / ``--model benchmark-video`` mean.

Each :class:`BundledModel` says where the diffusers folder is, which call arguments it is evaluated
with, where its prompts come from, and which bundled CLIP and FID reference fit it. The eval, search
and demo tools read this table instead of testing names one by one.

Example::

    >>> from diffusion_accel.assets.bundled import BUNDLED_MODELS, bundled_model
    >>> sorted(BUNDLED_MODELS)
    ['benchmark', 'benchmark-video']
    >>> bundled_model("benchmark-video").kind
    'video'
    >>> bundled_model("some/other-model") is None
    True
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

__all__ = ["BundledModel", "BUNDLED_MODELS", "bundled_model", "bundled_prompt_source"]


@dataclass(frozen=True)
class BundledModel:
    """One bundled model.

    Args:
        name: the name the tools accept for ``--model`` (and, with ``:<split>``, for ``--prompts``).
        kind: ``"image"`` or ``"video"``.
        model_dir: the diffusers folder (``from_pretrained``); raises ``FileNotFoundError`` if missing.
        call_kwargs: the reference ``pipe(...)`` arguments (steps, guidance, size, ...).
        prompts: ``split -> captions`` (splits ``"train"`` and ``"heldout"``).
        clip: the CLIP source that scores it (``"benchmark"``: the bundled digits CLIP; per frame for
            videos), or ``None``.
        fid_reference: the FID reference source (``"benchmark"``: the bundled real scenes), or ``None``.
        fvd_reference: the FVD reference source of a video model (``"benchmark-video"``: the bundled
            real held-out clips), or ``None``.
    """

    name: str
    kind: str
    model_dir: Callable[[], str]
    call_kwargs: Mapping[str, Any]
    prompts: Callable[[str], list[str]]
    clip: str | None = "benchmark"
    fid_reference: str | None = None
    fvd_reference: str | None = None
    extra_call_kwargs: Mapping[str, Any] = field(default_factory=dict)

    def generation_kwargs(self) -> dict[str, Any]:
        """The reference call arguments (a fresh dict)."""
        return {**self.extra_call_kwargs, **self.call_kwargs}


def _image_model() -> BundledModel:
    from . import BENCHMARK_GENERATION_KWARGS, benchmark_model_dir, benchmark_prompts

    # Its templated captions need no cleaning, and cleaning needs bs4/ftfy (PixArt warns at every call).
    return BundledModel("benchmark", "image", benchmark_model_dir, BENCHMARK_GENERATION_KWARGS, benchmark_prompts,
                        clip="benchmark", fid_reference="benchmark", extra_call_kwargs={"clean_caption": False})


def _video_model() -> BundledModel:
    from . import BENCHMARK_VIDEO_GENERATION_KWARGS, benchmark_video_model_dir, benchmark_video_prompts

    return BundledModel("benchmark-video", "video", benchmark_video_model_dir, BENCHMARK_VIDEO_GENERATION_KWARGS,
                        benchmark_video_prompts, clip="benchmark", fid_reference=None,
                        fvd_reference="benchmark-video")


#: name -> :class:`BundledModel`.
BUNDLED_MODELS: dict[str, BundledModel] = {m.name: m for m in (_image_model(), _video_model())}


def bundled_model(model: Any) -> BundledModel | None:
    """The bundled model ``model`` is -- its name, its folder, or a pipeline loaded from that folder --
    or ``None``."""
    if not isinstance(model, (str, os.PathLike)):
        model = getattr(model, "name_or_path", None)
        if not isinstance(model, (str, os.PathLike)):
            return None
    name = os.fspath(model)
    if name in BUNDLED_MODELS:
        return BUNDLED_MODELS[name]
    real = os.path.realpath(name)
    for entry in BUNDLED_MODELS.values():
        try:
            if real == os.path.realpath(entry.model_dir()):
                return entry
        except FileNotFoundError:
            continue
    return None


def bundled_prompt_source(source: Any) -> tuple[BundledModel, str] | None:
    """``(model, split)`` when ``source`` names a bundled prompt set (``"<name>"`` = its held-out split,
    or ``"<name>:<split>"``), else ``None``."""
    if not isinstance(source, str):
        return None
    name, _, split = source.partition(":")
    entry = BUNDLED_MODELS.get(name)
    return (entry, split or "heldout") if entry is not None else None
