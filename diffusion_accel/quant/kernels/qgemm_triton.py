"""Triton W8A8 / W4A8 GEMM: int8 activations × int8 or packed int4 weights → float.

Kernel → launcher (:func:`qgemm_triton`); the public op is :func:`diffusion_accel.quant.kernels.qgemm`
and the fp32 PyTorch reference is :func:`~diffusion_accel.quant.kernels.reference.qgemm_reference`.
Each program computes a ``BLOCK_M × BLOCK_N`` tile, accumulating int8 × int8 products in int32 over
``K``; 4-bit weights are unpacked in registers (two per byte: element ``k`` of a row sits in the low
nibble of byte ``k`` for ``k < ceil(K/2)``, else in the high nibble of byte ``k - ceil(K/2)``) and
multiplied by their integer group scale, so the integers are exactly those of the reference. The
epilogue applies the per-token activation scale, the per-channel weight scale and the bias.

Runs on CUDA, and on CPU under ``TRITON_INTERPRET=1`` (tests; power-of-two blocks, no bf16).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["qgemm_triton"]


@triton.jit
def _qgemm_kernel(
    x_ptr, xs_ptr, w_ptr, ws_ptr, gs_ptr, b_ptr, out_ptr,
    M, N, K, HALF,
    stride_xm, stride_xk, stride_wn, stride_wk, stride_gn, stride_gk, stride_om, stride_on,
    GROUP: tl.constexpr, INT4: tl.constexpr, HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + rk
        a_mask = (rm[:, None] < M) & (kk[None, :] < K)
        a = tl.load(x_ptr + rm[:, None] * stride_xm + kk[None, :] * stride_xk, mask=a_mask, other=0)
        b_mask = (kk[:, None] < K) & (rn[None, :] < N)
        if INT4:
            upper = kk[:, None] >= HALF
            col = tl.where(upper, kk[:, None] - HALF, kk[:, None])
            byte = tl.load(w_ptr + rn[None, :] * stride_wn + col * stride_wk, mask=b_mask, other=0)
            nib = (byte.to(tl.int32) >> tl.where(upper, 4, 0)) & 0xF
            q = tl.where(nib >= 8, nib - 16, nib)
            z = tl.load(gs_ptr + rn[None, :] * stride_gn + (kk[:, None] // GROUP) * stride_gk, mask=b_mask, other=0)
            b = (q * z.to(tl.int32)).to(tl.int8)
        else:
            b = tl.load(w_ptr + rn[None, :] * stride_wn + kk[:, None] * stride_wk, mask=b_mask, other=0)
        acc += tl.dot(a, b, out_dtype=tl.int32)
    xs = tl.load(xs_ptr + rm, mask=rm < M, other=0.0)
    ws = tl.load(ws_ptr + rn, mask=rn < N, other=0.0)
    out = acc.to(tl.float32) * xs[:, None] * ws[None, :]
    if HAS_BIAS:
        out += tl.load(b_ptr + rn, mask=rn < N, other=0.0)[None, :]
    o_mask = (rm[:, None] < M) & (rn[None, :] < N)
    tl.store(out_ptr + rm[:, None] * stride_om + rn[None, :] * stride_on, out, mask=o_mask)


def qgemm_triton(
    xq: torch.Tensor,
    x_scale: torch.Tensor,
    w: torch.Tensor,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None,
    group_scale: torch.Tensor | None,
    group_size: int,
    k: int,
    block_m: int = 32,
    block_n: int = 32,
    block_k: int = 32,
) -> torch.Tensor:
    """Launch the kernel; arguments as :func:`diffusion_accel.quant.kernels.qgemm` (checked there)."""
    m = xq.shape[0]
    n = w.shape[0]
    out = torch.empty(m, n, dtype=torch.float32, device=xq.device)
    int4 = group_scale is not None
    gs = group_scale if int4 else w_scale  # unused pointer when not int4
    b = bias if bias is not None else w_scale
    grid = (triton.cdiv(m, block_m), triton.cdiv(n, block_n))
    _qgemm_kernel[grid](
        xq, x_scale, w, w_scale, gs, b, out,
        m, n, k, (k + 1) // 2,
        xq.stride(0), xq.stride(1), w.stride(0), w.stride(1),
        gs.stride(0) if int4 else 0, gs.stride(1) if int4 else 0, out.stride(0), out.stride(1),
        GROUP=group_size if int4 else 1, INT4=int4, HAS_BIAS=bias is not None,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
    )
    return out
