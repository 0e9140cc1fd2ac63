"""benchmarks/int8_attention.py: one row per token count, its ratio and error from the same run."""

import json

from benchmark_scripts import load_benchmark


def test_rows_hold_the_ratio_of_the_times_they_report(tmp_path):
    module = load_benchmark("int8_attention")
    out = tmp_path / "int8.json"
    result = module.main(["--seqs", "64,300", "--heads", "2", "--head-dim", "32", "--repeats", "1",
                          "--out", str(out)])
    assert [r["seq"] for r in result["rows"]] == [64, 300]
    for row in result["rows"]:
        assert abs(row["speedup_cpu"] - row["sdpa_ms"] / row["int8_ms"]) < 0.05 * row["speedup_cpu"] + 0.01
        assert row["sqnr_db_vs_exact"] > 25
    assert json.loads(out.read_text()) == result
