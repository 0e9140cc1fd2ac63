"""benchmarks/peers_quant.py records the DiT stack it measured (layers, latent side) in its result."""

import argparse
import pytest
from benchmark_scripts import load_benchmark


def _peers_quant():
    return load_benchmark("peers_quant")


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
