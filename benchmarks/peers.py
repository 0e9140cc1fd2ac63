"""Peers head-to-head in one run: cache-dit, diffusers' caches, torchao, optimum-quanto (JSON).

Each part lives in its own module beside this file and exposes ``add_arguments(parser)`` and
``run(args) -> dict``; every part measures its own baseline in the same run and reports ratios.
Results are merged into ``benchmarks/results/peers.json`` under the part's name, so parts can be
re-run one at a time.

The peers are an optional extra that installs on CPU without a CUDA stack when torch is pinned
first::

    pip install torch==2.13.0 && pip install -e ".[peers]"

Usage::

    python benchmarks/peers.py                      # every part
    python benchmarks/peers.py --parts quant        # one part
"""

from __future__ import annotations

import importlib
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)
from _common import argument_parser  # noqa: E402
RESULTS = os.path.join(HERE, "results", "peers.json")

#: part name -> module (beside this file) exposing ``add_arguments(parser)`` and ``run(args) -> dict``
PARTS: dict[str, str] = {
    "caching": "peers_caching",
    "quant": "peers_quant",
    "attention": "peers_attention",
}


def _available_parts() -> dict[str, object]:
    sys.path.insert(0, HERE)
    found = {}
    for name, module_name in PARTS.items():
        if os.path.exists(os.path.join(HERE, module_name + ".py")):
            found[name] = importlib.import_module(module_name)
    return found


def main(argv: list[str] | None = None) -> int:
    parts = _available_parts()
    parser = argument_parser(__doc__)
    parser.add_argument("--parts", default=",".join(parts), help=f"comma-separated subset of {sorted(parts)}")
    parser.add_argument("--out", default=RESULTS, help="results JSON (parts are merged into it)")
    for module in parts.values():
        module.add_arguments(parser)
    args = parser.parse_args(argv)
    chosen = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = sorted(set(chosen) - set(parts))
    if unknown:
        parser.error(f"unknown part(s) {unknown}; choose from {sorted(parts)}")
    results = {}
    if os.path.exists(args.out):
        with open(args.out, encoding="utf-8") as fh:
            results = json.load(fh)
    for name in chosen:
        results[name] = parts[name].run(args)
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w", encoding="utf-8") as fh:
            json.dump(results, fh, indent=2)
            fh.write("\n")
        print(json.dumps({name: results[name]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
