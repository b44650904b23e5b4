"""Naive forecasters on tiny inline frames: each kind, and the no-leak rule."""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from retrain.baselines import (
    NaiveForecaster,
    default_forecasters,
    entity_columns,
    forecast_all,
    lookup_times,
    naive_predictions,
    parse_forecaster,
)


def daily(values: list[float], start: str = "2024-01-01", store: str = "a") -> pd.DataFrame:
    days = pd.date_range(start, periods=len(values), freq="D")
    return pd.DataFrame({"day": days, "store": store, "units": values})


@pytest.mark.parametrize(
    ("spec", "name", "period"),
    [("median", "median", None), ("last-value", "last-value", None), ("last_value", "last-value", None),
     ("seasonal 7d", "seasonal-7d", timedelta(days=7)), ("seasonal: 1d", "seasonal-1d", timedelta(days=1)),
     ({"seasonal": "24h"}, "seasonal-1d", timedelta(days=1)), ("Base-Rate", "base-rate", None)],
)
def test_forecasters_parse_from_config_text(spec: object, name: str, period: timedelta | None) -> None:
    forecaster = parse_forecaster(spec)
    assert forecaster.name == name and forecaster.period == period
    assert parse_forecaster(forecaster.spec) == forecaster


@pytest.mark.parametrize("spec", ["seasonal", "median 7d", "yesterday", "seasonal 0d", 7, {"a": 1, "b": 2}])
def test_bad_forecaster_text_is_refused_naming_it(spec: object) -> None:
    with pytest.raises(ValueError):
        parse_forecaster(spec)


def test_constants_are_learned_from_known_history_only() -> None:
    history = daily([1, 2, 3, 100])  # the 100 is on Jan 4, after the cut
    rows = daily([0, 0], start="2024-01-05")
    cut = datetime(2024, 1, 4)
    median = naive_predictions(NaiveForecaster("median"), history, rows, timestamp="day", target="units",
                               known_until=cut)
    mean = naive_predictions(NaiveForecaster("mean"), history, rows, timestamp="day", target="units", known_until=cut)
    assert median.tolist() == [2.0, 2.0] and mean.tolist() == [2.0, 2.0]


def test_last_value_never_uses_the_row_itself_nor_a_later_one() -> None:
    frame = daily([10, 20, 30, 40])
    predictions = naive_predictions(NaiveForecaster("last-value"), frame, frame, timestamp="day", target="units",
                                    fallback=-1.0)
    assert predictions.tolist() == [-1.0, 10, 20, 30]


def test_last_value_is_frozen_at_the_cut_off() -> None:
    frame = daily([10, 20, 30, 40, 50])
    holdout = frame.iloc[3:]
    predictions = naive_predictions(NaiveForecaster("last-value"), frame, holdout, timestamp="day", target="units",
                                    known_until=datetime(2024, 1, 4))
    assert predictions.tolist() == [30, 30]  # the holdout's own labels (40, 50) are never seen


def test_seasonal_takes_the_same_phase_one_period_earlier_per_entity() -> None:
    a = daily([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], store="a")
    b = daily([100, 200, 300, 400, 500, 600, 700, 800, 900, 1000], store="b")
    frame = pd.concat([a, b], ignore_index=True)
    rows = frame[frame["day"] >= "2024-01-08"]
    predictions = naive_predictions(NaiveForecaster("seasonal", timedelta(days=7)), frame, rows, timestamp="day",
                                    target="units", entity=["store"])
    assert predictions.tolist() == [1, 2, 3, 100, 200, 300]


def test_seasonal_beyond_one_period_after_the_cut_uses_the_last_known_season() -> None:
    # Cut on day 15 (Jan 15): a row on Jan 20 is 5 days after it → Jan 13; Jan 25 (10 days after) → k=2 → Jan 11.
    frame = daily(list(range(1, 31)))
    rows = frame[frame["day"].isin(pd.to_datetime(["2024-01-15", "2024-01-20", "2024-01-25"]))]
    predictions = naive_predictions(NaiveForecaster("seasonal", timedelta(days=7)), frame, rows, timestamp="day",
                                    target="units", known_until=datetime(2024, 1, 15))
    assert predictions.tolist() == [8, 13, 11]
    assert all(value < 15 for value in predictions)  # every value comes from before the cut-off


def test_no_leak_the_future_can_change_without_changing_any_forecast() -> None:
    frame = daily(list(range(1, 41)))
    cut = datetime(2024, 1, 25)
    rows = frame[frame["day"] >= cut]
    forecasters = [parse_forecaster(spec) for spec in ("median", "last-value", "seasonal 7d", "seasonal 1d")]
    before = forecast_all(forecasters, frame, rows, timestamp="day", target="units", known_until=cut)
    future_changed = frame.copy()
    future_changed.loc[future_changed["day"] >= cut, "units"] = 1e6
    after = forecast_all(forecasters, future_changed, rows, timestamp="day", target="units", known_until=cut)
    for name in before:
        np.testing.assert_array_equal(before[name], after[name])


def test_a_seasonal_slot_with_no_value_falls_back_not_to_an_older_season() -> None:
    frame = daily([5, 6, 7]).iloc[[0]]  # only Jan 1 is known
    rows = daily([0], start="2024-01-20")
    predictions = naive_predictions(NaiveForecaster("seasonal", timedelta(days=7)), frame, rows, timestamp="day",
                                    target="units", fallback=-1.0)
    assert predictions.tolist() == [-1.0]  # Jan 13's slot is empty; Jan 1 is a different phase


def test_a_new_entity_gets_the_fallback() -> None:
    history = daily([1, 2, 3], store="a")
    rows = daily([0], start="2024-01-04", store="new")
    predictions = naive_predictions(NaiveForecaster("last-value"), history, rows, timestamp="day", target="units",
                                    entity=["store"])
    assert predictions.tolist() == [2.0]  # the median of what is known


def test_lookup_times_without_a_cut_is_one_period_back() -> None:
    times = pd.Series(pd.to_datetime(["2024-01-10 05:00"]))
    assert lookup_times(NaiveForecaster("seasonal", timedelta(days=1)), times, None).iloc[0] == pd.Timestamp(
        "2024-01-09 05:00")


def test_defaults_follow_the_cadence() -> None:
    hourly = pd.Series(pd.date_range("2024-01-01", periods=24 * 30, freq="h"))
    names = [f.name for f in default_forecasters("mae", False, hourly)]
    assert names == ["median", "last-value", "seasonal-1d", "seasonal-7d"]
    days = pd.Series(pd.date_range("2024-01-01", periods=10, freq="D"))
    assert [f.name for f in default_forecasters("rmse", False, days)] == ["mean", "last-value"]
    assert default_forecasters("auc", True, days)[0].name == "base-rate"


def test_entity_is_the_key_without_the_timestamp_unless_a_group_is_given() -> None:
    assert entity_columns(["time_hour", "carrier", "flight"], "time_hour") == ["carrier", "flight"]
    assert entity_columns(["day"], "day") == []
    assert entity_columns(["day", "store"], "day", group=["region"]) == ["region"]


def test_an_entity_read_back_from_json_matches_the_tables_numbers() -> None:
    history = pd.DataFrame({"day": pd.to_datetime(["2024-01-01", "2024-01-02"]), "store": [7.0, 8.0],
                            "units": [70.0, 80.0]})
    rows = pd.DataFrame({"day": pd.to_datetime(["2024-01-08", "2024-01-09"]), "store": pd.Series([7, "8"],
                                                                                                 dtype=object)})
    predictions = naive_predictions(NaiveForecaster("seasonal", timedelta(days=7)), history, rows, timestamp="day",
                                    target="units", entity=["store"], fallback=-1.0)
    assert predictions.tolist() == [70.0, 80.0]


@pytest.mark.parametrize("spec", ["last-value", "seasonal 7d", "seasonal 1d"])
def test_the_model_packages_residual_base_follows_the_same_rule(spec: str) -> None:
    """A residual model looks its naive value up inside the package (which imports nothing of Retrain): its
    rule must be this module's, row for row, before and after the cut."""
    from retrain.model_package import build_residual, residual_base

    rng = np.random.default_rng(5)
    times = pd.date_range("2024-01-01", periods=24 * 40, freq="h")
    frame = pd.DataFrame({"at": np.repeat(times, 2), "store": np.tile(["a", "b"], len(times)),
                          "units": rng.normal(size=2 * len(times))}).sample(frac=0.8, random_state=1)
    cut = pd.Timestamp("2024-01-30")
    forecaster = parse_forecaster(spec)
    period = None if forecaster.period is None else forecaster.period.total_seconds()
    residual = build_residual(frame, frame["units"].to_numpy(), "at", ["store"], forecaster.kind, period, cut)
    rows = pd.concat([frame, pd.DataFrame({"at": [pd.NaT], "store": ["c"], "units": [0.0]})], ignore_index=True)
    expected = naive_predictions(forecaster, frame, rows, timestamp="at", target="units", entity=["store"],
                                 known_until=cut.to_pydatetime(), fallback=residual.fallback)
    expected[-1] = residual.fallback  # a row without a time: the fallback in both
    np.testing.assert_array_equal(residual_base({"at": rows["at"], "store": rows["store"]}, residual, len(rows)),
                                  expected)
