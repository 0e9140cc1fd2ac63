"""The search CLI offers every reuse mode of StaticCacheConfig, forecast included."""

from diffusion_accel.caching.static import REUSE_MODES
from diffusion_accel.search.cli import REUSE_CHOICES
from diffusion_accel.search.settings import SearchSettings


def test_reuse_choices_are_auto_plus_every_reuse_mode():
    assert REUSE_CHOICES == ("auto", *REUSE_MODES)
    assert "forecast" in REUSE_CHOICES


def test_a_forecast_search_saves_forecast_configs(tmp_path, pixart, tiny_call, one_thread):
    """Issue 20: forecast reuse is available to the search; every frontier schedule carries it."""
    from diffusion_accel import AccelerationConfig
    from diffusion_accel.search import search_schedule

    result = search_schedule(pixart, ["a red cat", "a blue dog"], call_kwargs=tiny_call, reuse="forecast",
                             num_steps=4, population=4, generations=1, seed=0, batch_size=2, generalise=False,
                             progress=False, out=tmp_path / "out")
    configs = [AccelerationConfig.from_dict(entry["config"]) for entry in result.frontier]
    assert configs and all(c.cache.reuse == "forecast" for c in configs)
    assert result.frontier[-1]["macs_ratio"] > 1.0  # at least one schedule really reuses


def test_cli_reuse_takes_a_comma_list_and_rejects_bad_values(prompt_file, tmp_path, capsys, one_thread):
    """Issue 20: --reuse block_residual,forecast2 makes the reuse a gene; a bad value is one clear error."""
    import json

    from diffusion_accel.cli import main

    from .test_cli_checks import cli_args, one_error

    assert main(cli_args(prompt_file, tmp_path / "bad", "--reuse", "block_residual,forcast")) == 2
    one_error(capsys, "unknown choice 'forcast'")
    assert main(cli_args(prompt_file, tmp_path / "out", "--reuse", "block_residual,forecast2")) == 0
    saved = json.loads((tmp_path / "out" / "frontier.json").read_text())
    assert saved["settings"]["reuse"] == ["block_residual", "forecast2"]
    assert {(e["config"]["cache"]["reuse"], e["config"]["cache"]["forecast_order"]) for e in saved["frontier"]} \
        <= {("block_residual", 1), ("forecast", 2)}
