"""VMoBA: partitions, global/threshold selection, exactness at full budget, the config, pipelines."""

import itertools
import os

import pytest
import torch
import torch.nn.functional as F

import diffusion_accel
from diffusion_accel import AccelerationConfig
from diffusion_accel.api import acceleration_state
from diffusion_accel.sparse_attn import SparseAttentionConfig, sparse_layers, vmoba_attention
from diffusion_accel.sparse_attn.vmoba import run_vmoba, vmoba_attention_reference
from diffusion_accel.sparse_attn.vmoba_blocks import block_ids, partition_layout
from diffusion_accel.sparse_attn.vmoba_select import block_probs, select_pairs, vmoba_block_map
from diffusion_accel.testing import tiny_pipeline

from ..conftest import run
from ._util import qkv

SIZES = (2, (2, 3), (2, 2, 3))  # block_frames, block_spatial, block_cube


# ----------------------------------------------------------------------------- partitions
def test_partitions_put_the_expected_tokens_in_each_block():
    grid = (4, 4, 6)
    ids = {kind: block_ids(grid, kind, SIZES).view(grid) for kind in ("1d", "2d", "3d")}
    for t, h, w in itertools.product(*map(range, grid)):
        assert ids["1d"][t, h, w] == t // 2  # 2 whole frames per block
        assert ids["2d"][t, h, w] == (h // 2) * 2 + w // 3  # a 2x3 tile through every frame
        assert ids["3d"][t, h, w] == (t // 2) * 4 + (h // 2) * 2 + w // 3  # 2x2x3 cubes
    assert torch.bincount(ids["1d"].flatten()).tolist() == [48, 48]
    assert torch.bincount(ids["2d"].flatten()).tolist() == [24] * 4
    assert torch.bincount(ids["3d"].flatten()).tolist() == [12] * 8


def test_uneven_grid_gives_smaller_edge_blocks_and_text_blocks_stay_dense():
    layout = partition_layout((3, 5, 5), "3d", (1, (2, 2), (2, 2, 2)), seq=80, span=(5, 80))
    video = ~layout.dense
    assert layout.slot == 8 and not layout.uniform
    assert layout.sizes[video].tolist() == [8, 8, 4, 8, 8, 4, 4, 4, 2] + [4, 4, 2, 4, 4, 2, 2, 2, 1]
    assert layout.dense.sum() == 1 and layout.index[layout.dense][0, :5].tolist() == [0, 1, 2, 3, 4]
    blk = layout.token_blocks()
    assert sorted(layout.index[layout.valid].tolist()) == list(range(80))  # every token exactly once
    assert (blk[:5] == layout.dense.nonzero().item()).all()


def test_1d_partition_of_an_image_grid_is_a_clear_error():
    with pytest.raises(ValueError, match="frames > 1"):
        partition_layout((1, 8, 8), "1d", SIZES)
    assert partition_layout((1, 8, 8), "2d", (1, (4, 4), (1, 4, 4))).uniform  # 2d/3d tile images


# ----------------------------------------------------------------------------- exactness
@pytest.mark.parametrize("kind", ["1d", "2d", "3d"])
@pytest.mark.parametrize("rule", [{"density": 1.0}, {"cdf_threshold": 1.0}])
@pytest.mark.parametrize("backend", ["torch", "reference"])
def test_full_budget_equals_dense_attention(kind, rule, backend):
    # fp32, uneven grid (padded slots) with 6 text tokens first: |vmoba - SDPA| <= 1e-5.
    q, k, v = qkv(2, 3, 6 + 3 * 5 * 7, 6 + 3 * 5 * 7, 16)
    out = vmoba_attention(q, k, v, grid=(3, 5, 7), partition=kind, block_frames=2, block_spatial=(2, 3),
                          block_cube=(2, 2, 4), span=(6, q.shape[2]), scope="heads", backend=backend, **rule)
    assert (out - F.scaled_dot_product_attention(q, k, v)).abs().max() <= 1e-5


@pytest.mark.parametrize("kind", ["1d", "2d", "3d"])
@pytest.mark.parametrize("text", [0, 5])
def test_gathered_path_matches_the_fp32_reference(kind, text):
    grid = (4, 5, 6)
    q, k, v = qkv(1, 2, text + 120, text + 120, 8, seed=1)
    out, block_map, layout = vmoba_attention(
        q, k, v, grid=grid, partition=kind, block_frames=1, block_spatial=(2, 4), block_cube=(2, 2, 4),
        span=(text, text + 120), density=0.4, return_block_map=True, backend="torch")
    ref = vmoba_attention_reference(q, k, v, layout, block_map)
    assert not bool(block_map.all())
    assert (out - ref).abs().max() <= 1e-5


def test_gathered_path_gradients_match_the_reference():
    q, k, v = (t.requires_grad_() for t in qkv(1, 2, 60, 60, 8, seed=2))
    layout = partition_layout((3, 4, 5), "3d", (1, (2, 2), (2, 2, 3)))
    block_map = vmoba_block_map(q.detach(), k.detach(), layout, density=0.5)
    grads = []
    for backend in ("torch", "reference"):
        out = run_vmoba(q, k, v, layout, block_map, backend=backend)
        grads.append(torch.autograd.grad(out.square().sum(), (q, k, v)))
    for a, b in zip(*grads):
        assert (a - b).abs().max() <= 1e-4


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="CPU tensors need the Triton interpreter")
def test_equal_blocks_run_the_triton_kernel_on_the_permuted_tokens(monkeypatch):
    # grid (2, 4, 8), 2d tiles of 2x4 through both frames: 4 full slots of 16 tokens, a permutation
    from diffusion_accel.sparse_attn import kernels

    calls = []
    kernel = kernels.block_sparse_attention_triton
    monkeypatch.setattr(kernels, "block_sparse_attention_triton", lambda *a: calls.append(1) or kernel(*a))
    q, k, v = qkv(1, 2, 64, 64, 16, seed=4)
    out, block_map, layout = vmoba_attention(q, k, v, grid=(2, 4, 8), partition="2d", block_spatial=(2, 4),
                                             density=0.5, backend="triton", return_block_map=True)
    assert layout.uniform and layout.slot == 16 and calls
    assert (out - vmoba_attention_reference(q, k, v, layout, block_map)).abs().max() <= 1e-5


# ----------------------------------------------------------------------------- selection
def _peaky_and_flat_heads():
    """Head 0: sharp block scores (few blocks matter); head 1: nearly uniform ones."""
    q, k, _ = qkv(1, 2, 128, 128, 16, seed=3)
    q = torch.cat([q[:, :1] * 8.0, q[:, 1:] * 0.05], 1)
    layout = partition_layout((2, 8, 8), "3d", (1, (4, 4), (1, 4, 4)))  # 8 blocks of 16 tokens
    return block_probs(q, k, layout, scale=1.0)


def test_global_selection_over_heads_spends_one_budget_on_the_heads_that_need_it():
    probs = _peaky_and_flat_heads()  # (1, 2, 8, 8)
    eye = torch.eye(8, dtype=torch.bool)
    heads = select_pairs(probs, scope="heads", density=0.5, keep=eye)
    per_head = heads.sum((-1, -2))[0].tolist()
    assert sum(per_head) == round(0.5 * 2 * 64)  # the total budget over both heads
    assert per_head[1] > per_head[0]  # the flat head gets more blocks than the peaky one
    assert heads[..., eye].all()  # own blocks always kept
    head = select_pairs(probs, scope="head", density=0.5, keep=eye)
    assert head.sum((-1, -2))[0].tolist() == [32, 32]  # per-head budgets
    query = select_pairs(probs, scope="query", density=0.5, keep=eye)
    assert (query.sum(-1) == 4).all()  # per-query-block budgets


@pytest.mark.parametrize("scope", ["query", "head", "heads"])
def test_threshold_selection_keeps_the_fewest_blocks_reaching_the_mass(scope):
    probs = _peaky_and_flat_heads()
    chosen = select_pairs(probs, scope=scope, cdf_threshold=0.6)
    groups = {"query": (-1,), "head": (-1, -2), "heads": (-1, -2, -3)}[scope]
    kept = (probs * chosen).sum(groups)
    total = probs.sum(groups)
    assert (kept >= 0.6 * total - 1e-6).all()
    # minimal: dropping the weakest kept pair of any group falls below the threshold
    weakest = torch.where(chosen, probs, torch.full_like(probs, 9.0)).amin(groups)
    assert ((kept - weakest) < 0.6 * total).all()
    if scope != "query":
        assert chosen[0, 0].sum() < chosen[0, 1].sum()  # the peaky head needs fewer blocks


def test_density_caps_the_threshold():
    probs = _peaky_and_flat_heads()
    capped = select_pairs(probs, scope="head", cdf_threshold=0.99, density=0.25)
    assert (capped.sum((-1, -2)) <= 16).all()
    assert (select_pairs(probs, scope="head", cdf_threshold=0.99).sum((-1, -2)) > 16).any()


# ----------------------------------------------------------------------------- config
def test_config_round_trips_through_json_and_cycles_partitions():
    cfg = SparseAttentionConfig(method="vmoba", cdf_threshold=0.9, density=0.5, partitions=("3d", "1d"),
                                block_frames=2, block_spatial=(4, 2), block_cube=(1, 2, 2), selection_scope="heads")
    acc = AccelerationConfig(attention=cfg)
    assert AccelerationConfig.from_json(acc.to_json()) == acc
    assert [cfg.partition(i) for i in range(4)] == ["3d", "1d", "3d", "1d"]
    assert cfg.selection() == {"density": 0.5, "cdf_threshold": 0.9}


@pytest.mark.parametrize("kwargs,match", [
    ({"partitions": ("4d",)}, "partitions"),
    ({"partitions": ()}, "partitions"),
    ({"block_spatial": (4,)}, "block_spatial"),
    ({"block_cube": (2, 0, 2)}, "block_cube"),
    ({"block_frames": 0}, "block_frames"),
    ({"selection_scope": "global"}, "selection_scope"),
    ({"block_q": 64}, "block_q"),
    ({"reorder": "paro"}, "reorder"),
    ({"cdf_threshold": 1.5}, "cdf_threshold"),
    ({"topk": 2, "density": 0.5}, "exactly one"),
])
def test_config_rejects_bad_vmoba_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SparseAttentionConfig(method="vmoba", **kwargs)


def test_vmoba_settings_on_another_method_are_an_error():
    with pytest.raises(ValueError, match="only apply to method='vmoba'"):
        SparseAttentionConfig(method="block_sparse", selection_scope="heads")
    with pytest.raises(ValueError, match="exactly one"):
        SparseAttentionConfig(method="block_sparse", cdf_threshold=0.9, density=0.5)


# ----------------------------------------------------------------------------- pipelines
def _apply(pipe, **cfg):
    return diffusion_accel.apply(pipe, AccelerationConfig(attention=SparseAttentionConfig(method="vmoba", **cfg)))


SMALL = {"block_frames": 1, "block_spatial": (2, 2), "block_cube": (1, 2, 2)}


@pytest.mark.parametrize("name", ["wan", "cogvideox"])
def test_video_pipeline_full_budget_is_exact_and_layers_cycle_partitions(name):
    pipe = tiny_pipeline(name)
    ref = run(pipe, name, num_inference_steps=2)
    _apply(pipe, density=1.0, **SMALL)
    out = run(pipe, name, num_inference_steps=2)
    assert (out - ref).abs().max() <= 1e-4
    kinds = [{key[3] for key in layer.vmoba_layouts} for layer in sparse_layers(pipe)]
    assert kinds == [{("1d", "2d", "3d")[layer.block_index % 3]} for layer in sparse_layers(pipe)]


# Measured max/mean |vmoba - dense| (outputs in [0, 1], 3 steps): Wan (32 video tokens, blocks of
# 16/8/4 tokens) 0.116/0.0040, block_sparse with 16x16 blocks 0.096/0.0040; CogVideoX (48 video
# tokens + text) 0.013/0.0008, block_sparse with 4x4 blocks 0.009/0.0005.
@pytest.mark.parametrize("name,max_bound,mean_bound", [("wan", 0.15, 0.006), ("cogvideox", 0.02, 0.0015)])
def test_video_pipeline_at_half_density_stays_close_to_dense(name, max_bound, mean_bound):
    pipe = tiny_pipeline(name)
    ref = run(pipe, name)
    _apply(pipe, density=0.5, **SMALL)
    out = run(pipe, name)
    report = acceleration_state(pipe).report()["attention"]
    assert report["sparse_calls"] > 0 and report["mean_density"] == pytest.approx(0.5, abs=0.05)
    diff = (out - ref).abs()
    assert 0 < diff.max() <= max_bound and diff.mean() <= mean_bound


def test_layer_without_a_token_grid_is_a_clear_error():
    from diffusion_accel.sparse_attn.layer import SparseLayer, TokenLayout

    layer = SparseLayer("blocks.0.attn1", 0, SparseAttentionConfig(method="vmoba"), head_dim=8)
    q, k, v = qkv(1, 1, 32, 32, 8)
    with pytest.raises(ValueError, match="token grid.*token_grid=fn"):
        layer.attend(q, k, v, TokenLayout())


def test_image_pipeline_needs_a_partition_cycle_without_1d():
    pipe = tiny_pipeline("pixart-alpha")
    _apply(pipe, density=0.5)
    with pytest.raises(ValueError, match="frames > 1"):
        run(pipe, "pixart-alpha", num_inference_steps=2)
    _apply(pipe, density=0.5, partitions=("2d", "3d"), block_spatial=(2, 2), block_cube=(1, 2, 2))
    assert torch.isfinite(run(pipe, "pixart-alpha", num_inference_steps=2)).all()
