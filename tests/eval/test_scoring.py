import math

import numpy as np
import pytest

from diffusion_accel.eval import metrics as M
from diffusion_accel.eval.scoring import QualityScorer


def test_chunked_scores_equal_whole_set_scores(clip, make_scenes):
    reference, baseline = make_scenes(8, seed=0), make_scenes(6, seed=1)
    rng = np.random.default_rng(2)
    outputs = np.clip(baseline.astype(int) + rng.integers(-20, 21, baseline.shape), 0, 255).astype(np.uint8)
    prompts = [f"box {i}" for i in range(6)]
    features = M.fid_features("clip", clip)
    ref_stats, base_stats = M.reference_stats(reference, features), M.reference_stats(baseline, features)
    scorer = QualityScorer(clip=clip, extractor=features, reference=ref_stats, baseline=base_stats)
    for i in (0, 2, 5):  # uneven chunks
        j = {0: 2, 2: 5, 5: 6}[i]
        scorer.update(outputs[i:j], baseline[i:j], prompts[i:j])
    values, _ = scorer.compute()
    assert values["fid"] == pytest.approx(M.fid(outputs, ref_stats, features), abs=1e-6)  # float32 features of other batches
    assert values["fid_vs_baseline"] == pytest.approx(M.fid(outputs, baseline, features), abs=1e-6)
    assert values["clip_score"] == pytest.approx(M.clip_score(outputs, prompts, clip), rel=1e-5)
    assert values["psnr"] == pytest.approx(M.psnr(outputs, baseline), rel=1e-12)
    assert values["ssim"] == pytest.approx(M.ssim(outputs, baseline), rel=1e-9)
    whole = M.numeric_deviation(outputs, baseline)
    for key in ("max_abs_error", "mean_abs_error", "wasserstein"):
        assert values[key] == pytest.approx(whole[key], rel=1e-12)
    assert values["lpips"] is None or values["lpips"] >= 0


def test_histogram_wasserstein_equals_scipy_on_the_raw_values(make_scenes):
    from scipy.stats import wasserstein_distance

    a, b = make_scenes(3, seed=0), make_scenes(3, seed=4)
    expected = wasserstein_distance(a.ravel() / 255.0, b.ravel() / 255.0)
    assert M.numeric_deviation(a, b)["wasserstein"] == pytest.approx(expected, rel=1e-12)


def test_identical_outputs_score_as_identical(make_scenes):
    a = make_scenes(3)
    scorer = QualityScorer()
    scorer.update(a, a, ["x"] * 3)
    values, _ = scorer.compute()
    assert values["psnr"] == math.inf and values["ssim"] == pytest.approx(1.0)
    assert values["wasserstein"] == values["max_abs_error"] == 0.0
    with pytest.raises(ValueError, match="before any update"):
        QualityScorer().compute()
