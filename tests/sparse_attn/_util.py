"""Helpers shared by the sparse-attention tests."""

import torch


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """Relative Frobenius error ``|out - ref| / |ref|`` in fp64."""
    out, ref = out.double(), ref.double()
    out, ref = out.detach(), ref.detach()
    return float((out - ref).norm() / ref.norm())


def qkv(b, h, sq, sk, d, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, sq, d, generator=g)
    k = torch.randn(b, h, sk, d, generator=g)
    v = torch.randn(b, h, sk, d, generator=g)
    return q.to(dtype), k.to(dtype), v.to(dtype)
