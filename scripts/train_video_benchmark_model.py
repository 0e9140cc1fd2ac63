#!/usr/bin/env python
"""Train the bundled benchmark VIDEO model (diffusers Wan format) from scratch on CPU; resumable.

Steps: synthesise captioned digit clips (9 frames x 32x32, digits standing still or moving
2 px/frame left/right/up/down; see ``diffusion_accel/assets/video_clips.py``) and export the
prompt asset, train a small ``AutoencoderKLWan`` (short), encode a latent bank, train a
``WanTransformer3DModel`` and a small UMT5 encoder jointly by flow matching (logit-normal t),
save a ``WanPipeline`` folder, then generate clips for held-out captions and judge colour and
motion (``diffusion_accel/assets/video_judges.py``); write ``video_evaluation.json`` and
``VIDEO_MODEL_CARD.md``.

    python scripts/train_video_benchmark_model.py --work /work/video-train      # the shipped recipe
    python scripts/train_video_benchmark_model.py --tiny --out /tmp/v --work /tmp/vw   # < 2 min smoke run

Every phase leaves its result in ``--work`` (VAE, latent bank, a flow checkpoint every few
minutes), so rerunning the same command resumes where it stopped; ``--minutes`` is the total
flow-matching budget over all sessions (raise it and rerun to train longer).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see train_benchmark_model.py

import numpy as np  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from train_benchmark_model import Log, save_grid, start_run, tokenize  # noqa: E402

from diffusion_accel.assets import BENCHMARK_VIDEO_GENERATION_KWARGS  # noqa: E402
from diffusion_accel.assets.caption_tokenizers import build_t5_tokenizer  # noqa: E402
from diffusion_accel.assets.digits import load_digit_scans  # noqa: E402
from diffusion_accel.assets.video_architecture import VideoArchitecture  # noqa: E402
from diffusion_accel.assets.video_clips import VIDEO_RECIPE, make_video_split, video_caption_vocabulary  # noqa: E402
from diffusion_accel.assets.video_judges import judge_clips  # noqa: E402
from diffusion_accel.assets.video_training import (  # noqa: E402
    FlowSettings,
    encode_video_latents,
    latent_weights,
    train_flow_matching,
    train_video_vae,
)

ASSETS = REPO / "diffusion_accel" / "assets"
GENERATION = dict(BENCHMARK_VIDEO_GENERATION_KWARGS)
#: the model card's hand-written notes follow this line; ``--eval-only`` keeps them
NOTES_MARKER = "<!-- notes: kept by --eval-only -->"
#: named recipes: the option defaults each sets (flags given on the command line still win).
#: ``single-run-90``: data + VAE + flow + evaluation in one session of at most 90 min on 2 cores.
PRESETS = {
    "single-run-90": dict(latent_channels=16, train_clips=8000, vae_minutes=20.0, vae_steps=10**9,
                          vae_batch_size=4, vae_clip_frames=5, vae_lr=2e-3, vae_lr_decay=0.5,
                          vae_full_clip_share=0.5, minutes=66.0, wall_minutes=90.0, shift=3.0),
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ASSETS, help="assets folder to write (default: the package's)")
    parser.add_argument("--work", type=Path, default=REPO / "outputs" / "video_training",
                        help="log, checkpoints and previews (keep it outside git)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None,
                        help="a named recipe (sets the defaults of the options it names; see PRESETS)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--train-clips", type=int, default=1500, help="clips in the latent bank (encoding is slow)")
    parser.add_argument("--heldout-clips", type=int, default=200, help="held-out prompts exported")
    parser.add_argument("--train-sample", type=int, default=200, help="train prompts exported")
    parser.add_argument("--latent-channels", type=int, default=VideoArchitecture.latent_channels,
                        help="the VAE's z_dim (the transformer's in/out channels)")
    parser.add_argument("--shift", type=float, default=VideoArchitecture.shift,
                        help="noise-level shift: training t and the saved scheduler's shift (1.0 = none)")
    parser.add_argument("--vae-train-clips", type=int, default=3000,
                        help="the VAE trains on the first this many train clips (memory: ~0.4 MB each)")
    parser.add_argument("--vae-minutes", type=float, default=8.0)
    parser.add_argument("--vae-lr", type=float, default=1e-3)
    parser.add_argument("--vae-full-clip-share", type=float, default=0.0,
                        help="the last share of the VAE budget trains on whole clips instead of "
                             "--vae-clip-frames windows (its learning rate decays there)")
    parser.add_argument("--vae-lr-decay", type=float, default=0.0,
                        help="share of the VAE budget over which its learning rate decays at the end (0: constant)")
    parser.add_argument("--vae-steps", type=int, default=3000)
    parser.add_argument("--vae-batch-size", type=int, default=4)
    parser.add_argument("--vae-clip-frames", type=int, default=5, help="frames per VAE training window (1 + 4k)")
    parser.add_argument("--minutes", type=float, default=50.0, help="total flow-matching budget (all sessions)")
    parser.add_argument("--steps", type=int, default=10**9, help="stop flow matching after this many steps")
    parser.add_argument("--wall-minutes", type=float, default=None,
                        help="this session's wall-clock budget: flow matching stops early enough to leave "
                             "--eval-reserve-minutes for saving and evaluation")
    parser.add_argument("--eval-reserve-minutes", type=float, default=3.0)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--foreground-boost", type=float, default=3.0)
    parser.add_argument("--eval-clips", type=int, default=40, help="held-out captions generated and judged")
    parser.add_argument("--eval-train-clips", type=int, default=20, help="train captions generated and judged")
    parser.add_argument("--skip-eval", action="store_true")
    parser.add_argument("--eval-only", action="store_true",
                        help="no training: re-judge the saved model in --out (same captions and seeds) and rewrite "
                             "video_evaluation.json's evaluation and the card's Evaluation section")
    parser.add_argument("--guidance-sweep", type=float, nargs="*", default=[],
                        help="with --eval-only: also judge these guidance scales (recorded in the card)")
    parser.add_argument("--sweep-steps", type=int, nargs="*", default=[],
                        help="with --eval-only: sampling step counts swept with each guidance scale "
                             "(default: the generation kwargs' only)")
    parser.add_argument("--tiny", action="store_true", help="tiny budgets: end-to-end smoke run in < 2 min")
    preset = parser.parse_known_args()[0].preset
    if preset:
        parser.set_defaults(**PRESETS[preset])
    args = parser.parse_args()
    if args.tiny:
        args.train_clips, args.heldout_clips, args.train_sample = 48, 8, 8
        args.vae_steps, args.vae_minutes, args.minutes, args.steps = 2, 1.0, 1.0, 3
        args.batch_size, args.eval_clips, args.eval_train_clips = 4, 2, 0
    return args


def to_model_input(videos_uint8: np.ndarray) -> torch.Tensor:
    """uint8 ``(N, F, H, W, 3)`` -> float ``(N, 3, F, H, W)`` in [-1, 1]."""
    return torch.from_numpy(videos_uint8).permute(0, 4, 1, 2, 3).float().div(127.5).sub(1.0)


def to_uint8(videos: torch.Tensor) -> np.ndarray:
    """float ``(N, 3, F, H, W)`` in [-1, 1] -> uint8 ``(N, F, H, W, 3)``."""
    return videos.clamp(-1, 1).add(1).mul(127.5).round().byte().permute(0, 2, 3, 4, 1).numpy()


def export_prompts(path: Path, splits: dict) -> None:
    """The runtime asset: captions and attributes of the exported held-out and train samples."""
    recipe = VIDEO_RECIPE
    data = {"names": {"digits": list(recipe.scenes.digit_names), "colours": list(recipe.scenes.colour_names),
                      "sizes": list(recipe.size_names), "motions": list(recipe.motion_names),
                      "backgrounds": list(recipe.scenes.background_names)}}
    for split, clips in splits.items():
        data[split] = {"captions": clips.captions}
        data[split].update({key: value.tolist() for key, value in clips.attribute_arrays().items() if key != "scans"})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data) + "\n")


def vae_phase(args, arch: VideoArchitecture, train, heldout, log: Log) -> tuple:
    """Train, continue (when ``--vae-minutes``/``--vae-steps`` grew) or reload ``work/vae``; check it.

    Returns the VAE and its metrics: held-out reconstruction error and judge scores.
    """
    from diffusers import AutoencoderKLWan

    folder = args.work / "vae"
    progress = _vae_progress(folder)
    if progress["steps"]:
        vae = AutoencoderKLWan.from_pretrained(folder)
        log(f"vae reloaded from {folder} ({progress})")
    else:
        torch.manual_seed(args.seed)
        vae = arch.build_vae()
    vae, progress = _train_vae_stages(args, vae, train, progress, folder, log)
    steps = progress["steps"]
    sample = heldout.videos[:48]
    with torch.no_grad():
        recon = to_uint8(vae.decode(encode_video_latents(vae, to_model_input(sample))).sample)
    judged = judge_clips(recon, heldout.colours[:48], heldout.motions[:48], heldout.backgrounds[:48])
    metrics = {"steps": steps, "heldout_mse": float(((recon / 127.5 - sample / 127.5) ** 2).mean()),
               "reconstruction_colour_accuracy": judged["colour_accuracy"],
               "reconstruction_motion_accuracy": judged["motion_accuracy"], "seconds": round(progress["seconds"], 1)}
    log(f"vae check: {metrics}")
    save_grid(args.work / "vae_reconstructions.png", [row for pair in zip(sample[:4], recon[:4]) for row in pair])
    return vae, metrics


def vae_stages(args) -> list[tuple[float, int, float]]:
    """``(ends at budget second, window frames, lr decay share)`` per VAE training stage.

    With ``--vae-full-clip-share`` > 0: ``--vae-clip-frames`` windows (cheap steps) until the last
    share of ``--vae-minutes``, then whole clips with the learning-rate decay (a decoder trained only
    on 5-frame windows drifts on the later chunks of a 9-frame clip: grey backgrounds, lost colours).
    """
    budget, share = args.vae_minutes * 60, args.vae_full_clip_share
    if share <= 0:
        return [(budget, args.vae_clip_frames, args.vae_lr_decay)]
    return [(budget * (1 - share), args.vae_clip_frames, 0.0),
            (budget, VIDEO_RECIPE.num_frames, min(1.0, args.vae_lr_decay / share))]


def _train_vae_stages(args, vae, train, progress: dict, folder: Path, log: Log) -> tuple:
    """Run what is left of :func:`vae_stages`; save the VAE and its progress after each stage."""
    videos = alpha = None
    for end, frames, decay in vae_stages(args):
        remaining = end - progress["seconds"]
        if remaining <= 0 or progress["steps"] >= args.vae_steps:
            continue
        if videos is None:
            subset = slice(0, args.vae_train_clips)
            videos, alpha = to_model_input(train.videos[subset]), torch.from_numpy(train.alpha[subset])
        t0 = time.time()
        vae, done = train_video_vae(vae, videos, alpha, steps=args.vae_steps - progress["steps"], seconds=remaining,
                                    batch_size=args.vae_batch_size, clip_frames=frames,
                                    seed=args.seed + progress["steps"], log=log, lr=args.vae_lr,
                                    lr_decay_share=decay)
        progress = {"steps": progress["steps"] + done, "seconds": progress["seconds"] + time.time() - t0}
        vae.save_pretrained(folder)
        (folder / "progress.json").write_text(json.dumps(progress))
        log(f"vae stage ({frames}-frame windows) done: {progress}")
    return vae, progress


def _vae_progress(folder: Path) -> dict:
    """``{"steps", "seconds"}`` of the VAE saved in ``folder`` (zeros when there is none)."""
    if (folder / "progress.json").exists():
        return json.loads((folder / "progress.json").read_text())
    if (folder / "steps.json").exists():  # written by the first version of this script (8-minute budget)
        return {"steps": json.loads((folder / "steps.json").read_text()), "seconds": 480.0}
    return {"steps": 0, "seconds": 0.0}


def encode_clips(vae, videos_uint8: np.ndarray, chunk: int = 256) -> torch.Tensor:
    """Posterior means of uint8 clips ``(N, F, H, W, 3)``, converted to model input a chunk at a time."""
    with torch.no_grad():
        return torch.cat([encode_video_latents(vae, to_model_input(videos_uint8[i : i + chunk]))
                          for i in range(0, len(videos_uint8), chunk)])


def latent_phase(args, arch: VideoArchitecture, vae, vae_steps: int, train, log: Log) -> tuple:
    """Encode (or reload) the normalised latent bank; sets the VAE's ``latents_mean``/``latents_std``."""
    path = args.work / "latents.pt"
    bank = torch.load(path) if path.exists() else {}
    if bank.get("vae_steps", vae_steps if bank else None) != vae_steps:  # a bank without the key predates it
        if (args.work / "flow.pt").exists():
            (args.work / "flow.pt").rename(args.work / f"flow-vae{bank.get('vae_steps', 'old')}.pt")
            log("the VAE changed: flow checkpoint set aside, flow matching restarts on the new latents")
        t0 = time.time()
        raw = encode_clips(vae, train.videos)
        log(f"encoded {len(raw)} clips in {time.time() - t0:.0f}s")
        mean, std = raw.mean(dim=(0, 2, 3, 4)), raw.std(dim=(0, 2, 3, 4))
        bank = {"latents": (raw - mean.view(1, -1, 1, 1, 1)) / std.view(1, -1, 1, 1, 1),
                "mean": [round(float(v), 5) for v in mean], "std": [round(float(v), 5) for v in std],
                "vae_steps": vae_steps}
        torch.save(bank, path)
    vae.register_to_config(latents_mean=bank["mean"], latents_std=bank["std"])
    weights = latent_weights(torch.from_numpy(train.alpha), arch.temporal_factor, arch.spatial_factor,
                             args.foreground_boost)
    log(f"latent bank {tuple(bank['latents'].shape)} mean {bank['mean']} std {bank['std']}")
    return bank["latents"], weights


def flow_phase(args, arch: VideoArchitecture, tokenizer, latents, weights, train, log: Log) -> tuple:
    unique = sorted(set(train.captions))
    lookup = {caption: i for i, caption in enumerate(unique)}
    caption_index = torch.tensor([lookup[c] for c in train.captions])
    token_ids, token_mask = tokenize(tokenizer, unique, arch.max_caption_tokens)
    empty_ids, empty_mask = tokenize(tokenizer, [""], arch.max_caption_tokens)
    torch.manual_seed(args.seed)
    transformer, text_encoder = arch.build_transformer(), arch.build_text_encoder(len(tokenizer))
    settings = FlowSettings(seconds=args.minutes * 60, max_steps=args.steps, batch_size=args.batch_size,
                            lr=args.lr, seed=args.seed, timestep_shift=arch.shift, checkpoint_every_s=30 if args.tiny else 180,
                            stop_at=session_deadline(args, log))
    log(f"flow: {len(unique)} distinct captions, {sum(p.numel() for p in transformer.parameters())} transformer "
        f"parameters, {settings}")
    return train_flow_matching(transformer, text_encoder, latents, weights, token_ids, token_mask, caption_index,
                               empty_ids[0], empty_mask[0], settings, checkpoint=str(args.work / "flow.pt"), log=log)


def session_deadline(args, log: Log) -> float:
    """``time.time()`` at which flow matching must stop so that this session ends within ``--wall-minutes``
    (saving and evaluation get ``--eval-reserve-minutes``); infinity without ``--wall-minutes``."""
    if args.wall_minutes is None:
        return float("inf")
    return log.start + (args.wall_minutes - args.eval_reserve_minutes) * 60


def generate(pipeline, prompts: list[str], seed: int = 0, generation: dict | None = None) -> np.ndarray:
    """uint8 clips ``(N, F, H, W, 3)`` for ``prompts`` (one generator per prompt, seeds seed..)."""
    generators = [torch.Generator().manual_seed(seed + i) for i in range(len(prompts))]
    frames = pipeline(prompts, generator=generators, output_type="np", **(generation or GENERATION)).frames
    return np.clip(np.rint(np.asarray(frames) * 255), 0, 255).astype(np.uint8)


def evaluate(args, model_dir: Path, splits: dict, log: Log, generation: dict | None = None) -> dict:
    """Generate clips for held-out (and train) captions from the saved folder; judge them."""
    from diffusers import WanPipeline

    generation = dict(generation or GENERATION)
    pipeline = WanPipeline.from_pretrained(model_dir)
    pipeline.set_progress_bar_config(disable=True)
    results = {"generation_kwargs": generation}
    for split, count in (("heldout", args.eval_clips), ("train", args.eval_train_clips)):
        if count <= 0:
            continue
        clips, t0 = splits[split], time.time()
        videos = generate(pipeline, clips.captions[:count], generation=generation)
        judged = judge_clips(videos, clips.colours[:count], clips.motions[:count], clips.backgrounds[:count])
        seconds = time.time() - t0
        novel = clips.novel[:count]
        results[split] = {
            "clips": count, "colour_accuracy": judged["colour_accuracy"], "motion_accuracy": judged["motion_accuracy"],
            "novel_clips": int(novel.sum()), "seconds": round(seconds, 1),
            "per_clip": [{"caption": c, "predicted_motions": []} for c in clips.captions[:count]],
        }
        cursor = 0
        for i, entry in enumerate(results[split]["per_clip"]):
            named = int((clips.colours[i] >= 0).sum())
            entry["predicted_motions"] = judged["predicted_motions"][cursor : cursor + named]
            entry["colour_correct"] = judged["colour_correct"][cursor : cursor + named]
            cursor += named
        log(f"eval {split} {generation}: colour {judged['colour_accuracy']:.3f} "
            f"motion {judged['motion_accuracy']:.3f} ({count} clips, {seconds:.0f}s)")
        save_grid(args.work / f"generated_{split}.png", list(videos[:8]))
    return results


def evaluate_only(args, splits: dict, log: Log) -> None:
    """Re-judge the saved model (no training): the generation kwargs plus a guidance x steps sweep.

    The sweep's settings use the same captions and seeds as the reference evaluation; each one's
    scores land in ``evaluation["sampling_sweep"]`` and in the card's sweep table. The card's
    hand-written notes (after ``NOTES_MARKER``) are kept.
    """
    summary_path, card_path = args.out / "video_evaluation.json", args.out / "VIDEO_MODEL_CARD.md"
    if not summary_path.exists():
        raise ValueError(f"--eval-only needs a trained model's {summary_path}; train first (drop --eval-only)")
    summary = json.loads(summary_path.read_text())
    model_dir = args.out / "benchmark_video_model"
    settings = [(GENERATION["guidance_scale"], GENERATION["num_inference_steps"])]
    for steps in args.sweep_steps or [GENERATION["num_inference_steps"]]:
        settings += [(g, steps) for g in args.guidance_sweep if (g, steps) not in settings]
    sweep, evaluation = [], None
    for guidance, steps in settings:
        result = evaluate(args, model_dir, splits, log,
                          dict(GENERATION, guidance_scale=guidance, num_inference_steps=steps))
        evaluation = evaluation or result
        sweep.append({"guidance_scale": guidance, "num_inference_steps": steps,
                      **{f"{split}_{key}": result[split][key] for split in ("heldout", "train") if split in result
                         for key in ("colour_accuracy", "motion_accuracy")}})
    if len(sweep) > 1:
        evaluation["sampling_sweep"] = sorted(sweep, key=lambda r: (r["num_inference_steps"], r["guidance_scale"]))
    summary["evaluation"] = evaluation
    summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    old = card_path.read_text() if card_path.exists() else ""
    notes = old.split(NOTES_MARKER, 1)[1] if NOTES_MARKER in old else ""
    card_path.write_text(model_card(summary) + ("\n" + NOTES_MARKER + notes if notes else ""))
    log(f"re-evaluated: {summary_path}, {card_path}")


def main() -> None:
    args = parse_args()
    log = start_run(args)
    arch = VideoArchitecture(latent_channels=args.latent_channels, shift=args.shift)
    log(f"start: {vars(args)}; architecture {arch.as_dict()}")
    t0 = time.time()
    scans = load_digit_scans()
    splits = {"heldout": make_video_split("heldout", args.heldout_clips, args.seed, scans=scans),
              "train": make_video_split("train", args.train_sample, args.seed, scans=scans,
                                        sample_seed=args.seed + 1)}
    if args.eval_only:
        evaluate_only(args, splits, log)
        return
    train = make_video_split("train", args.train_clips, args.seed, scans=scans)
    export_prompts(args.out / "benchmark_video_data.json", splits)
    data_seconds = time.time() - t0
    log(f"data: {len(train)} train clips ({len(set(train.captions))} captions), {data_seconds:.0f}s")

    vae, vae_metrics = vae_phase(args, arch, train, splits["heldout"], log)
    latents, weights = latent_phase(args, arch, vae, vae_metrics["steps"], train, log)
    tokenizer = build_t5_tokenizer(video_caption_vocabulary())
    transformer, text_encoder, steps, flow_seconds = flow_phase(args, arch, tokenizer, latents, weights, train, log)

    from diffusers import WanPipeline

    model_dir = args.out / "benchmark_video_model"
    WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer,
                scheduler=arch.build_scheduler()).save_pretrained(model_dir)
    log(f"saved WanPipeline to {model_dir}")
    summary = {
        "architecture": arch.as_dict(), "recipe": _recipe_summary(),
        "data": {"train_clips": len(train), "distinct_train_captions": len(set(train.captions)),
                 "vocabulary": video_caption_vocabulary(), "seconds": round(data_seconds, 1)},
        "vae": vae_metrics,
        "flow": {"steps": steps, "seconds": round(flow_seconds, 1), "batch_size": args.batch_size, "lr": args.lr,
                 "foreground_boost": args.foreground_boost,
                 "timestep_sampling": f"logit-normal sigmoid(N(0,1)), shifted by {arch.shift}",
                 "text_lr": FlowSettings.text_lr, "ema_decay": FlowSettings.ema_decay,
                 "caption_dropout": FlowSettings.caption_dropout},
        "parameters": {name: sum(p.numel() for p in module.parameters())
                       for name, module in (("vae", vae), ("transformer", transformer), ("text_encoder", text_encoder))},
        "vae_batch_size": args.vae_batch_size, "vae_clip_frames": args.vae_clip_frames, "vae_lr": args.vae_lr,
        "vae_lr_decay": args.vae_lr_decay,
        "vae_full_clip_share": args.vae_full_clip_share, "threads": args.threads, "torch": torch.__version__,
        "command": " ".join(sys.argv[1:]), "preset": args.preset,
    }
    if not args.skip_eval:
        summary["evaluation"] = evaluate(args, model_dir, splits, log)
    summary["wall_minutes_last_session"] = round((time.time() - log.start) / 60, 1)
    (args.out / "video_evaluation.json").write_text(json.dumps(summary, indent=2) + "\n")
    (args.out / "VIDEO_MODEL_CARD.md").write_text(model_card(summary))
    log(f"done: {args.out / 'video_evaluation.json'}")


def _recipe_summary() -> dict:
    recipe = VIDEO_RECIPE
    return {"num_frames": recipe.num_frames, "image_size": recipe.image_size,
            "pixels_per_frame": recipe.pixels_per_frame, "sizes": dict(recipe.sizes),
            "motions": list(recipe.motion_names), "colours": dict(recipe.scenes.colours),
            "backgrounds": dict(recipe.scenes.backgrounds), "two_digit_fraction": recipe.two_digit_fraction,
            "heldout_combination_fraction": recipe.heldout_combination_fraction}


def model_card(summary: dict) -> str:
    """``VIDEO_MODEL_CARD.md`` from the run summary."""
    evaluation = summary.get("evaluation", {})
    rows = [f"| {split} | {e['clips']} | {e['colour_accuracy']:.1%} | {e['motion_accuracy']:.1%} |"
            for split, e in evaluation.items() if isinstance(e, dict) and "clips" in e]
    vae, flow, arch = summary["vae"], summary["flow"], summary["architecture"]
    latent_shape = VideoArchitecture(**{k: tuple(v) if isinstance(v, list) else v for k, v in arch.items()}).latent_shape
    return "\n".join([
        "# Benchmark video model (diffusers Wan format)", "",
        "A tiny text-to-video `WanPipeline` trained from scratch on CPU on synthetic clips, bundled so",
        "video acceleration (caches, attention sparsity, quantisation) can be measured offline. Load it with",
        "`WanPipeline.from_pretrained(diffusion_accel.assets.benchmark_video_model_dir())` and call it with",
        "`diffusion_accel.assets.BENCHMARK_VIDEO_GENERATION_KWARGS`. Rebuild: `scripts/train_video_benchmark_model.py`.",
        "", "## Data", "",
        f"{arch['num_frames']} frames x {arch['image_size']}x{arch['image_size']} px: one (80 %) or two (20 %, distinct "
        "colours) scikit-learn digit scans, upscaled to 10 px (small) or 14 px (large), in one of 6 colours on a black "
        f"or white background, standing still or moving {summary['recipe']['pixels_per_frame']} px per frame left, "
        "right, up or down. Caption e.g. `a small red three moving right on a black background`. Train clips use 80 % "
        "of the scans and never one of the held-out colour x motion x digit combinations (15 %); held-out clips use "
        "the other scans and half of the one-digit ones a held-out combination.",
        f"{summary['data']['train_clips']} train clips, {summary['data']['distinct_train_captions']} distinct captions.",
        "", "## Model", "",
        f"- `AutoencoderKLWan` (base_dim {arch['vae_base_dim']}, z_dim {arch['latent_channels']}, dim_mult "
        f"{list(arch['vae_dim_mult'])}, temporal downsample {arch['temporal_downsample']}): 9x32x32 -> latents "
        f"{latent_shape}; temporal compression 2 because `WanPipeline` requires (num_frames - 1) % factor == 0.",
        f"- `WanTransformer3DModel`: {arch['transformer_layers']} layers, {arch['transformer_heads']} heads x "
        f"{arch['transformer_head_dim']}, ffn {arch['transformer_ffn']}, patch (1, 2, 2) -> "
        f"{latent_shape[1] * (latent_shape[2] // 2) * (latent_shape[3] // 2)} tokens.",
        f"- `UMT5EncoderModel`: d_model {arch['text_width']}, {arch['text_layers']} layers, offline word-level tokenizer.",
        f"- `FlowMatchEulerDiscreteScheduler` (shift {arch['shift']}). Parameters: {summary['parameters']}.",
        "", "## Training", "",
        f"- VAE: {vae['steps']} steps (batch {summary['vae_batch_size']}, {summary['vae_clip_frames']}-frame windows"
        f"{_vae_schedule(summary)}, posterior mean, foreground-weighted MSE on the unclamped decoder output), "
        f"{vae['seconds']} s; "
        f"held-out MSE {vae['heldout_mse']:.4f}; judges on its reconstructions: colour "
        f"{vae['reconstruction_colour_accuracy']:.0%}, motion {vae['reconstruction_motion_accuracy']:.0%}.",
        f"- Flow matching (x_t = (1-t) x0 + t eps, target eps - x0, t logit-normal), transformer + text encoder "
        f"jointly: {flow['steps']} steps, batch {flow['batch_size']}, lr {flow['lr']}, EMA {flow['ema_decay']}, "
        f"{flow['caption_dropout']:.0%} empty captions, {flow['seconds'] / 60:.1f} min on {summary['threads']} CPU threads.",
        *([f"- One session: `python scripts/train_video_benchmark_model.py {summary['command']}`, "
           f"{summary['wall_minutes_last_session']} min wall in total (data, VAE, encoding, flow, evaluation)."]
          if summary.get("command") is not None and "wall_minutes_last_session" in summary else []),
        "", "## Evaluation", "",
        f"Generation: `{summary.get('evaluation', {}).get('generation_kwargs', GENERATION)}`; judges in",
        "`diffusion_accel/assets/video_judges.py` (colour: the named colour dominates the foreground; motion: slope of",
        "the named colour's centroid track, static under 0.6 px/frame).", "",
        "| captions | clips | colour correct | motion correct |", "|---|---|---|---|", *rows, "",
        *_sweep_table(evaluation.get("sampling_sweep", [])),
    ])


def _vae_schedule(summary: dict) -> str:
    """The card's words for the VAE's whole-clip stage and learning rate (empty for the bundled recipe)."""
    share, decay = summary.get("vae_full_clip_share", 0.0), summary.get("vae_lr_decay", 0.0)
    words = f", the last {share:.0%} of the time on whole clips" if share else ""
    if "vae_lr" in summary and (share or decay or summary["vae_lr"] != 1e-3):
        words += f", lr {summary['vae_lr']:g}" + (f" decaying over the last {decay:.0%}" if decay else "")
    return words


def _sweep_table(sweep: list[dict]) -> list[str]:
    """The card's lines for the sampling sweep (guidance x steps, same captions and seeds)."""
    if not sweep:
        return []
    rows = [f"| {r['guidance_scale']:g} | {r['num_inference_steps']} | {r['heldout_colour_accuracy']:.1%} | "
            f"{r['heldout_motion_accuracy']:.1%} | {r.get('train_colour_accuracy', float('nan')):.1%} | "
            f"{r.get('train_motion_accuracy', float('nan')):.1%} |" for r in sweep]
    return ["Sampling sweep (same weights, captions and seeds; `--eval-only --guidance-sweep ... --sweep-steps ...`):",
            "", "| guidance_scale | steps | held-out colour | held-out motion | train colour | train motion |",
            "|---|---|---|---|---|---|", *rows, ""]


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
