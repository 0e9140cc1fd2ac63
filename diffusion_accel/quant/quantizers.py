"""Quantizers: weights (symmetric per output channel, or group-wise for 4 bits) and activations
(dynamic per token, or static per tensor).

Integer formats
---------------
* **8-bit weights**: ``w ≈ q * channel_scale[:, None]`` with ``q`` in ``[-128, 127]``; each
  channel's scale is the one of ``absmax / 127``, ``absmax / 127.5`` (torchao's symmetric int8),
  ``absmax / 128`` with the smallest squared error on that channel (a reduced ``level`` for kernels
  exact only with 7-bit weights: ``absmax / level``, ``q`` in ``[-level, level]``).
* **4-bit weights, group-wise** (two-level, exact in an int8 GEMM): ``w ≈ q4 * z * channel_scale``
  where ``q4`` is in ``[-8, 7]`` (stored two per byte), ``z`` is a small integer **group scale** in
  ``[1, 15]`` shared by ``group_size`` consecutive input channels, and ``channel_scale`` is one
  float per output channel. ``q4 * z`` lies in ``[-120, 105]``: an int8 weight with a per-channel
  scale, so the same integers run through any int8 GEMM (oneDNN, ``torch._int_mm``, the Triton
  kernel) and through the fake-quant path. Group scales are chosen by a small MSE search.
* **activations**: ``x ≈ q * scale`` with ``q`` in ``[-128, 127]`` (8 bits) — one scale per token
  (dynamic, default: ``scale = absmax / 127.5``) or one calibrated scale per tensor (static).

Example:
    >>> import torch
    >>> w = torch.randn(64, 256)
    >>> q, s = quantize_weight_per_channel(w, bits=8)
    >>> bool(sqnr_db(w, q.float() * s[:, None]) > 38)
    True
    >>> q4, z, cs = quantize_weight_groupwise(w, bits=4, group_size=128)
    >>> q4.shape, z.shape, cs.shape
    (torch.Size([64, 256]), torch.Size([64, 2]), torch.Size([64]))
"""

from __future__ import annotations

import torch

__all__ = [
    "VALID_BITS",
    "check_bits",
    "qmax",
    "GROUP_SCALE_MAX",
    "quantize_weight_per_channel",
    "W8_SCALE_DIVISORS",
    "quantize_weight_groupwise",
    "groupwise_int8_weight",
    "dequantize_groupwise",
    "quantize_act_per_token",
    "normalize_per_token",
    "quantize_act_per_tensor",
    "fake_quant_act",
    "sqnr_db",
]

#: Bit widths a weight may be quantized to; ``None`` keeps full precision.
VALID_BITS = (4, 8)
#: Largest integer group scale of the 4-bit format (``8 * 15 = 120`` fits int8).
GROUP_SCALE_MAX = 15
_EPS = 1e-12
#: 8-bit weight scale candidates ``absmax / d`` (first wins ties); integers in ``[-128, 127]``.
W8_SCALE_DIVISORS = (127.0, 127.5, 128.0)


def check_bits(bits, what: str = "bits", allow_none: bool = True) -> int | None:
    """Validate a bit width: 4 or 8 (or ``None`` = full precision when ``allow_none``)."""
    if bits is None and allow_none:
        return None
    if isinstance(bits, bool) or bits not in VALID_BITS:
        allowed = "4, 8 or None (full precision)" if allow_none else "4 or 8"
        raise ValueError(f"{what} must be {allowed}; got {bits!r}.")
    return int(bits)


def qmax(bits: int) -> int:
    """Largest symmetric integer level: 127 for 8 bits, 7 for 4 bits."""
    return 2 ** (check_bits(bits, allow_none=False) - 1) - 1


def quantize_weight_per_channel(w: torch.Tensor, bits: int = 8, level: int | None = None
                                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel quantization.

    Args:
        w: ``(N, K)`` float weight.
        bits: 8 (or 4: values in ``[-7, 7]``).
        level: largest integer magnitude (default ``qmax(bits)``; e.g. 64 for a kernel that is exact
            only with 7-bit weights).

    Returns:
        ``q`` int8 ``(N, K)`` and ``scale`` float32 ``(N,)`` with ``w ≈ q * scale[:, None]``. With the
        full 8-bit level, ``q`` is in ``[-128, 127]`` and each channel takes the scale of
        :data:`W8_SCALE_DIVISORS` with the smallest squared error (never worse, channel by channel,
        than ``absmax / 127`` or than torchao's ``absmax / 127.5``); otherwise ``q`` is in
        ``[-level, level]`` with ``scale = absmax / level``.
    """
    _check_matrix(w, "w")
    level = qmax(bits) if level is None else int(level)
    if not 1 <= level <= qmax(bits):
        raise ValueError(f"level must be in [1, {qmax(bits)}] for {bits}-bit weights; got {level}.")
    w = w.detach().float()
    absmax = w.abs().amax(dim=1).clamp_min(_EPS)
    if bits != 8 or level != qmax(8):
        scale = absmax / level
        return torch.round(w / scale[:, None]).clamp_(-level, level).to(torch.int8), scale
    best_q, best_scale, best_err = None, None, None
    for divisor in W8_SCALE_DIVISORS:
        scale = absmax / divisor
        q = torch.round(w / scale[:, None]).clamp_(-level - 1, level)
        err = (q * scale[:, None] - w).square_().sum(dim=1)
        if best_q is None:
            best_q, best_scale, best_err = q, scale, err
            continue
        better = err < best_err
        best_q = torch.where(better[:, None], q, best_q)
        best_scale = torch.where(better, scale, best_scale)
        best_err = torch.minimum(err, best_err)
    return best_q.to(torch.int8), best_scale


def quantize_weight_groupwise(
    w: torch.Tensor, bits: int = 4, group_size: int = 128, search: int = 21
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two-level group-wise quantization (see the module docstring).

    Args:
        w: ``(N, K)`` float weight. ``K`` need not be a multiple of ``group_size``: the last group
            of a row is shorter.
        bits: 4 (the only width stored group-wise).
        group_size: input channels per group (> 0, even).
        search: clipping ratios tried per group when choosing the float group scale.

    Returns:
        ``q4`` int8 ``(N, K)`` in ``[-8, 7]``, ``z`` uint8 ``(N, ceil(K / group_size))`` in
        ``[1, 15]``, ``channel_scale`` float32 ``(N,)``; ``w ≈ q4 * z.repeat_interleave(g) * cs``.
    """
    _check_matrix(w, "w")
    if check_bits(bits, allow_none=False) != 4:
        raise ValueError(f"Group-wise weight quantization is for 4 bits; got bits={bits}. Use per-channel for 8.")
    _check_group_size(group_size)
    n, k = w.shape
    groups = -(-k // group_size)
    wg = torch.nn.functional.pad(w.detach().float(), (0, groups * group_size - k)).view(n, groups, group_size)
    lo, hi = -8, 7
    absmax = wg.abs().amax(dim=-1, keepdim=True).clamp_min(_EPS)  # (n, G, 1)
    # 1) float group scales: the clipping ratio with the least squared error.
    ratios = torch.linspace(0.5, 1.0, max(int(search), 1), device=w.device) / hi
    best_scale = _best_candidate(wg, absmax * ratios, lo, hi)  # candidates (n, G, R)
    # 2) one float scale per channel; integer group scales z in [1, 15] (least squared error).
    channel_scale = best_scale.amax(dim=1, keepdim=True) / GROUP_SCALE_MAX  # (n, 1, 1)
    zs = torch.arange(1, GROUP_SCALE_MAX + 1, device=w.device, dtype=torch.float32)
    best = _best_candidate(wg, channel_scale * zs, lo, hi)  # (n, G, 1) chosen scale
    best_z = torch.round(best / channel_scale)
    q4 = torch.round(wg / (channel_scale * best_z)).clamp_(lo, hi).to(torch.int8)
    q4 = q4.view(n, groups * group_size)[:, :k].contiguous()
    return q4, best_z.view(n, groups).to(torch.uint8), channel_scale.view(n)


def _best_candidate(wg: torch.Tensor, scales: torch.Tensor, lo: int, hi: int,
                    chunk_elems: int = 1 << 24) -> torch.Tensor:
    """Per group, the candidate scale (last dim of ``scales`` ``(n, G, R)``) with least squared error."""
    n, groups, size = wg.shape
    scales = scales.expand(n, groups, scales.shape[-1])
    rows = max(1, chunk_elems // max(1, groups * size * scales.shape[-1]))
    out = torch.empty(n, groups, 1, device=wg.device)
    for start in range(0, n, rows):
        w = wg[start:start + rows, :, None, :]  # (r, G, 1, g)
        s = scales[start:start + rows, :, :, None]  # (r, G, R, 1)
        err = (torch.round(w / s).clamp_(lo, hi) * s - w).pow_(2).sum(dim=-1)  # (r, G, R)
        index = err.argmin(dim=-1, keepdim=True)
        out[start:start + rows] = torch.gather(scales[start:start + rows], -1, index)
    return out


def groupwise_int8_weight(q4: torch.Tensor, z: torch.Tensor, group_size: int) -> torch.Tensor:
    """``q4 * z`` expanded over groups: the exact int8 weight ``(N, K)`` of the 4-bit format."""
    k = q4.shape[-1]
    zz = z.to(torch.int16).repeat_interleave(group_size, dim=-1)[..., :k]
    return (q4.to(torch.int16) * zz).to(torch.int8)


def dequantize_groupwise(q4: torch.Tensor, z: torch.Tensor, channel_scale: torch.Tensor,
                         group_size: int) -> torch.Tensor:
    """Float32 ``(N, K)`` weight represented by the 4-bit format."""
    return groupwise_int8_weight(q4, z, group_size).float() * channel_scale[:, None]


def normalize_per_token(
    x: torch.Tensor, bits: int = 8, inv_smooth: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` divided by its per-token scale, *before* rounding (kernels that round while packing).

    The scale maps each row's absmax to ``qmax + 0.5`` (127.5 for 8 bits: the whole int8 range
    ``[-128, 127]`` is used, as in PyTorch's and torchao's symmetric int8; the row maximum itself
    rounds to 128 and is clipped to 127, half a step). Returns ``xn`` float32 ``(M, K)`` in
    ``[-qmax - 0.5, qmax + 0.5]`` and ``scale`` float32 ``(M, 1)``; ``round(xn)`` clipped to the int8
    range are the integers of :func:`quantize_act_per_token`.
    """
    level = qmax(bits) + 0.5
    if inv_smooth is not None:
        x = x.float() * inv_smooth
    # max(max, -min) reads x twice but allocates no (M, K) temporary (abs() would); bf16 maxima are exact
    absmax = torch.maximum(x.amax(dim=-1, keepdim=True), x.amin(dim=-1, keepdim=True).neg()).float()
    absmax = absmax.clamp_min(_EPS)
    return x * (level / absmax), absmax / level  # type promotion: float32 whatever x's float dtype


def quantize_act_per_token(
    x: torch.Tensor, bits: int = 8, inv_smooth: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic symmetric per-token quantization.

    Args:
        x: ``(M, K)`` float activations (any float dtype).
        bits: 8.
        inv_smooth: optional ``(K,)`` float32 channel-balancing factors multiplied in first.

    Returns:
        ``q`` int8 ``(M, K)`` in ``[-128, 127]`` and ``scale`` float32 ``(M, 1)`` with
        ``x * inv_smooth ≈ q * scale`` (``q = round(x * inv_smooth * 127.5 / absmax)``, see
        :func:`normalize_per_token`).
    """
    level = qmax(bits)
    xn, scale = normalize_per_token(x, bits, inv_smooth)
    return xn.round_().clamp_(-level - 1, level).to(torch.int8), scale  # xn is a fresh tensor


def quantize_act_per_tensor(
    x: torch.Tensor, scale: torch.Tensor, bits: int = 8, inv_smooth: torch.Tensor | None = None
) -> torch.Tensor:
    """Static symmetric per-tensor quantization with a calibrated ``scale`` (0-d float32 tensor).

    Returns ``q`` int8, same shape as ``x``, with ``x * inv_smooth ≈ q * scale``:
    ``q = round(x * inv_smooth * (1 / scale))`` clamped to the full int8 range ``[-128, 127]`` (as a
    kernel that quantizes to ``uint8 = q + 128`` inside its packing step does).
    """
    level = qmax(bits)
    xf = x.float()
    if inv_smooth is not None:
        xf = xf * inv_smooth
    return (xf * (1.0 / scale)).round_().clamp_(-level - 1, level).to(torch.int8)


def fake_quant_act(x: torch.Tensor, bits: int = 8) -> torch.Tensor:
    """Per-token quantize-dequantize (float32), for research and references."""
    q, s = quantize_act_per_token(x.reshape(-1, x.shape[-1]), bits)
    return (q.float() * s).reshape(x.shape)


def sqnr_db(reference: torch.Tensor, approx: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio ``10 log10(|ref|² / |ref - approx|²)`` in dB."""
    ref = reference.detach().double()
    noise = (ref - approx.detach().double()).pow(2).sum()
    signal = ref.pow(2).sum()
    if noise == 0:
        return float("inf")
    return float(10 * torch.log10(signal / noise))


def _check_matrix(w: torch.Tensor, name: str) -> None:
    if not torch.is_tensor(w) or w.dim() != 2 or not w.is_floating_point():
        raise ValueError(f"{name} must be a 2-D float tensor (out_features, in_features); got "
                         f"{getattr(w, 'shape', type(w))}.")


def _check_group_size(group_size) -> None:
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size <= 0 or group_size % 2:
        raise ValueError(f"group_size must be a positive even integer (e.g. 64 or 128); got {group_size!r}.")
