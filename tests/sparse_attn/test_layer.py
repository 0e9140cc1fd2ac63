"""SparseLayer policies: dense steps, Re-ttention, PARO, SLA fitting — against dense attention."""


import torch
import torch.nn.functional as F

from diffusion_accel.hooks import DenoiserCall
from diffusion_accel.sparse_attn import SparseAttentionConfig
from diffusion_accel.sparse_attn.context import CallContext
from diffusion_accel.sparse_attn.layer import SparseLayer, TokenLayout, _RidgeFit

from ._util import qkv, rel_err


class FakeTracker:
    def __init__(self):
        self.current = None

    def at(self, step, branch="call0"):
        self.current = DenoiserCall(step, branch, 0, step, float(1000 - step), 1)
        return self


def structured_qkv(seq=512, heads=2, d=32, seed=0, noise=0.0):
    """Tokens in clusters: attention is concentrated (like real models), so sparsity is meaningful."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(16, d, generator=g) * 1.5
    assign = torch.randint(0, 16, (heads, seq), generator=torch.Generator().manual_seed(1))
    base = centers[assign][None]
    q = base + 0.3 * torch.randn(1, heads, seq, d, generator=g)
    k = base + 0.3 * torch.randn(1, heads, seq, d, generator=g)
    v = torch.randn(1, heads, seq, d, generator=g)
    if noise:
        q, k, v = (t + noise * torch.randn(t.shape, generator=g) for t in (q, k, v))
    return q, k, v


def layer(tracker=None, context=None, **cfg):
    return SparseLayer("test.attn", 0, SparseAttentionConfig(**cfg), head_dim=32, tracker=tracker, context=context)


def test_use_original_on_dense_steps_and_blocks():
    t = FakeTracker()
    lay = layer(t, dense_steps=2, dense_blocks=(3,))
    assert lay.use_original() is True  # no call yet = step 0
    assert t.at(1) and lay.use_original() is True
    assert t.at(2) and lay.use_original() is False
    lay_blocks = SparseLayer("x", 3, SparseAttentionConfig(dense_blocks=(3,)), head_dim=32)
    assert lay_blocks.use_original() is True
    only = SparseLayer("x", 1, SparseAttentionConfig(blocks=(0,)), head_dim=32)
    assert only.use_original() is True


def test_block_sparse_layer_matches_op_and_keeps_text_dense():
    q, k, v = qkv(1, 2, 300, 300, 32)
    lay = layer(density=0.25, block_q=32, block_k=32)
    text = ((0, 40),)
    out = lay.attend(q, k, v, TokenLayout(dense_tokens=text))
    # text queries attend to everything: exactly dense for their rows
    dense = F.scaled_dot_product_attention(q, k, v)
    assert rel_err(out[:, :, :40], dense[:, :, :40]) <= 1e-5
    assert lay.stats["sparse_calls"] == 1 and 0.25 <= lay.stats["density_sum"] < 0.5


def test_rettention_reproduces_dense_when_inputs_repeat():
    t = FakeTracker()
    lay = layer(t, method="rettention", density=0.25, block_q=64, block_k=64, dense_steps=1)
    q, k, v = structured_qkv()
    dense = F.scaled_dot_product_attention(q, k, v)
    t.at(0)
    assert rel_err(lay.attend(q, k, v, TokenLayout()), dense) <= 1e-5  # step 0: dense + statistics
    out = t.at(1) and lay.attend(q, k, v, TokenLayout())
    assert lay.stats["sparse_calls"] == 1
    assert rel_err(out, dense) <= 1e-5


def test_rettention_beats_plain_sparse_on_slowly_changing_inputs():
    t = FakeTracker()
    ret = layer(t, method="rettention", density=0.125, block_q=64, block_k=64, dense_steps=1)
    plain = layer(t, density=0.125, block_q=64, block_k=64)
    q0, k0, v0 = structured_qkv()
    t.at(0)
    ret.attend(q0, k0, v0, TokenLayout())
    t.at(1)
    q1, k1, v1 = structured_qkv(noise=0.05)  # the next step's inputs: close to the last dense step's
    dense = F.scaled_dot_product_attention(q1, k1, v1)
    err_ret = rel_err(ret.attend(q1, k1, v1, TokenLayout()), dense)
    err_plain = rel_err(plain.attend(q1, k1, v1, TokenLayout()), dense)
    assert err_ret < 0.5 * err_plain


def test_rettention_caches_per_branch_and_reset():
    t = FakeTracker()
    lay = layer(t, method="rettention", density=0.25, block_q=64, block_k=64, dense_steps=1)
    q, k, v = structured_qkv()
    t.at(0, "cond")
    lay.attend(q, k, v, TokenLayout())
    q2, k2, v2 = structured_qkv(seed=3)
    t.at(1, "uncond")  # no statistics for this branch yet: computed dense
    assert rel_err(lay.attend(q2, k2, v2, TokenLayout()), F.scaled_dot_product_attention(q2, k2, v2)) <= 1e-5
    assert set(lay.cache) == {"cond", "uncond"}
    lay.reset()
    assert lay.cache == {}


def _video_qkv(frames=8, height=8, width=8, d=32, seed=0):
    """Each token attends to the same pixel in every frame (temporal heads)."""
    _f, h, w = torch.meshgrid(torch.arange(frames), torch.arange(height), torch.arange(width), indexing="ij")
    g = torch.Generator().manual_seed(seed)
    pix = torch.randn(height * width, d, generator=g)[(h * width + w).flatten()] * 2.0
    q = pix + 0.2 * torch.randn(pix.shape, generator=g)
    k = pix + 0.2 * torch.randn(pix.shape, generator=g)
    v = torch.randn(pix.shape, generator=g)
    return q[None, None], k[None, None], v[None, None]


def test_paro_at_density_one_is_exact_and_at_low_density_beats_raster_order():
    q, k, v = _video_qkv()
    grid = (8, 8, 8)
    ctx = lambda: CallContext(grid=grid)
    text = torch.randn(1, 1, 20, 32)
    qt, kt, vt = (torch.cat([text, x], 2) for x in (q, k, v))
    layout = TokenLayout(dense_tokens=((0, 20),), span=(20, 532))
    exact = layer(context=ctx, density=1.0, block_q=64, block_k=64, reorder="paro")
    dense = F.scaled_dot_product_attention(qt, kt, vt)
    assert rel_err(exact.attend(qt, kt, vt, layout), dense) <= 1e-5
    # without text: the sparse blocks are all video blocks
    paro = layer(context=ctx, density=0.25, block_q=64, block_k=64, reorder="paro")
    raster = layer(context=ctx, density=0.25, block_q=64, block_k=64)
    dense = F.scaled_dot_product_attention(q, k, v)
    err_paro = rel_err(paro.attend(q, k, v, TokenLayout()), dense)
    err_raster = rel_err(raster.attend(q, k, v, TokenLayout()), dense)
    assert err_paro < 0.1 and err_paro < 0.2 * err_raster
    assert len(paro.paro_orders) == 1  # calibrated once, reused


def test_paro_without_grid_raises():
    q, k, v = qkv(1, 1, 64, 64, 32)
    lay = layer(context=lambda: CallContext(grid=None), reorder="paro", block_q=32, block_k=32)
    try:
        lay.attend(q, k, v, TokenLayout())
    except ValueError as exc:
        assert "grid" in str(exc)
    else:  # pragma: no cover
        raise AssertionError("expected a ValueError")


def test_sla_projection_fit_reduces_error_to_dense():
    q, k, v = structured_qkv(seed=4)
    lay = layer(method="sla", density=0.125, skip_fraction=0.0, block_q=64, block_k=64, feature_map="softmax")
    dense = F.scaled_dot_product_attention(q, k, v)
    before = lay.attend(q, k, v, TokenLayout())
    plain = layer(density=0.125, block_q=64, block_k=64).attend(q, k, v, TokenLayout())
    assert torch.allclose(before, plain, atol=1e-6)  # zero-initialised projection
    lay.sla_fit = _RidgeFit(32, "cpu")
    lay.attend(q, k, v, TokenLayout())
    w, b = lay.sla_fit.solve(1e-3)
    with torch.no_grad():
        lay.proj.weight.copy_(w)
        lay.proj.bias.copy_(b)
    lay.sla_fit = None
    after = lay.attend(q, k, v, TokenLayout())
    assert rel_err(after, dense) < 0.9 * rel_err(before, dense)


def test_linear_method_and_min_tokens():
    q, k, v = qkv(1, 2, 100, 100, 32)
    lin = layer(method="linear", feature_map="elu")
    from diffusion_accel.sparse_attn import linear_attention

    assert torch.equal(lin.attend(q, k, v, TokenLayout()), linear_attention(q, k, v, feature_map="elu"))
    small = layer(density=0.1, block_q=16, block_k=16, min_tokens=128)
    assert torch.equal(small.attend(q, k, v, TokenLayout()), F.scaled_dot_product_attention(q, k, v))
    assert small.stats["dense_calls"] == 1
