"""Prompt sets for evaluation: text, CSV/TSV, JSON/JSONL files or the bundled benchmark prompts.

Every prompt keeps its position in the source file (``Prompt.index``); generation derives the
noise seed from that index, so a sampled subset of a file sees the same noise for the same
prompt as the full file.

Formats (chosen by file extension):

* ``.txt`` (or any other extension): one prompt per line; blank lines are skipped.
* ``.csv`` / ``.tsv``: a header row; the prompt column is ``column`` (default: the first of
  ``Prompt``, ``prompt``, ``text``, ``caption``), the category column ``Category``/``category``.
  The PartiPrompts file (``PartiPrompts.tsv``) is of this kind.
* ``.json``: a list of strings or of objects (``{"prompt": ..., "category": ...}``), or an object
  ``{"prompts": [...]}``.
* ``.jsonl``: one string or object per line.
* For pipelines without a text prompt (class-conditioned DiT), an entry of a JSON/JSONL file may be
  ``{"inputs": {"class_labels": 207}, "category": ...}`` and an entry of an in-memory list a
  mapping ``{"class_labels": 207}``: per-item call arguments (:mod:`diffusion_accel.call_inputs`);
  ``Prompt.text`` is then their label (``"class_labels=207"``).
* ``"benchmark"`` / ``"benchmark:heldout"`` / ``"benchmark:train"``: the captions of the bundled
  benchmark model (default split: ``heldout``).

Example:
    >>> import pathlib, tempfile
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "p.tsv"
    >>> _ = path.write_text("Prompt\\tCategory\\na red cat\\tAnimals\\na tall tower\\tArchitecture\\n")
    >>> [p.text for p in load_prompts(path, categories=["Animals"])]
    ['a red cat']
"""

from __future__ import annotations

import csv
import json
import os
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..assets.bundled import bundled_prompt_source
from ..call_inputs import input_label, item_inputs

__all__ = ["BENCHMARK", "Prompt", "load_prompts"]

#: The name that selects the bundled benchmark prompts (optionally ``benchmark:<split>``).
BENCHMARK = "benchmark"

_PROMPT_COLUMNS = ("Prompt", "prompt", "text", "caption")
_CATEGORY_COLUMNS = ("Category", "category")


@dataclass(frozen=True)
class Prompt:
    """One prompt: its text, its position in the source, and its category (or ``None``).

    ``inputs``: per-item call arguments instead of a text prompt (e.g. ``{"class_labels": 207}``),
    with ``text`` their label; ``None`` for a text prompt.
    """

    text: str
    index: int
    category: str | None = None
    inputs: dict[str, Any] | None = field(default=None, hash=False)


def load_prompts(
    source: str | os.PathLike | Iterable[str],
    *,
    column: str | None = None,
    category_column: str | None = None,
    categories: Iterable[str] | None = None,
    num: int | None = None,
    seed: int = 0,
    names: Mapping[str, str] | None = None,
) -> list[Prompt]:
    """Read prompts, filter by category, then sample ``num`` of them (seeded, order kept).

    Args:
        source: a file path, ``"benchmark[:split]"``, or an in-memory list of strings (or of
            mappings of per-item call arguments, for pipelines without a text prompt).
        column: prompt column of a CSV/TSV/JSON-objects file (default: auto-detected).
        category_column: category column (default: ``Category``/``category`` when present).
        categories: keep only prompts of these categories (needs a category column).
        num: sample this many prompts (without replacement, ``random.Random(seed)``); ``None``
            keeps all. The sampled prompts stay in source order.
        seed: sampling seed.
        names: how the caller names ``category_column`` and ``num`` in error messages (a command
            line passes its flags, e.g. ``{"num": "--num-prompts"}``; default ``category_column=``, ``num=``).

    Returns:
        ``list[Prompt]`` (non-empty).

    Raises:
        ValueError: missing file or column, empty prompt set, no prompt in the categories,
            ``num`` not a positive integer or more than the prompts there are.
    """
    names = {"category_column": "category_column=", "num": "num=", **(names or {})}
    prompts = _read(source, column, category_column)
    label = _label(source)
    if not prompts:
        raise ValueError(f"The prompt source {label} holds no prompts; give a file with at least one prompt.")
    if categories is not None:
        wanted = {str(c) for c in categories}
        present = sorted({p.category for p in prompts if p.category is not None})
        if not present:
            raise ValueError(
                f"A category filter was given but {label} has no category column; "
                f"drop the filter or name the column with {names['category_column']}."
            )
        unknown = sorted(wanted - set(present))
        if unknown:
            raise ValueError(f"Unknown categor{'y' if len(unknown) == 1 else 'ies'} {unknown} in {label}; "
                             f"the categories are {present}.")
        prompts = [p for p in prompts if p.category in wanted]
    if num is not None:
        if not isinstance(num, int) or num < 1:
            raise ValueError(f"{_given(names['num'], num)}: must be a positive integer.")
        if num > len(prompts):
            where = label if categories is None else f"{label} in the categories {sorted(map(str, categories))}"
            raise ValueError(f"{_given(names['num'], num)} asks for {num} prompts but {where} holds only "
                             f"{len(prompts)}; ask for at most {len(prompts)}, or leave "
                             f"{names['num'].rstrip('=')} out to use them all.")
        if num < len(prompts):
            chosen = sorted(random.Random(seed).sample(range(len(prompts)), num))
            prompts = [prompts[i] for i in chosen]
    return prompts


def _given(name: str, value: Any) -> str:
    """``--flag 3`` or ``keyword=3``: how the caller wrote the option ``name``."""
    return f"{name}{value!r}" if name.endswith("=") else f"{name} {value!r}"


def _label(source: Any) -> str:
    return repr(os.fspath(source)) if isinstance(source, (str, os.PathLike)) else "(in-memory list)"


def _read(source: Any, column: str | None, category_column: str | None) -> list[Prompt]:
    if isinstance(source, (str, os.PathLike)):
        text = os.fspath(source)
        bundled = bundled_prompt_source(text)
        if bundled is not None:
            model, split = bundled
            return _make(list(model.prompts(split)), None)
        return _read_file(text, column, category_column)
    if isinstance(source, Iterable) and not isinstance(source, Mapping):
        items = list(source)
        if not all(isinstance(s, (str, Mapping)) for s in items):
            raise TypeError("An in-memory prompt list must hold strings (or mappings of per-item call arguments, "
                            "e.g. {'class_labels': 207}).")
        return _make(items, None)
    raise TypeError(f"Prompt source must be a path, 'benchmark[:split]' or a list of strings, got {source!r}.")


def _read_file(path: str, column: str | None, category_column: str | None) -> list[Prompt]:
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            text = fh.read()
    except OSError as exc:
        raise ValueError(f"Cannot read prompt file {path!r}: {exc.strerror or exc}.") from exc
    except UnicodeDecodeError as exc:
        raise ValueError(f"Prompt file {path!r} is not UTF-8 text: {exc}.") from exc
    ext = os.path.splitext(path)[1].lower()
    if ext in (".csv", ".tsv"):
        return _read_table(path, text, "\t" if ext == ".tsv" else ",", column, category_column)
    if ext == ".json":
        try:
            data = json.loads(text) if text.strip() else []
        except json.JSONDecodeError as exc:
            raise ValueError(f"Prompt file {path!r} is not valid JSON: {exc}.") from exc
        if isinstance(data, dict):
            if "prompts" not in data:
                raise ValueError(f"Prompt file {path!r}: a JSON object needs a 'prompts' list.")
            data = data["prompts"]
        if not isinstance(data, list):
            raise ValueError(f"Prompt file {path!r}: expected a JSON list of prompts.")
        return _from_records(path, data, column, category_column)
    if ext == ".jsonl":
        records = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise ValueError(f"Prompt file {path!r}, line {lineno}: not valid JSON: {exc}.") from exc
        return _from_records(path, records, column, category_column)
    return _make([line.strip() for line in text.splitlines()], None)


def _read_table(path: str, text: str, delimiter: str, column: str | None, category_column: str | None):
    rows = list(csv.DictReader(text.splitlines(), delimiter=delimiter))
    header = list(rows[0].keys()) if rows else next(csv.reader(text.splitlines(), delimiter=delimiter), [])
    if not header:
        return []
    prompt_col = _pick(path, header, column, _PROMPT_COLUMNS, "prompt")
    cat_col = _pick(path, header, category_column, _CATEGORY_COLUMNS, "category", required=False)
    texts = [(row.get(prompt_col) or "").strip() for row in rows]
    cats = [(row.get(cat_col) or "").strip() or None for row in rows] if cat_col else None
    return _make(texts, cats)


def _from_records(path: str, records: list, column: str | None, category_column: str | None) -> list[Prompt]:
    if all(isinstance(r, str) for r in records):
        return _make([r.strip() for r in records], None)
    if not all(isinstance(r, dict) for r in records):
        raise ValueError(f"Prompt file {path!r}: entries must all be strings or all be objects.")
    if records and all("inputs" in r for r in records):
        return _input_records(path, records, category_column)
    keys = list(dict.fromkeys(k for r in records for k in r))
    prompt_col = _pick(path, keys, column, _PROMPT_COLUMNS, "prompt")
    cat_col = _pick(path, keys, category_column, _CATEGORY_COLUMNS, "category", required=False)
    for i, r in enumerate(records):
        if not isinstance(r.get(prompt_col), str):
            raise ValueError(f"Prompt file {path!r}: entry {i} has no string {prompt_col!r} field.")
    texts = [r[prompt_col].strip() for r in records]
    cats = [str(r[cat_col]) if r.get(cat_col) is not None else None for r in records] if cat_col else None
    return _make(texts, cats)


def _input_records(path: str, records: list[dict], category_column: str | None) -> list[Prompt]:
    """Entries ``{"inputs": {per-item call arguments}, "category": ...}``."""
    cat_col = _pick(path, list(dict.fromkeys(k for r in records for k in r)), category_column, _CATEGORY_COLUMNS,
                    "category", required=False)
    inputs = []
    for i, r in enumerate(records):
        try:
            inputs.append(item_inputs(r["inputs"]) if isinstance(r["inputs"], Mapping) else item_inputs(None))
        except ValueError as exc:
            raise ValueError(f"Prompt file {path!r}, entry {i}: 'inputs' must be an object of call arguments: "
                             f"{exc}") from None
    cats = [str(r[cat_col]) if r.get(cat_col) is not None else None for r in records] if cat_col else None
    return _make(inputs, cats)


def _pick(path: str, header: list[str], wanted: str | None, defaults: tuple[str, ...], what: str,
          required: bool = True) -> str | None:
    if wanted is not None:
        if wanted not in header:
            raise ValueError(f"Prompt file {path!r} has no {what} column {wanted!r}; its columns are {header}.")
        return wanted
    for name in defaults:
        if name in header:
            return name
    if required:
        raise ValueError(
            f"Prompt file {path!r} has no {what} column (looked for {list(defaults)}); its columns are "
            f"{header}. Name the column with --prompt-column / column=."
        )
    return None


def _make(entries: list[str | Mapping[str, Any]], categories: list[str | None] | None) -> list[Prompt]:
    """Prompts from texts (blank ones skipped, their index kept) or mappings of per-item call arguments."""
    return [
        Prompt(text=input_label(e), index=i, category=None if categories is None else categories[i],
               inputs=None if isinstance(e, str) else item_inputs(e))
        for i, e in enumerate(entries)
        if e
    ]
