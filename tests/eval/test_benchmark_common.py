"""benchmarks/_common.py: merging re-run rows into a results file."""

from benchmark_scripts import load_benchmark


def test_merge_rows_replaces_rerun_rows_and_keeps_the_rest():
    common = load_benchmark("_common")
    earlier = [{"name": "a", "v": 1}, {"name": "b", "v": 1}, {"name": "c", "v": 1}]
    merged = common.merge_rows(earlier, [{"name": "b", "v": 2}, {"name": "d", "v": 2}])
    assert merged == [{"name": "a", "v": 1}, {"name": "c", "v": 1}, {"name": "b", "v": 2}, {"name": "d", "v": 2}]


def test_results_round_trip_and_missing_file_default(tmp_path):
    common = load_benchmark("_common")
    path = str(tmp_path / "sub" / "r.json")
    assert common.read_results(path, {}) == {}
    common.write_results(path, {"rows": [{"name": "a", "psnr_db": 40.5}]})
    assert common.read_results(path) == {"rows": [{"name": "a", "psnr_db": 40.5}]}
