"""``QuantLinear``: a linear layer holding packed int8 / int4 weights, run by a real integer GEMM.

Storage (all real tensors, counted by :meth:`QuantLinear.memory_bytes`):

========================  =====================  =================================================
buffer                    8-bit weights          4-bit weights (group-wise, see ``quantizers``)
========================  =====================  =================================================
``qweight``               int8 ``(N, K)``        uint8 ``(N, ceil(K/2))``, two values per byte
``group_scale``           --                     uint8 ``(N, ceil(K/group_size))`` in ``[1, 15]``
``weight_scale``          float32 ``(N,)``       float32 ``(N,)``
``bias``                  original dtype ``(N,)`` or absent
``inv_smooth``            float32 ``(K,)`` channel balancing (optional)
``act_scale``             float32 ``(R,)`` static activation scale per timestep range (optional)
========================  =====================  =================================================

The layer also holds one empty float parameter, ``dtype_anchor`` (zero bytes, not saved): code that
reads a module's dtype or device from its first parameter (e.g. diffusers' Wan transformer reads
``next(self.time_embedder.parameters()).dtype``) sees the float dtype and device of the layer it
replaced, and ``.to(dtype)`` moves it like any parameter.

Execution: activations are quantized to int8 (per token, or per tensor with a calibrated scale)
and multiplied with the integer weight by a GEMM **backend** (:mod:`.gemm`), chosen per device and
CPU kind: oneDNN's prepacked int8 GEMM (AMX), ``torch._int_mm`` (AVX-512 VNNI, CUDA), the x86 /
fbgemm quantized linear (AVX2), the Triton kernel (CUDA), or ``"fake"`` (float
quantize-dequantize). Every backend uses the same integers and the same rescale, so outputs agree
within float rounding. With ``act_bits=None`` the layer is weight-only.

Example:
    >>> import torch
    >>> lin = torch.nn.Linear(64, 32)
    >>> q = QuantLinear.from_linear(lin, weight_bits=8, act_bits=8)
    >>> x = torch.randn(2, 5, 64)
    >>> y = q(x)
    >>> y.shape, bool((y - lin(x)).abs().max() < 0.05)
    (torch.Size([2, 5, 32]), True)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from . import ops
from .packing import pack_int4
from .quantizers import (
    check_bits,
    groupwise_int8_weight,
    quantize_weight_groupwise,
    quantize_weight_per_channel,
)
from .runtime import QuantRuntime

__all__ = ["QuantLinear", "ACT_MODES"]

#: Activation quantization modes: per token at run time, or per tensor with calibrated scales.
ACT_MODES = ("dynamic", "static")
#: Weight elements quantized at a time by ``from_linear`` (bounds its float temporaries to ~1 MB each).
_BLOCK_ELEMENTS = 1 << 18


class QuantLinear(torch.nn.Module):
    """Linear layer with quantized, packed weights (see the module docstring).

    Build it with :meth:`from_linear` (quantizes a float ``nn.Linear``) or with the constructor
    (empty buffers of the right shapes, to load a saved state into).

    Args:
        in_features, out_features: ``K`` and ``N``.
        bias: whether the layer has a bias.
        weight_bits: 8 (per output channel) or 4 (group-wise).
        act_bits: 8, or ``None`` for weight-only quantization.
        group_size: input channels per group of 4-bit weights.
        act_mode: ``"dynamic"`` (per token) or ``"static"`` (per tensor, needs ``act_scale``).
        num_ranges: number of timestep ranges with their own static activation scale.
        smooth: whether the layer has channel-balancing factors ``inv_smooth``.
        bias_dtype: dtype of the bias and of the float layer replaced (``compute_dtype``).
        backend: GEMM backend name (``"auto"``, ``"onednn"``, ``"int_mm"``, ``"triton"``, ``"fake"``).
        act_group: layers with the same ``act_group`` (and the same runtime) that read the same
            input tensor quantize it once.
        fp_tokens: the first ``fp_tokens`` tokens of 3-D inputs skip activation quantization
            (kept in high precision, used for the text encoder's BOS token).
        weight_qmax: largest magnitude of the integer weight (8 bits: 127, or 64 where the
            backend is exact only with 7-bit weights; see :func:`.gemm.weight_level_for`).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        weight_bits: int = 8,
        act_bits: int | None = 8,
        group_size: int = 128,
        act_mode: str = "dynamic",
        num_ranges: int = 1,
        smooth: bool = False,
        bias_dtype: torch.dtype = torch.float32,
        backend: str = "auto",
        act_group: str = "",
        fp_tokens: int = 0,
        device: torch.device | str | None = None,
        weight_qmax: int | None = None,
    ) -> None:
        super().__init__()
        self.weight_bits = check_bits(weight_bits, "weight_bits", allow_none=False)
        self.act_bits = check_bits(act_bits, "act_bits")
        if self.act_bits == 4:
            raise ValueError("act_bits=4 is not supported (activations are 8-bit); use act_bits=8 or None.")
        if act_mode not in ACT_MODES:
            raise ValueError(f"act_mode must be one of {ACT_MODES}; got {act_mode!r}.")
        if act_mode == "static" and self.act_bits is None:
            raise ValueError("act_mode='static' needs act_bits=8 (weight-only layers have no activation scale).")
        if not isinstance(num_ranges, int) or num_ranges < 1:
            raise ValueError(f"num_ranges must be a positive integer; got {num_ranges!r}.")
        if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size <= 0 or group_size % 2:
            raise ValueError(f"group_size must be a positive even integer; got {group_size!r}.")
        from .gemm import check_backend_name

        self.backend = check_backend_name(backend)
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self.group_size = int(group_size)
        self.act_mode = act_mode
        self.num_ranges = num_ranges
        self.act_group = act_group
        self.fp_tokens = int(fp_tokens)
        full = 127 if self.weight_bits == 8 else 120
        self.weight_qmax = full if weight_qmax is None else int(weight_qmax)
        if self.weight_bits == 4 and self.weight_qmax != full or not 1 <= self.weight_qmax <= full:
            raise ValueError(f"weight_qmax must be in [1, 127] for 8-bit weights (4-bit weights: 120); "
                             f"got {weight_qmax!r}.")
        n, k = self.out_features, self.in_features
        if self.weight_bits == 8:
            self.register_buffer("qweight", torch.zeros(n, k, dtype=torch.int8, device=device))
            self.group_scale = None
        else:
            self.register_buffer("qweight", torch.zeros(n, (k + 1) // 2, dtype=torch.uint8, device=device))
            groups = math.ceil(k / self.group_size)
            self.register_buffer("group_scale", torch.ones(n, groups, dtype=torch.uint8, device=device))
        self.register_buffer("weight_scale", torch.ones(n, dtype=torch.float32, device=device))
        self.register_buffer("bias", torch.zeros(n, dtype=bias_dtype, device=device) if bias else None)
        self.register_buffer("inv_smooth", torch.ones(k, dtype=torch.float32, device=device) if smooth else None)
        if act_mode == "static":
            self.register_buffer("act_scale", torch.ones(num_ranges, dtype=torch.float32, device=device))
        else:
            self.act_scale = None
        # zero-byte float parameter: the float dtype / device of the layer it replaced (module docstring)
        self.dtype_anchor = torch.nn.Parameter(torch.empty(0, dtype=bias_dtype, device=device),
                                               requires_grad=False)
        self.activation: str | None = None  # GELU fused in the epilogue: "none" | "tanh" (see fuse.py)
        self._runtime: QuantRuntime | None = None
        self._packed = None  # (backend name, backend-specific execution copy of the weight), see gemm.py
        self._resolved = None  # (device, backend name) of the last call, see gemm.resolve_backend

    @property
    def compute_dtype(self) -> torch.dtype:
        """The float dtype of the layer it replaced (follows ``.to(dtype)``)."""
        return self.dtype_anchor.dtype

    # --- construction -------------------------------------------------------------------------
    @classmethod
    def from_linear(
        cls,
        linear: torch.nn.Linear,
        weight_bits: int = 8,
        act_bits: int | None = 8,
        group_size: int = 128,
        act_mode: str = "dynamic",
        smooth: torch.Tensor | None = None,
        act_scale: torch.Tensor | None = None,
        backend: str = "auto",
        act_group: str = "",
        fp_tokens: int = 0,
        weight_qmax: int | None = None,
    ) -> "QuantLinear":
        """Quantize a float ``nn.Linear``.

        Args:
            linear: the layer (left unchanged).
            smooth: optional ``(K,)`` channel-balancing factors ``s``: the weight is quantized as
                ``W * s`` and inputs are multiplied by ``1 / s``.
            act_scale: ``(R,)`` static activation scales (required when ``act_mode="static"``).
            weight_qmax: largest integer weight magnitude of 8-bit weights; ``None`` picks what the
                backend that will run on the weight's device multiplies exactly (127, or 64).
            Other arguments as in the constructor.
        """
        if not isinstance(linear, torch.nn.Linear):
            raise TypeError(f"from_linear expects a torch.nn.Linear, got {type(linear).__name__}.")
        weight = linear.weight.detach()
        k = weight.shape[1]
        if smooth is not None:
            smooth = smooth.detach().float().to(weight.device)
            if smooth.shape != (k,) or not bool((smooth > 0).all()):
                raise ValueError(f"smooth must be a positive ({k},) tensor; got shape {tuple(smooth.shape)}.")
        if act_mode == "static":
            if act_scale is None:
                raise ValueError("act_mode='static' needs calibrated act_scale; run calibration first.")
            act_scale = torch.as_tensor(act_scale, dtype=torch.float32).reshape(-1)
            if not bool((act_scale > 0).all()):
                raise ValueError("act_scale must be positive.")
        if weight_qmax is None and weight_bits == 8 and act_bits is not None:
            from .gemm import weight_level_for

            weight_qmax = weight_level_for(backend, weight.device)
        module = cls(
            k, weight.shape[0], bias=linear.bias is not None, weight_bits=weight_bits, act_bits=act_bits,
            group_size=group_size, act_mode=act_mode,
            num_ranges=1 if act_scale is None else int(act_scale.numel()), smooth=smooth is not None,
            bias_dtype=linear.weight.dtype, backend=backend,
            act_group=act_group, fp_tokens=fp_tokens, device=weight.device, weight_qmax=weight_qmax,
        )
        with torch.no_grad():
            # Output channels are quantized independently: a block of rows at a time keeps the float
            # temporaries small (quantizing a model must not need a float copy of each weight).
            rows = max(1, _BLOCK_ELEMENTS // max(1, k))
            for start in range(0, weight.shape[0], rows):
                block = weight[start:start + rows].float()
                if smooth is not None:
                    block = block * smooth
                end = start + block.shape[0]
                if module.weight_bits == 8:
                    q, scale = quantize_weight_per_channel(block, 8, module.weight_qmax)
                    module.qweight[start:end] = q
                else:
                    q4, z, scale = quantize_weight_groupwise(block, 4, group_size)
                    module.qweight[start:end] = pack_int4(q4)
                    module.group_scale[start:end] = z
                module.weight_scale[start:end] = scale
            if linear.bias is not None:
                module.bias.copy_(linear.bias.detach())
            if smooth is not None:
                module.inv_smooth.copy_(1.0 / smooth)
            if act_scale is not None:
                module.act_scale.copy_(act_scale)
        return module

    # --- weights ------------------------------------------------------------------------------
    def int_weight(self) -> torch.Tensor:
        """The exact integer weight as int8 ``(N, K)`` (``q`` for 8 bits, ``q4 * z`` for 4 bits)."""
        if self.weight_bits == 8:
            if self.qweight is None:  # held only in the backend's packed form
                from .gemm import unpack_execution_weight

                return unpack_execution_weight(self)
            return self.qweight
        return ops.int4_to_int8_weight(self.qweight, self.group_scale, self.in_features, self.group_size)

    @property
    def weight(self) -> torch.Tensor:
        """A zero-memory placeholder with the float weight's shape, dtype and device.

        Libraries read ``linear.weight.dtype`` / ``.device`` / ``.shape`` (e.g. to cast inputs); those
        stay correct. Its *values* are zeros, not the weight: use :meth:`dequantized_weight`.
        """
        return torch.zeros((), dtype=self.compute_dtype, device=self.weight_scale.device).expand(
            self.out_features, self.in_features)

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Float ``(N, K)`` weight the integers represent (smoothing factors still folded in)."""
        return (self.int_weight().float() * self.weight_scale[:, None]).to(dtype)

    def effective_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Float ``(N, K)`` weight seen by un-smoothed inputs (``dequantized * inv_smooth``)."""
        w = self.dequantized_weight(torch.float32)
        if self.inv_smooth is not None:
            w = w * self.inv_smooth
        return w.to(dtype)

    def memory_bytes(self) -> int:
        """Bytes of every tensor this module holds (buffers and the backend's packed weight)."""
        from .gemm import execution_weight_bytes

        total = sum(b.numel() * b.element_size() for b in self.buffers(recurse=False) if b is not None)
        return total + execution_weight_bytes(self)

    def weight_bits_per_param(self) -> float:
        """Average stored bits per weight, scales included."""
        return 8.0 * self.memory_bytes() / (self.in_features * self.out_features)

    # --- forward ------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"QuantLinear expected inputs with {self.in_features} features, got {tuple(x.shape)}.")
        if self.fp_tokens and x.dim() == 3 and x.shape[1] > self.fp_tokens:
            head = F.linear(x[:, : self.fp_tokens], self.effective_weight(x.dtype), _cast(self.bias, x.dtype))
            tail = self._forward_quantized(x[:, self.fp_tokens:])
            return torch.cat((self._activate(head), tail), dim=1)
        return self._forward_quantized(x)

    def _activate(self, y: torch.Tensor) -> torch.Tensor:
        return y if self.activation is None else F.gelu(y, approximate=self.activation)

    def _forward_quantized(self, x: torch.Tensor) -> torch.Tensor:
        from .gemm import run_linear

        lead = x.shape[:-1]
        if self.act_bits is None:
            return self._activate(F.linear(x, self.effective_weight(x.dtype), _cast(self.bias, x.dtype)))
        y = run_linear(self, x, x.dtype)
        return y.reshape(*lead, self.out_features)

    def _range_index(self) -> int:
        runtime = self._runtime
        return 0 if runtime is None else min(runtime.range_index, self.num_ranges - 1)

    def static_scale(self) -> torch.Tensor:
        """The 0-d static activation scale of the current timestep range (``act_mode="static"``)."""
        return self.act_scale[self._range_index()]

    def quantize_input(self, x: torch.Tensor, normalized: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """``(..., K)`` float → int8 ``(M, K)`` and a float32 scale (``(M, 1)`` or 0-d).

        With ``normalized=True`` (per-token mode only) the first tensor is ``x / scale`` as float32
        *before* rounding, for kernels that round while packing (its ``round`` gives the same integers).
        The cache of the shared runtime is keyed by ``x`` itself, so call this with the tensor the
        layer received (not a reshaped view, which is a new object each time).
        """
        runtime = self._runtime
        compiled = runtime.compile if runtime is not None else False
        key = f"{self.act_mode}:{self.act_group}"
        if self.act_mode == "static":
            index = self._range_index()
            scale = self.act_scale[index]
            key += f":{int(index)}"

            def quantize(t):
                return ops.quantize_static(t.reshape(-1, t.shape[-1]), scale, self.inv_smooth, compiled), scale
        elif normalized:
            key += ":normalized"

            def quantize(t):
                return ops.normalize_dynamic(t.reshape(-1, t.shape[-1]), self.inv_smooth, compiled)
        else:
            def quantize(t):
                return ops.quantize_dynamic(t.reshape(-1, t.shape[-1]), self.inv_smooth, compiled)

        if runtime is None:
            return quantize(x)
        return runtime.quantized_input(key, x, quantize)

    # --- device moves / state dict ------------------------------------------------------------
    def _apply(self, fn, recurse=True):
        from .gemm import release_execution_weight

        release_execution_weight(self)  # packed copies are device-specific; rebuilt lazily
        self._resolved = None
        out = super()._apply(fn, recurse)
        for name in ("weight_scale", "inv_smooth", "act_scale"):  # scales stay float32 under .to(dtype)
            buf = self._buffers.get(name)
            if buf is not None and buf.dtype != torch.float32:
                self._buffers[name] = buf.float()
        return out

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        destination.pop(prefix + "dtype_anchor", None)  # zero bytes, no information
        if self.qweight is None:
            destination[prefix + "qweight"] = self.int_weight()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        from .gemm import release_execution_weight

        release_execution_weight(self)
        self._resolved = None
        state_dict.setdefault(prefix + "dtype_anchor", self.dtype_anchor)  # never saved: keep ours
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        w = f"W{self.weight_bits}" + (f"(g{self.group_size})" if self.weight_bits == 4 else "")
        w += "" if self.weight_bits == 4 or self.weight_qmax == 127 else f"[±{self.weight_qmax}]"
        a = "A16" if self.act_bits is None else f"A{self.act_bits}({self.act_mode})"
        extra = ", smooth" if self.inv_smooth is not None else ""
        if self.activation is not None:
            extra += f", fused gelu({self.activation})"
        return (f"in_features={self.in_features}, out_features={self.out_features}, {w}{a}, "
                f"bias={self.bias is not None}, backend={self.backend}{extra}")


def _cast(t: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    return None if t is None else t.to(dtype)

