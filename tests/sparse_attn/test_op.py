"""The public op: dense equivalence, backends vs the fp32 reference, density, bad input."""

import pytest
import torch
import torch.nn.functional as F

from diffusion_accel.sparse_attn import block_sparse_attention
from diffusion_accel.sparse_attn.masks import block_scores, num_blocks
from diffusion_accel.sparse_attn.reference import block_sparse_attention_reference

from ._util import qkv, rel_err


@pytest.mark.parametrize("backend", ["reference", "torch"])
@pytest.mark.parametrize("shape", [(2, 3, 257, 257, 72), (1, 2, 300, 191, 96), (1, 2, 128, 128, 64)])
def test_density_one_reproduces_sdpa(backend, shape):
    b, h, sq, sk, d = shape
    q, k, v = qkv(b, h, sq, sk, d)
    out = block_sparse_attention(q, k, v, density=1.0, block_q=64, block_k=32, backend=backend)
    assert out.shape == q.shape and out.dtype == q.dtype
    assert rel_err(out, F.scaled_dot_product_attention(q, k, v)) <= 1e-5


@pytest.mark.parametrize("selection", [{"density": 0.5}, {"density": 0.25}, {"topk": 3}, {"cdf_threshold": 0.7}])
@pytest.mark.parametrize("d", [64, 72, 96])
def test_torch_backend_matches_reference_fp32(selection, d):
    q, k, v = qkv(2, 2, 333, 301, d, seed=d)
    res = block_sparse_attention(q, k, v, block_q=64, block_k=32, backend="torch", return_block_map=True, **selection)
    ref = block_sparse_attention_reference(q, k, v, res.block_map, 64, 32)
    assert rel_err(res.output, ref) <= 1e-5


@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 1e-2), (torch.float16, 2e-3)])
def test_torch_backend_low_precision(dtype, tol):
    q, k, v = qkv(1, 2, 200, 200, 72, dtype=dtype)
    res = block_sparse_attention(q, k, v, density=0.5, block_q=32, block_k=32, backend="torch", return_block_map=True)
    assert res.output.dtype == dtype
    assert rel_err(res.output, block_sparse_attention_reference(q, k, v, res.block_map, 32, 32)) <= tol


@pytest.mark.parametrize("density", [0.1, 0.25, 0.5, 0.8, 1.0])
def test_realised_density_matches_request(density):
    q, k, v = qkv(1, 4, 1024, 1024, 64)
    res = block_sparse_attention(q, k, v, density=density, block_q=64, block_k=32, return_block_map=True)
    nk = num_blocks(1024, 32)
    per_row = res.block_map.sum(-1)
    assert per_row.unique().tolist() == [max(1, int(density * nk + 0.5))]
    assert abs(res.density - density) <= 0.5 / nk
    assert res.density == pytest.approx(res.block_map.float().mean().item())


def test_topk_and_cdf_selection_rules():
    q, k, v = qkv(1, 2, 512, 512, 64)
    res = block_sparse_attention(q, k, v, topk=5, block_q=64, block_k=64, return_block_map=True)
    assert res.block_map.sum(-1).eq(5).all()
    res = block_sparse_attention(q, k, v, cdf_threshold=0.6, block_q=64, block_k=64, return_block_map=True)
    scores = block_scores(q, k, 64, 64)
    kept_mass = (scores * res.block_map).sum(-1)
    assert (kept_mass >= 0.6 - 1e-6).all()
    # minimal: the diagonal block comes first, then dropping the weakest chosen block falls below
    diag = torch.eye(8, dtype=torch.bool)
    weakest = torch.where(res.block_map & ~diag, scores, torch.full_like(scores, 2.0)).min(-1).values
    assert (kept_mass - weakest < 0.6).all()


def test_kept_blocks_are_the_diagonal_and_the_highest_scored():
    q, k, v = qkv(1, 2, 512, 512, 64, seed=3)
    res = block_sparse_attention(q, k, v, density=0.25, block_q=64, block_k=64, return_block_map=True)
    diag = torch.eye(8, dtype=torch.bool)
    assert res.block_map[..., diag].all()  # a query block's own block is always kept
    assert res.block_map.sum(-1).eq(2).all()  # ... inside the budget (0.25 x 8 blocks)
    scores = block_scores(q, k, 64, 64)
    chosen = res.block_map & ~diag
    lowest_kept = torch.where(chosen, scores, torch.full_like(scores, 2.0)).min(-1).values
    highest_dropped = torch.where(res.block_map, torch.full_like(scores, -1.0), scores).max(-1).values
    assert (lowest_kept >= highest_dropped).all()


def test_given_block_map_and_grad_matches_reference():
    q, k, v = qkv(1, 2, 150, 150, 40)
    bm = torch.rand(1, 2, 5, 5, generator=torch.Generator().manual_seed(1)) < 0.5
    bm[..., 0] = True
    qs, ks, vs = (t.clone().requires_grad_() for t in (q, k, v))
    out = block_sparse_attention(qs, ks, vs, block_map=bm, block_q=32, block_k=32, backend="torch")
    qr, kr, vr = (t.clone().requires_grad_() for t in (q, k, v))
    ref = block_sparse_attention_reference(qr, kr, vr, bm, 32, 32)
    assert rel_err(out, ref) <= 1e-5
    w = torch.randn_like(ref)
    (out * w).sum().backward()
    (ref * w).sum().backward()
    for a, b in ((qs, qr), (ks, kr), (vs, vr)):
        assert rel_err(a.grad, b.grad) <= 1e-4


def test_reference_chunking_matches_to_float_rounding():
    # Rows are computed independently, but BLAS picks its kernel (and summation order) by the
    # number of rows: bit-equal on the Intel CPU it was written on, 5e-7 apart on an AMD EPYC.
    q, k, v = qkv(1, 2, 100, 90, 16)
    bm = torch.ones(1, 2, 4, 3, dtype=torch.bool)
    bm[0, 1, 1, 2] = False
    a = block_sparse_attention_reference(q, k, v, bm, 32, 32)
    b = block_sparse_attention_reference(q, k, v, bm, 32, 32, max_scores=7 * 90)
    torch.testing.assert_close(a, b, rtol=0, atol=4e-6)


BAD = [
    ({"density": 0.0}, "density"),
    ({"density": 1.5}, "density"),
    ({"density": -0.2}, "density"),
    ({"density": 0.5, "block_q": 48}, "block_q"),
    ({"density": 0.5, "block_k": 0}, "block_k"),
    ({}, "exactly one"),
    ({"density": 0.5, "topk": 2}, "exactly one"),
    ({"topk": 0}, "topk"),
    ({"cdf_threshold": 1.2}, "cdf_threshold"),
    ({"density": 0.5, "backend": "cuda-magic"}, "backend"),
]


@pytest.mark.parametrize("kwargs,word", BAD)
def test_bad_arguments_raise_one_clear_value_error(kwargs, word):
    q, k, v = qkv(1, 1, 64, 64, 16)
    with pytest.raises(ValueError, match=word):
        block_sparse_attention(q, k, v, **kwargs)


@pytest.mark.parametrize(
    "shapes,word",
    [
        (((1, 2, 64, 16), (1, 3, 64, 16), (1, 3, 64, 16)), "disagree"),
        (((1, 2, 64, 16), (1, 2, 64, 8), (1, 2, 64, 8)), "disagree"),
        (((1, 2, 64, 16), (1, 2, 64, 16), (1, 2, 60, 16)), "same shape"),
        (((2, 64, 16), (2, 64, 16), (2, 64, 16)), "batch, heads, seq, head_dim"),
    ],
)
def test_disagreeing_shapes_raise(shapes, word):
    q, k, v = (torch.randn(s) for s in shapes)
    with pytest.raises(ValueError, match=word):
        block_sparse_attention(q, k, v, density=0.5)


def test_bad_block_map_and_dtype_raise():
    q, k, v = qkv(1, 1, 64, 64, 16)
    with pytest.raises(ValueError, match="block_map"):
        block_sparse_attention(q, k, v, block_map=torch.ones(1, 1, 3, 3, dtype=torch.bool), block_q=32, block_k=32)
    with pytest.raises(ValueError, match="no key block"):
        block_sparse_attention(q, k, v, block_map=torch.zeros(1, 1, 2, 2, dtype=torch.bool), block_q=32, block_k=32)
    with pytest.raises(ValueError, match="dtype"):
        block_sparse_attention(q, k.half(), v, density=0.5)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
def test_split_key_parts_merge_exactly(dtype, tol):
    from diffusion_accel.sparse_attn.cpu import block_sparse_attention_torch

    q, k, v = qkv(1, 2, 200, 190, 72, dtype=dtype)
    res = block_sparse_attention(q, k, v, density=0.75, block_q=32, block_k=16, return_block_map=True)
    ref, ref_lse = block_sparse_attention_reference(q, k, v, res.block_map, 32, 16, return_lse=True)
    for kv_split in (16, 48, 100):  # one block per part, several blocks, uneven parts
        out, lse = block_sparse_attention_torch(q, k, v, res.block_map, 32, 16, return_lse=True, kv_split=kv_split)
        assert rel_err(out, ref) <= tol
        assert (lse - ref_lse).abs().max() <= 1e-4


def test_one_default_block_shape_per_device_shared_by_op_and_config():
    from diffusion_accel.sparse_attn import SparseAttentionConfig
    from diffusion_accel.sparse_attn.defaults import DEFAULT_BLOCK_SHAPES, default_block_shape, device_kind
    from diffusion_accel.sparse_attn.layer import SparseLayer, TokenLayout

    assert SparseAttentionConfig().block_q is None and SparseAttentionConfig().block_k is None
    block_q, block_k = default_block_shape(torch.device("cpu"))
    assert device_kind("cpu") in DEFAULT_BLOCK_SHAPES and device_kind("cpu").startswith("cpu")
    cuda = DEFAULT_BLOCK_SHAPES["cuda"]
    assert default_block_shape("cuda") == (cuda.block_q, cuda.block_k)
    for entry in DEFAULT_BLOCK_SHAPES.values():
        assert entry.block_q & (entry.block_q - 1) == 0 and entry.block_k & (entry.block_k - 1) == 0
        assert entry.evidence
    q, k, v = qkv(1, 2, 1000, 1000, 32)
    res = block_sparse_attention(q, k, v, density=0.5, return_block_map=True)
    assert res.block_map.shape[-2:] == (num_blocks(1000, block_q), num_blocks(1000, block_k))
    layer = SparseLayer("x", 0, SparseAttentionConfig(density=0.5), head_dim=32)
    assert layer.block_shape(q) == (block_q, block_k)
    assert torch.equal(layer.attend(q, k, v, TokenLayout()), res.output)  # the same computation
    # one size given: the other comes from the device default
    res = block_sparse_attention(q, k, v, density=0.5, block_q=32, return_block_map=True)
    assert res.block_map.shape[-1] == num_blocks(1000, block_k)


def test_chunking_across_heads_does_not_change_the_result():
    # Rows of every head with the same key count share SDPA calls; how many per call (threads,
    # kv_budget) must not change any row's arithmetic.
    from diffusion_accel.sparse_attn.cpu import block_sparse_attention_torch

    q, k, v = qkv(2, 3, 260, 260, 32, seed=9)
    bm = torch.rand(2, 3, 9, 9, generator=torch.Generator().manual_seed(2)) < 0.4
    bm[..., 8] = True  # every row keeps the partial last key block (260 = 8 x 32 + 4)
    assert bm.sum(-1).unique().numel() > 3  # rows of different lengths, interleaved across heads
    one = block_sparse_attention_torch(q, k, v, bm, 32, 32, kv_budget=32)  # one query block per call
    many = block_sparse_attention_torch(q, k, v, bm, 32, 32, kv_budget=1 << 20)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        threaded = block_sparse_attention_torch(q, k, v, bm, 32, 32)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, many) and torch.equal(one, threaded)
    assert rel_err(one, block_sparse_attention_reference(q, k, v, bm, 32, 32)) <= 1e-5


@torch.no_grad()
def test_gather_buffers_are_reused_across_calls_and_shapes():
    # The K/V gather buffers are kept per (thread, device, dtype) across calls (fresh multi-MB
    # buffers cost page faults on every call). Reuse must not change any result, also when the
    # next call has another block shape or head dim, and must not alias a returned output.
    from diffusion_accel.sparse_attn.cpu import _gather_buffers, block_sparse_attention_torch

    q, k, v = qkv(1, 2, 256, 256, 32, seed=3)
    bm = torch.rand(1, 2, 8, 8, generator=torch.Generator().manual_seed(4)) < 0.5
    first = block_sparse_attention_torch(q, k, v, bm, 32, 32)
    kept = first.clone()
    buffer = _gather_buffers(q.device, q.dtype)["k"]
    again = block_sparse_attention_torch(q, k, v, bm, 32, 32)
    assert _gather_buffers(q.device, q.dtype)["k"].data_ptr() == buffer.data_ptr()
    assert torch.equal(again, first)
    q2, k2, v2 = qkv(1, 2, 200, 200, 24, seed=5)  # another head dim and a partial last block
    bm2 = torch.rand(1, 2, 4, 13, generator=torch.Generator().manual_seed(6)) < 0.5
    other = block_sparse_attention_torch(q2, k2, v2, bm2, 64, 16)
    assert rel_err(other, block_sparse_attention_reference(q2, k2, v2, bm2, 64, 16)) <= 1e-5
    assert torch.equal(first, kept)  # the later calls did not write into an earlier output


def test_cpu_kind_is_detected_at_runtime_amx_first(monkeypatch):
    # AMX makes bf16 ~5x fp32 on some CPUs and not on others: the kind is probed, never assumed.
    from diffusion_accel.sparse_attn.defaults import DEFAULT_BLOCK_SHAPES, device_kind

    probes = {"_is_amx_tile_supported": False, "_is_avx512_supported": True, "_is_avx2_supported": True}
    for name in probes:
        monkeypatch.setattr(torch.cpu, name, lambda name=name: probes[name])
    assert device_kind("cpu") == "cpu-avx512"
    probes["_is_amx_tile_supported"] = True
    assert device_kind("cpu") == "cpu-amx"
    probes.update({"_is_amx_tile_supported": False, "_is_avx512_supported": False})
    assert device_kind("cpu") == "cpu-avx2"
    probes["_is_avx2_supported"] = False
    assert device_kind("cpu") == "cpu"
    assert {"cpu-amx", "cpu-avx512", "cpu-avx2", "cpu"} <= set(DEFAULT_BLOCK_SHAPES)
