"""benchmarks/peers_quant.py records the DiT stack it measured (layers, latent side) in its result."""

import argparse
import importlib.util
import os
import sys

import pytest

BENCHMARKS = os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks")


def _peers_quant():
    sys.path.insert(0, BENCHMARKS)  # peers_quant imports its sibling _common.py
    spec = importlib.util.spec_from_file_location("peers_quant", os.path.join(BENCHMARKS, "peers_quant.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _args(module, argv):
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return parser.parse_args(argv)


def test_the_result_names_the_dit_layers_and_latent_it_ran(monkeypatch):
    module = _peers_quant()
    monkeypatch.setattr(module, "bench_model", lambda kind, args, variants: {"kind": kind})
    args = _args(module, ["--quant-models", "dit", "--quant-variants", "fp32", "--quant-dit-layers", "3",
                          "--quant-dit-latent", "16"])
    result = module.run(args)
    assert (result["dit_layers"], result["dit_latent"]) == (3, 16)
    assert result["dit"] == {"kind": "dit"}


def test_an_unknown_variant_names_the_choices(monkeypatch):
    module = _peers_quant()
    monkeypatch.setattr(module, "bench_model", lambda kind, args, variants: {})
    with pytest.raises(ValueError, match="choose from"):
        module.run(_args(module, ["--quant-variants", "fp64"]))
