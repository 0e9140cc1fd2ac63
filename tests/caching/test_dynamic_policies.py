"""Dynamic caching policies by name (first_block / teacache / magcache), their calibration and
per-sample decisions."""

import dataclasses

import numpy as np
import pytest
import torch

import diffusion_accel
from diffusion_accel import AccelerationConfig
from diffusion_accel.api import acceleration_state
from diffusion_accel.caching import DynamicCacheConfig, calibrate_magcache, calibrate_teacache, policies
from diffusion_accel.hooks import StepTracker
from diffusion_accel.models import get_model_adapter
from diffusion_accel.testing import tiny_call_kwargs, tiny_pipeline
from diffusion_accel.testing.counting import ParameterUseCounter, watch_components

# Calibration stand-ins (calibrate_* on a real model gives such numbers); magcache's ratios are not 1.0 so
# that threshold 0 never skips (error |1 - ratio| > 0).
POLICY_KWARGS = {
    "first_block": {},
    "teacache": {"policy": "teacache", "teacache_coefficients": (2.0, 0.01)},
    "magcache": {"policy": "magcache", "magcache_ratios": (1.0, 0.97, 0.98, 0.99, 0.99, 1.02)},
}
FAMILIES = ["pixart-alpha", "flux", "wan"]


def _apply(pipe, **kw):
    return diffusion_accel.apply(pipe, AccelerationConfig(cache=DynamicCacheConfig(**kw)))


def _report(pipe):
    return acceleration_state(pipe).report()["cache"]


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("policy", list(POLICY_KWARGS))
def test_threshold_zero_is_bit_identical(name, policy, run_pipe):
    pipe = tiny_pipeline(name)
    reference = run_pipe(pipe, name, num_inference_steps=4)
    _apply(pipe, threshold=0.0, **POLICY_KWARGS[policy])
    assert torch.equal(run_pipe(pipe, name, num_inference_steps=4), reference)
    report = _report(pipe)
    assert report["steps_skipped"] == 0 and report["policy"] == policy


@pytest.mark.parametrize("name", ["pixart-alpha", "flux", "sd3", "cogvideox", "wan"])
@pytest.mark.parametrize("policy", ["teacache", "magcache"])
def test_large_threshold_skips_every_block_and_counts(name, policy, run_pipe):
    """Huge threshold, at most 1 skip in a row: steps 1 and 3 of 5 skip every block, the first one too."""
    pipe = tiny_pipeline(name)
    _apply(pipe, threshold=1e9, max_consecutive_skips=1, **POLICY_KWARGS[policy])
    denoiser = pipe.transformer
    adapter = get_model_adapter(denoiser)
    with ParameterUseCounter(watch_components(adapter, denoiser)) as counter:
        run_pipe(pipe, name, num_inference_steps=5)
    calls_per_step = len(StepTracker.get(denoiser).history) // 5
    report = _report(pipe)
    assert report["steps_skipped"] == 2 * calls_per_step
    assert report["steps_computed"] == 3 * calls_per_step
    assert report["skip_share_by_step"] == {0: 0.0, 1: 1.0, 2: 0.0, 3: 1.0, 4: 0.0}
    for block in adapter.blocks(denoiser):
        for comp in block.components():
            assert counter.counts[(block.index, adapter.component_names.index(comp))] == 3 * calls_per_step


def test_skipped_step_adds_the_residual_of_every_block(run_pipe):
    """teacache/magcache: a skipped call returns its input plus (last output - first input) of the last
    computed step."""
    pipe = tiny_pipeline("flux")
    _apply(pipe, threshold=1e9, max_consecutive_skips=1, **POLICY_KWARGS["magcache"])
    first, last = pipe.transformer.transformer_blocks[0], pipe.transformer.single_transformer_blocks[-1]
    seen = {"first_in": [], "last_out": []}
    first.register_forward_pre_hook(
        lambda m, a, kw: seen["first_in"].append((kw["encoder_hidden_states"], kw["hidden_states"])), with_kwargs=True)
    last.register_forward_hook(lambda m, a, o: seen["last_out"].append(o))
    run_pipe(pipe, "flux", num_inference_steps=3)  # step 0 computed, step 1 skipped
    for stream in (0, 1):
        residual = seen["last_out"][0][stream] - seen["first_in"][0][stream]
        assert torch.equal(seen["last_out"][1][stream], seen["first_in"][1][stream] + residual)


def test_magcache_follows_the_accumulated_ratio_error(run_pipe):
    """ratios (1, .9, 1, .95, 1): errors while skipping from step 1: |1-.9| = .1, then .1 + |1-.9| = .2, ...
    threshold .15 -> skip 1 (.1), step 2 would reach .2 -> compute; skip 3 (.05), skip 4 (.1)."""
    pipe = tiny_pipeline("pixart-alpha")
    _apply(pipe, threshold=0.15, max_consecutive_skips=5, policy="magcache", magcache_ratios=(1.0, 0.9, 1.0, 0.95, 1.0))
    run_pipe(pipe, "pixart-alpha", num_inference_steps=5)
    assert _report(pipe)["skip_share_by_step"] == {0: 0.0, 1: 1.0, 2: 0.0, 3: 1.0, 4: 1.0}


def test_teacache_accumulates_the_rescaled_change(run_pipe):
    """A constant polynomial c makes every rescaled change c: with threshold 2.5c, two steps skip, the third
    computes."""
    pipe = tiny_pipeline("pixart-alpha")
    _apply(pipe, threshold=2.5, max_consecutive_skips=10, policy="teacache", teacache_coefficients=(0.0, 1.0))
    run_pipe(pipe, "pixart-alpha", num_inference_steps=6)
    assert _report(pipe)["skip_share_by_step"] == {0: 0.0, 1: 1.0, 2: 1.0, 3: 0.0, 4: 1.0, 5: 1.0}


def _record_stack(pipe, name, **call):
    """Per call: first block's input and modulated input, last block's output (plain forward hooks)."""
    adapter = get_model_adapter(pipe.transformer)
    blocks = adapter.blocks(pipe.transformer)
    first_in, modulated, last_out = [], [], []

    def enter(module, args, kwargs):
        first_in.append(kwargs.get("hidden_states", args[0] if args else None))
        modulated.append(adapter.modulated_input(module, args, kwargs))

    handles = [blocks[0].module.register_forward_pre_hook(enter, with_kwargs=True),
               blocks[-1].module.register_forward_hook(lambda m, a, o: last_out.append(o))]
    with torch.no_grad():
        pipe(**call)
    for h in handles:
        h.remove()
    return [(o - i).float() for i, o in zip(first_in, last_out)], [m.float() for m in modulated]


def _rel_l1(prev, cur):
    return ((cur - prev).abs().flatten(1).mean(1) / prev.abs().flatten(1).mean(1)).double().numpy()


def test_calibration_measures_the_stack_and_round_trips(tmp_path):
    name, steps = "pixart-alpha", 5
    pipe = tiny_pipeline(name)
    call = {k: v for k, v in tiny_call_kwargs(name, num_inference_steps=steps).items()
            if k not in ("prompt", "output_type")}
    prompts = ["a red cat", "a blue dog"]
    residuals, modulated = _record_stack(pipe, name, **call, prompt=prompts, output_type="latent",
                                         generator=torch.Generator().manual_seed(0))
    magcache = calibrate_magcache(pipe, prompts, **call)
    expected = [1.0] + [float((residuals[t].norm(dim=-1) / residuals[t - 1].norm(dim=-1)).mean())
                        for t in range(1, steps)]
    np.testing.assert_allclose(magcache.magcache_ratios, expected, rtol=1e-6)

    teacache = calibrate_teacache(pipe, prompts, degree=2, **call)
    x = np.concatenate([_rel_l1(modulated[t - 1], modulated[t]) for t in range(1, steps)])
    y = np.concatenate([_rel_l1(residuals[t - 1], residuals[t]) for t in range(1, steps)])
    np.testing.assert_allclose(teacache.teacache_coefficients, np.polyfit(x, y, 2), rtol=1e-5, atol=1e-8)
    assert teacache.policy == "teacache" and len(teacache.teacache_coefficients) == 3

    for cache in (magcache, teacache):
        path = tmp_path / f"{cache.policy}.json"
        AccelerationConfig(cache=cache).save(path)
        assert AccelerationConfig.load(path).cache == cache
    assert StepTracker.get(pipe.transformer) is None  # the calibration's own tracker is gone


def test_calibrated_config_keeps_the_base_fields_and_runs(run_pipe):
    name = "flux"
    pipe = tiny_pipeline(name)
    call = {k: v for k, v in tiny_call_kwargs(name, num_inference_steps=4).items() if k != "prompt"}
    base = DynamicCacheConfig(threshold=1e9, max_consecutive_skips=1, decide_per="sample")
    cfg = calibrate_magcache(pipe, ["a cat", "a dog"], base=base, **call)
    assert (cfg.threshold, cfg.max_consecutive_skips, cfg.decide_per) == (1e9, 1, "sample")
    diffusion_accel.apply(pipe, AccelerationConfig(cache=cfg))
    run_pipe(pipe, name, num_inference_steps=4)
    assert _report(pipe)["steps_skipped"] == 2  # steps 1 and 3


def test_calibration_refuses_a_cached_pipeline_and_few_points():
    pipe = tiny_pipeline("pixart-alpha")
    call = {k: v for k, v in tiny_call_kwargs("pixart-alpha", num_inference_steps=3).items() if k != "prompt"}
    with pytest.raises(ValueError, match="too few for a degree-4 fit"):
        calibrate_teacache(pipe, ["a cat"], **call)  # 2 rows (CFG) x 2 step pairs = 4 points
    _apply(pipe)
    with pytest.raises(ValueError, match=r"diffusion_accel.remove\(pipe\) first"):
        calibrate_magcache(pipe, ["a cat"], **call)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"policy": "tea"},
         r"Unknown dynamic caching policy 'tea'; use one of \['first_block', 'magcache', 'teacache'"),
        ({"policy": "teacache"}, r"calibrate_teacache\(pipe, prompts\)"),
        ({"policy": "magcache"}, r"calibrate_magcache\(pipe, prompts\)"),
        ({"policy": "magcache", "magcache_ratios": (1.0, -1.0)}, "must be finite and > 0"),
        ({"teacache_coefficients": (1.0, 0.0)}, "only applies to policy='teacache'"),
        ({"decide_per": "row"}, "decide_per must be one of"),
        ({"compare_to": "first"}, "compare_to must be one of"),
        ({"compare_to": "last_computed", **POLICY_KWARGS["magcache"]}, "needs a policy with a signal"),
        ({"policy": "teacache", "teacache_coefficients": ("a",)}, "must be a sequence of numbers"),
    ],
)
def test_bad_config(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DynamicCacheConfig(**kwargs)


def test_bad_policy_name_in_json_is_one_clear_error():
    text = AccelerationConfig(cache=DynamicCacheConfig()).to_json().replace('"first_block"', '"fbcache"')
    with pytest.raises(ValueError, match="Unknown dynamic caching policy 'fbcache'"):
        AccelerationConfig.from_json(text)


@pytest.mark.parametrize("policy", ["teacache", "magcache"])
def test_unet_refuses_whole_stack_policies(policy):
    with pytest.raises(ValueError, match="Use policy='first_block' on this model"):
        _apply(tiny_pipeline("sd15"), **POLICY_KWARGS[policy])


def test_family_without_modulated_input_names_the_fix():
    pipe = tiny_pipeline("dit")  # the DiT adapter does not describe its modulated input
    with pytest.raises(ValueError, match="Use policy='first_block' or policy='magcache'"):
        _apply(pipe, **POLICY_KWARGS["teacache"])


class _Scripted(policies.SkipPolicy):
    """Test policy: records the per-row changes it is given and answers a scripted skip per row."""

    name, signal, before_first_block = "scripted", "modulated_input", True

    def __init__(self, rows_skip):
        self.rows_skip, self.changes = rows_skip, []

    def initial(self, rows):
        return {}

    def propose(self, config, state, change, step, total):
        self.changes.append(change)
        return state, np.asarray(self.rows_skip[: len(change)])


def _scripted(monkeypatch, rows_skip):
    scripted = _Scripted(rows_skip)
    monkeypatch.setitem(policies._POLICIES, "scripted", scripted)
    return scripted


def _rows_per_block(pipe):
    """Rows that went through each block (hooks on the first linear layer of each block's first component: not
    the adaLN modulation, which teacache's signal runs on every call)."""
    blocks = get_model_adapter(pipe.transformer).blocks(pipe.transformer)
    counts = [0] * len(blocks)
    for i, block in enumerate(blocks):
        component = next(iter(block.components().values()))
        first_linear = next(m for m in component.modules() if isinstance(m, torch.nn.Linear))
        first_linear.register_forward_hook(lambda m, a, o, i=i: counts.__setitem__(i, counts[i] + a[0].shape[0]))
    return counts


@pytest.mark.parametrize("name, rows_skip", [
    ("pixart-alpha", (True, False, True, False)),  # one call per step: [uncond a, uncond b, cond a, cond b]
    ("flux", (True, False)),  # guidance-distilled: one call per step, [a, b]
    ("wan", (True, False)),  # one call per guidance branch and step, [a, b] each
])
def test_per_sample_decisions_compute_only_the_rows_that_need_it(name, rows_skip, monkeypatch, run_pipe):
    """At step 1 the rows of prompt a skip and those of prompt b compute (on a slice of the batch); step 2
    computes all (at most 1 skip in a row). Prompt b's output is then the full-compute one, prompt a's
    that of a run where every row skipped step 1."""
    prompts, steps = ["a cat", "a dog"], 3
    pipe = tiny_pipeline(name)
    counts = _rows_per_block(pipe)
    full = run_pipe(pipe, name, num_inference_steps=steps, prompt=prompts)
    full_rows = list(counts)
    _scripted(monkeypatch, (True,) * len(rows_skip))
    _apply(pipe, threshold=1.0, max_consecutive_skips=1, policy="scripted", decide_per="sample")
    all_skip = run_pipe(pipe, name, num_inference_steps=steps, prompt=prompts)
    calls_per_step = len(StepTracker.get(pipe.transformer).history) // steps
    diffusion_accel.remove(pipe)

    scripted = _scripted(monkeypatch, rows_skip)
    _apply(pipe, threshold=1.0, max_consecutive_skips=1, policy="scripted", decide_per="sample")
    before = list(counts)
    mixed = run_pipe(pipe, name, num_inference_steps=steps, prompt=prompts)
    rows = [c - b for c, b in zip(counts, before)]
    report = _report(pipe)
    skipped_rows = sum(rows_skip) * calls_per_step
    assert (report["steps_skipped"], report["partial_calls"], report["partial_rows_skipped"]) == (
        0, calls_per_step, skipped_rows)
    assert rows == [r - skipped_rows for r in full_rows] and len(scripted.changes) == 2 * calls_per_step
    # up to float rounding: a smaller batch may round differently (PixArt: bit-identical here, Flux: 1.7e-6)
    torch.testing.assert_close(mixed[1], full[1], rtol=0, atol=1e-5)
    torch.testing.assert_close(mixed[0], all_skip[0], rtol=0, atol=1e-5)
    assert (all_skip[0] - full[0]).abs().max() > 1e-4  # skipping step 1 changes prompt a's output (10x the tolerance)


def test_per_sample_decisions_without_sliceable_blocks_compute_every_row(monkeypatch, run_pipe):
    """SD3's adapter does not declare its blocks' per-sample arguments: rows that disagree all compute."""
    _scripted(monkeypatch, (True, False))
    pipe = tiny_pipeline("sd3")
    _apply(pipe, threshold=1.0, max_consecutive_skips=1, policy="scripted", decide_per="sample")
    run_pipe(pipe, "sd3", num_inference_steps=3)
    report = _report(pipe)
    assert (report["steps_skipped"], report["partial_calls"], report["steps_computed"]) == (0, 0, 3)


def test_per_batch_decisions_see_one_change(monkeypatch, run_pipe):
    scripted = _scripted(monkeypatch, (True,))
    pipe = tiny_pipeline("pixart-alpha")
    _apply(pipe, threshold=1.0, max_consecutive_skips=1, policy="scripted")
    run_pipe(pipe, "pixart-alpha", num_inference_steps=3, prompt=["a cat", "a dog"])
    assert [len(c) for c in scripted.changes] == [1] and _report(pipe)["steps_skipped"] == 1


class _ScriptedFirstBlock(policies.SkipPolicy):
    """Test policy on the first block's residual: records the changes and accumulators it is given and skips
    the rows ``script[step]`` says (default: none)."""

    name, signal, before_first_block = "scripted_first_block", "first_block_residual", False

    def __init__(self, script):
        self.script, self.changes, self.states = script, [], []

    def initial(self, rows):
        return {"accumulated": np.zeros(rows)}

    def propose(self, config, state, change, step, total):
        self.changes.append(change)
        self.states.append(state["accumulated"].copy())
        skip = np.asarray(self.script.get(step, (False,) * len(change)))
        return {"accumulated": state["accumulated"] + change}, skip


def _first_block_residuals(pipe):
    """Per call: the first block's output minus its input (all rows)."""
    residuals = []
    first = get_model_adapter(pipe.transformer).blocks(pipe.transformer)[0].module
    first.register_forward_hook(
        lambda m, a, kw, o: residuals.append((o - kw.get("hidden_states", a[0] if a else None)).detach()),
        with_kwargs=True)
    return residuals


@pytest.mark.parametrize("compare_to", ["previous", "last_computed"])
def test_first_block_change_is_measured_against_the_reference(compare_to, monkeypatch, run_pipe):
    """Steps 1, 2 and 4 of 6 skip. ``"previous"``: each change is against the previous step's residual and summed
    while skipping; ``"last_computed"`` (diffusers' FirstBlockCache): against the last computed step's residual
    (step 0 for steps 1-3, step 3 for steps 4-5), never summed."""
    scripted = _ScriptedFirstBlock({1: (True,), 2: (True,), 4: (True,)})
    monkeypatch.setitem(policies._POLICIES, scripted.name, scripted)
    pipe = tiny_pipeline("pixart-alpha")
    residuals = _first_block_residuals(pipe)
    _apply(pipe, threshold=1.0, max_consecutive_skips=10, policy=scripted.name, compare_to=compare_to)
    run_pipe(pipe, "pixart-alpha", num_inference_steps=6)
    assert _report(pipe)["skip_share_by_step"] == {0: 0.0, 1: 1.0, 2: 1.0, 3: 0.0, 4: 1.0, 5: 0.0}
    reference = {"previous": [0, 1, 2, 3, 4], "last_computed": [0, 0, 0, 3, 3]}[compare_to]
    expected = [float((residuals[t] - residuals[r]).abs().mean() / residuals[r].abs().mean())
                for t, r in zip(range(1, 6), reference)]
    assert [float(c[0]) for c in scripted.changes] == pytest.approx(expected, rel=1e-6)
    summed = {"previous": [0.0, expected[0], expected[0] + expected[1], 0.0, expected[3]],
              "last_computed": [0.0] * 5}[compare_to]
    assert [float(s[0]) for s in scripted.states] == pytest.approx(summed, rel=1e-6, abs=1e-12)


def test_last_computed_reference_is_per_row_with_per_sample_decisions(monkeypatch, run_pipe):
    """At step 1 the rows of prompt a skip, those of prompt b compute: at step 2, a's rows are compared with
    step 0, b's with step 1."""
    rows_skip = (True, False, True, False)  # [uncond a, uncond b, cond a, cond b]
    scripted = _ScriptedFirstBlock({1: rows_skip})
    monkeypatch.setitem(policies._POLICIES, scripted.name, scripted)
    pipe = tiny_pipeline("pixart-alpha")
    residuals = _first_block_residuals(pipe)
    _apply(pipe, threshold=1.0, max_consecutive_skips=10, policy=scripted.name, compare_to="last_computed",
           decide_per="sample")
    run_pipe(pipe, "pixart-alpha", num_inference_steps=3, prompt=["a cat", "a dog"])
    assert _report(pipe)["partial_calls"] == 1
    reference = torch.stack([residuals[0][i] if skipped else residuals[1][i] for i, skipped in enumerate(rows_skip)])
    np.testing.assert_allclose(scripted.changes[1], _rel_l1(reference, residuals[2]), rtol=1e-6)


def test_last_computed_first_block_skips_while_the_change_since_step_0_is_small(run_pipe):
    """The real policy: threshold just above step 1's change skips step 1; the decision at step 2 is then the
    change of step 2 against step 0 (not the sum of two step-to-step changes)."""
    pipe = tiny_pipeline("pixart-alpha")
    residuals = _first_block_residuals(pipe)
    run_pipe(pipe, "pixart-alpha", num_inference_steps=3)  # full compute: steps 0-1 are what the cached run sees
    change_1 = float((residuals[1] - residuals[0]).abs().mean() / residuals[0].abs().mean())
    residuals.clear()
    _apply(pipe, threshold=change_1 * 1.001, max_consecutive_skips=10, compare_to="last_computed")
    run_pipe(pipe, "pixart-alpha", num_inference_steps=3)
    change_2 = float((residuals[2] - residuals[0]).abs().mean() / residuals[0].abs().mean())
    assert _report(pipe)["skip_share_by_step"] == {0: 0.0, 1: 1.0, 2: float(change_2 < change_1 * 1.001)}
