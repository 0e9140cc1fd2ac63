"""benchmarks/video.py hands the caching part every option benchmarks/peers_caching.py reads."""

import os
import re

import pytest

from benchmark_scripts import BENCHMARKS, load_benchmark


def test_the_caching_namespace_has_every_option_peers_caching_reads():
    video = load_benchmark("video")
    args = video.argparse.Namespace(prompts=3, steps=7, threads=1, caching_only="ours")
    namespace = video.caching_namespace(args, "benchmark-video")
    with open(os.path.join(BENCHMARKS, "peers_caching.py"), encoding="utf-8") as fh:
        read = set(re.findall(r"args\.(caching_\w+)", fh.read()))
    assert read and read <= set(vars(namespace))
    assert (namespace.caching_model, namespace.caching_prompts, namespace.caching_steps) == ("benchmark-video", 3, 7)
    assert (namespace.caching_rounds, namespace.caching_compute, namespace.caching_only) == (1, "tokens", "ours")


def test_the_caching_namespace_carries_merge_and_the_output_file():
    video = load_benchmark("video")
    args = video.argparse.Namespace(prompts=3, steps=7, threads=1, caching_only="ours dynamic", merge=True,
                                    out="somewhere.json")
    namespace = video.caching_namespace(args, "benchmark-video")
    assert namespace.caching_merge is True and namespace.out == "somewhere.json"
    args.merge = False
    assert video.caching_namespace(args, "benchmark-video").caching_merge is False


def test_merge_needs_the_caching_part_and_a_selection(capsys):
    video = load_benchmark("video")
    for argv in (["--merge", "--parts", "caching"], ["--merge", "--caching-only", "ours"]):
        try:
            video.main(argv)
        except SystemExit as exc:
            assert exc.code == 2
        else:
            raise AssertionError(f"{argv} was accepted")
    assert "--merge needs --parts caching" in capsys.readouterr().err


def test_a_caching_only_selection_reaches_an_extra_group_only_if_its_names_can_match():
    video = load_benchmark("video")
    assert video.overlaps([], "ours dynamic teacache")
    assert video.overlaps(["ours dynamic teacache-0.0"], "ours dynamic teacache")  # narrower than the group
    assert video.overlaps(["ours"], "ours dynamic magcache")  # wider than the group
    assert not video.overlaps(["ours dynamic teacache-0.0"], "ours dynamic magcache")
    assert not video.overlaps(["ours dynamic first_block"], "ours searched ")


def test_gentle_first_block_rows_take_firstblockcaches_rule():
    video = load_benchmark("video")
    rows = video.gentle_first_block_methods(20, lambda name, settings, config: (name, settings, config))
    assert [name for name, _, _ in rows] == [f"ours dynamic first_block-last-nocap-{t:g}{tag}"
                                              for tag in ("", "-forecast") for t in video.GENTLE_FIRST_BLOCK]
    assert [config.cache.reuse for _, _, config in rows] == \
        ["residual"] * len(video.GENTLE_FIRST_BLOCK) + ["forecast"] * len(video.GENTLE_FIRST_BLOCK)
    for _, settings, config in rows:
        assert (config.cache.compare_to, config.cache.max_consecutive_skips) == ("last_computed", 20)
        assert config.cache.policy == "first_block" and config.cache.threshold == settings["threshold"]


def test_merging_refuses_rows_scored_against_another_baseline():
    import pytest

    peers = load_benchmark("peers_caching")
    old = {"block_computations": 480, "token_computations": 1228800, "clip_score": 25.1, "fid_vs_real": 3.2}
    peers.check_same_baseline(old, dict(old, output_sha256="ab"), "video.json")  # the fingerprint matches
    with pytest.raises(ValueError, match="clip_score: 25.1 there, 25.2 now"):
        peers.check_same_baseline(old, dict(old, clip_score=25.2), "video.json")
    with pytest.raises(ValueError, match="output_sha256"):
        peers.check_same_baseline({"output_sha256": "ab", **old}, dict(old, output_sha256="cd"), "video.json")
    with pytest.raises(ValueError, match="nothing to compare"):
        peers.check_same_baseline({}, old, "video.json")


def test_the_peers_probe_leaves_a_pipelines_own_cache_contexts_alone():
    peers = load_benchmark("peers_caching")

    class OpensItsOwn:
        def __call__(self, model):
            with model.cache_context("cond"):
                return model()

    class OpensNone:
        def __call__(self, model):
            return model()

    assert peers.opens_cache_context(OpensItsOwn()) and not peers.opens_cache_context(OpensNone())


def test_the_probe_sees_contexts_opened_by_a_parent_pipelines_call():
    peers = load_benchmark("peers_caching")

    class Parent:
        def __call__(self, model):
            with model.cache_context("uncond"):
                return model()

    class Child(Parent):
        pass

    assert peers.opens_cache_context(Child())


def test_the_searched_frontier_tries_firstblockcaches_rule_and_teacache_with_both_reuses():
    from diffusion_accel.caching import DynamicCacheConfig
    from diffusion_accel.search import SearchSettings

    video = load_benchmark("video")
    tea = DynamicCacheConfig(policy="teacache", teacache_coefficients=(2.0, 0.0))
    configs = dict(video.search_dynamic_configs(20, tea))
    assert len(configs) == 2 * (len(video.SEARCH_FIRST_BLOCK) + len(video.SEARCH_TEACACHE))
    fbc = configs["first_block-last-0.1-forecast"]
    assert (fbc.compare_to, fbc.max_consecutive_skips, fbc.reuse, fbc.threshold) == ("last_computed", 20, "forecast", 0.1)
    assert configs["teacache-0.2"].teacache_coefficients == (2.0, 0.0) and configs["teacache-0.2"].reuse == "residual"
    assert len(dict(video.search_dynamic_configs(20))) == 2 * len(video.SEARCH_FIRST_BLOCK)  # no TeaCache calibration
    seeds = video.search_seeds(20, tea)
    assert SearchSettings(dynamic_seeds=seeds).dynamic_seeds == seeds  # every seed is a valid setting
    assert {"threshold": 0.1, "compare_to": "last_computed", "max_consecutive_skips": 20} in seeds


def test_a_merge_that_reruns_the_search_drops_the_old_searched_rows():
    video = load_benchmark("video")
    results = {"caching": {"methods": [{"name": "full compute", "settings": {}},
                                       {"name": "ours searched 1.33x", "settings": {"searched": True}},
                                       {"name": "ours fora-2-res", "settings": {"policy": "fora-2"}}]}}
    assert video.drop_searched_rows(results)
    assert [m["name"] for m in results["caching"]["methods"]] == ["full compute", "ours fora-2-res"]
    assert not video.drop_searched_rows(results)  # nothing left to drop


def test_a_failed_merge_that_reruns_the_search_keeps_the_results_file(tmp_path, monkeypatch):
    """The old searched rows are dropped for the merge only; --out is untouched when the run fails
    (it lost them when the merge refused a different baseline after the search)."""
    import json

    video = load_benchmark("video")
    path = tmp_path / "video.json"
    results = {"model": "benchmark-video", "caching": {"methods": [
        {"name": "full compute", "settings": {}},
        {"name": "ours searched 1.33x", "settings": {"searched": True}}]}}
    path.write_text(json.dumps(results))
    seen = {}

    def refuse(args, extra=None, **kwargs):
        seen["merge_base"] = json.loads(open(args.out, encoding="utf-8").read())
        raise ValueError("--caching-merge: the full-compute output differs")

    import peers_caching  # benchmarks/ is on sys.path once load_benchmark ran

    monkeypatch.setattr(peers_caching, "run", refuse)
    with pytest.raises(ValueError, match="differs"):
        video.main(["--parts", "caching", "--merge", "--caching-only", "ours searched", "--out", str(path)])
    assert [m["name"] for m in seen["merge_base"]["caching"]["methods"]] == ["full compute"]
    assert json.loads(path.read_text()) == results
    assert sorted(p.name for p in tmp_path.iterdir()) == ["video.json"]
