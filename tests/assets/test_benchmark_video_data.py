"""The digit-clip data recipe, its judges, and the video training script's smoke mode."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("sklearn")

from diffusion_accel.assets import (  # noqa: E402
    BENCHMARK_VIDEO_GENERATION_KWARGS,
    benchmark_video_attributes,
    benchmark_video_prompts,
)
from diffusion_accel.assets.caption_tokenizers import build_t5_tokenizer  # noqa: E402
from diffusion_accel.assets.digits import load_digit_scans, split_scan_indices  # noqa: E402
from diffusion_accel.assets.video_clips import (  # noqa: E402
    VIDEO_RECIPE,
    heldout_video_combinations,
    make_video_split,
    video_caption_for,
    video_caption_vocabulary,
)
from diffusion_accel.assets.video_judges import centroid_track, judge_clips, motion_of  # noqa: E402
from diffusion_accel.assets.video_training import latent_weights  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def scans():
    return load_digit_scans()


@pytest.fixture(scope="module")
def clips(scans):
    return {split: make_video_split(split, 80, scans=scans) for split in ("train", "heldout")}


def test_clips_are_deterministic_and_shaped(scans, clips):
    again = make_video_split("heldout", 80, scans=scans)
    assert np.array_equal(again.videos, clips["heldout"].videos) and again.captions == clips["heldout"].captions
    assert clips["train"].videos.shape == (80, 9, 32, 32, 3) and clips["train"].videos.dtype == np.uint8


def test_caption_states_the_clip():
    assert video_caption_for([3], [0], [0], [2], 0) == "a small red three moving right on a black background"
    assert video_caption_for([7, 1], [5, 3], [1, 0], [0, 3], 1) == (
        "a large cyan seven standing still and a small yellow one moving up on a white background")
    with pytest.raises(ValueError, match="at least one digit"):
        video_caption_for([-1], [-1], [-1], [-1], 0)


def test_every_caption_word_is_one_token(clips):
    tokenizer = build_t5_tokenizer(video_caption_vocabulary())
    for caption in clips["heldout"].captions[:10]:
        assert len(tokenizer(caption).input_ids) == len(caption.split()) + 1  # + </s>


def test_splits_are_disjoint(scans, clips):
    train, heldout = clips["train"], clips["heldout"]
    train_scans, heldout_scans = split_scan_indices(scans[1])
    assert set(train.scans[train.scans >= 0]) <= set(train_scans)
    assert set(heldout.scans[heldout.scans >= 0]) <= set(heldout_scans)
    table = heldout_video_combinations()
    used = [(c, m, d) for c, m, d in zip(train.colours.ravel(), train.motions.ravel(), train.digits.ravel()) if d >= 0]
    assert not any(table[c, m, d] for c, m, d in used)
    assert not train.novel.any() and 0.2 < heldout.novel.mean() < 0.8
    novel_captions = {c for c, n in zip(heldout.captions, heldout.novel) if n}
    big_train = make_video_split("train", 400, scans=scans)
    assert novel_captions and not novel_captions & set(big_train.captions)


def test_objects_stay_inside_and_move_two_pixels_per_frame(clips):
    alpha = clips["heldout"].alpha
    single = clips["heldout"].digits[:, 1] < 0
    for clip_alpha, motion in zip(alpha[single], clips["heldout"].motions[single, 0]):
        track = centroid_track(clip_alpha > 0.4)
        step = np.diff(track, axis=0)
        expected = np.asarray(VIDEO_RECIPE.motions[motion][1]) * VIDEO_RECIPE.pixels_per_frame
        # coverage is the same glyph shifted by whole pixels, so the centroid shifts exactly
        assert np.allclose(step, expected, atol=1e-9)
        assert clip_alpha.sum(axis=(1, 2)).std() < 1e-4  # never clipped by the canvas edge


@pytest.mark.parametrize("split", ["train", "heldout"])
def test_judges_score_ground_truth_clips_correct(clips, split):
    c = clips[split]
    judged = judge_clips(c.videos, c.colours, c.motions, c.backgrounds)
    assert judged["colour_accuracy"] >= 0.95 and judged["motion_accuracy"] >= 0.95


def test_judges_reject_wrong_clips(clips):
    c = clips["heldout"]
    moving = c.motions[:, 0] > 0
    reversed_time = judge_clips(c.videos[moving][:, ::-1], c.colours[moving], c.motions[moving], c.backgrounds[moving])
    assert reversed_time["motion_accuracy"] <= 0.15
    wrong = np.where(c.colours >= 0, (c.colours + 1) % len(VIDEO_RECIPE.scenes.colours), -1)
    assert judge_clips(c.videos, wrong, c.motions, c.backgrounds)["colour_accuracy"] <= 0.15
    shuffled = judge_clips(c.videos[np.roll(np.arange(len(c)), 1)], c.colours, c.motions, c.backgrounds)
    assert shuffled["motion_accuracy"] <= 0.5 and shuffled["colour_accuracy"] <= 0.5


def test_motion_of_reads_slopes():
    frames = np.arange(9, dtype=float)
    assert motion_of(np.stack([frames * 0, frames * 2], 1)) == "right"
    assert motion_of(np.stack([-frames, frames * 0.2], 1)) == "up"
    assert motion_of(np.stack([frames * 0.1, frames * 0], 1)) == "static"
    assert motion_of(np.full((9, 2), np.nan)) == "none"


def test_latent_weights_follow_the_causal_frame_grouping():
    alpha = torch.zeros(1, 9, 32, 32)
    alpha[0, 3, 0, 0] = 1.0  # pixel frame 3 -> latent frame 2 (frames 3 and 4)
    weights = latent_weights(alpha, temporal=2, spatial=2, boost=3.0)
    assert weights.shape == (1, 1, 5, 16, 16)
    assert weights[0, 0, 2, 0, 0] == 4.0 and weights.sum() == 5 * 16 * 16 + 3.0


def test_video_prompts_reject_unknown_split():
    with pytest.raises(ValueError, match="valid splits"):
        benchmark_video_prompts("test")


def test_bundled_video_prompts_match_their_attributes():
    try:
        prompts = benchmark_video_prompts("heldout")
    except FileNotFoundError:
        pytest.skip("benchmark_video_data.json not built yet")
    attrs = benchmark_video_attributes("heldout")
    assert len(prompts) == len(attrs["digits"]) > 0
    first = video_caption_for(attrs["digits"][0], attrs["colours"][0], attrs["sizes"][0], attrs["motions"][0],
                              attrs["backgrounds"][0])
    assert prompts[0] == first and attrs["motion_names"] == VIDEO_RECIPE.motion_names


@pytest.mark.slow
def test_tiny_training_builds_a_loadable_wan_pipeline(tmp_path):
    from diffusers import WanPipeline

    out, work = tmp_path / "assets", tmp_path / "work"
    command = [sys.executable, str(REPO / "scripts" / "train_video_benchmark_model.py"), "--tiny",
               "--out", str(out), "--work", str(work)]
    subprocess.run(command, check=True, capture_output=True, timeout=600)
    assert (out / "video_evaluation.json").exists() and (out / "VIDEO_MODEL_CARD.md").exists()
    pipe = WanPipeline.from_pretrained(out / "benchmark_video_model")
    kwargs = dict(BENCHMARK_VIDEO_GENERATION_KWARGS, num_inference_steps=2)
    frames = pipe(["a small red three moving right on a black background"] * 2, output_type="np", **kwargs).frames
    assert np.asarray(frames).shape == (2, 9, 32, 32, 3)
    # rerunning the same command resumes: nothing is retrained, the flow checkpoint is reused
    subprocess.run(command, check=True, capture_output=True, timeout=600)
    assert "flow resumed at step 3" in (work / "train.log").read_text()
    # --eval-only re-judges the saved model, records the guidance sweep and keeps the card's notes
    card = out / "VIDEO_MODEL_CARD.md"
    card.write_text(card.read_text() + "<!-- notes: kept by --eval-only -->\nhand-written note\n")
    subprocess.run(command + ["--eval-only", "--guidance-sweep", "4", "6"], check=True, capture_output=True,
                   timeout=600)
    evaluation = json.loads((out / "video_evaluation.json").read_text())["evaluation"]
    assert [r["guidance_scale"] for r in evaluation["sampling_sweep"]] == [4.0, 6.0]
    assert evaluation["generation_kwargs"] == dict(BENCHMARK_VIDEO_GENERATION_KWARGS)
    assert evaluation["sampling_sweep"][0]["heldout_colour_accuracy"] == evaluation["heldout"]["colour_accuracy"]
    text = card.read_text()
    assert "| 6 | 20 |" in text and text.endswith("hand-written note\n")


def test_unclamped_decode_matches_the_vae_decode_up_to_the_clamp():
    from diffusion_accel.assets.video_architecture import VideoArchitecture
    from diffusion_accel.assets.video_training import decode_unclamped

    torch.manual_seed(0)
    vae = VideoArchitecture().build_vae().eval()
    z = torch.randn(1, 4, 5, 16, 16) * 3
    with torch.no_grad():
        raw, reference = decode_unclamped(vae, z), vae.decode(z).sample
    assert raw.shape == reference.shape == (1, 3, 9, 32, 32)
    assert torch.equal(raw.clamp(-1, 1), reference)
