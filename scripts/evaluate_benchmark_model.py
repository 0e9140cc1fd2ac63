#!/usr/bin/env python
"""Evaluate the bundled benchmark model and (optionally) write ``MODEL_CARD.md``.

Measures, on held-out prompts (digit scans never seen in training):

* CLIP top-1 among 10 captions (the true one + 9 with other digits/colours/positions, same
  size and background) for real and generated images, and among "hard" distractors that differ
  only in one digit's identity;
* FID in the bundled CLIP's embedding space (torchmetrics, custom feature extractor) of
  generated vs real held-out images, for the trained model and for the same pipeline with a
  freshly initialised transformer;
* colour / position / digit accuracy of generated single-digit scenes (simple judges; the
  digit judge is trained on VAE reconstructions, as generated strokes are VAE-blurred);
* step redundancy: cosine similarity of every transformer block's output between consecutive
  denoising steps (plain forward hooks), averaged over prompts;
* wall-clock time of one 20-step generation of 16 images.

    python scripts/evaluate_benchmark_model.py --write-card
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see train_benchmark_model.py

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from diffusion_accel.assets.clip_features import ClipImageFeatures, clip_text_embeddings, uint8_to_unit  # noqa: E402
from diffusion_accel.assets.digits import NO_OBJECT, RECIPE, caption_for  # noqa: E402

GENERATION = dict(num_inference_steps=20, guidance_scale=4.5, height=32, width=32, use_resolution_binning=False)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--assets", type=Path, default=REPO / "diffusion_accel" / "assets")
    parser.add_argument("--work", type=Path, default=REPO / "outputs" / "benchmark_training")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--generated", type=int, default=160, help="held-out prompts to generate")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--redundancy-prompts", type=int, default=16)
    parser.add_argument("--write-card", action="store_true")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.generated, args.redundancy_prompts = 32, 4
    return args


# ----------------------------------------------------------------------------- data and models
def load_data(assets: Path) -> dict:
    with np.load(assets / "benchmark_data.npz") as data:
        return {key: data[key] for key in data.files}


def attributes(data: dict, split: str, index: int) -> dict:
    keys = ("digits", "colours", "sizes", "positions")
    return {key: data[f"{split}_{key}"][index] for key in keys} | {"background": data[f"{split}_backgrounds"][index]}


def load_pipeline(model_dir: Path):
    from diffusers import PixArtAlphaPipeline

    pipeline = PixArtAlphaPipeline.from_pretrained(model_dir)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@torch.no_grad()
def generate(pipeline, prompts: list[str], seeds: list[int], batch_size: int) -> np.ndarray:
    """uint8 ``(N, 32, 32, 3)``; one generator per image, so each image depends only on its seed."""
    images = []
    for start in range(0, len(prompts), batch_size):
        generators = [torch.Generator().manual_seed(s) for s in seeds[start : start + batch_size]]
        out = pipeline(prompts[start : start + batch_size], generator=generators, output_type="np", **GENERATION)
        images.append(np.clip(np.rint(out.images * 255), 0, 255).astype(np.uint8))
    return np.concatenate(images)


# ----------------------------------------------------------------------------- CLIP ranking
def distractor_captions(attrs: dict, count: int, rng: np.random.Generator, hard: bool) -> list[str]:
    """``count`` distinct captions other than the true one, keeping sizes and background.

    ``hard=False``: every digit's identity, colour and position are redrawn at random (two-digit
    scenes keep two distinct corners); ``hard=True``: only one digit's identity changes.
    """
    digits, colours = attrs["digits"].copy(), attrs["colours"].copy()
    sizes, positions = attrs["sizes"], attrs["positions"].copy()
    present = digits != NO_OBJECT
    truth = caption_for(digits, colours, sizes, positions, attrs["background"])
    captions: list[str] = []
    n_digits, n_colours = len(RECIPE.digit_names), len(RECIPE.colours)
    for _ in range(10_000):
        d, c, p = digits.copy(), colours.copy(), positions.copy()
        if hard:
            slot = int(rng.choice(np.flatnonzero(present)))
            d[slot] = int(rng.integers(n_digits))
        else:
            d[present] = rng.integers(n_digits, size=present.sum())
            c[present] = rng.integers(n_colours, size=present.sum())
            if present.sum() == 1:
                p[present] = rng.integers(len(RECIPE.positions))
            else:
                p[present] = rng.choice(RECIPE.corner_positions, size=present.sum(), replace=False)
        caption = caption_for(d, c, sizes, p, attrs["background"])
        if caption != truth and caption not in captions:
            captions.append(caption)
            if len(captions) == count:
                return captions
    raise RuntimeError("could not draw enough distractor captions")


@torch.no_grad()
def top1_among_10(clip, tokenizer, features, images_uint8, data, split, indices, hard: bool, seed: int = 0):
    """Fraction of images whose true caption scores highest among itself + 9 distractors."""
    rng = np.random.default_rng(seed)
    image_embeddings = F.normalize(features(uint8_to_unit(images_uint8)), dim=-1)
    correct = []
    for row, index in enumerate(indices):
        attrs = attributes(data, split, index)
        truth = str(data[f"{split}_captions"][index])
        candidates = [truth] + distractor_captions(attrs, 9, rng, hard)
        text = F.normalize(clip_text_embeddings(clip, tokenizer, candidates), dim=-1)
        correct.append(int((text @ image_embeddings[row]).argmax().item() == 0))
    return float(np.mean(correct))


# ----------------------------------------------------------------------------- FID
def clip_fid(features: ClipImageFeatures, real_uint8: np.ndarray, fake_uint8: np.ndarray) -> float:
    from torchmetrics.image.fid import FrechetInceptionDistance

    fid = FrechetInceptionDistance(feature=features, normalize=True)
    fid.update(uint8_to_unit(real_uint8), real=True)
    fid.update(uint8_to_unit(fake_uint8), real=False)
    return float(fid.compute())


# ----------------------------------------------------------------------------- judges
def foreground(image: np.ndarray, background: int) -> np.ndarray:
    """Per-pixel distance from the background colour, ``(H, W)`` in [0, ~1.7]."""
    bg = np.asarray(RECIPE.backgrounds[background][1], np.float32) / 255.0
    return np.linalg.norm(image.astype(np.float32) / 255.0 - bg, axis=-1)


def judge_position(image: np.ndarray, background: int) -> int:
    """Index of the position whose centre is nearest the foreground's centre of mass."""
    mass = foreground(image, background) ** 2
    if mass.sum() < 1e-6:
        return -1
    rows, cols = np.indices(mass.shape)
    centre = np.array([(rows * mass).sum(), (cols * mass).sum()]) / mass.sum()
    centres = np.array([c for _, c in RECIPE.positions], np.float32) - 0.5
    return int(np.argmin(np.linalg.norm(centres - centre, axis=1)))


def judge_colour(image: np.ndarray, background: int) -> int:
    """Index of the palette colour nearest the mean of the strongest foreground pixels."""
    strength = foreground(image, background)
    top = strength >= np.quantile(strength, 0.97)
    mean = image[top].astype(np.float32).mean(axis=0)
    palette = np.array([c for _, c in RECIPE.colours], np.float32)
    return int(np.argmin(np.linalg.norm(palette - mean, axis=1)))


def digit_crop(image: np.ndarray, background: int, position: int, size: int) -> np.ndarray:
    """Foreground strength in the digit's box, resized to 16x16, scaled to max 1: ``(256,)``."""
    side = RECIPE.sizes[size][1]
    row, col = RECIPE.positions[position][1]
    box = foreground(image, background)[row - side // 2 : row + side // 2, col - side // 2 : col + side // 2]
    crop = torch.from_numpy(np.ascontiguousarray(box))[None, None]
    crop = F.interpolate(crop, size=(16, 16), mode="bilinear", antialias=True)[0, 0].numpy()
    return (crop / max(crop.max(), 1e-6)).reshape(-1)


class DigitJudge:
    """Logistic regression on 16x16 foreground crops of VAE-reconstructed training scenes.

    Needs scikit-learn (and regenerates training scenes), like the training script.
    """

    def __init__(self, vae, count: int = 4000, seed: int = 5):
        from sklearn.linear_model import LogisticRegression

        from diffusion_accel.assets.digits import make_split

        scenes = make_split("train", count, sample_seed=seed)
        recon = reconstruct(vae, scenes.images)
        features, labels = [], []
        for i in range(count):
            for slot in np.flatnonzero(scenes.digits[i] != NO_OBJECT):
                features.append(digit_crop(recon[i], scenes.backgrounds[i], scenes.positions[i, slot], scenes.sizes[i, slot]))
                labels.append(scenes.digits[i, slot])
        self.model = LogisticRegression(C=0.5, max_iter=2000).fit(np.stack(features), np.asarray(labels))

    def accuracy(self, images: np.ndarray, data: dict, split: str, indices) -> float:
        hits = []
        for image, index in zip(images, indices):
            attrs = attributes(data, split, index)
            for slot in np.flatnonzero(attrs["digits"] != NO_OBJECT):
                crop = digit_crop(image, attrs["background"], attrs["positions"][slot], attrs["sizes"][slot])
                hits.append(int(self.model.predict(crop[None])[0] == attrs["digits"][slot]))
        return float(np.mean(hits))


@torch.no_grad()
def reconstruct(vae, images_uint8: np.ndarray, batch_size: int = 256) -> np.ndarray:
    x = uint8_to_unit(images_uint8) * 2 - 1
    out = []
    for start in range(0, len(x), batch_size):
        z = vae.encode(x[start : start + batch_size]).latent_dist.mode()
        out.append(vae.decode(z).sample.clamp(-1, 1))
    return torch.cat(out).add(1).mul(127.5).round().byte().permute(0, 2, 3, 1).numpy()


def attribute_accuracy(images: np.ndarray, data: dict, split: str, indices) -> dict:
    """Colour and position accuracy over single-digit scenes."""
    colour, position = [], []
    for image, index in zip(images, indices):
        attrs = attributes(data, split, index)
        if (attrs["digits"] != NO_OBJECT).sum() != 1:
            continue
        bg = int(attrs["background"])
        colour.append(judge_colour(image, bg) == attrs["colours"][0])
        position.append(judge_position(image, bg) == attrs["positions"][0])
    return {"colour": float(np.mean(colour)), "position": float(np.mean(position)), "scenes": len(colour)}


# ----------------------------------------------------------------------------- step redundancy
@torch.no_grad()
def block_step_similarity(pipeline, prompts: list[str], seed: int = 0) -> list[float]:
    """Mean cosine similarity of each block's output between consecutive denoising steps.

    Per block: for every step pair (t, t+1) and every sample (both CFG branches), the cosine
    similarity of the flattened block outputs; averaged over step pairs and samples.
    """
    blocks = pipeline.transformer.transformer_blocks
    outputs: list[list[torch.Tensor]] = [[] for _ in blocks]
    handles = [
        block.register_forward_hook(lambda module, inputs, output, i=i: outputs[i].append(output.detach().flatten(1)))
        for i, block in enumerate(blocks)
    ]
    try:
        generators = [torch.Generator().manual_seed(seed + i) for i in range(len(prompts))]
        pipeline(prompts, generator=generators, output_type="latent", **GENERATION)
    finally:
        for handle in handles:
            handle.remove()
    means = []
    for per_step in outputs:
        sims = [F.cosine_similarity(a, b, dim=1).mean().item() for a, b in zip(per_step, per_step[1:])]
        means.append(float(np.mean(sims)))
    return means


def time_generation(pipeline, prompts: list[str], repeats: int = 3) -> float:
    """Median wall-clock seconds of one 20-step call for ``len(prompts)`` images."""
    times = []
    for _ in range(repeats):
        generators = [torch.Generator().manual_seed(i) for i in range(len(prompts))]
        start = time.perf_counter()
        pipeline(prompts, generator=generators, output_type="np", **GENERATION)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def save_grid(path: Path, rows: list[np.ndarray], scale: int = 4) -> None:
    from PIL import Image

    grid = np.concatenate([np.concatenate(list(row), axis=1) for row in rows], axis=0)
    image = Image.fromarray(grid)
    image.resize((image.width * scale, image.height * scale), Image.NEAREST).save(path)


# ----------------------------------------------------------------------------- main
def evaluate(args: argparse.Namespace) -> dict:
    from transformers import CLIPModel, CLIPTokenizer

    from diffusion_accel.assets.architectures import BenchmarkArchitecture

    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    data = load_data(args.assets)
    clip_dir = args.assets / "benchmark_clip"
    clip, tokenizer = CLIPModel.from_pretrained(clip_dir).eval(), CLIPTokenizer.from_pretrained(clip_dir)
    features = ClipImageFeatures.from_pretrained(str(clip_dir))
    pipeline = load_pipeline(args.assets / "benchmark_model")
    metrics: dict = {"generation_settings": dict(GENERATION)}

    heldout_images = data["heldout_images"]
    n_real = len(heldout_images)
    n_gen = min(args.generated, n_real)
    real_idx, gen_idx = np.arange(n_real), np.arange(n_gen)
    prompts = [str(c) for c in data["heldout_captions"][:n_gen]]
    metrics["generated_count"], metrics["real_heldout_count"] = n_gen, n_real
    seeds = [1000 + i for i in range(n_gen)]

    start = time.time()
    generated = generate(pipeline, prompts, seeds, args.batch_size)
    metrics["generation_seconds_total"] = round(time.time() - start, 1)
    print(f"generated {n_gen} images in {metrics['generation_seconds_total']}s", flush=True)

    # the same pipeline with a freshly initialised transformer (seeded) as the FID reference point
    arch = BenchmarkArchitecture(**{k: tuple(v) if isinstance(v, list) else v
                                    for k, v in json.loads((args.assets / "training_summary.json").read_text())["architecture"].items()})
    trained_transformer = pipeline.transformer
    torch.manual_seed(0)
    pipeline.transformer = arch.build_transformer().eval()
    untrained = generate(pipeline, prompts, seeds, args.batch_size)
    pipeline.transformer = trained_transformer

    metrics["clip_top1_of_10"] = {
        "real_heldout": top1_among_10(clip, tokenizer, features, heldout_images, data, "heldout", real_idx, hard=False),
        "generated": top1_among_10(clip, tokenizer, features, generated, data, "heldout", gen_idx, hard=False),
        "untrained_generated": top1_among_10(clip, tokenizer, features, untrained, data, "heldout", gen_idx, hard=False),
    }
    metrics["clip_top1_of_10_hard_digit_only"] = {
        "real_heldout": top1_among_10(clip, tokenizer, features, heldout_images, data, "heldout", real_idx, hard=True),
        "generated": top1_among_10(clip, tokenizer, features, generated, data, "heldout", gen_idx, hard=True),
    }
    novel = data["heldout_novel"][:n_gen].astype(bool)
    two = (data["heldout_digits"][:n_gen] != NO_OBJECT).sum(axis=1) == 2
    for name, mask in (("novel_combination", novel), ("seen_combination", ~novel), ("two_digit", two), ("one_digit", ~two)):
        if mask.any():
            metrics["clip_top1_of_10"][f"generated_{name}"] = top1_among_10(
                clip, tokenizer, features, generated[mask], data, "heldout", gen_idx[mask], hard=False
            )
    print(f"clip: {metrics['clip_top1_of_10']}", flush=True)

    metrics["fid_clip"] = {
        "trained": clip_fid(features, heldout_images, generated),
        "untrained_transformer": clip_fid(features, heldout_images, untrained),
        "train_sample_real": clip_fid(features, heldout_images, data["train_images"]),
    }
    metrics["fid_clip"]["untrained_over_trained"] = metrics["fid_clip"]["untrained_transformer"] / metrics["fid_clip"]["trained"]
    print(f"fid: {metrics['fid_clip']}", flush=True)

    metrics["attributes_generated"] = attribute_accuracy(generated, data, "heldout", gen_idx)
    metrics["attributes_real"] = attribute_accuracy(heldout_images, data, "heldout", real_idx)
    try:
        judge = DigitJudge(pipeline.vae)
        metrics["digit_accuracy"] = {
            "generated": judge.accuracy(generated, data, "heldout", gen_idx),
            "real_heldout": judge.accuracy(heldout_images, data, "heldout", real_idx),
            "vae_reconstructed_heldout": judge.accuracy(reconstruct(pipeline.vae, heldout_images), data, "heldout", real_idx),
        }
    except ImportError:
        metrics["digit_accuracy"] = "skipped (needs scikit-learn)"
    print(f"attributes: {metrics['attributes_generated']} digits: {metrics['digit_accuracy']}", flush=True)

    similarity = block_step_similarity(pipeline, prompts[: args.redundancy_prompts])
    metrics["step_redundancy"] = {"per_block": [round(s, 4) for s in similarity], "mean": float(np.mean(similarity))}
    print(f"step redundancy: {metrics['step_redundancy']}", flush=True)

    metrics["seconds_20_steps_16_images"] = time_generation(pipeline, prompts[:16])
    metrics["threads"] = args.threads
    print(f"20-step generation of 16 images: {metrics['seconds_20_steps_16_images']:.2f}s", flush=True)

    rows = []
    for start in range(0, min(n_gen, 48), 16):
        rows += [heldout_images[start : start + 16], generated[start : start + 16]]
    save_grid(args.work / "heldout_real_vs_generated.png", rows)
    save_grid(args.work / "untrained_generated.png", [untrained[:16]])
    (args.work / "heldout_prompts.txt").write_text("\n".join(f"{i}: {p}" for i, p in enumerate(prompts[:48])) + "\n")
    return metrics


def sizes_mb(assets: Path) -> dict:
    def folder(path: Path) -> float:
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20

    return {
        "benchmark_model": round(folder(assets / "benchmark_model"), 2),
        "benchmark_clip": round(folder(assets / "benchmark_clip"), 2),
        "benchmark_data.npz": round((assets / "benchmark_data.npz").stat().st_size / 2**20, 2),
    }


def parameter_counts(assets: Path) -> dict:
    from safetensors import safe_open

    counts = {}
    for path in sorted(assets.glob("benchmark_*/**/*.safetensors")):
        with safe_open(str(path), "pt") as handle:
            total = sum(int(np.prod(handle.get_slice(k).get_shape())) for k in handle.keys())
        counts[str(path.relative_to(assets).parent)] = total
    return counts


def write_card(assets: Path, metrics: dict) -> None:
    summary = json.loads((assets / "training_summary.json").read_text())
    arch, training, recipe = summary["architecture"], summary["training"], summary["recipe"]
    clip1, hard, fid = metrics["clip_top1_of_10"], metrics["clip_top1_of_10_hard_digit_only"], metrics["fid_clip"]
    redundancy = metrics["step_redundancy"]
    pct = lambda x: f"{100 * x:.1f}%"  # noqa: E731
    digit = metrics["digit_accuracy"]
    digit_line = (
        f"generated {pct(digit['generated'])}, real held-out {pct(digit['real_heldout'])}, "
        f"VAE-reconstructed held-out {pct(digit['vae_reconstructed_heldout'])} (chance 10%)"
        if isinstance(digit, dict) else digit
    )
    counts = parameter_counts(assets)
    digit_short = pct(digit["generated"]) if isinstance(digit, dict) else "(not measured)"
    sessions = summary.get("previous_sessions", [])
    session_line = ""
    if sessions:
        steps = [p["training"]["diffusion_steps_this_session" if "diffusion_steps_this_session" in p["training"]
                               else "diffusion_steps"] for p in sessions] + [training["diffusion_steps_this_session"]]
        minutes = [p["session_minutes"] for p in sessions] + [summary["session_minutes"]]
        lrs = [p["training"]["lr"] for p in sessions] + [training["lr"]]
        session_line = (
            f"- Trained in {len(steps)} sessions (later ones with `--resume-from`, which keeps the VAE and continues "
            f"the transformer + T5 from the shipped EMA weights; `--retrain-clip` trains a new CLIP): "
            f"diffusion steps {steps}, transformer lr {lrs}, wall-clock minutes {minutes}.\n"
        )
    budget_line = (
        "- The training budget was spent on a 2-core machine shared with other jobs, so the wall-clock minutes\n"
        "  above buy far fewer steps than on two free cores; more diffusion and CLIP steps are the first lever\n"
        "  for better digits.\n"
        if sessions else
        "- More diffusion steps are the first lever for better digits: the budget is wall-clock minutes, so a\n"
        "  faster machine trains further in the same time (`--diffusion-steps` fixes the count instead).\n"
    )
    card = f"""# Bundled benchmark model (diffusion-accel)

A small but really trained text-to-image model, shipped inside the package so every quality
claim of diffusion-accel can be checked offline. Standard diffusers / transformers classes only:

```python
from diffusers import PixArtAlphaPipeline
import torch
from diffusion_accel.assets import benchmark_model_dir, benchmark_prompts, BENCHMARK_GENERATION_KWARGS

pipe = PixArtAlphaPipeline.from_pretrained(benchmark_model_dir())
prompts = benchmark_prompts("heldout")[:4]
images = pipe(prompts, generator=[torch.Generator().manual_seed(i) for i in range(4)],
              **BENCHMARK_GENERATION_KWARGS).images      # 32x32 PIL images
```

`use_resolution_binning=False` is required (the pipeline's aspect-ratio bins only exist for
256 px and up); `BENCHMARK_GENERATION_KWARGS` = `{GENERATION}`.
Weights are stored as fp32 safetensors and load as fp32.

## Data (regenerated by `scripts/train_benchmark_model.py`, needs scikit-learn)
- Real handwritten digits: scikit-learn's `load_digits` (1797 8x8 scans), upscaled bilinearly to
  a size, tinted with a colour and composited on a background in a 32x32 RGB canvas.
- Colours: {", ".join(recipe["colours"])}. Backgrounds: {", ".join(recipe["backgrounds"])}.
  Sizes: {", ".join(f"{k} ({v} px)" for k, v in recipe["sizes"].items())}.
  Positions: {", ".join(recipe["positions"])}.
- {pct(recipe["two_digit_fraction"])} of scenes hold two digits in two different corners.
- Caption template: `a <size> <colour> <digit> in the <position>[ and a <size> <colour> <digit> in the <position>] on a <background> background`
  (digits stated in position order, so each scene has one caption; {len(summary["data"]["vocabulary"])} words).
- Splits: {pct(recipe["heldout_scan_fraction"])} of the scans (stratified by digit) are held out and never
  used in training; {pct(recipe["heldout_combination_fraction"])} of (colour, digit, position) combinations never
  appear in training; half of the held-out single-digit scenes use such a combination.
- Training set: {summary["data"]["train_images"]} scenes ({summary["data"]["distinct_train_captions"]} distinct captions).
  Shipped asset `benchmark_data.npz`: {summary["data"]["heldout_images"]} held-out and {summary["data"]["train_sample_exported"]} train scenes
  (uint8 images, captions, attributes) — the FID reference set; no scikit-learn needed at runtime.

## Model
| part | class | config | parameters |
|---|---|---|---|
| VAE | `AutoencoderKL` | channels {arch["vae_channels"]}, {arch["latent_channels"]} latent channels, 32x32x3 -> {arch["image_size"] // 2 ** (len(arch["vae_channels"]) - 1)}x{arch["image_size"] // 2 ** (len(arch["vae_channels"]) - 1)}x{arch["latent_channels"]}, scaling factor {training["latent_scaling_factor"]} | {counts.get("benchmark_model/vae", 0):,} |
| text encoder | `T5EncoderModel` + `T5Tokenizer` (word-level unigram) | d_model {arch["text_width"]}, {arch["text_layers"]} layers, {arch["text_heads"]} heads | {counts.get("benchmark_model/text_encoder", 0):,} |
| denoiser | `PixArtTransformer2DModel` | {arch["transformer_layers"]} blocks, {arch["transformer_heads"]} heads x {arch["transformer_head_dim"]} (hidden {arch["transformer_heads"] * arch["transformer_head_dim"]}), patch {arch["patch_size"]}, {(arch["image_size"] // 2 ** (len(arch["vae_channels"]) - 1) // arch["patch_size"]) ** 2} tokens | {counts.get("benchmark_model/transformer", 0):,} |
| scheduler | `DPMSolverMultistepScheduler` | {arch["prediction_type"]}, {arch["beta_schedule"]} betas {arch["beta_start"]}-{arch["beta_end"]}, {arch["train_timesteps"]} steps | - |
| CLIP | `CLIPModel` + `CLIPProcessor` (BPE `CLIPTokenizer`) | width {arch["clip_width"]}, {arch["clip_layers"]} layers per tower, patch {arch["clip_patch"]}, projection {arch["clip_projection"]} | {counts.get("benchmark_clip", 0):,} |

Sizes on disk: {sizes_mb(assets)} (MiB).

## Training ({summary["total_training_minutes"]} min on {training["threads"]} CPU threads, torch {training["torch"]})
- VAE: {training["vae_steps"]} steps, batch {training["vae_batch_size"]}, fp32, AdamW 1e-3, MSE with digit pixels weighted 10x, KL 1e-6;
  held-out reconstruction MSE {summary["vae_check"]["heldout_mse"]:.4f} (digit pixels {summary["vae_check"]["heldout_digit_mse"]:.4f}, images in [-1, 1]).
{session_line}- Latents encoded once (posterior means) into a bank.
- Transformer + T5 jointly: {training["diffusion_steps"]} steps, batch {training["diffusion_batch_size"]}, AdamW (lr above, T5 2e-4)
  constant after 200 warm-up steps, EMA 0.999 (the EMA weights are shipped), min-SNR-5 weighting,
  latent cells under a digit weighted {1 + training["foreground_boost"]:g}x, 10% empty captions for classifier-free guidance, bf16 autocast.
- CLIP: {training["clip_steps"]} steps, batch {training["clip_batch_size"]}, AdamW 1e-3 cosine, symmetric InfoNCE with identical captions as joint positives;
  {pct(training.get("clip_reconstruction_fraction", 0.0))} of training images shown as VAE reconstructions (so the judge reads content, not the VAE's softer strokes).
- Timings of the last session (s): {summary["timings_s"]}.

## Evaluation (`scripts/evaluate_benchmark_model.py`; held-out scans, {metrics["generated_count"]} generated scenes, {metrics["attributes_generated"]["scenes"]} of them single-digit)
Generation: {GENERATION}, one seed per image.

| metric | value |
|---|---|
| CLIP top-1 among 10 captions, real held-out images | **{pct(clip1["real_heldout"])}** (bar >= 80%) |
| CLIP top-1 among 10 captions, generated images | **{pct(clip1["generated"])}** (bar >= 60%) |
| ... generated, novel (colour, digit, position) combinations | {pct(clip1.get("generated_novel_combination", float("nan")))} |
| ... generated, one-digit / two-digit scenes | {pct(clip1.get("generated_one_digit", float("nan")))} / {pct(clip1.get("generated_two_digit", float("nan")))} |
| ... untrained transformer | {pct(clip1["untrained_generated"])} |
| CLIP top-1 among 10, hard distractors (one digit's identity changed): real / generated | {pct(hard["real_heldout"])} / {pct(hard["generated"])} |
| FID in CLIP space, generated vs held-out real | **{fid["trained"]:.2f}** |
| FID, untrained transformer | {fid["untrained_transformer"]:.2f} (**{fid["untrained_over_trained"]:.1f}x** the trained model's; bar >= 5x) |
| FID, real train sample vs held-out real (floor) | {fid["train_sample_real"]:.2f} |
| colour / position accuracy of generated single-digit scenes | {pct(metrics["attributes_generated"]["colour"])} / {pct(metrics["attributes_generated"]["position"])} (judges score {pct(metrics["attributes_real"]["colour"])} / {pct(metrics["attributes_real"]["position"])} on real images) |
| digit accuracy (logistic-regression judge trained on VAE reconstructions) | {digit_line} |
| mean block-output cosine similarity between consecutive steps | **{redundancy["mean"]:.4f}** |
| 20-step generation of 16 images ({metrics["threads"]} threads, fp32) | {metrics["seconds_20_steps_16_images"]:.2f} s |

Step redundancy per block (block 0 first): {redundancy["per_block"]}.

## Known weaknesses
- Digit identity: generated digits are judged correct {digit_short} of the time (chance 10%); colour and
  position are followed, digit shapes stay blobby. The bundled CLIP does not separate digits either
  (hard-distractor top-1 {pct(hard["real_heldout"])} on real images), so CLIP score and CLIP-space FID measure
  colour, position, layout and image statistics, not digit identity.
- Two-digit scenes are followed less well than one-digit scenes (CLIP top-1 {pct(clip1.get("generated_two_digit", float("nan")))}).
{budget_line}- A 32x32 toy domain; CLIP-space FID is only meaningful on this domain.
"""
    (assets / "MODEL_CARD.md").write_text(card)


def main() -> None:
    args = parse_args()
    metrics = evaluate(args)
    (args.work / "evaluation.json").write_text(json.dumps(metrics, indent=2) + "\n")
    if args.write_card:
        (args.assets / "evaluation.json").write_text(json.dumps(metrics, indent=2) + "\n")
        write_card(args.assets, metrics)
        print(f"wrote {args.assets / 'MODEL_CARD.md'}")


if __name__ == "__main__":
    main()
