"""Mixed-precision plan: which weight bit width each linear layer gets.

A plan maps module names (relative to the denoiser, e.g. ``"transformer_blocks.3.attn2.to_k"``)
to a bit width: 4, 8, or ``None`` (keep full precision). A name is resolved by

1. an exact-name rule,
2. else the first ``"re:<pattern>"`` rule (in insertion order) whose pattern ``re.fullmatch``-es
   the name,
3. else ``default``.

Plans are plain JSON (``{"format": ..., "version": 1, "default": 8, "rules": {...}}``).

Example:
    >>> plan = QuantPlan.from_mapping({"proj_out": None, "re:.*attn2\\..*": 8}, default=4)
    >>> plan.bits_for("proj_out"), plan.bits_for("transformer_blocks.0.attn2.to_k"), plan.bits_for("x")
    (None, 8, 4)
    >>> QuantPlan.from_json(plan.to_json()) == plan
    True
"""

from __future__ import annotations

import difflib
import json
import os
import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from .quantizers import check_bits

__all__ = ["QuantPlan", "PLAN_FORMAT"]

PLAN_FORMAT = "diffusion-accel/quant-plan"
_PATTERN_PREFIX = "re:"


@dataclass(frozen=True)
class QuantPlan:
    """Name → weight bits, with ``re:`` patterns and a default (frozen, hashable).

    Args:
        rules: ``((name_or_pattern, bits), ...)`` in priority order for patterns.
        default: bits for names no rule matches (4, 8 or ``None``).
    """

    rules: tuple[tuple[str, int | None], ...] = ()
    default: int | None = 8
    version = 1

    def __post_init__(self) -> None:
        check_bits(self.default, "QuantPlan.default")
        seen = set()
        for item in self.rules:
            if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str)):
                raise ValueError(f"QuantPlan rules must be (name, bits) pairs; got {item!r}.")
            key, bits = item
            check_bits(bits, f"QuantPlan bits for {key!r}")
            if key in seen:
                raise ValueError(f"QuantPlan has two rules for {key!r}; keep one.")
            seen.add(key)
            if key.startswith(_PATTERN_PREFIX):
                try:
                    re.compile(key[len(_PATTERN_PREFIX):])
                except re.error as exc:
                    raise ValueError(f"QuantPlan pattern {key!r} is not a valid regular expression: {exc}.") from exc

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, int | None], default: int | None = 8) -> "QuantPlan":
        """Build from ``{name_or_"re:pattern": bits}`` (insertion order = pattern priority)."""
        if not isinstance(mapping, Mapping):
            raise ValueError(f"A quantization plan must be a mapping name -> bits; got {type(mapping).__name__}.")
        return cls(tuple((str(k), v) for k, v in mapping.items()), default)

    def _rule(self, name: str) -> tuple[str, int | None] | None:
        """The rule deciding ``name`` (its exact name, then the first matching pattern), or ``None``."""
        exact = dict(self.rules)
        if name in exact and not name.startswith(_PATTERN_PREFIX):
            return name, exact[name]
        for key, bits in self.rules:
            if key.startswith(_PATTERN_PREFIX) and re.fullmatch(key[len(_PATTERN_PREFIX):], name):
                return key, bits
        return None

    def names(self, name: str) -> bool:
        """Whether a rule (exact name or pattern) covers ``name`` (else the default applies)."""
        return self._rule(name) is not None

    def bits_for(self, name: str) -> int | None:
        """Resolved bits of one module name (exact, then first matching pattern, then default)."""
        rule = self._rule(name)
        return self.default if rule is None else rule[1]

    def resolve(self, names: Iterable[str]) -> dict[str, int | None]:
        """Bits for every name; raises if a rule matches none of ``names``.

        Raises:
            ValueError: a rule matches no module; the message lists the closest module names.
        """
        names = list(names)
        self.check_matches(names)
        return {n: self.bits_for(n) for n in names}

    def check_matches(self, names: Iterable[str]) -> None:
        names = list(names)
        name_set = set(names)
        for key, _ in self.rules:
            if key.startswith(_PATTERN_PREFIX):
                pattern = re.compile(key[len(_PATTERN_PREFIX):])
                if any(pattern.fullmatch(n) for n in names):
                    continue
                probe = key[len(_PATTERN_PREFIX):].replace("\\", "").replace(".*", "").replace("(", "")
            else:
                if key in name_set:
                    continue
                probe = key
            close = difflib.get_close_matches(probe, names, n=5, cutoff=0.3)
            hint = f" Closest module names: {close}." if close else f" Some module names: {names[:5]}."
            raise ValueError(
                f"Quantization plan entry {key!r} matches no linear module of the model.{hint} "
                "Exact names are relative to the denoiser; patterns start with 're:' and must match a whole name."
            )

    def average_bits(self, sizes: Mapping[str, int], full_bits: int = 16) -> float:
        """Parameter-weighted average weight bits over ``sizes`` (``name -> numel``)."""
        total = sum(sizes.values())
        if total == 0:
            return 0.0
        acc = 0
        for name, n in sizes.items():
            bits = self.bits_for(name)
            acc += n * (full_bits if bits is None else bits)
        return acc / total

    # --- JSON ---------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"format": PLAN_FORMAT, "version": self.version, "default": self.default,
                "rules": {k: v for k, v in self.rules}}

    @classmethod
    def from_dict(cls, data: Any) -> "QuantPlan":
        if not isinstance(data, dict):
            raise ValueError(f"A quantization plan must be a JSON object; got {type(data).__name__}.")
        if data.get("format", PLAN_FORMAT) != PLAN_FORMAT:
            raise ValueError(f"Not a quantization plan: format {data.get('format')!r}, expected {PLAN_FORMAT!r}.")
        version = data.get("version", cls.version)
        if not isinstance(version, int) or version > cls.version:
            raise ValueError(f"Quantization plan version {version!r} is newer than supported ({cls.version}).")
        unknown = sorted(set(data) - {"format", "version", "default", "rules"})
        if unknown:
            raise ValueError(f"Unknown quantization plan field(s) {unknown}; expected default and rules.")
        rules = data.get("rules", {})
        if not isinstance(rules, dict):
            raise ValueError("Quantization plan 'rules' must be an object name -> bits.")
        return cls.from_mapping(rules, default=data.get("default", 8))

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_json(cls, text: str) -> "QuantPlan":
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as exc:
            raise ValueError(f"Quantization plan is not valid JSON: {exc}") from exc

    def save(self, path: str | os.PathLike) -> None:
        from ..utils import atomic_write_text

        atomic_write_text(path, self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> "QuantPlan":
        try:
            with open(path, encoding="utf-8") as fh:
                return cls.from_json(fh.read())
        except OSError as exc:
            raise ValueError(f"Cannot read quantization plan {os.fspath(path)!r}: {exc}") from exc
