"""Quality metrics (through torchmetrics): FID, CLIP score, PSNR, SSIM, LPIPS, numeric deviation.

All functions take uint8 channels-last arrays as stored by :mod:`.generate`: images
``(N, H, W, 3)`` or videos ``(N, F, H, W, 3)`` (videos are scored frame by frame).

* **FID** (:func:`fid`): torchmetrics ``FrechetInceptionDistance`` with a pluggable feature
  extractor: ``"clip"`` (projected image embeddings of a local CLIP model, the bundled one
  by default: offline) or ``"inception"`` (torchmetrics' Inception-v3, needs the optional
  ``torch-fidelity``: ``pip install diffusion-accel[fid]``). The reference is a folder of images,
  an array, or saved statistics (:class:`ReferenceStats`, ``.npz``). FID values from different
  extractors are not comparable.
* **CLIP score** (:func:`clip_score`): torchmetrics ``CLIPScore`` with a local model (a callable
  returning ``(model, processor)``); videos: mean per-frame score and frame-to-frame consistency
  (:func:`video_clip_metrics`).
* **Fidelity to the full-compute output** of the same seeds: :func:`psnr` (pooled MSE over the
  set, ``inf`` when identical), :func:`ssim`, :func:`lpips` (``None`` with a reason when torchvision
  or its weights are missing), :func:`numeric_deviation` (max/mean absolute error and the
  Wasserstein-1 distance between the two value distributions).

Example:
    >>> import numpy as np
    >>> a = np.random.default_rng(0).integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    >>> psnr(a, a)
    inf
    >>> numeric_deviation(a, a)["max_abs_error"]
    0.0
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = [
    "FID_FEATURES",
    "Clip",
    "ClipFeatures",
    "DeviationSums",
    "FeatureSums",
    "ReferenceStats",
    "as_frames",
    "clip_score",
    "fid",
    "fid_features",
    "fid_metric",
    "fid_value",
    "load_clip",
    "load_image_folder",
    "load_reference",
    "lpips",
    "lpips_metric",
    "numeric_deviation",
    "psnr",
    "psnr_metric",
    "reference_stats",
    "ssim",
    "ssim_metric",
    "unit_pair",
    "video_clip_metrics",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
# Metrics are computed by one process over all gathered outputs: never synchronise their states
# across a torch.distributed group (the other processes are not computing them).
_LOCAL = {"sync_on_compute": False}


# ---------------------------------------------------------------------------------------------
# CLIP


class _ClipModel(torch.nn.Module):
    """A ``CLIPModel`` whose ``get_image_features``/``get_text_features`` return ``(N, D)`` tensors.

    transformers 5 returns a model output whose ``pooler_output`` holds the projected embeddings;
    torchmetrics expects tensors.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        self.config = model.config

    @staticmethod
    def _tensor(out: Any) -> torch.Tensor:
        return out if torch.is_tensor(out) else out.pooler_output

    def get_image_features(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self._tensor(self.model.get_image_features(*args, **kwargs))

    def get_text_features(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self._tensor(self.model.get_text_features(*args, **kwargs))


@dataclass
class Clip:
    """A CLIP model and its processor, as the metrics use them.

    ``name`` identifies the model in reports; ``model`` returns tensors from
    ``get_image_features``/``get_text_features`` whatever the transformers version.
    """

    model: torch.nn.Module
    processor: Any
    name: str = "clip"

    def __post_init__(self) -> None:
        if not isinstance(self.model, _ClipModel):
            self.model = _ClipModel(self.model)
        self.model.eval()

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def as_callable(self) -> Callable[[], tuple[torch.nn.Module, Any]]:
        """The ``model_name_or_path`` callable torchmetrics ``CLIPScore`` accepts."""
        return lambda: (self.model, self.processor)

    @torch.inference_mode()
    def image_embeddings(self, images: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        """uint8 ``(N, 3, H, W)`` -> projected image embeddings ``(N, D)`` (float32, not normalised),
        preprocessed by the CLIP processor."""
        pixels = self.processor(images=[i.cpu() for i in images], return_tensors="pt")["pixel_values"]
        return self.model.get_image_features(pixels.to(self.device)).float()


def load_clip(source: str | os.PathLike | Clip | tuple = "benchmark", device: str | None = None) -> Clip:
    """A :class:`Clip` from ``"benchmark"`` (the bundled model), a local folder or hub id, or a
    ``(model, processor)`` pair."""
    if isinstance(source, Clip):
        clip = source
    elif isinstance(source, tuple) and len(source) == 2:
        clip = Clip(source[0], source[1])
    else:
        from transformers import CLIPModel, CLIPProcessor

        name = os.fspath(source)
        path = name
        if name == "benchmark":
            from ..assets import benchmark_clip_dir

            path = os.fspath(benchmark_clip_dir())
        try:
            model = CLIPModel.from_pretrained(path)
            processor = CLIPProcessor.from_pretrained(path)
        except OSError as exc:
            raise ValueError(f"Cannot load a CLIP model and processor from {name!r}: {exc}") from exc
        clip = Clip(model, processor, name=name)
    if device is not None:
        clip.model.to(device)
    return clip


# ---------------------------------------------------------------------------------------------
# FID


class ClipFeatures(torch.nn.Module):
    """FID feature extractor: uint8 ``(N, 3, H, W)`` -> projected CLIP image embeddings ``(N, D)``
    (raw, as the bundled ``assets.clip_features.ClipImageFeatures``; float64)."""

    def __init__(self, clip: Clip) -> None:
        super().__init__()
        self.clip = clip
        self.kind = "clip"
        self.num_features = int(clip.model.config.projection_dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.clip.image_embeddings(images).to(torch.float64)


def _inception_features(clip: Clip | None) -> int:
    from torchmetrics.utilities.imports import _TORCH_FIDELITY_AVAILABLE

    if not _TORCH_FIDELITY_AVAILABLE:
        raise ValueError(
            "FID with Inception features needs torch-fidelity (and torchvision): "
            "pip install 'diffusion-accel[fid]'. Or use fid_features='clip' (offline)."
        )
    return 2048


#: Feature extractors for FID, by name: factory(clip) -> nn.Module or torchmetrics' int feature size.
FID_FEATURES: dict[str, Callable[[Clip | None], torch.nn.Module | int]] = {
    "clip": lambda clip: ClipFeatures(_need_clip(clip)),
    "inception": _inception_features,
}


def _need_clip(clip: Clip | None) -> Clip:
    if clip is None:
        raise ValueError("FID with CLIP features needs a CLIP model: pass clip=load_clip(...).")
    return clip


def fid_features(kind: str | torch.nn.Module, clip: Clip | None = None) -> torch.nn.Module | int:
    """The FID feature extractor named ``kind`` (see :data:`FID_FEATURES`), or ``kind`` itself when it
    is already a module returning ``(N, D)`` features from uint8 ``(N, 3, H, W)`` images."""
    if isinstance(kind, torch.nn.Module):
        return kind
    if kind not in FID_FEATURES:
        raise ValueError(f"Unknown FID feature extractor {kind!r}; choose one of {sorted(FID_FEATURES)}.")
    return FID_FEATURES[kind](clip)


def _feature_kind(extractor: torch.nn.Module | int) -> str:
    if isinstance(extractor, int):
        return f"inception-{extractor}"
    return str(getattr(extractor, "kind", type(extractor).__name__))


def _fid_metric(extractor: torch.nn.Module | int):
    from torchmetrics.image.fid import FrechetInceptionDistance

    # States are float64 already; the CLIP extractor returns float64 features.
    return FrechetInceptionDistance(feature=extractor, reset_real_features=False, normalize=False, **_LOCAL)


@dataclass
class ReferenceStats:
    """Sufficient statistics of reference features (the "real" side of FID).

    Attributes: ``features_sum`` ``(D,)``, ``cov_sum`` ``(D, D)`` (sum of outer products),
    ``num_samples``, ``feature_kind`` (e.g. ``"clip"``), all float64; saved as ``.npz``.
    """

    features_sum: np.ndarray
    cov_sum: np.ndarray
    num_samples: int
    feature_kind: str

    def save(self, path: str | os.PathLike) -> None:
        import io

        from ..utils import atomic_write_bytes

        buf = io.BytesIO()
        np.savez(buf, features_sum=self.features_sum, cov_sum=self.cov_sum,
                 num_samples=np.int64(self.num_samples), feature_kind=np.array(self.feature_kind))
        atomic_write_bytes(path, buf.getvalue())

    @classmethod
    def load(cls, path: str | os.PathLike) -> ReferenceStats:
        try:
            with np.load(path, allow_pickle=False) as data:
                return cls(data["features_sum"], data["cov_sum"], int(data["num_samples"]),
                           str(data["feature_kind"]))
        except (OSError, KeyError, ValueError) as exc:
            raise ValueError(f"{os.fspath(path)!r} is not a reference-statistics file "
                             f"(ReferenceStats.save): {exc}") from exc


def as_frames(array: np.ndarray) -> np.ndarray:
    """``(N, H, W, 3)`` or ``(N, F, H, W, 3)`` uint8 -> ``(M, H, W, 3)`` (videos flattened to frames)."""
    array = np.asarray(array)
    if array.dtype != np.uint8 or array.ndim not in (4, 5) or array.shape[-1] != 3:
        raise ValueError(f"Expected uint8 images (N, H, W, 3) or videos (N, F, H, W, 3), got "
                         f"{array.dtype} {tuple(array.shape)}.")
    return array.reshape(-1, *array.shape[-3:])


def _nchw(frames: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)


def _batches(frames: np.ndarray, batch_size: int):
    for i in range(0, len(frames), batch_size):
        yield _nchw(frames[i : i + batch_size])


class FeatureSums:
    """Running sums of FID features (the reference side), fed chunk by chunk.

    Example:
        >>> # sums = FeatureSums(fid_features("clip", clip)); sums.update(chunk); stats = sums.stats()
    """

    def __init__(self, extractor: torch.nn.Module | int) -> None:
        self.extractor = extractor
        self.metric = _fid_metric(extractor) if isinstance(extractor, int) else None
        self.total: torch.Tensor | None = None
        self.cov: torch.Tensor | None = None
        self.n = 0

    def update(self, images: torch.Tensor | list[torch.Tensor]) -> None:
        """Add uint8 images ``(N, 3, H, W)`` (or a list of ``(3, H, W)`` for a CLIP extractor)."""
        if self.metric is not None:
            self.metric.update(images, real=True)
            return
        with torch.inference_mode():
            feats = self.extractor(images).double().reshape(len(images), -1)
        self.total = feats.sum(0) if self.total is None else self.total + feats.sum(0)
        self.cov = feats.T @ feats if self.cov is None else self.cov + feats.T @ feats
        self.n += len(images)

    def update_frames(self, array: np.ndarray, batch_size: int = 64) -> None:
        """Add uint8 images ``(N, H, W, 3)`` or videos ``(N, F, H, W, 3)`` (frames)."""
        for batch in _batches(as_frames(array), batch_size):
            self.update(batch)

    def stats(self) -> ReferenceStats:
        if self.metric is not None:
            m = self.metric
            return ReferenceStats(m.real_features_sum.numpy(), m.real_features_cov_sum.numpy(),
                                  int(m.real_features_num_samples), _feature_kind(self.extractor))
        if self.n == 0:
            raise ValueError("No reference images: FID needs at least 2.")
        return ReferenceStats(self.total.numpy(), self.cov.numpy(), self.n, _feature_kind(self.extractor))


def reference_stats(images: np.ndarray | Sequence[np.ndarray], extractor: torch.nn.Module | int,
                    batch_size: int = 64) -> ReferenceStats:
    """Feature statistics of reference images (uint8 ``(N, H, W, 3)``, or a list of ``(H, W, 3)``
    of any sizes) for :func:`fid`."""
    sums = FeatureSums(extractor)
    for batch in _list_batches(images, batch_size, same_size=isinstance(extractor, int)):
        sums.update(batch)
    return sums.stats()


def _list_batches(images: Any, batch_size: int, same_size: bool):
    if isinstance(images, np.ndarray):
        frames = as_frames(images)
        yield from _batches(frames, batch_size)
        return
    images = list(images)
    for i in range(0, len(images), batch_size):
        chunk = [torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1) for a in images[i : i + batch_size]]
        if same_size or len({tuple(c.shape) for c in chunk}) == 1:
            yield torch.stack(chunk)
        else:
            yield chunk


def load_image_folder(path: str | os.PathLike) -> list[np.ndarray]:
    """RGB uint8 ``(H, W, 3)`` arrays of the images directly inside ``path`` (sorted by name)."""
    from PIL import Image

    path = os.fspath(path)
    if not os.path.isdir(path):
        raise ValueError(f"Reference folder {path!r} does not exist.")
    names = sorted(n for n in os.listdir(path) if n.lower().endswith(IMAGE_EXTENSIONS))
    if not names:
        raise ValueError(f"Reference folder {path!r} holds no images ({', '.join(IMAGE_EXTENSIONS)}); "
                         "point --reference at a folder of reference images or a saved .npz.")
    out = []
    for name in names:
        try:
            with Image.open(os.path.join(path, name)) as img:
                out.append(np.array(img.convert("RGB")))
        except OSError as exc:
            raise ValueError(f"Cannot read reference image {os.path.join(path, name)!r}: {exc}") from exc
    return out


def load_reference(source: Any, extractor: torch.nn.Module | int, batch_size: int = 64) -> ReferenceStats:
    """FID reference statistics from ``"benchmark"`` (the bundled held-out images), a folder of
    images, a saved ``.npz`` (:meth:`ReferenceStats.save`), an array, or a :class:`ReferenceStats`."""
    if isinstance(source, ReferenceStats):
        stats = source
    elif isinstance(source, np.ndarray):
        stats = reference_stats(source, extractor, batch_size)
    else:
        name = os.fspath(source)
        if name == "benchmark" or name.startswith("benchmark:"):
            from ..assets import benchmark_images

            images = benchmark_images(name.partition(":")[2] or "heldout")
            images = getattr(images, "images", images[0] if isinstance(images, tuple) else images)
            stats = reference_stats(np.asarray(images), extractor, batch_size)
        elif name.endswith(".npz"):
            stats = ReferenceStats.load(name)
        else:
            stats = reference_stats(load_image_folder(name), extractor, batch_size)
    kind = _feature_kind(extractor)
    if stats.feature_kind != kind:
        raise ValueError(f"Reference statistics were computed with {stats.feature_kind!r} features, but FID "
                         f"uses {kind!r}; recompute them with the same extractor.")
    if stats.num_samples < 2:
        raise ValueError(f"FID needs at least 2 reference images, got {stats.num_samples}.")
    return stats


def fid(images: np.ndarray, reference: Any, extractor: torch.nn.Module | int,
        batch_size: int = 64) -> float:
    """Fréchet distance between the features of ``images`` and of ``reference``.

    Args:
        images: uint8 ``(N, H, W, 3)`` (or videos, scored by frame), ``N >= 2``.
        reference: anything :func:`load_reference` takes (load it once and pass the
            :class:`ReferenceStats` when scoring several sets).
        extractor: from :func:`fid_features`.

    Returns:
        FID (float >= 0; a negative round-off for identical sets is reported as 0.0).
    """
    frames = as_frames(images)
    if len(frames) < 2:
        raise ValueError(f"FID needs at least 2 images, got {len(frames)}.")
    metric = fid_metric(load_reference(reference, extractor, batch_size), extractor)
    with torch.inference_mode():
        for batch in _batches(frames, batch_size):
            metric.update(batch, real=False)
        return fid_value(metric)


def fid_metric(stats: ReferenceStats, extractor: torch.nn.Module | int):
    """A torchmetrics ``FrechetInceptionDistance`` whose real side holds ``stats``; feed it the
    generated images with ``update(uint8 (N, 3, H, W), real=False)`` and read :func:`fid_value`."""
    metric = _fid_metric(extractor)
    metric.real_features_sum = torch.as_tensor(stats.features_sum, dtype=torch.float64)
    metric.real_features_cov_sum = torch.as_tensor(stats.cov_sum, dtype=torch.float64)
    metric.real_features_num_samples = torch.tensor(stats.num_samples)
    return metric


def fid_value(metric) -> float:
    """``metric.compute()`` as a float; FID is >= 0 and the round-off of identical sets (about
    -1e-11) is reported as 0.0."""
    return max(float(metric.compute()), 0.0)


# ---------------------------------------------------------------------------------------------
# CLIP score


def clip_score(images: np.ndarray, prompts: Sequence[str], clip: Clip, batch_size: int = 64) -> float:
    """Mean CLIP score (100 x cosine, clamped at 0 after averaging, as torchmetrics) of each image
    with its prompt. ``images``: uint8 ``(N, H, W, 3)``; ``prompts``: ``N`` strings."""
    from torchmetrics.multimodal.clip_score import CLIPScore

    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"clip_score takes images (N, H, W, 3); use video_clip_metrics for videos, got "
                         f"shape {tuple(images.shape)}.")
    if len(prompts) != len(images):
        raise ValueError(f"clip_score got {len(images)} images but {len(prompts)} prompts.")
    metric = CLIPScore(model_name_or_path=clip.as_callable(), **_LOCAL)
    with torch.inference_mode():
        for i, batch in enumerate(_batches(as_frames(images), batch_size)):
            metric.update(batch.to(clip.device), list(prompts[i * batch_size : (i + 1) * batch_size]))
        return float(metric.compute())


def video_clip_metrics(videos: np.ndarray, prompts: Sequence[str], clip: Clip) -> dict[str, float]:
    """For videos ``(N, F, H, W, 3)`` uint8: ``clip_score`` (mean over all frames of the frame's CLIP
    score with its prompt) and ``frame_consistency`` (mean CLIP score between consecutive frames'
    image embeddings, 100 = identical)."""
    from torchmetrics.multimodal.clip_score import CLIPScore

    videos = np.asarray(videos)
    if videos.ndim != 5:
        raise ValueError(f"video_clip_metrics takes videos (N, F, H, W, 3), got shape {tuple(videos.shape)}.")
    if len(prompts) != len(videos):
        raise ValueError(f"video_clip_metrics got {len(videos)} videos but {len(prompts)} prompts.")
    text = CLIPScore(model_name_or_path=clip.as_callable(), **_LOCAL)
    pairs = CLIPScore(model_name_or_path=clip.as_callable(), **_LOCAL)
    with torch.inference_mode():
        for video, prompt in zip(videos, prompts):
            frames = _nchw(video).to(clip.device)
            text.update(frames, [prompt] * len(frames))
            if len(frames) > 1:
                pairs.update(list(frames[:-1]), list(frames[1:]))
        out = {"clip_score": float(text.compute())}
        out["frame_consistency"] = float(pairs.compute()) if videos.shape[1] > 1 else None
    return out


# ---------------------------------------------------------------------------------------------
# Fidelity to the full-compute output


def unit_pair(images: np.ndarray, reference: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Two uint8 sets of the same items -> float64 ``(M, 3, H, W)`` in [0, 1] (videos as frames)."""
    a, b = as_frames(images), as_frames(reference)
    if a.shape != b.shape:
        raise ValueError(f"Cannot compare outputs of shapes {tuple(np.shape(images))} and "
                         f"{tuple(np.shape(reference))}: they must be the same items.")
    return _nchw(a).double() / 255.0, _nchw(b).double() / 255.0


def psnr_metric():
    """torchmetrics PSNR (data range 1) pooling the squared error of every update (float64 states)."""
    from torchmetrics.image import PeakSignalNoiseRatio

    return PeakSignalNoiseRatio(data_range=1.0, **_LOCAL).set_dtype(torch.float64)


def ssim_metric():
    """torchmetrics SSIM (Gaussian window 11, data range 1), averaged over every image of every update."""
    from torchmetrics.image import StructuralSimilarityIndexMeasure

    return StructuralSimilarityIndexMeasure(data_range=1.0, **_LOCAL).set_dtype(torch.float64)


def lpips_metric(net: str = "alex"):
    """``(torchmetrics LPIPS, None)``, or ``(None, reason)`` when torchvision or the weights are missing."""
    import importlib.util

    if importlib.util.find_spec("torchvision") is None:
        return None, LPIPS_NO_TORCHVISION
    try:
        from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

        return LearnedPerceptualImagePatchSimilarity(net_type=net, normalize=True, **_LOCAL), None
    except Exception as exc:  # noqa: BLE001 - any failure to get the network means "not available"
        return None, f"LPIPS not computed: its network weights could not be loaded ({exc})."


#: The note of a run without torchvision (one sentence, one fix).
LPIPS_NO_TORCHVISION = "LPIPS not computed: it needs torchvision (pip install 'diffusion-accel[fid]')."


def psnr(images: np.ndarray, reference: np.ndarray) -> float:
    """PSNR in dB (data range 1) of the whole set: ``10 log10(1 / MSE)`` with the MSE pooled over all
    pixels of all items. Identical sets give ``float("inf")`` (not an error)."""
    return float(psnr_metric()(*unit_pair(images, reference)))


def ssim(images: np.ndarray, reference: np.ndarray) -> float:
    """Mean SSIM (Gaussian window 11, data range 1) over items (frames for videos); 1.0 = identical."""
    return float(ssim_metric()(*unit_pair(images, reference)))


def lpips(images: np.ndarray, reference: np.ndarray, net: str = "alex") -> tuple[float | None, str | None]:
    """Mean LPIPS distance, or ``(None, reason)`` when torchvision or the LPIPS weights are missing."""
    metric, reason = lpips_metric(net)
    if metric is None:
        return None, reason
    a, b = unit_pair(images, reference)
    with torch.inference_mode():
        return float(metric(a.float(), b.float())), None


class DeviationSums:
    """Running numeric deviation between outputs and reference values, fed chunk by chunk.

    uint8 inputs (scaled to [0, 1]) are summarised by 256-bin histograms, so the Wasserstein
    distance between the two value distributions is exact (``scipy.stats.wasserstein_distance``
    with weights) in constant memory; float inputs are kept whole.
    """

    def __init__(self) -> None:
        self.max_abs = 0.0
        self.sum_abs = 0.0
        self.count = 0
        self.hist_a = np.zeros(256, dtype=np.int64)
        self.hist_b = np.zeros(256, dtype=np.int64)
        self.values_a: list[np.ndarray] = []
        self.values_b: list[np.ndarray] = []

    def update(self, outputs: np.ndarray, reference: np.ndarray) -> None:
        a, b = np.asarray(outputs), np.asarray(reference)
        if a.shape != b.shape:
            raise ValueError(f"Cannot compare outputs of shapes {a.shape} and {b.shape}.")
        if a.dtype != b.dtype:
            raise ValueError(f"Cannot compare {a.dtype} outputs with {b.dtype} reference values.")
        uint8 = a.dtype == np.uint8
        scale = 255.0 if uint8 else 1.0
        diff = np.abs(a.astype(np.float64) - b.astype(np.float64)).ravel() / scale
        if diff.size:
            self.max_abs = max(self.max_abs, float(diff.max()))
            self.sum_abs += float(diff.sum())
            self.count += diff.size
        if uint8:
            self.hist_a += np.bincount(a.ravel(), minlength=256)
            self.hist_b += np.bincount(b.ravel(), minlength=256)
        else:
            self.values_a.append(a.astype(np.float64).ravel())
            self.values_b.append(b.astype(np.float64).ravel())

    def compute(self) -> dict[str, float]:
        from scipy.stats import wasserstein_distance

        if self.count == 0:
            return {"max_abs_error": 0.0, "mean_abs_error": 0.0, "wasserstein": 0.0}
        if self.values_a:
            if self.hist_a.any():
                raise ValueError("DeviationSums got both uint8 and float values; use one kind.")
            w = wasserstein_distance(np.concatenate(self.values_a), np.concatenate(self.values_b))
        else:
            levels = np.arange(256) / 255.0
            w = wasserstein_distance(levels, levels, self.hist_a, self.hist_b)
        return {"max_abs_error": self.max_abs, "mean_abs_error": self.sum_abs / self.count,
                "wasserstein": float(w)}


def numeric_deviation(outputs: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """Deviation of ``outputs`` from ``reference`` (same shape; uint8 scaled to [0, 1]).

    Returns ``max_abs_error``, ``mean_abs_error`` (elementwise) and ``wasserstein`` (the 1-D
    Wasserstein distance between the two value distributions, ``scipy.stats.wasserstein_distance``).
    """
    sums = DeviationSums()
    sums.update(outputs, reference)
    return sums.compute()
