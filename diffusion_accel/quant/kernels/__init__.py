"""Integer GEMM kernels: the public op :func:`qgemm`, its Triton kernel and its PyTorch reference.

Example (reference; the Triton kernel needs CUDA, or ``TRITON_INTERPRET=1`` on CPU)::

    import torch
    from diffusion_accel.quant.kernels import qgemm, qgemm_reference
    xq = torch.randint(-127, 128, (64, 128), dtype=torch.int8, device="cuda")
    w = torch.randint(-127, 128, (32, 128), dtype=torch.int8, device="cuda")
    xs, ws = torch.rand(64, device="cuda"), torch.rand(32, device="cuda")
    torch.testing.assert_close(qgemm(xq, xs, w, ws), qgemm_reference(xq, xs, w, ws))
"""

from __future__ import annotations

import importlib.util

import torch

from .reference import qgemm_reference

__all__ = ["qgemm", "qgemm_reference", "triton_available"]


def triton_available() -> bool:
    """Whether Triton is installed and a CUDA device is present (the kernel's home)."""
    return importlib.util.find_spec("triton") is not None and torch.cuda.is_available()


def qgemm(
    xq: torch.Tensor,
    x_scale: torch.Tensor,
    w: torch.Tensor,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    group_scale: torch.Tensor | None = None,
    group_size: int | None = None,
    k: int | None = None,
    block_sizes: tuple[int, int, int] = (32, 32, 32),
) -> torch.Tensor:
    """W8A8 / W4A8 GEMM with the Triton kernel.

    Args:
        xq: int8 ``(M, K)`` activations.
        x_scale: float32 ``(M,)`` per-token scales.
        w: int8 ``(N, K)`` weight, or uint8 ``(N, ceil(K/2))`` packed 4-bit weight.
        w_scale: float32 ``(N,)`` per-channel scales.
        bias: float32 ``(N,)`` or ``None``.
        group_scale: uint8 ``(N, ceil(K/group_size))`` integer group scales (4-bit weights only).
        group_size: input channels per group (4-bit weights only).
        k: ``K`` (defaults to ``xq.shape[1]``).
        block_sizes: ``(BLOCK_M, BLOCK_N, BLOCK_K)``, powers of two ≥ 16.

    Returns:
        float32 ``(M, N)``: ``(xq @ Wint^T) * x_scale[:, None] * w_scale + bias``.
    """
    k = xq.shape[1] if k is None else int(k)
    if xq.dtype != torch.int8 or xq.dim() != 2 or xq.shape[1] != k:
        raise ValueError(f"xq must be int8 (M, K={k}); got {xq.dtype} {tuple(xq.shape)}.")
    m = xq.shape[0]
    if x_scale.shape != (m,) or w_scale.dim() != 1:
        raise ValueError(f"x_scale must be ({m},) and w_scale (N,); got {tuple(x_scale.shape)}, {tuple(w_scale.shape)}.")
    n = w_scale.shape[0]
    if group_scale is None:
        if w.dtype != torch.int8 or w.shape != (n, k):
            raise ValueError(f"8-bit w must be int8 ({n}, {k}); got {w.dtype} {tuple(w.shape)}.")
        group_size = 1
    else:
        if w.dtype != torch.uint8 or w.shape != (n, (k + 1) // 2):
            raise ValueError(f"4-bit w must be packed uint8 ({n}, {(k + 1) // 2}); got {w.dtype} {tuple(w.shape)}.")
        if not group_size or group_scale.shape != (n, -(-k // group_size)):
            raise ValueError(f"group_scale must be ({n}, ceil(K/group_size)) with group_size set.")
    if bias is not None and bias.shape != (n,):
        raise ValueError(f"bias must be ({n},); got {tuple(bias.shape)}.")
    for b in block_sizes:
        if b < 16 or b & (b - 1):
            raise ValueError(f"block sizes must be powers of two ≥ 16; got {block_sizes}.")
    from .qgemm_triton import qgemm_triton

    return qgemm_triton(xq.contiguous(), x_scale.float().contiguous(), w.contiguous(), w_scale.float().contiguous(),
                        None if bias is None else bias.float().contiguous(), group_scale, group_size, k, *block_sizes)
