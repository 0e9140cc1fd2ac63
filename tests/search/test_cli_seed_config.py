"""``diffusion-accel search --seed-config`` (issue #21): config files seed a joint search's generation 0
under their file stem; a bad file or a cache-only search is one clear error before any work."""

import json

from diffusion_accel import AccelerationConfig
from diffusion_accel.cli import main
from diffusion_accel.quant import QuantConfig

from .test_cli_checks import cli_args, one_error

W4A8 = AccelerationConfig(quant=QuantConfig(weight_bits=4, act_bits=8))


def test_a_seed_config_file_is_scored_first_under_its_stem(prompt_file, tmp_path, capsys, one_thread):
    W4A8.save(tmp_path / "my-w4a8.json")
    args = cli_args(prompt_file, tmp_path / "out", "--space", "cache,quant", "--latency-repeats", "1",
                    "--seed-config", str(tmp_path / "my-w4a8.json"), "--pick-speedup", "1.0")
    assert main(args) == 0, capsys.readouterr().err
    checkpoint = json.loads((tmp_path / "out" / "checkpoint.json").read_text())
    by_name = {r["name"]: r for r in checkpoint["archive"].values() if r.get("name")}
    # population 2: full compute, then the given seed (before the genome's own w4a8 seed of the same genes)
    assert set(by_name) == {"full", "my-w4a8"} and by_name["my-w4a8"]["generation"] == 0
    assert checkpoint["settings"]["seed_configs"] == [["my-w4a8", W4A8.to_dict()]]


def test_bad_seed_configs_are_one_clear_error_before_any_work(prompt_file, tmp_path, capsys):
    (tmp_path / "prompts.json").write_text(json.dumps(["a red cat"]))
    W4A8.save(tmp_path / "ok.json")
    cases = [(["--space", "cache,quant", "--seed-config", str(tmp_path / "missing.json")],
              "--seed-config: Cannot read acceleration config file"),
             (["--space", "cache,quant", "--seed-config", str(prompt_file)], "is not valid JSON"),
             (["--space", "cache,quant", "--seed-config", str(tmp_path / "prompts.json")],
              "entry 0: expected an object"),
             (["--seed-config", str(tmp_path / "ok.json")], "drop seed_configs (--seed-config)")]
    for extra, message in cases:
        assert main(cli_args(prompt_file, tmp_path / "out", *extra)) == 2, extra
        err = one_error(capsys, message)
        assert "--seed-config" in err and not (tmp_path / "out").exists()
