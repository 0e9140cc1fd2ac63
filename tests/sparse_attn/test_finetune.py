"""finetune_sparse: distillation from the dense model on a tiny Wan pipeline."""

import pytest
import torch

import diffusion_accel
from diffusion_accel import AccelerationConfig
from diffusion_accel.sparse_attn import (
    FinetuneConfig,
    SparseAttentionConfig,
    finetune_sparse,
    load_finetuned,
    sparse_layers,
)
from diffusion_accel.sparse_attn.finetune import _distill_loss, _record_calls, dense_attention, trainable_parameters
from diffusion_accel.testing import tiny_call_kwargs, tiny_pipeline


def _pipe(method="sla", **extra):
    cfg = SparseAttentionConfig(method=method, density=0.25, block_q=16, block_k=16, **extra)
    return diffusion_accel.apply(tiny_pipeline("wan"), AccelerationConfig(attention=cfg))


def _kwargs():
    kw = tiny_call_kwargs("wan", num_inference_steps=2)
    del kw["prompt"]
    return kw


def _snapshot(pipe):
    state = {f"t.{n}": p.detach().clone() for n, p in pipe.transformer.named_parameters()}
    for layer in sparse_layers(pipe):
        if layer.proj is not None:
            state.update({f"{layer.name}.{n}": p.detach().clone() for n, p in layer.proj.named_parameters()})
    return state


def test_few_steps_lower_the_distillation_loss():
    pipe = _pipe()
    records = _record_calls(pipe, ["a cat"], _kwargs(), seed=0)
    before = float(_distill_loss(records, grad=False))
    res = finetune_sparse(pipe, ["a cat"], ["a dog"], FinetuneConfig(max_steps=6, batch=4, lr=1e-3), call_kwargs=_kwargs())
    after = float(_distill_loss(records, grad=False))
    assert before > 0
    assert after <= 0.8 * before  # trained on these very calls
    assert res.report["training"]["steps"] == 6
    assert res.report["before"]["distill_loss_heldout"] > 0


def test_proj_training_changes_only_the_projections(tmp_path):
    pipe = _pipe()
    before = _snapshot(pipe)
    res = finetune_sparse(pipe, ["a cat"], ["a dog"], FinetuneConfig(trainable="proj", max_steps=2, lr=1e-2),
                          call_kwargs=_kwargs(), out_dir=str(tmp_path))
    after = _snapshot(pipe)
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed
    assert all(not n.startswith("t.") for n in changed)  # the denoiser's own weights are untouched
    assert all(p.requires_grad for p in pipe.transformer.parameters())  # flags restored
    assert set(res.params) == set(trainable_parameters(pipe, "proj"))
    # saved with the config; loading into a fresh accelerated pipeline reproduces the trained tensors
    fresh = _pipe()
    assert load_finetuned(fresh, str(tmp_path)) == len(res.params)
    assert _snapshot(fresh).keys() == after.keys()
    assert all(torch.equal(_snapshot(fresh)[n], after[n]) for n in after)


def test_attention_training_touches_only_selected_attention_modules():
    pipe = _pipe(method="block_sparse", blocks=(0,))
    before = _snapshot(pipe)
    finetune_sparse(pipe, ["a cat"], ["a dog"], FinetuneConfig(max_steps=2, lr=1e-2), call_kwargs=_kwargs())
    after = _snapshot(pipe)
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed
    assert all(n.startswith("t.blocks.0.attn1.") for n in changed), sorted(changed)


def test_dense_attention_is_the_dense_model():
    pipe = _pipe()
    kw = {**_kwargs(), "prompt": "a cat"}
    with dense_attention(pipe):
        dense = pipe(**kw, generator=torch.Generator().manual_seed(0)).frames
    sparse = pipe(**kw, generator=torch.Generator().manual_seed(0)).frames
    diffusion_accel.remove(pipe)
    plain = pipe(**kw, generator=torch.Generator().manual_seed(0)).frames
    assert torch.equal(torch.as_tensor(dense), torch.as_tensor(plain))
    assert not torch.equal(torch.as_tensor(sparse), torch.as_tensor(plain))


def test_input_errors_name_the_fix():
    with pytest.raises(ValueError, match="trainable"):
        FinetuneConfig(trainable="everything")
    pipe = _pipe(method="block_sparse")
    with pytest.raises(ValueError, match="method='sla'"):
        finetune_sparse(pipe, ["a"], ["b"], FinetuneConfig(trainable="proj", max_steps=1), call_kwargs=_kwargs())
    with pytest.raises(ValueError, match="not in call_kwargs"):
        finetune_sparse(pipe, ["a"], ["b"], call_kwargs={**_kwargs(), "prompt": "x"})
    with pytest.raises(ValueError, match="diffusion_accel.apply"):
        finetune_sparse(tiny_pipeline("wan"), ["a"], ["b"], call_kwargs=_kwargs())
