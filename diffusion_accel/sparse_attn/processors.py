"""diffusers attention processors that route self/joint attention through a :class:`SparseLayer`.

Each processor computes q, k, v exactly as the model's own processor does (projections, qk-norms,
rotary embeddings, text/image concatenation order), calls ``layer.attend`` in
``(batch, heads, seq, head_dim)`` layout, and finishes like the original (output projections,
stream split). Calls that are plain dense (dense steps, excluded blocks) and calls it cannot
handle (cross-attention through a self-attention processor) go to the original processor.
Attention masks on a sparsified layer raise a ``ValueError`` (they are not supported yet).

Processors are chosen by the class of the processor they replace (a registry):

==============================  ==================================  ======================
original processor              models                              text tokens
==============================  ==================================  ======================
``AttnProcessor2_0``            PixArt ``attn1``, SD1.5 ``attn1``   none (self-attention)
``JointAttnProcessor2_0``       SD3 ``attn`` (and SD3.5 ``attn2``)  after the image tokens
``FluxAttnProcessor``           Flux double and single blocks       before the image tokens
``CogVideoXAttnProcessor2_0``   CogVideoX ``attn1``                 before the video tokens
``WanAttnProcessor``            Wan ``attn1``                       none (self-attention)
==============================  ==================================  ======================

Example:
    >>> from diffusion_accel.sparse_attn.processors import SPARSE_PROCESSORS
    >>> sorted(cls.__name__ for cls in SPARSE_PROCESSORS)[:2]
    ['AttnProcessor2_0', 'CogVideoXAttnProcessor2_0']
"""

from __future__ import annotations

import torch
from diffusers.models.attention_processor import (
    AttnProcessor2_0,
    CogVideoXAttnProcessor2_0,
    JointAttnProcessor2_0,
)
from diffusers.models.embeddings import apply_rotary_emb
from diffusers.models.transformers.transformer_flux import FluxAttnProcessor
from diffusers.models.transformers.transformer_flux import _get_qkv_projections as _flux_qkv
from diffusers.models.transformers.transformer_wan import WanAttnProcessor
from diffusers.models.transformers.transformer_wan import _get_qkv_projections as _wan_qkv

from .layer import SparseLayer, TokenLayout

__all__ = [
    "SPARSE_PROCESSORS",
    "CogVideoXSparseProcessor",
    "FluxSparseProcessor",
    "JointSparseProcessor",
    "SelfAttentionSparseProcessor",
    "SparseProcessor",
    "WanSparseProcessor",
    "register_sparse_processor",
    "sparse_processor_for",
]


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """``(B, S, H*D) -> (B, H, S, D)``."""
    return x.unflatten(-1, (heads, -1)).transpose(1, 2)


#: attribute names of (query, key, value projections, query and key norms): of the tokens, of the added (text) tokens
_QKV = ("to_q", "to_k", "to_v", "norm_q", "norm_k")
_ADDED_QKV = ("add_q_proj", "add_k_proj", "add_v_proj", "norm_added_q", "norm_added_k")


def _normed_heads(attn, x: torch.Tensor, names: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(q, k, v)`` ``(B, H, S, D)``: ``x`` through ``attn``'s projections ``names[:3]``, split into heads;
    q and k through the norms ``names[3:]`` where ``attn`` has them (not ``None``)."""
    q, k, v = (_heads(getattr(attn, name)(x), attn.heads) for name in names[:3])
    norm_q, norm_k = getattr(attn, names[3]), getattr(attn, names[4])
    if norm_q is not None:
        q = norm_q(q)
    if norm_k is not None:
        k = norm_k(k)
    return q, k, v


def _merge(x: torch.Tensor) -> torch.Tensor:
    """``(B, H, S, D) -> (B, S, H*D)``."""
    return x.transpose(1, 2).flatten(2)


def _no_mask(layer: SparseLayer, attention_mask) -> None:
    if attention_mask is not None:
        raise ValueError(
            f"Sparse attention in {layer.name} received an attention_mask, which it does not support yet. "
            f"Keep this block dense with SparseAttentionConfig(dense_blocks=({layer.block_index},)) or "
            "call the pipeline without the mask."
        )


class SparseProcessor:
    """Base: holds the layer policy and the processor it replaced (restored by ``remove``)."""

    _attention_backend = None
    _parallel_config = None

    def __init__(self, layer: SparseLayer, original) -> None:
        self.layer = layer
        self.original = original


class SelfAttentionSparseProcessor(SparseProcessor):
    """Replaces ``AttnProcessor2_0`` in self-attention (PixArt ``attn1``, UNet ``attn1``)."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs):
        if encoder_hidden_states is not None or self.layer.use_original():
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        _no_mask(self.layer, attention_mask)
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        q, k, v = _normed_heads(attn, hidden_states, _QKV)
        out = _merge(self.layer.attend(q, k, v, TokenLayout())).to(q.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if input_ndim == 4:
            out = out.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


class JointSparseProcessor(SparseProcessor):
    """Replaces SD3's ``JointAttnProcessor2_0``: image tokens, then text tokens (kept dense)."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, *args, **kwargs):
        if self.layer.use_original():
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, *args, **kwargs)
        _no_mask(self.layer, attention_mask)
        n_img = hidden_states.shape[1]
        q, k, v = _normed_heads(attn, hidden_states, _QKV)
        layout = TokenLayout(span=(0, n_img))
        if encoder_hidden_states is not None:
            cq, ck, cv = _normed_heads(attn, encoder_hidden_states, _ADDED_QKV)
            q, k, v = torch.cat([q, cq], 2), torch.cat([k, ck], 2), torch.cat([v, cv], 2)
            layout = TokenLayout(dense_tokens=((n_img, q.shape[2]),), span=(0, n_img))
        out = _merge(self.layer.attend(q, k, v, layout)).to(q.dtype)
        if encoder_hidden_states is not None:
            out, context = out[:, :n_img], out[:, n_img:]
            if not attn.context_pre_only:
                context = attn.to_add_out(context)
        out = attn.to_out[1](attn.to_out[0](out))
        return (out, context) if encoder_hidden_states is not None else out


class FluxSparseProcessor(SparseProcessor):
    """Replaces ``FluxAttnProcessor``: text tokens first (single blocks learn their count from the call)."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        if self.layer.use_original():
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
        _no_mask(self.layer, attention_mask)
        q, k, v, eq, ek, ev = _flux_qkv(attn, hidden_states, encoder_hidden_states)
        q, k, v = (t.unflatten(-1, (-1, attn.head_dim)) for t in (q, k, v))  # (B, S, H, D)
        q, k = attn.norm_q(q), attn.norm_k(k)
        if attn.added_kv_proj_dim is not None:
            eq, ek, ev = (t.unflatten(-1, (-1, attn.head_dim)) for t in (eq, ek, ev))
            eq, ek = attn.norm_added_q(eq), attn.norm_added_k(ek)
            q, k, v = torch.cat([eq, q], 1), torch.cat([ek, k], 1), torch.cat([ev, v], 1)
        if image_rotary_emb is not None:
            q = apply_rotary_emb(q, image_rotary_emb, sequence_dim=1)
            k = apply_rotary_emb(k, image_rotary_emb, sequence_dim=1)
        if encoder_hidden_states is not None:
            n_txt = encoder_hidden_states.shape[1]
        else:
            context = self.layer._context() if self.layer._context is not None else None
            n_txt = (context.text_tokens if context is not None else None) or 0
        seq = q.shape[1]
        layout = TokenLayout(dense_tokens=((0, n_txt),) if n_txt else (), span=(n_txt, seq))
        out = self.layer.attend(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), layout)
        out = _merge(out).to(q.dtype)
        if encoder_hidden_states is not None:
            context, out = out.split_with_sizes([n_txt, seq - n_txt], dim=1)
            out = attn.to_out[1](attn.to_out[0](out.contiguous()))
            return out, attn.to_add_out(context.contiguous())
        return out


class CogVideoXSparseProcessor(SparseProcessor):
    """Replaces ``CogVideoXAttnProcessor2_0``: text tokens first, rotary on the video tokens."""

    def __call__(self, attn, hidden_states, encoder_hidden_states, attention_mask=None, image_rotary_emb=None):
        if self.layer.use_original():
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
        _no_mask(self.layer, attention_mask)
        n_txt = encoder_hidden_states.shape[1]
        x = torch.cat([encoder_hidden_states, hidden_states], dim=1)
        q, k, v = _normed_heads(attn, x, _QKV)
        if image_rotary_emb is not None:
            q = torch.cat([q[:, :, :n_txt], apply_rotary_emb(q[:, :, n_txt:], image_rotary_emb)], 2)
            if not attn.is_cross_attention:
                k = torch.cat([k[:, :, :n_txt], apply_rotary_emb(k[:, :, n_txt:], image_rotary_emb)], 2)
        layout = TokenLayout(dense_tokens=((0, n_txt),), span=(n_txt, x.shape[1]))
        out = _merge(self.layer.attend(q, k, v, layout))
        out = attn.to_out[1](attn.to_out[0](out))
        context, out = out.split([n_txt, out.shape[1] - n_txt], dim=1)
        return out, context


def _wan_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Wan's interleaved rotary embedding on ``(B, S, H, D)`` (pairs are (even, odd) channels)."""
    even, odd = x[..., 0::2], x[..., 1::2]
    c, s = cos[..., 0::2], sin[..., 1::2]
    return torch.stack([even * c - odd * s, even * s + odd * c], dim=-1).flatten(-2).type_as(x)


class WanSparseProcessor(SparseProcessor):
    """Replaces ``WanAttnProcessor`` in Wan's video self-attention ``attn1``."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        if encoder_hidden_states is not None or attn.add_k_proj is not None or self.layer.use_original():
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb)
        _no_mask(self.layer, attention_mask)
        q, k, v = _wan_qkv(attn, hidden_states, None)
        q, k = attn.norm_q(q), attn.norm_k(k)
        q, k, v = (t.unflatten(2, (attn.heads, -1)) for t in (q, k, v))  # (B, S, H, D)
        if rotary_emb is not None:
            q, k = _wan_rotary(q, *rotary_emb), _wan_rotary(k, *rotary_emb)
        out = self.layer.attend(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), TokenLayout())
        out = _merge(out).type_as(q)
        return attn.to_out[1](attn.to_out[0](out))


#: class of the processor being replaced -> sparse processor class
SPARSE_PROCESSORS: dict[type, type[SparseProcessor]] = {
    AttnProcessor2_0: SelfAttentionSparseProcessor,
    JointAttnProcessor2_0: JointSparseProcessor,
    FluxAttnProcessor: FluxSparseProcessor,
    CogVideoXAttnProcessor2_0: CogVideoXSparseProcessor,
    WanAttnProcessor: WanSparseProcessor,
}


def register_sparse_processor(original_cls: type, sparse_cls: type[SparseProcessor]) -> None:
    """Teach sparse attention a new model: ``original_cls`` processors get replaced by ``sparse_cls``."""
    if not (isinstance(sparse_cls, type) and issubclass(sparse_cls, SparseProcessor)):
        raise TypeError(f"sparse_cls must subclass SparseProcessor; got {sparse_cls!r}.")
    SPARSE_PROCESSORS[original_cls] = sparse_cls


def sparse_processor_for(name: str, original) -> type[SparseProcessor]:
    """The sparse processor class replacing ``original`` (ValueError naming the fix if none)."""
    for klass in type(original).__mro__:
        if klass in SPARSE_PROCESSORS:
            return SPARSE_PROCESSORS[klass]
    raise ValueError(
        f"Sparse attention does not know the attention processor {type(original).__name__} of {name}. "
        f"Known processors: {sorted(c.__name__ for c in SPARSE_PROCESSORS)}. Restore the model's default "
        "processors, or register one with diffusion_accel.sparse_attn.processors.register_sparse_processor()."
    )
