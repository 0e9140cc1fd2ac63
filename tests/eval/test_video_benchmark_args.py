"""benchmarks/video.py hands the caching part every option benchmarks/peers_caching.py reads."""

import importlib.util
import os
import re

BENCHMARKS = os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks")


def _load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(BENCHMARKS, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_caching_namespace_has_every_option_peers_caching_reads():
    video = _load("video")
    args = video.argparse.Namespace(prompts=3, steps=7, threads=1, caching_only="ours")
    namespace = video.caching_namespace(args, "benchmark-video")
    with open(os.path.join(BENCHMARKS, "peers_caching.py"), encoding="utf-8") as fh:
        read = set(re.findall(r"args\.(caching_\w+)", fh.read()))
    assert read and read <= set(vars(namespace))
    assert (namespace.caching_model, namespace.caching_prompts, namespace.caching_steps) == ("benchmark-video", 3, 7)
    assert (namespace.caching_rounds, namespace.caching_compute, namespace.caching_only) == (1, "tokens", "ours")
