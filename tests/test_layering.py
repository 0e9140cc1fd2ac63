"""The package's layers: no module imports a higher layer, at module level or inside a function.

Layers, bottom to top (the README's Design section draws them):

0. foundation -- models/, hooks, pipeline_state, call_inputs, utils, serialization, _diffusers,
   techniques (the registry the techniques plug into, so it cannot import them), testing/ (tiny
   pipelines built from diffusers alone)
1. techniques -- caching/, quant/, sparse_attn/, sampling/ (Bottleneck Sampling)
2. api -- the package root, api, config (registers the built-in techniques), pipelines/, assets/
   (the bundled model and its searched config)
3. tools -- search/, eval/, cost/ (MAC counting, used by search and eval), cli, demo, info

Every ``import`` and ``from ... import`` anywhere in a file counts: at module level, inside
functions and classes, and under ``if TYPE_CHECKING:`` (none is exempt). The only allowed upward
imports are the deprecated aliases listed in :data:`DEPRECATED_ALIASES`, removed in the next release.
"""

from __future__ import annotations

import ast
import json
import pathlib
import subprocess
import sys
import textwrap

import pytest

import diffusion_accel

PACKAGE = pathlib.Path(diffusion_accel.__file__).parent
ROOT = "diffusion_accel"

LAYERS: dict[int, tuple[str, ...]] = {
    0: ("_diffusers", "call_inputs", "hooks", "models", "pipeline_state", "serialization", "techniques", "testing",
        "utils"),
    1: ("caching", "quant", "sampling", "sparse_attn"),
    2: ("", "api", "config", "error_correction", "pipelines", "assets"),  # "": the package's __init__
    3: ("search", "eval", "cost", "cli", "demo", "info"),
}
NAMES = ("foundation", "techniques", "api", "tools")

#: (file, imported module): old names kept for one release (diffusion_accel.caching.search_schedule,
#: .pick, .macs, ...), resolved by ``caching.__getattr__`` only when a caller uses them.
DEPRECATED_ALIASES = {
    ("caching/__init__.py", "diffusion_accel.search"),
    ("caching/__init__.py", "diffusion_accel.cost"),
}


def layer_of(module: str) -> int:
    """Layer of a dotted module name inside the package (``KeyError`` for an unmapped one)."""
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else ""
    for layer, names in LAYERS.items():
        if top in names:
            return layer
    raise KeyError(f"{module} has no layer: add its top-level name to LAYERS (and to the README's Design section).")


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(tree: ast.AST, module: str, is_package: bool) -> list[tuple[int, str]]:
    """``(line, module)`` of every import of the package in ``tree``; ``from x import y`` counts as
    ``x.y`` when ``y`` is a submodule, else as ``x``."""
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names if alias.name.split(".")[0] == ROOT]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != ROOT:
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                is_module = _module_path(sub) is not None
                found.append((node.lineno, sub if is_module else target))
    return found


def _module_path(module: str) -> pathlib.Path | None:
    relative = pathlib.Path(*module.split(".")[1:])
    for candidate in (PACKAGE / relative.with_suffix(".py"), PACKAGE / relative / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


def violations(path: pathlib.Path, source: str | None = None) -> list[str]:
    module = module_name(path)
    tree = ast.parse(source if source is not None else path.read_text(encoding="utf-8"))
    own = layer_of(module)
    rel = path.relative_to(PACKAGE).as_posix()
    out = []
    for line, target in imported_modules(tree, module, path.name == "__init__.py"):
        other = layer_of(target)
        if other > own and (rel, ".".join(target.split(".")[:2])) not in DEPRECATED_ALIASES:
            out.append(f"diffusion_accel/{rel}:{line} ({NAMES[own]}, layer {own}) imports {target} "
                       f"({NAMES[other]}, layer {other})")
    return out


def test_no_module_imports_a_higher_layer():
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 100
    found = [v for path in files for v in violations(path)]
    assert not found, "imports of a higher layer:\n" + "\n".join(found)


def test_the_check_sees_imports_inside_functions_and_type_checking_blocks():
    source = textwrap.dedent("""
        from typing import TYPE_CHECKING
        if TYPE_CHECKING:
            from .config import AccelerationConfig
        def f():
            from .search import pick
            import diffusion_accel.eval.sweep
    """)
    found = violations(PACKAGE / "hooks.py", source)
    assert [v.split(" imports ")[1] for v in found] == [
        "diffusion_accel.config (api, layer 2)",
        "diffusion_accel.search (tools, layer 3)",
        "diffusion_accel.eval.sweep (tools, layer 3)",
    ]
    assert found[1].startswith("diffusion_accel/hooks.py:6 (foundation, layer 0)")
    assert violations(PACKAGE / "eval" / "sweep.py", "from ..quant import QuantConfig\n") == []
    # the registry registering the built-ins itself (as it once did) is an upward import
    assert violations(PACKAGE / "techniques.py", "def load():\n    from . import caching, quant\n") == [
        "diffusion_accel/techniques.py:2 (foundation, layer 0) imports diffusion_accel.caching (techniques, layer 1)",
        "diffusion_accel/techniques.py:2 (foundation, layer 0) imports diffusion_accel.quant (techniques, layer 1)",
    ]


def test_every_module_has_a_layer():
    for path in PACKAGE.rglob("*.py"):
        layer_of(module_name(path))
    with pytest.raises(KeyError, match="no layer"):
        layer_of("diffusion_accel.newthing")


APPLY_ONLY = textwrap.dedent("""
    import json, sys
    import torch
    import diffusion_accel
    from diffusion_accel import AccelerationConfig
    from diffusion_accel.caching import CacheSchedule, DynamicCacheConfig, StaticCacheConfig
    from diffusion_accel.quant import QuantConfig
    from diffusion_accel.sparse_attn import SparseAttentionConfig
    from diffusion_accel.testing import tiny_call_kwargs, tiny_pipeline

    torch.set_num_threads(1)
    pipe = tiny_pipeline("pixart-alpha")
    kwargs = tiny_call_kwargs("pixart-alpha", num_inference_steps=2)
    attention = SparseAttentionConfig(density=0.5, block_q=4, block_k=4)
    configs = [
        AccelerationConfig(cache=StaticCacheConfig(CacheSchedule.fora(pipe, 2, 2)), quant=QuantConfig(),
                           attention=attention),
        AccelerationConfig(cache=DynamicCacheConfig(threshold=0.1), quant=QuantConfig(weight_bits=4)),
    ]
    for config in configs:
        config = AccelerationConfig.from_json(config.to_json())  # the built-ins are found by name
        diffusion_accel.apply(pipe, config)
        pipe(**kwargs, generator=torch.Generator().manual_seed(0))
        diffusion_accel.remove(pipe)
    tools = ("diffusion_accel.search", "diffusion_accel.eval", "diffusion_accel.cost", "diffusion_accel.cli",
             "diffusion_accel.demo", "diffusion_accel.info")
    print(json.dumps(sorted(m for m in sys.modules if m.startswith(tools))))
""")


@pytest.mark.slow
def test_apply_imports_no_tool_module():
    """``import diffusion_accel`` + ``apply`` of cache + quant + attention imports nothing of search/eval."""
    done = subprocess.run([sys.executable, "-c", APPLY_ONLY], capture_output=True, text=True, timeout=600,
                          env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin",
                               "PYTHONPATH": str(PACKAGE.parent), "TRITON_INTERPRET": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
