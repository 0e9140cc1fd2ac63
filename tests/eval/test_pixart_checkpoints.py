"""A PixArt checkpoint whose sample size has no aspect-ratio bins (issue #17 item 15): the eval CLI and
the drop-in pipeline classes turn resolution binning off with a note instead of diffusers' "Invalid
sample size"."""

import json
import logging

import pytest
import torch

from diffusion_accel.eval.cli import main

CALL = {"height": 32, "width": 32, "num_inference_steps": 2, "guidance_scale": 4.5, "clean_caption": False}


@pytest.mark.slow
def test_eval_runs_a_saved_checkpoint_without_binning_arguments(pipeline_dir, clip_dir, tmp_path, capsys):
    (tmp_path / "p.txt").write_text("a red cat\n")
    out = tmp_path / "out"
    args = ["--model", pipeline_dir, "--prompts", str(tmp_path / "p.txt"), "--out", str(out), "--clip", clip_dir,
            "--reference", "none", "--call-kwargs", json.dumps(CALL), "--latency-runs", "1", "--warmup", "0",
            "--no-progress"]
    assert main(args) == 0, capsys.readouterr().err
    assert json.loads((out / "run.json").read_text())["call_kwargs"]["use_resolution_binning"] is False


def test_drop_in_class_turns_binning_off_with_a_note(pipeline_dir, caplog):
    from diffusion_accel.pipelines import PixArtAlphaPipeline

    pipe = PixArtAlphaPipeline.from_pretrained(pipeline_dir)
    pipe.set_progress_bar_config(disable=True)
    with caplog.at_level(logging.WARNING):
        image = pipe("a red cat", generator=torch.Generator().manual_seed(0), output_type="np", **CALL).images
        pipe("a red cat", generator=torch.Generator().manual_seed(0), output_type="np", **CALL)
    assert image.shape == (1, 32, 32, 3)
    notes = [r.getMessage() for r in caplog.records if "no aspect-ratio bins" in r.getMessage()]
    assert len(notes) == 1 and "use_resolution_binning=False" in notes[0]  # noted once per pipeline
    explicit = pipe("a red cat", generator=torch.Generator().manual_seed(0), output_type="np",
                    use_resolution_binning=False, **CALL).images
    assert (explicit == image).all()
