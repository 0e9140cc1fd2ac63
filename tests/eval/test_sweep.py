import json
import math
import os
import re

import pytest
from eval_helpers import TINY_CALL, toy_config

from diffusion_accel import AccelerationConfig
from diffusion_accel.eval import deterministic_view, evaluate, load_configs, load_results

REQUIRED = ("name", "config", "speedup", "macs_ratio", "latency_s", "peak_memory_bytes", "clip_score", "fid", "psnr")


@pytest.fixture(scope="module")
def pipe():
    from diffusion_accel.testing import tiny_pipeline

    return tiny_pipeline("pixart-alpha", seed=0)


@pytest.fixture(scope="module")
def reference_dir(tmp_path_factory):
    from conftest import scenes
    from PIL import Image

    path = tmp_path_factory.mktemp("reference")
    for i, img in enumerate(scenes(6)):
        Image.fromarray(img).save(path / f"{i}.png")
    return str(path)


def _run(pipe, clip, out, reference, configs, **kw):
    return evaluate(pipe, ["a red cat", "a blue dog"], configs, out=out, num_images=1, batch_size=1,
                    call_kwargs=TINY_CALL, clip=clip, reference=reference, latency_runs=1, warmup=0,
                    progress=False, **kw)


def fora(pipe):
    """A real static cache of the caching engine: every block reuses step 0 at step 1 (of 3)."""
    from diffusion_accel.caching import CacheSchedule, StaticCacheConfig

    return AccelerationConfig(cache=StaticCacheConfig(CacheSchedule.fora(pipe.transformer, 3, 2)))


@pytest.fixture(scope="module")
def finished_run(pipe, clip, reference_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep") / "out"
    records = _run(pipe, clip, out, reference_dir, [("fora", fora(pipe))])
    return out, records


def test_load_configs_from_config_frontier_and_list_files(tmp_path):
    cfg = toy_config(2)
    (tmp_path / "fast.json").write_text(cfg.to_json())
    (tmp_path / "front.json").write_text(json.dumps(
        {"frontier": [{"config": cfg.to_dict(), "speedup": 1.4}, {"config": AccelerationConfig().to_dict()}]}))
    (tmp_path / "list.json").write_text(json.dumps([{"name": "baseline", "config": cfg.to_dict()}]))
    got = load_configs([tmp_path / "fast.json", tmp_path / "front.json", tmp_path / "list.json", ("fast", cfg)])
    assert [name for name, _ in got] == ["fast", "front-00", "front-01", "baseline-1", "fast-1"]
    assert got[0][1] == cfg and got[2][1] == AccelerationConfig()


@pytest.mark.parametrize("content,match", [
    (None, "Cannot read acceleration config file"),
    ("{not json", "not valid JSON"),
    ('{"cache": {"type": "NoSuchCache"}}', "not a valid acceleration config.*NoSuchCache"),
    ('{"frontier": [3]}', "entry 0: expected an object"),
])
def test_unreadable_config_is_one_clear_error(tmp_path, content, match):
    path = tmp_path / "cfg.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ValueError, match=match):
        load_configs([path])


def test_sweep_records_and_files(pipe, finished_run):
    from diffusion_accel.cost import macs

    out, records = finished_run
    assert [r["name"] for r in records] == ["baseline", "fora"]
    for r in records:
        assert all(k in r for k in REQUIRED)
    base, fast = records
    assert base["speedup"] == 1.0 and base["macs_ratio"] == 1.0
    assert base["psnr"] == math.inf and base["ssim"] == pytest.approx(1.0) and base["max_abs_error"] == 0.0
    assert base["fid_vs_baseline"] == pytest.approx(0.0, abs=1e-6)
    # Measured MACs of the real call agree with the caching engine's analytic count.
    assert fast["macs_ratio"] == pytest.approx(macs(pipe, fora(pipe), prompt="a", **TINY_CALL).ratio, rel=1e-9)
    assert 1.0 < fast["pipeline_macs_ratio"] < fast["macs_ratio"]  # text encoder and VAE are not cached
    assert fast["psnr"] < math.inf and fast["max_abs_error"] > 0
    assert fast["fid"] > 0 and base["fid"] > 0 and fast["clip_score"] > 0
    assert fast["config"] == fora(pipe).to_dict()
    assert fast["lpips"] is None and any("LPIPS" in n for n in fast["notes"])
    assert load_results(out) == records
    assert all(r["latency"]["runs"] == 1 and r["latency_s"] > 0 for r in records)
    import torch  # the machine the latencies were timed on; one run has no spread (issue #17)

    assert all(r["environment"]["torch"] == torch.__version__ and r["environment"]["cpu"] for r in records)
    assert all(r["environment"]["torch_threads"] >= 1 and r["environment"]["device"] == "cpu" for r in records)
    assert all(r["latency_spread"] == 0.0 and r["speedup_noisy"] is False for r in records)
    for name in ("results.json", "results.csv", "pareto.png", "report.md", "grid.png", "run.json", "latency.json",
                 "environment.json"):
        assert (out / name).exists(), name
    report = (out / "report.md").read_text()
    assert "fora/images/p00000-i00.png" in report and "baseline/images/p00000-i00.png" in report


def test_bad_input_fails_early_and_keeps_what_was_generated(pipe, clip, finished_run, reference_dir, tmp_path):
    out, records = finished_run
    files = {p: p.read_bytes() for p in out.rglob("*.png")}
    (tmp_path / "bad.json").write_text("{oops")
    (tmp_path / "empty.txt").write_text("\n")
    (tmp_path / "noimg").mkdir()
    with pytest.raises(ValueError, match="not valid JSON"):
        _run(pipe, clip, out, reference_dir, [("fora", fora(pipe)), tmp_path / "bad.json"], resume=True)
    with pytest.raises(ValueError, match="holds no prompts"):
        evaluate(pipe, tmp_path / "empty.txt", out=out, resume=True, clip=None, reference=None)
    with pytest.raises(ValueError, match="holds no images"):
        _run(pipe, clip, out, str(tmp_path / "noimg"), [("fora", fora(pipe))], resume=True)
    with pytest.raises(ValueError, match="already holds an evaluation run; pass --resume"):
        _run(pipe, clip, out, reference_dir, [("fora", fora(pipe))])
    with pytest.raises(ValueError, match=r"settings differ in \['configs'\]"):
        _run(pipe, clip, out, reference_dir, [("fora", toy_config(2))], resume=True)
    assert {p: p.read_bytes() for p in out.rglob("*.png")} == files
    assert load_results(out) == records


def test_resume_of_a_finished_run_reproduces_its_results(pipe, clip, finished_run, reference_dir):
    out, records = finished_run
    again = _run(pipe, clip, out, reference_dir, [("fora", fora(pipe))], resume=True)
    assert deterministic_view(again) == deterministic_view(records)
    assert again == records  # the cost was measured once (cost.json) and is reused


def test_resume_reads_run_json_once(pipe, clip, finished_run, reference_dir, monkeypatch):
    """The configs to resume and the settings to check come from one read of ``run.json``."""
    from diffusion_accel.eval import sweep

    out, records = finished_run
    reads = []

    def counting_open(file, mode="r", *args, **kwargs):
        if os.path.basename(os.fspath(file)) == "run.json" and "r" in mode:
            reads.append(file)
        return open(file, mode, *args, **kwargs)

    monkeypatch.setattr(sweep, "open", counting_open, raising=False)
    again = _run(pipe, clip, out, reference_dir, [("fora", fora(pipe))], resume=True)
    assert len(reads) == 1
    assert deterministic_view(again) == deterministic_view(records)


def test_missing_reference_folder_is_reported_before_generation(pipe, clip, tmp_path):
    with pytest.raises(ValueError, match="neither a folder of images nor a .npz"):
        _run(pipe, clip, tmp_path / "out", str(tmp_path / "nowhere"), [])
    assert not os.path.exists(tmp_path / "out")


def test_fid_extractor_problems_are_reported_before_generation(pipe, tmp_path):
    from torchmetrics.utilities.imports import _TORCH_FIDELITY_AVAILABLE

    with pytest.raises(ValueError, match="Unknown FID feature extractor 'dino'"):
        evaluate(pipe, ["a"], out=tmp_path / "a", fid_features="dino", clip=None, reference=None)
    if not _TORCH_FIDELITY_AVAILABLE:
        with pytest.raises(ValueError, match="torch-fidelity"):
            evaluate(pipe, ["a"], out=tmp_path / "b", fid_features="inception", clip=None, reference=None)
    assert not os.path.exists(tmp_path / "a") and not os.path.exists(tmp_path / "b")


@pytest.mark.slow
def test_video_pipeline_outputs_and_metrics(clip, tmp_path):
    import numpy as np

    from diffusion_accel.eval.generate import load_arrays
    from diffusion_accel.testing import tiny_call_kwargs, tiny_pipeline

    kwargs = tiny_call_kwargs("wan", height=16, width=16, num_inference_steps=2)
    del kwargs["prompt"], kwargs["output_type"]
    records = evaluate(tiny_pipeline("wan"), ["a cat"], out=tmp_path, num_images=2, call_kwargs=kwargs, clip=clip,
                       reference=None, latency_runs=1, warmup=0, progress=False)
    videos = load_arrays(tmp_path / "baseline", ["p00000-i00", "p00000-i01"])
    assert videos.shape == (2, 5, 16, 16, 3) and videos.dtype == np.uint8
    base = records[0]
    assert 0 < base["frame_consistency"] <= 100 and base["clip_score"] is not None
    assert base["psnr"] == math.inf and base["fid_vs_baseline"] == pytest.approx(0.0, abs=1e-6)
    report = (tmp_path / "report.md").read_text()
    assert '[<img src="baseline/previews/p00000-i00.gif" width="128">](baseline/images/p00000-i00.npy)' in report
    assert (tmp_path / "baseline" / "previews" / "p00000-i00.gif").exists()
    assert base["flicker"] is not None and "frame_consistency" in report
    assert (tmp_path / "grid.png").exists()


def test_load_configs_reads_the_search_frontier_file(pipe, tmp_path):
    from diffusion_accel.search.frontier import save_frontier

    entries = [{"name": "search-03", "origin": "search", "config": fora(pipe).to_dict(), "speedup": 1.3},
               {"name": "heuristic fora", "origin": "heuristic", "config": fora(pipe).to_dict(), "speedup": 1.3}]
    save_frontier(tmp_path / "frontier.json", entries, metric="psnr", cost="macs")
    got = load_configs([tmp_path / "frontier.json"])
    assert [name for name, _ in got] == ["search-03", "heuristic_fora"]
    assert all(config == fora(pipe) for _, config in got)


def test_measure_selects_the_cost_measurements(pipe, tmp_path):
    records = _run(pipe, None, tmp_path / "out", None, [("fora", fora(pipe))], measure=("macs",))
    for record in records:
        assert record["macs"] is not None
        assert record["peak_memory_bytes"] is None and record["operator_shares"] is None
    assert records[1]["macs_ratio"] > 1.0
    with pytest.raises(ValueError, match="Unknown cost measure"):
        _run(pipe, None, tmp_path / "other", None, [], measure=("flops",))


@pytest.mark.slow
def test_settings_object_class_labels_and_the_pipelines_own_acceleration(tmp_path):
    """EvalSettings, a class-conditioned DiT evaluated on per-item class labels, and a pipeline that
    keeps the acceleration it came with."""
    import diffusion_accel
    from diffusion_accel.api import acceleration_state
    from diffusion_accel.caching import CacheSchedule, DynamicCacheConfig, StaticCacheConfig
    from diffusion_accel.eval import EvalSettings
    from diffusion_accel.testing import tiny_pipeline

    dit = tiny_pipeline("dit")
    own = AccelerationConfig(cache=DynamicCacheConfig(threshold=0.05))
    diffusion_accel.apply(dit, own)
    settings = EvalSettings(model=dit, prompts=({"class_labels": 1}, {"class_labels": 9}), out=tmp_path / "dit",
                            configs=(("fora", AccelerationConfig(cache=StaticCacheConfig(CacheSchedule.fora(dit, 2, 2)))),),
                            num_steps=2, call_kwargs={"guidance_scale": 4.0}, clip=None, reference=None,
                            latency_runs=1, warmup=0, progress=False, measure=("macs",))
    records = evaluate(settings=settings)
    assert [r["name"] for r in records] == ["baseline", "fora"] and records[1]["macs_ratio"] > 1.0
    assert acceleration_state(dit).config == own  # the pipeline got its own acceleration back
    run = json.loads((tmp_path / "dit" / "run.json").read_text())
    assert run["prompts"] == [[0, "class_labels=1"], [1, "class_labels=9"]]
    assert run["call_kwargs"] == {"guidance_scale": 4.0, "num_inference_steps": 2}
    with pytest.raises(ValueError, match="out is required"):
        EvalSettings(configs=("fast.json",))
    with pytest.raises(ValueError, match="call_kwargs must not set \\['class_labels'\\]"):
        evaluate(settings=settings, out=tmp_path / "other", call_kwargs={"class_labels": [3]})
    with pytest.raises(TypeError, match=r"unexpected keyword argument\(s\) \['num_image'\]"):
        evaluate(settings=settings, num_image=2)


def test_resume_with_another_model_is_refused(pipe, clip, finished_run, reference_dir):
    """Another pipeline object with other weights must not reuse the outputs of the run (issue #17)."""
    from diffusion_accel.testing import tiny_pipeline

    out, records = finished_run
    files = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    other = tiny_pipeline("pixart-alpha", seed=1)
    with pytest.raises(ValueError, match="model is not the one this run was made with.*Pass the same model"):
        _run(other, clip, out, reference_dir, [("fora", fora(pipe))], resume=True)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == files


def test_resume_adds_a_config_to_a_finished_run(pipe, tmp_path):
    """``--resume --config new.json`` keeps the finished variants and generates only the new one (issue #17)."""
    from diffusion_accel.caching import CacheSchedule, StaticCacheConfig

    out = tmp_path / "out"
    first = _run(pipe, None, out, None, [("fora", fora(pipe))], measure=("macs",))
    kept = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.rglob("*")
            if p.is_file() and p.parts[-3] in ("baseline", "fora") and p.parent.name == "images"}
    costs = {n: (out / n / "cost.json").read_text() for n in ("baseline", "fora")}
    wider = AccelerationConfig(cache=StaticCacheConfig(CacheSchedule.fora(pipe.transformer, 3, 3)))
    records = _run(pipe, None, out, None, [("wider", wider)], measure=("macs",), resume=True)
    assert [r["name"] for r in records] == ["baseline", "fora", "wider"]
    assert deterministic_view(records[:2]) == deterministic_view(first)
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in kept} == kept  # not generated again
    assert {n: (out / n / "cost.json").read_text() for n in costs} == costs
    assert sorted(os.listdir(out / "wider" / "images")) == ["p00000-i00.png", "p00001-i00.png"]
    assert list(json.loads((out / "run.json").read_text())["configs"]) == ["baseline", "fora", "wider"]
    assert set(json.loads((out / "latency.json").read_text())) == {"baseline", "fora", "wider"}
    with pytest.raises(ValueError, match="config 'fora' is not the one the run evaluated"):
        _run(pipe, None, out, None, [("fora", wider)], measure=("macs",), resume=True)


def test_identical_configs_report_the_same_peak_memory(pipe, tmp_path):
    """Each variant's memory is measured from a clean state: the operator profiling of one variant
    does not inflate the next one's peak (issue #17)."""
    configs = [(f"fora{i}", fora(pipe)) for i in range(3)]
    records = _run(pipe, None, tmp_path / "out", None, configs)
    peaks = [r["peak_memory_bytes"] for r in records[1:]]
    assert all(r["operator_shares"] is not None for r in records)
    assert max(peaks) <= 1.02 * min(peaks), [p / 2**20 for p in peaks]


def test_every_phase_shows_a_progress_bar_with_an_estimate(pipe, tmp_path, capsys):
    """Generation, cost, latency and scoring each show a bar with its total (hence the time left) (issue #17)."""
    evaluate(pipe, ["a red cat", "a blue dog"], [("fora", fora(pipe))], out=tmp_path / "out", call_kwargs=TINY_CALL,
             clip=None, reference=None, latency_runs=1, warmup=0, progress=True)
    err = capsys.readouterr().err
    for desc, total in (("baseline", 2), ("fora", 2), ("cost", 4), ("latency", 2), ("scoring", 4)):
        assert re.search(rf"{desc}: 100%.* {total}/{total} \[", err), (desc, err[-2000:])
