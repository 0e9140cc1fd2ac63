"""Mask prediction, guards, PARO reordering and the config."""

import pytest
import torch

from diffusion_accel import AccelerationConfig
from diffusion_accel.sparse_attn import SparseAttentionConfig
from diffusion_accel.sparse_attn.masks import (
    block_density,
    block_self_similarity,
    diagonal_blocks,
    pool_blocks,
    predict_block_map,
    select_blocks,
)
from diffusion_accel.sparse_attn.paro import (
    axis_orders,
    calibrate_orders,
    head_permutation,
    order_index,
    permute_heads,
    unpermute_heads,
)

from ._util import qkv


def test_pool_blocks_averages_real_tokens_of_partial_block():
    x = torch.arange(10.0).view(1, 1, 10, 1)
    assert pool_blocks(x, 4).flatten().tolist() == [1.5, 5.5, 8.5]


def test_self_similarity_is_one_for_identical_tokens_and_low_for_random():
    same = torch.ones(1, 1, 64, 16)
    assert torch.allclose(block_self_similarity(same, 32), torch.ones(1, 1, 2))
    noise = torch.randn(1, 1, 256, 64, generator=torch.Generator().manual_seed(0))
    assert (block_self_similarity(noise, 64) < 0.1).all()


def test_similarity_guard_forces_rows_and_columns_of_dissimilar_blocks():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(1, 1, 1, 32, generator=g)
    q = base.repeat(1, 1, 256, 1) + 0.01 * torch.randn(1, 1, 256, 32, generator=g)
    k = q.clone()
    q[:, :, 64:128] = torch.randn(1, 1, 64, 32, generator=g)  # query block 1 is incoherent
    k[:, :, 192:256] = torch.randn(1, 1, 64, 32, generator=g)  # key block 3 is incoherent
    m = predict_block_map(q, k, topk=1, block_q=64, block_k=64, similarity_threshold=0.5)
    assert m[0, 0, 1].all()  # dissimilar query block: full row
    assert m[0, 0, :, 3].all()  # dissimilar key block: kept by every query block
    assert m[0, 0, 0].sum() == 1 or (m[0, 0, 0].sum() == 2 and m[0, 0, 0, 3])


def test_dense_tokens_are_always_computed():
    q, k, _ = qkv(1, 2, 300, 300, 16)
    m = predict_block_map(q, k, topk=1, block_q=32, block_k=32, dense_tokens=((250, 300),))
    assert m[..., 250 // 32 :, :].all()  # text query blocks: full rows
    assert m[..., :, 250 // 32 :].all()  # text key blocks: every query block keeps them


def test_select_blocks_counts_forced_blocks_toward_budget():
    scores = torch.rand(1, 1, 4, 8, generator=torch.Generator().manual_seed(0)).softmax(-1)
    forced = torch.zeros(1, 1, 1, 8, dtype=torch.bool)
    forced[..., 7] = True
    m = select_blocks(scores, topk=3, forced_cols=forced)
    assert m.sum(-1).eq(3).all() and m[..., 7].all()


def test_paro_orders_and_permutation_round_trip():
    orders = axis_orders()
    assert len(orders) == 6 and len(set(orders)) == 6 and orders[0] == (0, 1, 2)
    assert order_index((2, 3, 4), (0, 1, 2)).tolist() == list(range(24))
    idx = order_index((2, 2, 3), (2, 1, 0))  # width slowest, frames fastest
    assert idx.tolist()[:4] == [0, 6, 3, 9]
    x = torch.randn(2, 3, 10 + 24, 5)
    perm = head_permutation(torch.tensor([0, 3, 5]), (2, 3, 4), 34, (10, 34), "cpu")
    y = permute_heads(x, perm)
    assert torch.equal(y[:, :, :10], x[:, :, :10])  # text tokens stay in place
    assert torch.equal(unpermute_heads(y, perm), x)


def test_paro_calibration_prefers_the_order_that_groups_attention():
    # Head 0 attends along time (same pixel, all frames), head 1 within a frame row-major.
    F_, H_, W_ = 8, 8, 8
    f, h, w = torch.meshgrid(torch.arange(F_), torch.arange(H_), torch.arange(W_), indexing="ij")
    g = torch.Generator().manual_seed(0)
    pix = torch.randn(H_ * W_, 32, generator=g)[(h * W_ + w).flatten()]
    frame = torch.randn(F_, 32, generator=g)[f.flatten()]
    q = torch.stack([pix, frame])[None] * 4
    orders = calibrate_orders(q, q, (F_, H_, W_), (0, 512), block_q=64, block_k=64, density=0.125)
    time_fastest = axis_orders()[int(orders[0])]
    assert time_fastest[-1] == 0 or time_fastest[-2] == 0  # frames vary within a block
    assert axis_orders()[int(orders[1])][0] == 0  # frames slowest: a block is inside one frame


def test_config_defaults_round_trip_and_validation():
    cfg = SparseAttentionConfig()
    assert cfg.density == 0.25 and cfg.method == "block_sparse"
    for c in (cfg, SparseAttentionConfig(method="sla", density=0.1, skip_fraction=0.5, dense_blocks=(0, 3)),
              SparseAttentionConfig(method="rettention", topk=4, dense_steps=2, reorder="paro"),
              SparseAttentionConfig(method="linear", blocks=(1,), feature_map="elu")):
        full = AccelerationConfig(attention=c)
        assert AccelerationConfig.from_json(full.to_json()) == full
    bad = [{"density": 0.0}, {"density": 2.0}, {"block_q": 100}, {"method": "magic"},
           {"density": 0.5, "topk": 3}, {"reorder": "zigzag"}, {"dense_steps": -1}, {"blocks": (-1,)},
           {"method": "sla", "topk": 3}, {"feature_map": "tanh"}, {"backend": "cuda"}, {"skip_fraction": 1.5}]
    for kwargs in bad:
        with pytest.raises(ValueError):
            SparseAttentionConfig(**kwargs)


def test_density_budget_applies_to_the_video_part_and_keeps_the_diagonal():
    # joint attention: 96 text tokens (3 blocks of 32) then 512 video tokens (16 blocks)
    q, k, _ = qkv(1, 2, 608, 608, 16, seed=5)
    text = ((0, 96),)
    m = predict_block_map(q, k, density=0.25, block_q=32, block_k=32, dense_tokens=text)
    video = m[..., 3:, 3:]
    assert video.sum(-1).eq(4).all()  # 0.25 x 16 video key blocks per video query block
    assert video[..., torch.eye(16, dtype=torch.bool)].all()  # own block always kept
    assert m[..., 3:, :3].all() and m[..., :3, :].all()  # text keys and text queries on top
    dense_rows = dense_cols = torch.arange(19) < 3
    assert block_density(m, dense_rows, dense_cols) == pytest.approx(0.25)
    # a block holding text and video tokens counts as text (it is computed in full)
    m = predict_block_map(q, k, topk=2, block_q=32, block_k=32, dense_tokens=((0, 80),))
    assert m[..., 3:, 3:].sum(-1).eq(2).all() and m[..., :, :3].all()


def test_diagonal_blocks_cover_a_query_blocks_own_tokens():
    d = diagonal_blocks(300, 128, 64)  # query blocks of 128 rows: two key blocks each
    assert d.tolist() == [[True, True, False, False, False], [False, False, True, True, False],
                          [False, False, False, False, True]]
    assert diagonal_blocks(256, 32, 128).sum(-1).eq(1).all()
    m = predict_block_map(*qkv(1, 1, 300, 300, 16)[:2], topk=1, block_q=128, block_k=64)
    assert (m[0, 0] == d).all()  # the diagonal exceeds topk=1: kept anyway, nothing else


def test_cross_attention_has_no_diagonal():
    q, k, _ = qkv(1, 1, 128, 256, 16)
    m = predict_block_map(q, k, topk=1, block_q=64, block_k=64)
    assert m.sum(-1).eq(1).all()
