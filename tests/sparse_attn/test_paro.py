"""PARO (method="paro"): calibrated per-head orders and static masks, their file, INT8 Q/K, mismatches."""

import os

import pytest
import torch
import torch.nn.functional as F

import diffusion_accel
from diffusion_accel import AccelerationConfig
from diffusion_accel.api import acceleration_state
from diffusion_accel.sparse_attn import ParoCalibration, SparseAttentionConfig, calibrate_paro, sparse_layers
from diffusion_accel.sparse_attn.int8_qk import int8_qk, quantize_blocks
from diffusion_accel.sparse_attn.paro import axis_orders, head_permutation, permute_heads, unpermute_heads
from diffusion_accel.sparse_attn.paro_plan import accumulate_block_mass, build_plan
from diffusion_accel.testing import tiny_call_kwargs, tiny_pipeline

from ..conftest import run
from ._util import qkv

STEPS = 2
BLOCKS = {"block_q": 8, "block_k": 8}


def _calibrate(pipe, name, path, density, **extra):
    kwargs = tiny_call_kwargs(name, num_inference_steps=STEPS, **extra)
    prompt = kwargs.pop("prompt", None)
    if prompt is None:  # class-conditioned (DiT): one dict of call arguments per calibration call
        calls = [{"class_labels": kwargs.pop("class_labels")}, {"class_labels": [7]}]
        return calibrate_paro(pipe, calls, path, density=density, **BLOCKS, **kwargs)
    return calibrate_paro(pipe, [prompt, prompt + " again"], path, density=density, **BLOCKS, **kwargs)


# ----------------------------------------------------------------------------- permutations
def test_every_order_and_its_inverse_give_back_the_tokens():
    grid, span, seq = (2, 3, 4), (5, 29), 31  # 5 text tokens first, 2 after
    x = torch.randn(2, 6, seq, 4)
    perm = head_permutation(torch.arange(6), grid, seq, span, "cpu")
    moved = permute_heads(x, perm)
    assert torch.equal(unpermute_heads(moved, perm), x)
    assert torch.equal(moved[:, :, :5], x[:, :, :5]) and torch.equal(moved[:, :, 29:], x[:, :, 29:])
    assert torch.equal(moved[:, 0], x[:, 0])  # order 0 is the identity
    for h in range(1, 6):
        assert not torch.equal(moved[:, h], x[:, h])
        assert sorted(perm[h].tolist()) == list(range(seq))


def test_a_temporal_head_gets_a_frame_fastest_order_and_a_spatial_head_keeps_the_identity():
    grid = (4, 4, 4)  # 64 tokens, blocks of 8: in the identity order a block is half a frame
    f, h, w = torch.meshgrid(*(torch.arange(n) for n in grid), indexing="ij")
    pixel = F.one_hot((h * 4 + w).flatten(), 16).float()  # token i attends to its pixel in every frame
    frame = F.one_hot(f.flatten(), 4).float()
    q = torch.stack([pixel * 20, torch.cat([frame * 20, torch.zeros(64, 12)], 1)])[None]
    k = torch.stack([pixel, torch.cat([frame, torch.zeros(64, 12)], 1)])[None]
    mass = accumulate_block_mass(q, k, grid, (0, 64), 8, 8)
    plan = build_plan("attn", mass, grid, (0, 64), 64, 8, 8, density=0.25)
    temporal = axis_orders()[int(plan.orders[0])]
    assert temporal[-1] == 0  # frames vary fastest: a pixel's 4 frames share one block
    assert int(plan.orders[1]) == 0  # attention within a frame: the identity is already best
    assert torch.equal(plan.mask.sum(-1), torch.full((2, 8), 2))  # 25 % of 8 key blocks


# ----------------------------------------------------------------------------- INT8 Q/K
def test_int8_qk_scores_and_outputs_stay_within_the_sqnr_bound():
    # Per-(head, block) symmetric int8 of N(0, 1) data: ~38 dB measured for both the scores and
    # the attention output (theory: step amax/127 -> about 38 dB); bound 35 dB.
    q, k, v = qkv(2, 4, 1000, 1000, 64, seed=5)
    k = k + 0.5  # an offset removed by the smoothing (softmax ignores it)
    qi, ki = int8_qk(q, k, 128, 64)

    def sqnr(ref, out):
        return float(10 * torch.log10(ref.square().sum() / (ref - out).square().sum()))

    s, si = q @ k.transpose(-1, -2), qi @ ki.transpose(-1, -2)
    assert sqnr(s - s.mean(-1, keepdim=True), si - si.mean(-1, keepdim=True)) >= 35
    assert sqnr(F.scaled_dot_product_attention(q, k, v), F.scaled_dot_product_attention(qi, ki, v)) >= 35
    values, scales = quantize_blocks(q, 128)
    assert values.dtype == torch.int8 and values.abs().max() == 127 and scales.shape == (2, 4, 8, 1, 1)


# ----------------------------------------------------------------------------- pipelines
@pytest.mark.parametrize("name", ["wan", "cogvideox", "pixart-alpha", "sd3", "flux", "dit"])
def test_full_density_equals_dense_output(name, tmp_path):
    pipe = tiny_pipeline(name)
    ref = run(pipe, name, num_inference_steps=STEPS)
    cfg = _calibrate(pipe, name, tmp_path / "c.safetensors", 1.0)
    diffusion_accel.apply(pipe, AccelerationConfig(attention=cfg))
    out = run(pipe, name, num_inference_steps=STEPS)
    assert sparse_layers(pipe)[0].stats["sparse_calls"] > 0
    assert (out - ref).abs().max() <= 1e-4  # fp32, reordered + block-tiled sums (measured ~1e-6)


@pytest.mark.parametrize("name", ["wan", "cogvideox"])
def test_saved_and_loaded_config_gives_bit_identical_outputs(name, tmp_path):
    pipe = tiny_pipeline(name)
    ref = run(pipe, name, num_inference_steps=STEPS)
    cfg = _calibrate(pipe, name, tmp_path / "calib" / "c.safetensors", 0.5, int8_qk=(name == "wan"))
    acc = AccelerationConfig(attention=cfg)
    diffusion_accel.apply(pipe, acc)
    first = run(pipe, name, num_inference_steps=STEPS)
    second = run(pipe, name, num_inference_steps=STEPS)  # masks reused, nothing recalibrated
    report = acceleration_state(pipe).report()["attention"]
    assert report["mean_density"] < 0.75 and torch.equal(first, second) and not torch.equal(first, ref)
    diffusion_accel.remove(pipe)
    os.makedirs(tmp_path / "out")
    acc.save(tmp_path / "out" / "acc.json")
    assert os.path.isfile(tmp_path / "out" / "acc.paro.safetensors")
    assert '"calibration": "acc.paro.safetensors"' in (tmp_path / "out" / "acc.json").read_text()
    os.remove(tmp_path / "calib" / "c.safetensors")  # the copy beside the JSON is what is used
    loaded = AccelerationConfig.load(tmp_path / "out" / "acc.json")
    assert loaded.attention.int8_qk == (name == "wan")
    diffusion_accel.apply(pipe, loaded)
    assert torch.equal(run(pipe, name, num_inference_steps=STEPS), first)


def test_calibration_of_another_model_or_resolution_is_a_clear_error(tmp_path):
    wan, cog = tiny_pipeline("wan"), tiny_pipeline("cogvideox")
    cfg = _calibrate(wan, "wan", tmp_path / "wan.safetensors", 0.5)
    with pytest.raises(ValueError, match="does not match this model.*Recalibrate"):
        diffusion_accel.apply(cog, AccelerationConfig(attention=cfg))
    assert acceleration_state(cog) is None
    diffusion_accel.apply(wan, AccelerationConfig(attention=cfg))
    with pytest.raises(ValueError, match="tokens.*Recalibrate at this resolution"):
        run(wan, "wan", num_inference_steps=STEPS, height=64, width=32)
    for bad, match in (({"density": 0.25}, "density=0.5"), ({"calibration": str(tmp_path / "none")}, "does not exist"),
                       ({"calibration": None}, "needs calibration=path")):
        with pytest.raises(ValueError, match=match):
            diffusion_accel.apply(wan, AccelerationConfig(attention=SparseAttentionConfig(
                **{**cfg.__dict__, **bad})))
    calib = ParoCalibration.load(cfg.calibration)
    ParoCalibration(calib.block_q, calib.block_k, calib.density, calib.plans[:-1]).save(tmp_path / "layers.safetensors")
    with pytest.raises(ValueError, match="attention layers, this model.*Recalibrate"):
        diffusion_accel.apply(wan, AccelerationConfig(attention=SparseAttentionConfig(
            method="paro", density=0.5, calibration=str(tmp_path / "layers.safetensors"))))
    calib.plans[0].orders = torch.zeros(calib.plans[0].heads + 1, dtype=torch.long)
    calib.save(tmp_path / "heads.safetensors")
    with pytest.raises(ValueError, match="heads.*Recalibrate"):
        diffusion_accel.apply(wan, AccelerationConfig(attention=SparseAttentionConfig(
            method="paro", density=0.5, calibration=str(tmp_path / "heads.safetensors"))))


@pytest.mark.parametrize("kwargs,match", [
    ({"method": "block_sparse", "calibration": "x"}, "only applies to method='paro'"),
    ({"method": "block_sparse", "int8_qk": True}, "only applies to method='paro'"),
    ({"method": "paro", "reorder": "paro"}, "reorder='none'"),
    ({"method": "paro", "topk": 2}, "topk"),
    ({"method": "paro", "calibration": ""}, "calibration"),
])
def test_config_rejects_bad_paro_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SparseAttentionConfig(**kwargs)


def test_paro_config_round_trips_through_json():
    acc = AccelerationConfig(attention=SparseAttentionConfig(method="paro", density=0.5, calibration="/x/c.safetensors",
                                                             int8_qk=True))
    assert AccelerationConfig.from_json(acc.to_json()) == acc
