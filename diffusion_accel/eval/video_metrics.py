"""Video quality: a Fréchet video distance on clip-level features, flicker and temporal fidelity.

Images are scored frame by frame in :mod:`.metrics`; a video also has a *time* axis that frame
scores miss (a cache that freezes motion keeps every frame sharp). This module adds:

* :class:`ClipVideoFeatures` -- clip-level features of a whole video from the bundled (or any)
  CLIP: the mean of its frames' image embeddings, their spread over time, and the mean change
  between consecutive frames (``3 D`` features). The Fréchet distance between two sets of these is
  reported as ``fvd``. The extractor is pluggable like FID's (:data:`FVD_FEATURES`, or any module
  mapping uint8 ``(N, F, 3, H, W)`` to ``(N, D)`` with ``num_features = D``); the classic I3D FVD needs downloaded weights.
* :class:`TemporalSums` -- streaming ``flicker`` (mean absolute change between consecutive frames,
  pixels in [0, 1]; lower is steadier), and against the full-compute output: ``temporal_error``
  (mean absolute difference of the frame-to-frame changes: motion that was frozen or invented)
  and ``psnr_per_video`` / ``ssim_per_video`` (the mean over videos of each video's own score,
  so one broken video is not averaged away in a pooled MSE).

Example:
    >>> import numpy as np
    >>> videos = np.random.default_rng(0).integers(0, 256, (2, 5, 8, 8, 3), dtype=np.uint8)
    >>> sums = TemporalSums(); sums.update(videos, videos)
    >>> values = sums.compute()
    >>> values["temporal_error"], values["psnr_per_video"]
    (0.0, inf)
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from . import metrics as M

__all__ = ["ClipVideoFeatures", "FVD_FEATURES", "fvd_features", "video_tensor", "TemporalSums",
           "video_reference_stats", "load_video_reference", "check_video_reference", "fvd"]


def video_tensor(videos: np.ndarray) -> torch.Tensor:
    """uint8 ``(N, F, H, W, 3)`` -> uint8 ``(N, F, 3, H, W)`` (the layout video extractors take)."""
    videos = np.asarray(videos)
    if videos.dtype != np.uint8 or videos.ndim != 5 or videos.shape[-1] != 3:
        raise ValueError(f"Expected uint8 videos (N, F, H, W, 3), got {videos.dtype} {tuple(videos.shape)}.")
    return torch.from_numpy(np.ascontiguousarray(videos)).permute(0, 1, 4, 2, 3)


class ClipVideoFeatures(torch.nn.Module):
    """uint8 ``(N, F, 3, H, W)`` -> float64 ``(N, 3 D)``: per video, the mean CLIP image embedding
    of its frames, their standard deviation over time, and the mean absolute change of the
    embedding between consecutive frames (0 for one-frame videos)."""

    def __init__(self, clip: M.Clip) -> None:
        super().__init__()
        self.clip = clip
        self.kind = "clip-video"
        self.num_features = 3 * int(clip.model.config.projection_dim)

    def forward(self, videos: torch.Tensor) -> torch.Tensor:
        if videos.ndim != 5:
            raise ValueError(f"ClipVideoFeatures takes uint8 videos (N, F, 3, H, W), got {tuple(videos.shape)}.")
        n, f = videos.shape[:2]
        frames = self.clip.image_embeddings(videos.reshape(n * f, *videos.shape[2:]))
        frames = frames.to(torch.float64).reshape(n, f, -1)
        change = (frames[:, 1:] - frames[:, :-1]).abs().mean(1) if f > 1 else torch.zeros_like(frames[:, 0])
        spread = frames.std(1, unbiased=False)
        return torch.cat([frames.mean(1), spread, change], dim=1)


#: Video feature extractors for ``fvd``, by name: factory(clip) -> module.
FVD_FEATURES: dict[str, Callable[[M.Clip | None], torch.nn.Module]] = {
    "clip-video": lambda clip: ClipVideoFeatures(M._need_clip(clip)),
}


def fvd_features(kind: str | torch.nn.Module = "clip-video", clip: M.Clip | None = None) -> torch.nn.Module:
    """The video feature extractor named ``kind`` (:data:`FVD_FEATURES`), or ``kind`` itself when it
    is already a module mapping uint8 ``(N, F, 3, H, W)`` to ``(N, D)`` with a ``num_features = D``
    attribute (torchmetrics would otherwise probe it with an image)."""
    if isinstance(kind, torch.nn.Module):
        if not isinstance(getattr(kind, "num_features", None), int):
            raise ValueError(f"A custom video feature extractor needs an int attribute num_features (its D); "
                             f"{type(kind).__name__} has none.")
        return kind
    if kind not in FVD_FEATURES:
        raise ValueError(f"Unknown video feature extractor {kind!r}; choose one of {sorted(FVD_FEATURES)} "
                         "or pass a torch module.")
    return FVD_FEATURES[kind](clip)


def video_reference_stats(videos: np.ndarray, extractor: torch.nn.Module, batch_size: int = 8) -> M.ReferenceStats:
    """Feature statistics of reference videos (uint8 ``(N, F, H, W, 3)``, ``N >= 2``) for :func:`fvd`."""
    sums = M.FeatureSums(extractor)
    tensor = video_tensor(videos)
    if len(tensor) < 2:
        raise ValueError(f"FVD needs at least 2 reference videos, got {len(tensor)}.")
    for start in range(0, len(tensor), batch_size):
        sums.update(tensor[start : start + batch_size])
    return sums.stats()


def check_video_reference(source) -> None:
    """One clear ``ValueError`` unless ``source`` is something :func:`load_video_reference` takes
    (nothing is loaded but a ``.npz`` file's header)."""
    if source is None or isinstance(source, (M.ReferenceStats, np.ndarray)):
        return
    import os

    name = os.fspath(source)
    if name == "benchmark-video" or name.startswith("benchmark-video:"):
        return
    if not name.endswith((".npy", ".npz")) or not os.path.isfile(name):
        raise ValueError(f"Video reference {name!r} is neither 'benchmark-video[:split]', a .npy of uint8 videos "
                         "(N, F, H, W, 3) nor a .npz of statistics (ReferenceStats.save); pass one of those, or "
                         "'none' (--video-reference).")


def load_video_reference(source, extractor: torch.nn.Module, batch_size: int = 8) -> M.ReferenceStats:
    """FVD reference statistics from ``"benchmark-video[:split]"`` (the bundled real clips, held-out
    by default), a ``.npy`` of uint8 videos ``(N, F, H, W, 3)``, a saved ``.npz`` of
    :class:`~.metrics.ReferenceStats`, an array of videos, or statistics."""
    import os

    check_video_reference(source)
    if isinstance(source, M.ReferenceStats):
        stats = source
    elif isinstance(source, np.ndarray):
        stats = video_reference_stats(source, extractor, batch_size)
    else:
        name = os.fspath(source)
        if name.endswith(".npz"):
            stats = M.ReferenceStats.load(name)
        elif name.endswith(".npy"):
            stats = video_reference_stats(np.load(name, allow_pickle=False), extractor, batch_size)
        else:
            from ..assets import benchmark_video_clips

            videos, _ = benchmark_video_clips(name.partition(":")[2] or "heldout")
            stats = video_reference_stats(videos, extractor, batch_size)
    kind = M._feature_kind(extractor)
    if stats.feature_kind != kind:
        raise ValueError(f"Video reference statistics were computed with {stats.feature_kind!r} features, but FVD "
                         f"uses {kind!r}; recompute them with the same extractor.")
    return stats


def fvd(videos: np.ndarray, reference: np.ndarray | M.ReferenceStats, extractor: torch.nn.Module,
        batch_size: int = 8) -> float:
    """Fréchet distance between clip-level features of ``videos`` and ``reference`` (videos or the
    :class:`~.metrics.ReferenceStats` of :func:`video_reference_stats`); ``>= 0``."""
    stats = reference if isinstance(reference, M.ReferenceStats) else video_reference_stats(reference, extractor)
    tensor = video_tensor(videos)
    if len(tensor) < 2:
        raise ValueError(f"FVD needs at least 2 videos, got {len(tensor)}.")
    metric = M.fid_metric(stats, extractor)
    with torch.inference_mode():
        for start in range(0, len(tensor), batch_size):
            metric.update(tensor[start : start + batch_size], real=False)
        return M.fid_value(metric)


#: dB an identical video counts as in ``psnr_per_video`` (so one exact video does not make the mean inf).
PSNR_CEILING = 100.0


class TemporalSums:
    """Streaming temporal scores of videos against the full-compute output of the same items.

    ``update(outputs, baseline)`` with uint8 ``(N, F, H, W, 3)`` each; ``compute()`` returns
    ``flicker`` and ``baseline_flicker`` (mean ``|x[t+1] - x[t]|``, pixels in [0, 1]),
    ``temporal_error`` (mean ``|Δx_out - Δx_baseline|``), ``psnr_per_video`` (dB, mean of each
    video's PSNR, an identical video counting as :data:`PSNR_CEILING`; ``inf`` when every video is
    identical) and ``ssim_per_video``.
    """

    def __init__(self) -> None:
        self.flicker = self.baseline_flicker = self.temporal_error = 0.0
        self.psnrs: list[float] = []
        self.ssims: list[float] = []
        self.changes = self.identical = 0

    def update(self, outputs: np.ndarray, baseline: np.ndarray) -> None:
        a, b = video_tensor(outputs).double() / 255.0, video_tensor(baseline).double() / 255.0
        if a.shape != b.shape:
            raise ValueError(f"Cannot compare videos of shapes {tuple(np.shape(outputs))} and "
                             f"{tuple(np.shape(baseline))}: they must be the same items.")
        if a.shape[1] > 1:
            da, db = a[:, 1:] - a[:, :-1], b[:, 1:] - b[:, :-1]
            self.flicker += float(da.abs().sum())
            self.baseline_flicker += float(db.abs().sum())
            self.temporal_error += float((da - db).abs().sum())
            self.changes += da.numel()
        for video_a, video_b in zip(a, b):
            mse = float((video_a - video_b).pow(2).mean())
            self.psnrs.append(float("inf") if mse == 0 else 10.0 * np.log10(1.0 / mse))
            self.identical += mse == 0
            metric = M.ssim_metric()
            self.ssims.append(float(metric(video_a, video_b)))

    def _mean_psnr(self) -> float:
        """Mean over videos; an identical video counts as :data:`PSNR_CEILING` unless all are."""
        if self.identical == len(self.psnrs):
            return float("inf")
        return float(np.mean([min(value, PSNR_CEILING) for value in self.psnrs]))

    def compute(self) -> dict[str, float | None]:
        if not self.psnrs:
            raise ValueError("TemporalSums.compute() before any update().")
        per_change = (lambda total: total / self.changes) if self.changes else (lambda total: None)
        return {
            "flicker": per_change(self.flicker),
            "baseline_flicker": per_change(self.baseline_flicker),
            "temporal_error": per_change(self.temporal_error),
            "psnr_per_video": self._mean_psnr(),
            "ssim_per_video": float(np.mean(self.ssims)),
        }
