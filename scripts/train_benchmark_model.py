#!/usr/bin/env python
"""Train the bundled benchmark model from scratch on CPU, end to end (46 min on 2 free cores).

Steps: regenerate the digit-scene data (needs scikit-learn) and export the runtime asset,
train the VAE (foreground-weighted), encode a latent bank once, train the PixArt-alpha
transformer and the T5 encoder jointly (bf16 autocast, constant lr + EMA, min-SNR weighting),
train a small CLIP contrastively, save everything in diffusers / transformers format under
``diffusion_accel/assets/`` and finally run ``scripts/evaluate_benchmark_model.py``, which
writes the metrics and ``MODEL_CARD.md``.

    python scripts/train_benchmark_model.py                  # the shipped recipe
    python scripts/train_benchmark_model.py --quick --out /tmp/bm-try   # a few-minute smoke run

Seeded: the data is bit-for-bit reproducible; weights are reproducible up to the
wall-clock budgets (training loops stop on time, so a slower machine does fewer steps; pass
``--diffusion-steps`` to fix the step count instead).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

# OpenMP threads that spin while waiting waste the CPU share of a shared machine: with other
# jobs on the same cores, spinning made training steps several times slower.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from diffusion_accel.assets.architectures import BenchmarkArchitecture  # noqa: E402
from diffusion_accel.assets.caption_tokenizers import build_clip_tokenizer, build_t5_tokenizer  # noqa: E402
from diffusion_accel.assets.digits import RECIPE, caption_vocabulary, load_digit_scans, make_split  # noqa: E402
from diffusion_accel.assets.training import (  # noqa: E402
    encode_latents,
    foreground_weights,
    latent_scaling_factor,
    train_clip,
    train_diffusion,
    train_vae,
)

ASSETS = REPO / "diffusion_accel" / "assets"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ASSETS, help="assets folder to write (default: the package's)")
    parser.add_argument("--work", type=Path, default=REPO / "outputs" / "benchmark_training", help="logs and grids")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--train-images", type=int, default=30000)
    parser.add_argument("--heldout-images", type=int, default=512)
    parser.add_argument("--train-sample", type=int, default=512, help="train images exported in the asset")
    parser.add_argument("--vae-steps", type=int, default=500)
    parser.add_argument("--vae-minutes", type=float, default=9.0)
    parser.add_argument("--diffusion-minutes", type=float, default=33.0)
    parser.add_argument("--diffusion-steps", type=int, default=10**9, help="stop after this many steps")
    parser.add_argument("--clip-minutes", type=float, default=5.0)
    parser.add_argument("--clip-steps", type=int, default=500)
    parser.add_argument("--clip-batch-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=8e-4)
    parser.add_argument("--foreground-boost", type=float, default=3.0, help="latent-loss weight on digit cells")
    parser.add_argument("--layers", type=int, default=BenchmarkArchitecture.transformer_layers)
    parser.add_argument("--heads", type=int, default=BenchmarkArchitecture.transformer_heads)
    parser.add_argument("--prediction-type", default=BenchmarkArchitecture.prediction_type)
    parser.add_argument("--vae-from", type=Path, help="reuse the VAE of a previous run's model folder")
    parser.add_argument(
        "--resume-from", type=Path,
        help="assets folder of a previous run: reuse its VAE and CLIP, continue training its transformer and T5",
    )
    parser.add_argument("--retrain-clip", action="store_true", help="with --resume-from: train CLIP again")
    parser.add_argument(
        "--clip-reconstruction-fraction", type=float, default=0.5,
        help="share of CLIP training images shown as VAE reconstructions",
    )
    parser.add_argument("--skip-eval", action="store_true")
    parser.add_argument("--data-only", action="store_true", help="only regenerate and export benchmark_data.npz")
    parser.add_argument("--quick", action="store_true", help="tiny budgets, to check the pipeline end to end")
    args = parser.parse_args()
    if args.quick:
        args.train_images, args.heldout_images, args.train_sample = 2000, 64, 64
        args.vae_steps, args.diffusion_minutes, args.clip_minutes, args.clip_steps = 30, 0.5, 0.3, 60
        args.vae_minutes = 2.0
    return args


class Log:
    """Print and append to ``work/train.log`` with elapsed time."""

    def __init__(self, path: Path):
        self.start = time.time()
        path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(path, "a", encoding="utf-8")

    def __call__(self, message: str) -> None:
        line = f"[{(time.time() - self.start) / 60:6.1f} min] {message}"
        print(line, flush=True)
        self.file.write(line + "\n")
        self.file.flush()


def to_model_input(images_uint8: np.ndarray) -> torch.Tensor:
    """uint8 ``(N, H, W, 3)`` -> float ``(N, 3, H, W)`` in [-1, 1]."""
    return torch.from_numpy(images_uint8).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def export_data(path: Path, heldout, train_sample) -> None:
    """The runtime asset: held-out and a train sample (uint8 images, captions, attributes)."""
    arrays = {
        "colour_names": np.asarray(RECIPE.colour_names),
        "digit_names": np.asarray(RECIPE.digit_names),
        "position_names": np.asarray(RECIPE.position_names),
        "size_names": np.asarray(RECIPE.size_names),
        "background_names": np.asarray(RECIPE.background_names),
    }
    for split, scenes in (("heldout", heldout), ("train", train_sample)):
        arrays[f"{split}_images"] = scenes.images
        arrays[f"{split}_captions"] = np.asarray(scenes.captions)
        for name, values in scenes.attribute_arrays().items():
            arrays[f"{split}_{name}"] = values
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)


def save_grid(path: Path, rows: list[np.ndarray], scale: int = 3) -> None:
    """Stack uint8 ``(N, H, W, 3)`` rows into one PNG."""
    from PIL import Image

    grid = np.concatenate([np.concatenate(list(row), axis=1) for row in rows], axis=0)
    image = Image.fromarray(grid)
    image.resize((image.width * scale, image.height * scale), Image.NEAREST).save(path)


@torch.no_grad()
def check_vae(vae, heldout, log: Log, work: Path) -> dict:
    """Held-out reconstruction error (all pixels and digit pixels) and a grid PNG."""
    x = to_model_input(heldout.images)
    recon = vae.decode(encode_latents(vae, x)).sample.clamp(-1, 1)
    error = (recon - x) ** 2
    digit = torch.from_numpy(heldout.alpha)[:, None].expand_as(error) > 0.05
    metrics = {"heldout_mse": error.mean().item(), "heldout_digit_mse": error[digit].mean().item()}
    log(f"vae held-out: {metrics}")
    recon_uint8 = recon.add(1).mul(127.5).round().byte().permute(0, 2, 3, 1).numpy()
    save_grid(work / "vae_reconstructions.png", [heldout.images[:16], recon_uint8[:16], heldout.images[16:32], recon_uint8[16:32]])
    return metrics


def tokenize(tokenizer, captions: list[str], length: int) -> tuple[torch.Tensor, torch.Tensor]:
    encoded = tokenizer(captions, padding="max_length", max_length=length, truncation=True, return_tensors="pt")
    return encoded.input_ids, encoded.attention_mask


def start_run(args: argparse.Namespace) -> Log:
    """Seed torch with ``--seed``, use ``--threads``, create ``--work``; the log of the run
    (``<work>/train.log``). Both training scripts start so."""
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    return Log(args.work / "train.log")


def main() -> None:
    args = parse_args()
    log = start_run(args)
    timings: dict[str, float] = {}
    arch = BenchmarkArchitecture(
        transformer_layers=args.layers, transformer_heads=args.heads, prediction_type=args.prediction_type
    )
    log(f"architecture: {arch.as_dict()}")

    # 1. data
    t0 = time.time()
    scans = load_digit_scans()
    train = make_split("train", args.train_images, args.seed, scans=scans)
    heldout = make_split("heldout", args.heldout_images, args.seed, scans=scans)
    train_sample = make_split("train", args.train_sample, args.seed, scans=scans, sample_seed=args.seed + 1)
    export_data(args.out / "benchmark_data.npz", heldout, train_sample)
    timings["data_s"] = time.time() - t0
    log(f"data: {len(train)} train, {len(heldout)} held-out scenes, {len(set(train.captions))} distinct train captions")
    if args.data_only:
        return

    words = caption_vocabulary()
    t5_tokenizer, clip_tokenizer = build_t5_tokenizer(words), build_clip_tokenizer(words)

    # 2. VAE
    t0 = time.time()
    train_x = to_model_input(train.images)
    previous = None
    if args.resume_from is not None:
        previous = json.loads((args.resume_from / "training_summary.json").read_text())
        args.vae_from = args.resume_from / "benchmark_model"
    if args.vae_from is not None:
        from diffusers import AutoencoderKL

        vae, vae_steps = AutoencoderKL.from_pretrained(args.vae_from / "vae"), 0
        log(f"vae reused from {args.vae_from}")
    else:
        torch.manual_seed(args.seed)
        vae, vae_steps = train_vae(
            arch.build_vae(), train_x, torch.from_numpy(train.alpha), steps=args.vae_steps,
            seconds=args.vae_minutes * 60, batch_size=48, seed=args.seed, log=log, bf16=False,
        )
    timings["vae_s"] = time.time() - t0
    vae_metrics = check_vae(vae, heldout, log, args.work)

    # 3. latent bank
    t0 = time.time()
    latents = encode_latents(vae, train_x)
    scaling = latent_scaling_factor(latents)
    vae.register_to_config(scaling_factor=scaling)
    latents = latents * scaling
    downsample = arch.image_size // arch.latent_size
    weights = foreground_weights(torch.from_numpy(train.alpha), downsample, args.foreground_boost)
    timings["latent_bank_s"] = time.time() - t0
    log(f"latent bank {tuple(latents.shape)}, scaling factor {scaling}, mean {latents.mean():.3f}")

    # 4. transformer + T5, jointly
    t0 = time.time()
    unique = sorted(set(train.captions))
    lookup = {caption: i for i, caption in enumerate(unique)}
    caption_index = torch.tensor([lookup[c] for c in train.captions])
    token_ids, token_mask = tokenize(t5_tokenizer, unique, arch.max_caption_tokens)
    empty_ids, empty_mask = tokenize(t5_tokenizer, [""], arch.max_caption_tokens)
    scheduler = arch.build_scheduler()
    torch.manual_seed(args.seed)
    if args.resume_from is not None:
        from diffusers import PixArtTransformer2DModel
        from transformers import T5EncoderModel

        transformer = PixArtTransformer2DModel.from_pretrained(args.resume_from / "benchmark_model" / "transformer")
        text_encoder = T5EncoderModel.from_pretrained(args.resume_from / "benchmark_model" / "text_encoder")
        log(f"transformer and T5 resumed from {args.resume_from} ({previous['training']['diffusion_steps']} steps)")
    else:
        transformer, text_encoder = arch.build_transformer(), arch.build_text_encoder(len(t5_tokenizer))
    transformer, text_encoder, diffusion_steps = train_diffusion(
        transformer, text_encoder, latents, weights, token_ids, token_mask, caption_index,
        empty_ids[0], empty_mask[0], dict(scheduler.config),
        seconds=args.diffusion_minutes * 60, max_steps=args.diffusion_steps, batch_size=args.batch_size,
        lr=args.lr, log=log,
        # a resumed session draws new batches and noise rather than replaying the first session's
        seed=args.seed + (previous["training"]["diffusion_steps"] if previous else 0),
    )
    timings["diffusion_s"] = time.time() - t0

    from diffusers import PixArtAlphaPipeline

    pipeline = PixArtAlphaPipeline(
        tokenizer=t5_tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer, scheduler=scheduler
    )
    pipeline.save_pretrained(args.out / "benchmark_model")
    log(f"saved pipeline to {args.out / 'benchmark_model'}")

    # 5. CLIP
    t0 = time.time()
    from transformers import CLIPImageProcessor, CLIPProcessor

    torch.manual_seed(args.seed)
    clip_retrained = args.resume_from is None or args.retrain_clip
    if not clip_retrained:
        from transformers import CLIPModel

        clip, clip_steps = CLIPModel.from_pretrained(args.resume_from / "benchmark_clip"), previous["training"]["clip_steps"]
        log(f"clip reused from {args.resume_from}")
    else:
        clip = arch.build_clip(
            len(clip_tokenizer), clip_tokenizer.pad_token_id, clip_tokenizer.bos_token_id, clip_tokenizer.eos_token_id
        )
        clip_ids, clip_mask = tokenize(clip_tokenizer, unique, arch.max_caption_tokens)
        reconstructions = None
        if args.clip_reconstruction_fraction > 0:
            with torch.no_grad():
                reconstructions = torch.cat([
                    vae.decode(latents[i : i + 512] / scaling).sample.clamp(-1, 1).add(1).mul(127.5).round().byte()
                    for i in range(0, len(latents), 512)
                ]).permute(0, 2, 3, 1).contiguous()
        clip, clip_steps = train_clip(
            clip, torch.from_numpy(train.images), clip_ids, clip_mask, caption_index,
            seconds=args.clip_minutes * 60, max_steps=args.clip_steps, batch_size=args.clip_batch_size,
            seed=args.seed, log=log, reconstructions_uint8=reconstructions,
            reconstruction_fraction=args.clip_reconstruction_fraction,
        )
    image_processor = CLIPImageProcessor(
        do_resize=True, size={"shortest_edge": arch.image_size}, do_center_crop=True,
        crop_size={"height": arch.image_size, "width": arch.image_size},
        image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
    )
    clip.save_pretrained(args.out / "benchmark_clip")
    CLIPProcessor(image_processor=image_processor, tokenizer=clip_tokenizer).save_pretrained(args.out / "benchmark_clip")
    timings["clip_s"] = time.time() - t0

    summary = {
        "architecture": arch.as_dict(),
        "recipe": {
            "colours": dict(RECIPE.colours), "backgrounds": dict(RECIPE.backgrounds), "sizes": dict(RECIPE.sizes),
            "positions": dict(RECIPE.positions), "two_digit_fraction": RECIPE.two_digit_fraction,
            "heldout_scan_fraction": RECIPE.heldout_scan_fraction,
            "heldout_combination_fraction": RECIPE.heldout_combination_fraction,
        },
        "data": {
            "train_images": len(train), "heldout_images": len(heldout), "train_sample_exported": len(train_sample),
            "distinct_train_captions": len(unique), "vocabulary": words,
        },
        "training": {
            "seed": args.seed, "threads": args.threads, "vae_steps": vae_steps,
            "vae_reused_from": str(args.vae_from) if args.vae_from else None,
            "diffusion_steps": diffusion_steps + (previous["training"]["diffusion_steps"] if previous else 0),
            "diffusion_steps_this_session": diffusion_steps,
            "diffusion_batch_size": args.batch_size, "lr": args.lr,
            "foreground_boost": args.foreground_boost, "clip_steps": clip_steps,
            "clip_batch_size": args.clip_batch_size, "vae_batch_size": 48,
            "clip_reconstruction_fraction": args.clip_reconstruction_fraction if clip_retrained else previous[
                "training"].get("clip_reconstruction_fraction", 0.0),
            "latent_scaling_factor": scaling, "torch": torch.__version__,
        },
        "vae_check": vae_metrics,
        "timings_s": {key: round(value, 1) for key, value in timings.items()},
        "total_training_minutes": round((time.time() - log.start) / 60, 1),
    }
    summary["session_minutes"] = summary["total_training_minutes"]
    if previous is not None:
        # each entry keeps its own session's minutes; the top level adds them all up
        summary["previous_sessions"] = previous.get("previous_sessions", []) + [
            {key: previous[key] for key in ("training", "timings_s", "vae_check")}
            | {"session_minutes": previous.get("session_minutes", previous["total_training_minutes"])}
        ]
        summary["training"]["vae_steps"] = previous["training"]["vae_steps"]
        summary["vae_check"] = previous["vae_check"]
        summary["total_training_minutes"] = round(
            summary["session_minutes"] + sum(p["session_minutes"] for p in summary["previous_sessions"]), 1
        )
    (args.out / "training_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    log(f"training done in {summary['total_training_minutes']} min: {summary['timings_s']}")

    if not args.skip_eval:
        command = [
            sys.executable, str(REPO / "scripts" / "evaluate_benchmark_model.py"),
            "--assets", str(args.out), "--work", str(args.work), "--threads", str(args.threads), "--write-card",
        ]
        if args.quick:
            command.append("--quick")
        log("evaluating: " + " ".join(command))
        subprocess.run(command, check=True)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
