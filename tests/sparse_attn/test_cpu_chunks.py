"""The torch backend's call layout: partial last key blocks without masks, default key parts."""

import pytest
import torch

from diffusion_accel.sparse_attn import cpu
from diffusion_accel.sparse_attn.cpu import block_sparse_attention_torch, default_kv_split
from diffusion_accel.sparse_attn.reference import block_sparse_attention_reference

from ._util import qkv, rel_err


def _record_calls(monkeypatch) -> list:
    """Record ``(keys, mask)`` of every SDPA call the torch backend makes."""
    calls, sdpa = [], cpu._sdpa

    def spy(q, k, v, mask, scale, need_lse):
        calls.append((k.shape[2], mask))
        return sdpa(q, k, v, mask, scale, need_lse)

    monkeypatch.setattr(cpu, "_sdpa", spy)
    return calls


def _tail_map() -> torch.Tensor:
    # 200 queries / 190 keys in 32 x 16 blocks: 7 query blocks, 12 key blocks, the last holding
    # 14 keys. Rows with the same count differ in whether they keep the last (partial) block.
    bm = torch.rand(1, 2, 7, 12, generator=torch.Generator().manual_seed(1)) < 0.5
    bm[..., 0] = True
    bm[0, 0, :4, :6], bm[0, 0, :4, 6:] = True, False  # 6 blocks, no tail
    bm[0, 0, 4:, :5], bm[0, 0, 4:, 5:11], bm[0, 0, 4:, 11] = True, False, True  # 6 blocks, tail
    return bm


@pytest.mark.parametrize("kv_split", [None, 48, 16])  # whole rows; parts (tail in the last); one block each
def test_partial_last_key_block_is_cut_by_view_not_masked(monkeypatch, kv_split):
    q, k, v = qkv(1, 2, 200, 190, 24, seed=2)
    bm = _tail_map()
    calls = _record_calls(monkeypatch)
    out, lse = block_sparse_attention_torch(q, k, v, bm, 32, 16, return_lse=True, kv_split=kv_split)
    ref, ref_lse = block_sparse_attention_reference(q, k, v, bm, 32, 16, return_lse=True)
    assert rel_err(out, ref) <= 1e-5 and (lse - ref_lse).abs().max() <= 1e-4
    assert all(mask is None for _, mask in calls)
    lengths = {keys for keys, _ in calls}
    assert any(keys % 16 == 14 for keys in lengths)  # rows keeping the tail: 2 padded keys cut
    assert any(keys % 16 == 0 for keys in lengths)  # rows without it: whole blocks
    if kv_split is not None:
        assert max(lengths) <= kv_split


def test_partial_last_key_block_gradients_match_reference():
    q, k, v = (x.requires_grad_() for x in qkv(1, 2, 200, 190, 24, seed=3))
    bm = _tail_map()
    grad_out = torch.randn(1, 2, 200, 24, generator=torch.Generator().manual_seed(4))
    grads = torch.autograd.grad((block_sparse_attention_torch(q, k, v, bm, 32, 16) * grad_out).sum(), (q, k, v))
    ref = torch.autograd.grad((block_sparse_attention_reference(q, k, v, bm, 32, 16) * grad_out).sum(), (q, k, v))
    for g, r in zip(grads, ref):
        assert rel_err(g, r) <= 1e-4


def test_default_key_parts_follow_the_cpu_cache_budget(monkeypatch):
    assert default_kv_split(torch.device("cpu"), 64) == cpu.CPU_KV_SPLIT_BYTES // (2 * 64 * 4) == 2048
    assert default_kv_split(torch.device("cpu"), 128) == 1024
    assert default_kv_split(torch.device("meta"), 64) == cpu.DEFAULT_KV_SPLIT
    # a budget of 40 keys at head_dim 24: rows of up to 12 blocks of 16 go in parts of <= 32 keys
    monkeypatch.setattr(cpu, "CPU_KV_SPLIT_BYTES", 40 * 2 * 24 * 4)
    q, k, v = qkv(1, 2, 200, 190, 24, seed=5)
    bm = _tail_map()
    calls = _record_calls(monkeypatch)
    out = block_sparse_attention_torch(q, k, v, bm, 32, 16)
    assert max(keys for keys, _ in calls) <= 40
    assert rel_err(out, block_sparse_attention_reference(q, k, v, bm, 32, 16)) <= 1e-5
    whole = block_sparse_attention_torch(q, k, v, bm, 32, 16, kv_split=1 << 20)
    assert rel_err(out, whole) <= 1e-6


def test_grad_mode_alone_keeps_the_flash_kernel_for_split_rows():
    """Outside ``torch.no_grad()`` with plain tensors the split rows' log-sum-exp parts take the same
    kernel as under no_grad (bit-identical output); inputs that require grad still get a graph."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 512, 64) for _ in range(3))
    block_map = torch.ones(1, 2, 2, 8, dtype=torch.bool)
    with torch.no_grad():
        expected = block_sparse_attention_torch(q, k, v, block_map, 256, 64, kv_split=128)
    assert torch.is_grad_enabled()
    got = block_sparse_attention_torch(q, k, v, block_map, 256, 64, kv_split=128)
    assert torch.equal(got, expected)
    qg = q.clone().requires_grad_(True)
    out = block_sparse_attention_torch(qg, k, v, block_map, 256, 64)
    assert out.requires_grad
    torch.testing.assert_close(out.detach(), expected, atol=1e-5, rtol=1e-5)
