"""Everything measured on the bundled video model (a small Wan; issue 18), ratios in one run (JSON).

Parts (``--parts``, default all):

* ``caching``: ours vs cache-dit and diffusers' own caches at matched compute -- the caching part of
  ``benchmarks/peers.py`` run with ``--caching-model benchmark-video`` (block computations counted the
  same way for every method);
* ``techniques``: quantization (W8A8, W4A8) and sparse attention (block-sparse at 50 % / 25 %
  density, VMoBA, linear) applied with :func:`diffusion_accel.apply`: PSNR per video, temporal error
  and flicker against the full-compute clips of the same seeds, denoiser MAC ratio.

Results go to ``benchmarks/results/video.json``::

    python benchmarks/video.py --prompts 8
    python benchmarks/video.py --parts techniques --prompts 4
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results", "video.json")


def technique_configs() -> dict[str, Any]:
    """name -> AccelerationConfig of the ``techniques`` part."""
    from diffusion_accel import AccelerationConfig
    from diffusion_accel.quant import QuantConfig
    from diffusion_accel.sparse_attn import SparseAttentionConfig

    return {
        "W8A8": AccelerationConfig(quant=QuantConfig(weight_bits=8, act_bits=8)),
        "W4A8": AccelerationConfig(quant=QuantConfig(weight_bits=4, act_bits=8)),
        "block-sparse 50%": AccelerationConfig(attention=SparseAttentionConfig(method="block_sparse", density=0.5)),
        "block-sparse 25%": AccelerationConfig(attention=SparseAttentionConfig(method="block_sparse", density=0.25)),
        "vmoba 50%": AccelerationConfig(attention=SparseAttentionConfig(method="vmoba", density=0.5)),
        "linear": AccelerationConfig(attention=SparseAttentionConfig(method="linear")),
    }


def _clips(output: Any) -> np.ndarray:
    """``(N, F, H, W, 3)`` uint8 from a pipeline output with ``output_type="np"``."""
    frames = np.asarray(output.frames)
    return (np.clip(frames, 0, 1) * 255).round().astype(np.uint8)


def run_techniques(prompts: list[str], call_kwargs: dict[str, Any], model: str) -> list[dict[str, Any]]:
    import diffusion_accel
    from diffusion_accel.cost import denoiser_macs
    from diffusion_accel.eval.sweep import load_pipeline
    from diffusion_accel.eval.video_metrics import TemporalSums

    pipe = load_pipeline(model)
    pipe.set_progress_bar_config(disable=True)

    def call():
        generators = [torch.Generator().manual_seed(i) for i in range(len(prompts))]
        return pipe(prompts, generator=generators, **call_kwargs)

    reference = _clips(call())
    full_macs = denoiser_macs(pipe, prompt=prompts, **call_kwargs)
    rows = []
    for name, config in technique_configs().items():
        row: dict[str, Any] = {"name": name, "config": config.to_dict()}
        try:
            diffusion_accel.apply(pipe, config)
            try:
                start = time.perf_counter()
                clips = _clips(call())
                row["seconds"] = time.perf_counter() - start
                macs = denoiser_macs(pipe, prompt=prompts, **call_kwargs)
            finally:
                diffusion_accel.remove(pipe)
        except Exception as exc:  # a technique that does not run on this model: say why
            row.update(supported=False, reason=f"{type(exc).__name__}: {exc}")
            rows.append(row)
            continue
        sums = TemporalSums()
        sums.update(clips, reference)
        row.update(supported=True, macs_ratio=full_macs / macs if macs else None, **sums.compute())
        rows.append(row)
        shown = {k: row.get(k) for k in ("macs_ratio", "psnr_per_video", "temporal_error")}
        print(f"[video techniques] {name}: {json.dumps(shown, default=float)}", file=sys.stderr)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="caching,techniques")
    parser.add_argument("--prompts", type=int, default=8, help="held-out prompts (default 8)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=RESULTS)
    args = parser.parse_args(argv)
    from diffusion_accel.assets.bundled import BUNDLED_MODELS

    torch.set_num_threads(args.threads)
    model = BUNDLED_MODELS["benchmark-video"]
    prompts = model.prompts("heldout")[: args.prompts]
    call_kwargs = {**model.generation_kwargs(), "num_inference_steps": args.steps, "output_type": "np"}
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = sorted(set(parts) - {"caching", "techniques"})
    if unknown:
        parser.error(f"unknown part(s) {unknown}; choose from ['caching', 'techniques']")
    results: dict[str, Any] = {"model": model.name, "prompts": len(prompts), "steps": args.steps}
    if "techniques" in parts:
        results["techniques"] = run_techniques(prompts, call_kwargs, model.name)
    if "caching" in parts:
        sys.path.insert(0, HERE)
        import peers_caching

        caching_args = argparse.Namespace(caching_model=model.name, caching_prompts=args.prompts,
                                          caching_steps=args.steps, caching_rounds=1, caching_threads=args.threads,
                                          caching_only="")
        results["caching"] = peers_caching.run(caching_args)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as fh:
        json.dump(results, fh, indent=2, default=float)
        fh.write("\n")
    print(json.dumps({k: v for k, v in results.items() if k != "caching"}, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
