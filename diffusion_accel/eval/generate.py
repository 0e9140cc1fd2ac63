"""Seeded, batched, resumable and multi-process image/video generation into a folder.

An evaluation run is a list of :class:`Item` (prompt, image index, seed). The seed of an item
depends only on the base seed, the prompt's index in its source and the image index, and every
item gets its own CPU ``torch.Generator``, so every configuration (and every device) sees the
same initial noise for the same item.

Items are grouped into fixed batches (``batch_size`` consecutive items). A batch is the unit of
work: it is always generated whole, so an item's pixels never depend on how a run was resumed or
split across processes. Batch ``b`` goes to process ``b % num_processes``.

Folder layout (``out_dir``)::

    images/<key>.png          one RGB image (H, W, 3) uint8, or
    images/<key>.npy          one video (F, H, W, 3) uint8 (numpy format)
    manifest.jsonl            one JSON record per finished item, sorted by key (main process)
    manifest.part-<rank>.jsonl  records appended while a process runs (merged at the end)

Files are written atomically and a record is appended only after its file is on disk, so a
killed run leaves finished items intact; a rerun skips every batch whose items are all recorded.

Example:
    >>> import torch, tempfile
    >>> from diffusion_accel.testing import tiny_pipeline, tiny_call_kwargs
    >>> from diffusion_accel.eval.prompts import load_prompts
    >>> pipe = tiny_pipeline("pixart-alpha")
    >>> kwargs = tiny_call_kwargs("pixart-alpha", height=32, width=32)
    >>> del kwargs["prompt"], kwargs["output_type"]
    >>> items = make_items(load_prompts(["a cat", "a dog"]), num_images=2, seed=0)
    >>> manifest = generate_images(pipe, items, tempfile.mkdtemp(), batch_size=2, call_kwargs=kwargs)
    >>> sorted(manifest)[:2]
    ['p00000-i00', 'p00000-i01']
"""

from __future__ import annotations

import functools
import io
import json
import os
import zlib
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from .._diffusers import progress_bar_disabled
from ..call_inputs import TOOL_ARGUMENTS, batch_inputs, item_inputs
from ..utils import atomic_write_bytes, atomic_write_text
from .prompts import Prompt

__all__ = [
    "Item",
    "check_item_call_kwargs",
    "distributed_state",
    "generate_images",
    "item_call_inputs",
    "item_seed",
    "load_arrays",
    "load_item_array",
    "make_batches",
    "make_items",
    "read_manifest",
    "to_uint8",
]

MANIFEST = "manifest.jsonl"
IMAGES_DIR = "images"


@dataclass(frozen=True)
class Item:
    """One output to generate: ``key`` names its file (``p<prompt index>-i<image index>``).

    ``prompt`` is the prompt, or the readable label of ``inputs``: the per-item call arguments of
    a pipeline without a text prompt (e.g. ``{"class_labels": 207}`` for DiT; see
    :mod:`diffusion_accel.call_inputs`).
    """

    key: str
    prompt_index: int
    image_index: int
    prompt: str
    seed: int
    inputs: dict[str, Any] | None = field(default=None, hash=False)

    def call_input(self) -> str | dict[str, Any]:
        """What this item contributes to a call: the prompt, or the per-item call arguments."""
        return self.prompt if self.inputs is None else self.inputs

    def record(self) -> dict[str, Any]:
        """The item's manifest fields (``inputs`` only when it has them)."""
        record = asdict(self)
        if self.inputs is None:
            del record["inputs"]
        return record


def item_call_inputs(batch: Iterable[Item]) -> dict[str, list[Any]]:
    """The per-item call arguments of one batch: ``{"prompt": [...]}`` or e.g. ``{"class_labels": [...]}``."""
    return batch_inputs([it.call_input() for it in batch])


def check_item_call_kwargs(items: Iterable[Item], call_kwargs: dict[str, Any], who: str) -> None:
    """ValueError if ``call_kwargs`` sets an argument the items or ``who`` set per call."""
    names = {name for it in items for name in item_inputs(it.call_input())}
    reserved = sorted((names | set(TOOL_ARGUMENTS)) & set(call_kwargs))
    if reserved:
        raise ValueError(f"call_kwargs must not set {reserved}: {who} sets them per item.")


def item_seed(seed: int, prompt_index: int, image_index: int) -> int:
    """The generator seed of one (prompt, image) pair: a 31-bit hash of the three integers."""
    return zlib.crc32(f"{int(seed)}/{int(prompt_index)}/{int(image_index)}".encode()) & 0x7FFFFFFF


def make_items(prompts: Iterable[Prompt], num_images: int = 1, seed: int = 0) -> list[Item]:
    """``num_images`` items per prompt, in prompt order. Raises ValueError for ``num_images < 1``."""
    if not isinstance(num_images, int) or num_images < 1:
        raise ValueError(f"num_images must be a positive integer, got {num_images!r}.")
    return [
        Item(f"p{p.index:05d}-i{i:02d}", p.index, i, p.text, item_seed(seed, p.index, i), p.inputs)
        for p in prompts
        for i in range(num_images)
    ]


def make_batches(items: list[Item], batch_size: int) -> list[list[Item]]:
    """Consecutive groups of ``batch_size`` items (the last may be shorter)."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    return [items[i : i + batch_size] for i in range(0, len(items), batch_size)]


def distributed_state(device: str | torch.device | None = None):
    """The ``accelerate.PartialState`` of this process (gloo on CPU, the usual backend on GPUs).

    Launch several processes with ``accelerate launch --multi_gpu --num_processes N`` (on a CPU-only
    machine too) or ``torchrun``; a plain ``python`` run is one process.
    """
    from accelerate import PartialState

    cpu = torch.device(device).type == "cpu" if device is not None else not torch.cuda.is_available()
    return PartialState(cpu=cpu)


def to_uint8(array: Any) -> np.ndarray:
    """Pipeline output (float in [0, 1], numpy/torch/PIL list) -> uint8 channels-last array.

    Shapes: ``(N, H, W, 3)`` for images, ``(N, F, H, W, 3)`` for videos (channels-first torch
    outputs ``(N, 3, H, W)`` / ``(N, F, 3, H, W)`` are transposed).
    """
    if isinstance(array, list):
        array = np.stack([to_uint8_single(a) for a in array])
        return array
    if torch.is_tensor(array):
        array = array.detach().float().cpu().numpy()
        if array.ndim >= 4 and array.shape[-3] in (1, 3) and array.shape[-1] not in (1, 3):
            array = np.moveaxis(array, -3, -1)
    array = np.asarray(array)
    if array.dtype == np.uint8:
        return array
    return np.round(np.clip(array.astype(np.float64), 0.0, 1.0) * 255.0).astype(np.uint8)


def to_uint8_single(value: Any) -> np.ndarray:
    if hasattr(value, "convert"):  # PIL image
        return np.asarray(value.convert("RGB"))
    if isinstance(value, list):  # list of PIL frames
        return np.stack([to_uint8_single(v) for v in value])
    return to_uint8(value)


def _encode(array: np.ndarray) -> tuple[str, bytes]:
    from PIL import Image

    buf = io.BytesIO()
    if array.ndim == 3:
        Image.fromarray(array, mode=None).save(buf, format="PNG")
        return ".png", buf.getvalue()
    np.save(buf, array, allow_pickle=False)
    return ".npy", buf.getvalue()


def load_item_array(path: str | os.PathLike) -> np.ndarray:
    """Read one stored output: ``(H, W, 3)`` uint8 from a PNG, ``(F, H, W, 3)`` from a ``.npy``."""
    path = os.fspath(path)
    if path.endswith(".npy"):
        return np.load(path, allow_pickle=False)
    from PIL import Image

    with Image.open(path) as img:
        return np.array(img.convert("RGB"))


def read_manifest(out_dir: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """Finished items of ``out_dir``: key -> record, from the merged manifest and every part file.

    A record counts only when its file exists; a truncated last line (a killed writer) is ignored.
    """
    out_dir = os.fspath(out_dir)
    records: dict[str, dict[str, Any]] = {}
    if not os.path.isdir(out_dir):
        return records
    names = sorted(n for n in os.listdir(out_dir) if n == MANIFEST or (n.startswith("manifest.part-")
                                                                       and n.endswith(".jsonl")))
    for name in names:
        with open(os.path.join(out_dir, name), encoding="utf-8") as fh:
            for line in fh:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if (isinstance(record, dict) and "key" in record and "file" in record
                        and os.path.exists(os.path.join(out_dir, record["file"]))):
                    records[record["key"]] = record
    return records


def load_arrays(out_dir: str | os.PathLike, keys: list[str], manifest: dict | None = None) -> np.ndarray:
    """Stack the stored outputs of ``keys`` (in that order): ``(N, H, W, 3)`` or ``(N, F, H, W, 3)``.
    ``manifest``: the folder's :func:`read_manifest`, when already read."""
    manifest = read_manifest(out_dir) if manifest is None else manifest
    missing = [k for k in keys if k not in manifest]
    if missing:
        raise ValueError(f"{os.fspath(out_dir)!r} lacks {len(missing)} item(s), e.g. {missing[:3]}; "
                         "generate them first (rerun with --resume).")
    return np.stack([load_item_array(os.path.join(out_dir, manifest[k]["file"])) for k in keys])


def generate_images(
    pipe: Any,
    items: list[Item],
    out_dir: str | os.PathLike,
    *,
    batch_size: int = 1,
    call_kwargs: dict[str, Any] | None = None,
    progress: bool = True,
    desc: str | None = None,
    state: Any = None,
    wrap_first_batch: Callable[[Callable[[], np.ndarray]], np.ndarray] | None = None,
) -> dict[str, dict[str, Any]]:
    """Generate the items of ``items`` that ``out_dir`` lacks; return the manifest of all items.

    Args:
        pipe: a diffusers pipeline (called with the batch's inputs -- ``prompt=[...]`` or per-item
            arguments such as ``class_labels=[...]`` -- ``generator=[...]``, ``output_type="np"``
            and ``call_kwargs``).
        items: from :func:`make_items`.
        out_dir: output folder (created).
        batch_size: items per pipeline call.
        call_kwargs: further pipeline arguments (steps, guidance, size, ...); must not set the
            items' inputs (``prompt``...), ``generator`` or ``output_type``.
        progress: show a tqdm bar (main process only).
        desc: progress-bar label.
        state: an ``accelerate.PartialState``; default :func:`distributed_state` for the pipeline's
            device. With several processes, batches are split across them and the records are
            gathered on the main process, which writes ``manifest.jsonl``.
        wrap_first_batch: called as ``wrap_first_batch(run)`` instead of ``run()`` for the first
            batch of ``items`` when this process generates it now (the evaluation harness counts
            that call's MACs this way instead of running it once more).

    Returns:
        key -> manifest record (``key``, ``prompt_index``, ``image_index``, ``prompt``, ``seed``,
        ``file``, ``shape``, ``process``: the rank that generated it) on every process.
    """
    call_kwargs = dict(call_kwargs or {})
    check_item_call_kwargs(items, call_kwargs, "the generator")
    keys = [it.key for it in items]
    if len(set(keys)) != len(keys):
        raise ValueError("Items have duplicate keys; build them with make_items().")
    out_dir = os.fspath(out_dir)
    state = state if state is not None else distributed_state(getattr(pipe, "device", None))
    rank, world = state.process_index, state.num_processes
    os.makedirs(os.path.join(out_dir, IMAGES_DIR), exist_ok=True)

    done = read_manifest(out_dir)
    batches = make_batches(items, batch_size)
    mine = [b for i, b in enumerate(batches) if i % world == rank]
    todo = [b for b in mine if not all(it.key in done for it in b)]

    from tqdm.auto import tqdm

    bar = tqdm(total=len(mine), initial=len(mine) - len(todo), desc=desc, unit="batch",
               disable=not (progress and state.is_main_process), dynamic_ncols=True)
    part = os.path.join(out_dir, f"manifest.part-{rank}.jsonl")
    try:
        with progress_bar_disabled(pipe):
            for batch in todo:
                run = functools.partial(_run_batch, pipe, batch, call_kwargs)
                first = wrap_first_batch is not None and batch is batches[0]
                _write_batch(out_dir, part, batch, wrap_first_batch(run) if first else run(), done, rank)
                bar.update(1)
    finally:
        bar.close()

    return _gather_manifest(out_dir, items, done, state)


def _write_batch(out_dir: str, part: str, batch: list[Item], arrays: np.ndarray, done: dict, rank: int) -> None:
    """Write a generated batch's files, then append its records to this process's manifest part."""
    lines = []
    for item, array in zip(batch, arrays):
        ext, data = _encode(array)
        rel = f"{IMAGES_DIR}/{item.key}{ext}"
        if item.key not in done:
            atomic_write_bytes(os.path.join(out_dir, rel), data)
        record = {**item.record(), "file": rel, "shape": list(array.shape), "process": rank}
        done[item.key] = record
        lines.append(json.dumps(record))
    _append_lines(part, lines)


def _run_batch(pipe: Any, batch: list[Item], call_kwargs: dict[str, Any]) -> np.ndarray:
    generators = [torch.Generator("cpu").manual_seed(it.seed) for it in batch]
    # no_grad as diffusers itself; inference_mode would break techniques that track tensor versions.
    with torch.no_grad():
        out = pipe(**item_call_inputs(batch), generator=generators, output_type="np", **call_kwargs)
    values = getattr(out, "frames", None)
    if values is None:
        values = getattr(out, "images", None)
    if values is None:
        raise TypeError(f"{type(pipe).__name__} returned {type(out).__name__} without .images or .frames.")
    arrays = to_uint8(values)
    if len(arrays) != len(batch):
        raise ValueError(f"{type(pipe).__name__} returned {len(arrays)} outputs for {len(batch)} prompts; "
                         "do not pass num_images_per_prompt in call_kwargs (use num_images).")
    return arrays


def _append_lines(path: str, lines: list[str]) -> None:
    # One write per batch, flushed to disk; a killed process leaves at most one partial last line,
    # which read_manifest ignores.
    with open(path, "a", encoding="utf-8") as fh:
        fh.write("".join(line + "\n" for line in lines))
        fh.flush()
        os.fsync(fh.fileno())


def _gather_manifest(out_dir: str, items: list[Item], done: dict, state: Any) -> dict[str, dict[str, Any]]:
    from accelerate.utils import gather_object

    keys = {it.key for it in items}
    local = [r for k, r in done.items() if k in keys]
    records = gather_object(local) if state.num_processes > 1 else local
    merged = {r["key"]: r for r in records}
    if state.is_main_process:
        everything = read_manifest(out_dir)
        everything.update(merged)
        text = "".join(json.dumps(everything[k]) + "\n" for k in sorted(everything))
        atomic_write_text(os.path.join(out_dir, MANIFEST), text)
        for name in os.listdir(out_dir):
            if name.startswith("manifest.part-") and name.endswith(".jsonl"):
                os.unlink(os.path.join(out_dir, name))
    state.wait_for_everyone()
    missing = sorted(keys - set(merged))
    if missing:
        raise RuntimeError(f"Generation finished without {len(missing)} item(s), e.g. {missing[:3]}.")
    return {k: merged[k] for k in sorted(merged)}
