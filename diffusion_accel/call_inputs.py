"""What changes from one generated item to the next: a prompt, or per-item call arguments.

A text-to-image pipeline takes ``prompt=[...]``; a class-conditioned one (``DiTPipeline``) takes
``class_labels=[...]`` and no prompt. Every tool that calls a pipeline on a list of items --
activation calibration, the schedule search, the evaluation harness -- describes one item's inputs
as a prompt string or as a mapping of per-item call arguments, batches them with
:func:`batch_inputs`, and checks them against the pipeline with :func:`check_call_inputs` before
the first call.

Example:
    >>> batch_inputs(["a cat", "a dog"])
    {'prompt': ['a cat', 'a dog']}
    >>> batch_inputs([{"class_labels": 207}, {"class_labels": 360}])
    {'class_labels': [207, 360]}
    >>> input_label({"class_labels": 207})
    'class_labels=207'
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = ["accepts_call_arguments", "batch_inputs", "call_argument_default", "check_call_arguments",
           "check_call_inputs", "check_item_inputs", "input_label", "item_inputs"]

#: Call arguments a tool sets itself for every call (on top of the items' own inputs).
TOOL_ARGUMENTS = ("generator", "output_type")


def item_inputs(item: str | Mapping[str, Any]) -> dict[str, Any]:
    """One item's call arguments: ``{"prompt": item}`` for a string, a copy of a mapping."""
    if isinstance(item, str):
        return {"prompt": item}
    if isinstance(item, Mapping):
        if not item or not all(isinstance(k, str) for k in item):
            raise ValueError(f"Per-item call arguments must be a non-empty mapping with string keys, got {item!r}; "
                             "e.g. {'class_labels': 207}.")
        return dict(item)
    raise ValueError(f"An item is a prompt string or a mapping of per-item call arguments (e.g. "
                     f"{{'class_labels': 207}}), got {type(item).__name__} {item!r}.")


def check_item_inputs(items: Iterable[Any], what: str) -> list[str | dict[str, Any]]:
    """``items`` as a list of prompts and per-item argument dicts, each checked (``what`` names them)."""
    if isinstance(items, (str, Mapping)):
        raise ValueError(f"{what} must be a list of prompts (or of per-item call arguments), not one item.")
    out = []
    for i, item in enumerate(items):
        try:
            out.append(item if isinstance(item, str) else item_inputs(item))
        except ValueError as exc:
            raise ValueError(f"{what}[{i}]: {exc}") from None
    return out


def batch_inputs(items: Sequence[str | Mapping[str, Any]]) -> dict[str, list[Any]]:
    """The call arguments of one batch: each argument's per-item values as a list.

    Raises:
        ValueError: an empty batch, or items that set different arguments.
    """
    per_item = [item_inputs(item) for item in items]
    if not per_item:
        raise ValueError("A batch needs at least one item.")
    names = list(per_item[0])
    for i, inputs in enumerate(per_item[1:], 1):
        if set(inputs) != set(names):
            raise ValueError(f"The items of one batch must set the same call arguments: item 0 sets {sorted(names)}, "
                             f"item {i} sets {sorted(inputs)}.")
    return {name: [inputs[name] for inputs in per_item] for name in names}


def input_label(item: str | Mapping[str, Any]) -> str:
    """A readable one-line label of an item (its prompt, or ``name=value`` pairs)."""
    if isinstance(item, str):
        return item
    return ", ".join(f"{k}={v}" for k, v in item_inputs(item).items())


def accepts_call_arguments(pipe: Any, names: Iterable[str]) -> bool:
    """Whether ``pipe``'s call takes every argument in ``names`` (``**kwargs`` takes all)."""
    parameters = _call_parameters(type(pipe))
    return parameters is None or all(n in parameters for n in names)


def check_call_inputs(pipe: Any, names: Iterable[str], where: str) -> None:
    """Raise a ``ValueError`` naming the fix when ``pipe``'s call does not take every argument in ``names``.

    ``where`` names the inputs in the message (e.g. ``"the search's prompts"``). Pipelines whose
    ``__call__`` takes ``**kwargs`` accept every name.
    """
    if accepts_call_arguments(pipe, names):
        return
    parameters = _call_parameters(type(pipe))
    missing = [n for n in names if n not in parameters]
    item_like = [p for p in parameters if p not in ("self", "generator", "output_type", "return_dict",
                                                    "num_inference_steps", "guidance_scale")]
    hint = ("give text prompts" if "prompt" in parameters
            else f"give per-item call arguments instead, e.g. [{{{item_like[0]!r}: ...}}, ...]" if item_like
            else "check the pipeline's call arguments")
    raise ValueError(f"{type(pipe).__name__} takes no {missing} argument, which {where} set; {hint} "
                     f"(its call arguments: {[p for p in parameters if p != 'self']}).")


def check_call_arguments(pipe: Any, names: Iterable[str], where: str) -> None:
    """Raise a ``ValueError`` naming the valid ones when ``pipe``'s call takes not every argument in
    ``names`` (e.g. a misspelt key of ``--call-kwargs``, named by ``where``). The check is against the
    named parameters even when ``__call__`` also takes ``**kwargs`` (diffusers pipelines swallow
    unknown keys there, e.g. PixArt's); a ``__call__`` with no named parameter accepts every name."""
    call = _named_call(type(pipe))
    if call is None:
        return
    params = inspect.signature(call).parameters.values()
    parameters = [p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    unknown = sorted(n for n in set(names) if n not in parameters)
    if unknown:
        valid = sorted(p for p in parameters if p not in ("self", *TOOL_ARGUMENTS))
        raise ValueError(f"{where} sets {unknown}, which {type(pipe).__name__} does not take; its call "
                         f"arguments are {valid}.")


def call_argument_default(pipe: Any, name: str) -> Any:
    """The default value of ``pipe``'s call argument ``name`` (``None`` if it has none or is unknown).

    Example:
        >>> from diffusion_accel.testing import tiny_pipeline
        >>> call_argument_default(tiny_pipeline("pixart-alpha"), "num_inference_steps")
        20
    """
    call = _named_call(type(pipe))
    parameter = None if call is None else inspect.signature(call).parameters.get(name)
    return None if parameter is None or parameter.default is parameter.empty else parameter.default


def _named_call(pipeline_class: type) -> Any:
    """The first ``__call__`` in the MRO that names its arguments (not an ``(*args, **kwargs)`` wrapper)."""
    for klass in pipeline_class.__mro__:
        call = vars(klass).get("__call__")
        if call is None:
            continue
        params = inspect.signature(call).parameters.values()
        if [p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)] != ["self"]:
            return call
    return None


def _call_parameters(pipeline_class: type) -> list[str] | None:
    """Parameter names of the first ``__call__`` in the MRO that names its arguments (skipping
    ``(*args, **kwargs)`` wrappers such as the accelerated subclasses); ``None`` if it takes ``**kwargs``."""
    for klass in pipeline_class.__mro__:
        call = vars(klass).get("__call__")
        if call is None:
            continue
        params = inspect.signature(call).parameters.values()
        named = [p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        if named == ["self"]:
            continue  # a pass-through wrapper
        if any(p.kind is p.VAR_KEYWORD for p in params):
            return None
        return named
    return None
