"""Streaming quality scores of one configuration: every metric fed chunk by chunk.

:class:`QualityScorer` takes chunks of a configuration's outputs together with the baseline's
outputs of the same items and their prompts, and updates every metric at once (CLIP score, FID
against the reference and against the baseline, PSNR, SSIM, LPIPS, numeric deviation), so an
evaluation of thousands of large images never holds more than one chunk in memory. For a fixed
chunk size the result is deterministic (it does not depend on how the outputs were generated).

Example:
    >>> import numpy as np
    >>> a = np.zeros((4, 8, 8, 3), dtype=np.uint8)
    >>> scorer = QualityScorer()
    >>> scorer.update(a[:2], a[:2], ["x", "y"]); scorer.update(a[2:], a[2:], ["x", "y"])
    >>> values, notes = scorer.compute()
    >>> values["psnr"], values["max_abs_error"]
    (inf, 0.0)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from . import metrics as M
from .video_metrics import TemporalSums, video_tensor

__all__ = ["QualityScorer"]


class QualityScorer:
    """Accumulates the quality metrics of one configuration.

    Args:
        clip: a :class:`~.metrics.Clip` for CLIP score (``None``: not computed).
        extractor: FID feature extractor (:func:`~.metrics.fid_features`) or ``None``.
        reference: :class:`~.metrics.ReferenceStats` of the reference set (``fid``) or ``None``.
        baseline: :class:`~.metrics.ReferenceStats` of the baseline outputs (``fid_vs_baseline``) or ``None``.
        lpips: try to compute LPIPS (needs torchvision and its weights; otherwise a note).
        video_extractor: clip-level video feature extractor (:func:`~.video_metrics.fvd_features`)
            for ``fvd`` / ``fvd_vs_baseline``, with ``video_reference`` / ``video_baseline``
            :class:`~.metrics.ReferenceStats` of real videos / the baseline's videos.

    Videos always get the temporal scores of :class:`~.video_metrics.TemporalSums` (``flicker``,
    ``temporal_error``, ``psnr_per_video``, ``ssim_per_video``).
    """

    def __init__(self, clip: M.Clip | None = None, extractor: Any = None, reference: M.ReferenceStats | None = None,
                 baseline: M.ReferenceStats | None = None, lpips: bool = True, video_extractor: Any = None,
                 video_reference: M.ReferenceStats | None = None,
                 video_baseline: M.ReferenceStats | None = None) -> None:
        from torchmetrics.multimodal.clip_score import CLIPScore

        self.clip = clip
        self.text = CLIPScore(model_name_or_path=clip.as_callable(), **M._LOCAL) if clip is not None else None
        self.pairs = CLIPScore(model_name_or_path=clip.as_callable(), **M._LOCAL) if clip is not None else None
        self.fid = M.fid_metric(reference, extractor) if reference is not None else None
        self.fid_baseline = M.fid_metric(baseline, extractor) if baseline is not None else None
        self.psnr = M.psnr_metric()
        self.ssim = M.ssim_metric()
        self.lpips, self.lpips_reason = M.lpips_metric() if lpips else (None, "LPIPS not requested.")
        self.deviation = M.DeviationSums()
        self.num_features = extractor if isinstance(extractor, int) else getattr(extractor, "num_features", None)
        self.frames = 0
        self.video: bool | None = None
        self.temporal = TemporalSums()
        self.fvd = M.fid_metric(video_reference, video_extractor) if video_reference is not None else None
        self.fvd_baseline = M.fid_metric(video_baseline, video_extractor) if video_baseline is not None else None

    def update(self, outputs: np.ndarray, baseline: np.ndarray, prompts: Sequence[str]) -> None:
        """Add a chunk: uint8 ``(N, H, W, 3)`` images or ``(N, F, H, W, 3)`` videos of this
        configuration, the baseline's outputs of the same items, and their ``N`` prompts."""
        outputs, baseline = np.asarray(outputs), np.asarray(baseline)
        if len(prompts) != len(outputs):
            raise ValueError(f"QualityScorer.update got {len(outputs)} outputs but {len(prompts)} prompts.")
        video = outputs.ndim == 5
        if self.video is not None and video != self.video:
            raise ValueError("QualityScorer got both images and videos; score them separately.")
        self.video = video
        a, b = M.unit_pair(outputs, baseline)
        frames = M.as_frames(outputs)
        self.frames += len(frames)
        with torch.inference_mode():
            self.psnr.update(a, b)
            self.ssim.update(a, b)
            if self.lpips is not None:
                self.lpips.update(a.float(), b.float())
            self.deviation.update(outputs, baseline)
            uint8 = M._nchw(frames)
            for metric in (self.fid, self.fid_baseline):
                if metric is not None:
                    metric.update(uint8, real=False)
            if self.text is not None:
                self._update_clip(outputs, prompts, video)
            if video:
                self._update_video(outputs, baseline)

    def _update_video(self, outputs: np.ndarray, baseline: np.ndarray) -> None:
        self.temporal.update(outputs, baseline)
        for metric in (self.fvd, self.fvd_baseline):
            if metric is not None:
                metric.update(video_tensor(outputs), real=False)

    def _update_clip(self, outputs: np.ndarray, prompts: Sequence[str], video: bool) -> None:
        device = self.clip.device
        if not video:
            self.text.update(M._nchw(outputs).to(device), list(prompts))
            return
        for clip_frames, prompt in zip(outputs, prompts):
            frames = M._nchw(clip_frames).to(device)
            self.text.update(frames, [prompt] * len(frames))
            if len(frames) > 1:
                self.pairs.update(list(frames[:-1]), list(frames[1:]))

    def compute(self) -> tuple[dict[str, Any], list[str]]:
        """``(values, notes)``: ``clip_score`` (and ``frame_consistency`` for videos), ``fid``,
        ``fid_vs_baseline``, ``psnr``, ``ssim``, ``lpips``, ``max_abs_error``, ``mean_abs_error``,
        ``wasserstein``; videos add ``flicker``, ``baseline_flicker``, ``temporal_error``,
        ``psnr_per_video``, ``ssim_per_video`` (and ``fvd`` / ``fvd_vs_baseline`` when given); ``None`` for what could not be computed, with a note saying why."""
        if self.frames == 0:
            raise ValueError("QualityScorer.compute() before any update().")
        notes: list[str] = []
        values: dict[str, Any] = {"clip_score": None}
        with torch.inference_mode():
            if self.text is not None:
                values["clip_score"] = float(self.text.compute())
                if self.video:
                    values["frame_consistency"] = float(self.pairs.compute()) if self.pairs.n_samples else None
            enough = self.frames >= 2
            if not enough and (self.fid is not None or self.fid_baseline is not None):
                notes.append("fid: needs at least 2 images (raise --num-images or the number of prompts).")
            if enough and self.fid is not None and self.num_features and self.frames < self.num_features:
                notes.append(f"fid: {self.frames} images for {self.num_features} features: the covariance is "
                             "rank-deficient and FID is dominated by sample bias; compare only runs of the same "
                             "size, and use many more images than features for absolute values.")
            values["fid"] = M.fid_value(self.fid) if self.fid is not None and enough else None
            values["fid_vs_baseline"] = (M.fid_value(self.fid_baseline)
                                         if self.fid_baseline is not None and enough else None)
            values["psnr"] = float(self.psnr.compute())
            values["ssim"] = float(self.ssim.compute())
            values["lpips"] = float(self.lpips.compute()) if self.lpips is not None else None
        if self.lpips is None:
            notes.append(self.lpips_reason)
        values.update(self.deviation.compute())
        if self.video:
            values.update(self._video_values(notes))
        return values, notes

    def _video_values(self, notes: list[str]) -> dict[str, Any]:
        values: dict[str, Any] = self.temporal.compute()
        videos = len(self.temporal.psnrs)
        for key, metric in (("fvd", self.fvd), ("fvd_vs_baseline", self.fvd_baseline)):
            if metric is None:
                continue
            if videos < 2:
                notes.append(f"{key}: needs at least 2 videos.")
            with torch.inference_mode():
                values[key] = M.fid_value(metric) if videos >= 2 else None
        return values
