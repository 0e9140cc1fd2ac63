"""Load a script of ``benchmarks/`` as a module, for tests of its pure helpers.

The scripts import their siblings (``_common``, ``caching``, ``peers_caching``), so the folder goes
on ``sys.path``; the module is registered in ``sys.modules`` under ``module_name`` (its dataclasses
look their module up there).
"""

import importlib.util
import os
import sys

BENCHMARKS = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))


def load_benchmark(name: str, module_name: str | None = None):
    """``benchmarks/<name>.py`` executed as a fresh module named ``module_name`` (default ``name``)."""
    if BENCHMARKS not in sys.path:
        sys.path.insert(0, BENCHMARKS)
    module_name = module_name or name
    spec = importlib.util.spec_from_file_location(module_name, os.path.join(BENCHMARKS, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module
