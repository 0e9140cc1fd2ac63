"""Settings of the tools that run a pipeline on a prompt set: :class:`RunSettings` and :class:`EvalSettings`.

:class:`RunSettings` holds what the evaluation harness and the schedule search share -- which model,
which prompts (or per-item call arguments), seeds, steps, pipeline arguments, device, output folder --
each field defined and checked once. :class:`EvalSettings` (this package) and
:class:`~diffusion_accel.search.SearchSettings` add their own fields. Settings are frozen; building
them validates them (:meth:`RunSettings.validate`), so an invalid one never exists. The tools' functions
take ``settings=`` or the same fields as keyword arguments.

Example:
    >>> settings = EvalSettings(configs=("fast.json",), num_images=2, out="eval-out")
    >>> settings.prompts, settings.batch_size          # the harness's defaults
    ('benchmark', 1)
    >>> EvalSettings(num_images=0, out="x")
    Traceback (most recent call last):
    ...
    ValueError: num_images must be an integer >= 1, got 0; generate at least one image per prompt.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

__all__ = ["COST_MEASURES", "EvalSettings", "RunSettings", "check_device", "check_int", "check_output_folder",
           "jsonable", "source_label"]

#: Optional per-variant cost measurements of the evaluation harness (latency is always measured).
COST_MEASURES = ("macs", "memory", "operators")


def source_label(source: Any) -> str:
    """A model, CLIP or reference as recorded in a run's files: its name or path, or ``<Class instance>``."""
    return os.fspath(source) if isinstance(source, (str, os.PathLike)) else f"<{type(source).__name__} instance>"


def jsonable(value: Any) -> Any:
    """``value`` as it reads back from JSON (anything JSON cannot hold becomes its ``str``)."""
    return json.loads(json.dumps(value, default=str))


def check_int(name: str, value: Any, minimum: int, hint: str, optional: bool = False) -> None:
    """One clear ``ValueError`` unless ``value`` is an integer ``>= minimum`` (or ``None`` if ``optional``)."""
    if optional and value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}; {hint}.")


def check_output_folder(out: str | os.PathLike, flag: str = "--out") -> None:
    """One clear ``ValueError`` unless ``out`` is a folder, or can be created as one, that this process
    can write to. Nothing is created: a temporary file is made and removed in the nearest existing
    folder on the path. ``flag`` names the option in the message (``out=`` in Python)."""
    path = os.path.abspath(os.fspath(out))
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"{flag} {os.fspath(out)!r} is a file, not a folder; choose a folder for {flag}.")
    existing = path
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ValueError(f"{flag} {os.fspath(out)!r} cannot be created: {existing!r} is a file; choose a "
                         f"folder path for {flag}.")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        raise ValueError(f"{flag} {os.fspath(out)!r} is not writable ({existing!r}: {exc.strerror or exc}); choose "
                         f"a folder you can write to for {flag}.") from None


def check_device(device: Any, flag: str = "--device") -> None:
    """One clear ``ValueError`` unless ``device`` (``None`` = the default) names a device this machine has."""
    if device is None:
        return
    import torch

    try:
        torch.empty(0, device=torch.device(device))
    except (RuntimeError, AssertionError, ValueError, TypeError) as exc:
        available = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
        raise ValueError(f"{flag} {str(device)!r} is not available here ({str(exc).splitlines()[0]}); use one of "
                         f"{available}, or leave {flag} out for the default.") from None


@dataclass(frozen=True)
class RunSettings:
    """What a tool runs: the fields the evaluation harness and the schedule search share.

    Args:
        model: ``"benchmark"`` (the bundled model), a diffusers folder or hub id, or a pipeline
            (``"tiny:<name>"`` too for the search).
        prompts: a prompt file, ``"benchmark[:split]"``, or a list of prompts -- or of mappings of
            per-item call arguments for pipelines without a text prompt (``{"class_labels": 207}``).
            Default: the tool's (:attr:`DEFAULT_PROMPTS`).
        num_prompts: sample this many prompts (seeded by ``seed``); ``None`` keeps all.
        num_images: images per prompt.
        seed: seeds prompt sampling and every item's noise.
        num_steps: ``num_inference_steps`` of every call (default: ``call_kwargs``' or the pipeline's).
        batch_size: items per pipeline call (default: the tool's, :attr:`DEFAULT_BATCH_SIZE`).
        call_kwargs: further pipeline arguments, without the items' inputs, ``generator`` and
            ``output_type`` (default: the benchmark's settings for the benchmark model).
        device: where to run (default: the process's accelerator device, else CPU).
        out: the output folder.
        resume: continue the run in ``out`` (same settings).
        progress: tqdm progress bars (main process).
        clip: CLIP model for CLIP score and CLIP-feature FID (``"benchmark"``, folder, hub id, a
            loaded CLIP, or ``None``).
    """

    DEFAULT_PROMPTS: ClassVar[str] = "benchmark"
    DEFAULT_BATCH_SIZE: ClassVar[int] = 1

    model: Any = "benchmark"
    prompts: Any = None
    num_prompts: int | None = None
    num_images: int = 1
    seed: int = 0
    num_steps: int | None = None
    batch_size: int | None = None
    call_kwargs: dict[str, Any] | None = None
    device: Any = None
    out: Any = None
    resume: bool = False
    progress: bool = True
    clip: Any = "benchmark"

    def __post_init__(self) -> None:
        if self.prompts is None:  # the tool's default split of the bundled model's own prompts
            object.__setattr__(self, "prompts", _default_prompts(self.DEFAULT_PROMPTS, self.model))
        if self.batch_size is None:
            object.__setattr__(self, "batch_size", self.DEFAULT_BATCH_SIZE)
        if isinstance(self.call_kwargs, Mapping):
            object.__setattr__(self, "call_kwargs", dict(self.call_kwargs))  # the caller's dict may change
        self.validate()

    def validate(self) -> None:
        """Raise one ``ValueError`` naming the first invalid field and how to fix it."""
        check_int("num_images", self.num_images, 1, "generate at least one image per prompt")
        check_int("batch_size", self.batch_size, 1, "use at least one item per call")
        check_int("num_prompts", self.num_prompts, 1, "sample at least one prompt, or None for all", optional=True)
        check_int("num_steps", self.num_steps, 1, "run at least one denoising step", optional=True)
        if isinstance(self.call_kwargs, dict):
            check_int("num_inference_steps (steps)", self.call_kwargs.get("num_inference_steps"), 1,
                      "run at least one denoising step", optional=True)
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ValueError(f"seed must be an integer, got {self.seed!r}; it seeds prompt sampling and every item's noise.")
        if self.call_kwargs is not None and not isinstance(self.call_kwargs, dict):
            raise ValueError(f"call_kwargs must be a dict of pipeline arguments or None, got "
                             f"{type(self.call_kwargs).__name__}.")

    @property
    def model_label(self) -> str:
        """``model`` as recorded in a run's files (:func:`source_label`)."""
        return source_label(self.model)

    @classmethod
    def from_arguments(cls, settings: RunSettings | None, caller: str, positional: dict[str, Any],
                       options: dict[str, Any]) -> RunSettings:
        """``settings`` (or the defaults) with fields replaced: by the ``positional`` arguments that are
        not ``None`` (``None`` there means "not given") and by every keyword argument in ``options``.

        ``caller`` names the function in the message for an unknown argument (a ``TypeError``, as
        Python gives for any function).
        """
        if settings is not None and not isinstance(settings, cls):
            raise TypeError(f"{caller}(settings=...) takes a {cls.__name__}, got {type(settings).__name__}.")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - names)
        if unknown:
            raise TypeError(f"{caller}() got unexpected keyword argument(s) {unknown}; its settings are "
                            f"{sorted(names)} (see {cls.__name__}).")
        given = {**{k: v for k, v in positional.items() if v is not None}, **options}
        return dataclasses.replace(settings, **given) if settings is not None else cls(**given)


@dataclass(frozen=True)
class EvalSettings(RunSettings):
    """Settings of :func:`diffusion_accel.eval.evaluate` (shared fields: :class:`RunSettings`).

    Args:
        configs: AccelerationConfig files, frontier files, configs or ``(name, config)`` pairs (see
            :func:`~diffusion_accel.eval.load_configs`); the baseline is always evaluated first.
        prompt_column, category_column, categories: see :func:`~diffusion_accel.eval.load_prompts`
            (``column``, ``category_column``, ``categories``).
        reference: FID reference: ``"auto"`` (the benchmark images for the benchmark model, else
            none), ``None``, ``"benchmark[:split]"``, a folder of images or a ``.npz`` of statistics.
        fid_features: ``"clip"``, ``"inception"`` (needs torch-fidelity) or an ``nn.Module``.
        video_reference: FVD reference of a video model: ``"auto"`` (the bundled held-out clips for
            ``benchmark-video``, else none), ``None``, ``"benchmark-video[:split]"``, a ``.npy`` of
            uint8 videos ``(N, F, H, W, 3)`` or a ``.npz`` of statistics. ``fvd_vs_baseline`` (the
            full-compute clips as reference) is computed for every video run with a CLIP.
        fvd_features: the clip-level video feature extractor: a name of
            :data:`~diffusion_accel.eval.video_metrics.FVD_FEATURES` (``"clip-video"``) or an ``nn.Module``.
        latency_runs, warmup: timed and warm-up calls of the cost measurement.
        dtype: load the model in this dtype (default: its own).
        measure: cost measurements besides latency (:data:`COST_MEASURES`), each one more call.
        clip: as in :class:`RunSettings`, default ``"auto"``: the bundled CLIP for the bundled model;
            for any other model CLIP score and CLIP-feature FID are skipped (with a note in the
            report) unless a CLIP model that fits it is given -- the bundled CLIP only knows digit scenes.
    """

    DEFAULT_PROMPTS: ClassVar[str] = "benchmark"
    DEFAULT_BATCH_SIZE: ClassVar[int] = 1

    configs: tuple[Any, ...] = ()
    prompt_column: str | None = None
    category_column: str | None = None
    categories: tuple[str, ...] | None = None
    reference: Any = "auto"
    fid_features: Any = "clip"
    video_reference: Any = "auto"
    fvd_features: Any = "clip-video"
    latency_runs: int = 3
    warmup: int = 1
    dtype: Any = None
    measure: tuple[str, ...] = COST_MEASURES
    clip: Any = "auto"

    def __post_init__(self) -> None:
        object.__setattr__(self, "configs", tuple(self.configs))
        if self.categories is not None and not isinstance(self.categories, str):
            object.__setattr__(self, "categories", tuple(self.categories))
        if not isinstance(self.measure, str):
            object.__setattr__(self, "measure", tuple(self.measure))
        super().__post_init__()

    def validate(self) -> None:
        super().validate()
        if self.out is None:
            raise ValueError("out is required: evaluate() writes its images, results and report to a folder; "
                             "pass out='eval-out' (--out).")
        if not isinstance(self.latency_runs, int) or self.latency_runs < 1 or not isinstance(self.warmup, int) \
                or self.warmup < 0:
            raise ValueError(f"latency_runs must be >= 1 and warmup >= 0, got {self.latency_runs} and {self.warmup}.")
        unknown = sorted(set(self.measure) - set(COST_MEASURES)) if not isinstance(self.measure, str) else [self.measure]
        if unknown:
            raise ValueError(f"Unknown cost measure(s) {unknown}; choose from {list(COST_MEASURES)}.")


def _default_prompts(default: str, model: Any) -> str:
    """``default`` (e.g. ``"benchmark:train"``), for a bundled model by name its own prompt set with
    the same split (``"benchmark-video:train"``)."""
    from ..assets.bundled import BUNDLED_MODELS

    if isinstance(model, str) and model in BUNDLED_MODELS:
        _, colon, split = default.partition(":")
        return model + colon + split
    return default
