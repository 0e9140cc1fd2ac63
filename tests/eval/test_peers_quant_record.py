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


def test_int8_attention_is_compared_apart_from_the_same_work_comparison():
    module = _peers_quant()
    ms = {"ours-W8A8-fullgraph": 10.0, "ours-W8A8-int8attn-fullgraph": 8.0, "torchao-int8dyn-compiled": 11.0,
          "torchao-int8dyn-eager": 20.0}
    timing = {n: {"cpu": {"min_ms": t}, "wall": {"min_ms": t * 2}} for n, t in ms.items()}
    result = {"variants": {n: {"output_sqnr_db_vs_fp32": 50.0} for n in ms}}
    out = module.comparisons(result, timing, list(ms))
    assert out["ours_vs_torchao"]["ours"] == "ours-W8A8-fullgraph"  # the faster int8-attention row is kept apart
    assert out["ours_vs_torchao"]["torchao"] == "torchao-int8dyn-compiled"
    assert out["ours_vs_torchao"]["speed_ratio_cpu"] == 1.1
    assert out["ours_int8_attention_vs_torchao"]["ours"] == "ours-W8A8-int8attn-fullgraph"
    assert out["ours_int8_attention_vs_torchao"]["speed_ratio_cpu"] == 1.375
