"""as_of and the window, split, fingerprint and the refusal of untrainable snapshots."""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from retrain.clock import model_as_of
from retrain.config import TargetConfig, TaskType, load_model_config
from retrain.errors import ConfigError, DataError
from retrain.jsonable import to_jsonable
from retrain.outcomes import TrainingWindow
from tasks.features import (
    check_training_frame,
    fingerprint_frame,
    make_target,
    prepare_data,
    split_by_time,
    training_window,
)
from tests.conftest import EXAMPLE_CONFIG, window_around


def frame_with_times(hours: list[int]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "ts": pd.Timestamp("2013-01-01") + pd.to_timedelta(hours, unit="h"),
            "x": np.arange(len(hours), dtype="float64"),
        }
    )


def test_split_keeps_time_order_and_puts_the_latest_rows_in_the_holdout() -> None:
    frame = frame_with_times(list(range(100))).sample(frac=1.0, random_state=3)  # shuffled input
    parts = split_by_time(frame, "ts", 0.2, 0.1, min_rows=5)
    assert (len(parts.train), len(parts.validation), len(parts.holdout)) == (70, 20, 10)
    assert parts.train["ts"].max() < parts.validation["ts"].min()
    assert parts.validation["ts"].max() < parts.holdout["ts"].min()
    assert parts.holdout["ts"].is_monotonic_increasing


def test_split_never_puts_one_timestamp_in_two_parts() -> None:
    hours = [h // 7 for h in range(140)]  # 7 rows share each hour
    parts = split_by_time(frame_with_times(hours), "ts", 0.15, 0.15, min_rows=5)
    assert set(parts.train["ts"]).isdisjoint(parts.validation["ts"])
    assert set(parts.validation["ts"]).isdisjoint(parts.holdout["ts"])
    assert len(parts.train) + len(parts.validation) + len(parts.holdout) == 140


@pytest.mark.parametrize("rows", [0, 10, 30])
def test_split_too_small_names_the_parts_and_the_minimum(rows: int) -> None:
    with pytest.raises(DataError, match=r"too few to split in time.*at least 20"):
        split_by_time(frame_with_times(list(range(rows))), "ts", 0.15, 0.15, min_rows=20, where="table 't'")


def test_split_fails_when_one_timestamp_holds_all_rows() -> None:
    with pytest.raises(DataError, match="holdout"):
        split_by_time(frame_with_times([0] * 50), "ts", 0.2, 0.2, min_rows=3)


def test_fingerprint_is_stable_and_ignores_column_order() -> None:
    frame = pd.DataFrame({"a": [1, 2, 3], "b": ["x", "y", None]})
    assert fingerprint_frame(frame) == fingerprint_frame(frame.copy())
    assert fingerprint_frame(frame) == fingerprint_frame(frame[["b", "a"]])
    assert len(fingerprint_frame(frame)) == 32


@pytest.mark.parametrize(
    "change",
    [
        lambda f: f.assign(a=[1, 2, 4]),
        lambda f: f.assign(a=f["a"].astype("float64")),
        lambda f: f.iloc[:2],
        lambda f: f.rename(columns={"a": "c"}),
        lambda f: f.iloc[::-1],
    ],
    ids=["value", "dtype", "rows", "column-name", "row-order"],
)
def test_fingerprint_changes_with_content(change) -> None:
    frame = pd.DataFrame({"a": [1, 2, 3], "b": ["x", "y", "z"]})
    assert fingerprint_frame(change(frame)) != fingerprint_frame(frame)


def test_as_of_defaults_to_just_after_the_newest_clean_row_never_the_clock() -> None:
    newest = datetime(2013, 4, 30, 23)
    assert model_as_of(None, newest, "t") == newest + timedelta(microseconds=1)
    assert model_as_of(datetime(2013, 4, 1), newest, "t") == datetime(2013, 4, 1)
    with pytest.raises(DataError, match="'t' holds no clean row"):
        model_as_of(None, None, "t")


def test_lookback_window_moves_with_as_of(config) -> None:
    first = training_window(config, datetime(2013, 3, 1), as_of_given=True)
    later = training_window(config, datetime(2013, 4, 15), as_of_given=True)
    assert (first.start, first.end) == (datetime(2012, 12, 31), datetime(2013, 3, 1))
    assert later.end - later.start == timedelta(days=60) and later.start > first.start
    assert to_jsonable(first)["lookback"] == "60d" and to_jsonable(first)["as_of_source"] == "given"


def test_fixed_window_ending_after_a_given_as_of_is_refused(config) -> None:
    fixed = config.model_copy(update={"training_window": config.training_window.model_validate(
        {"start": "2013-01-01", "end": "2013-03-01"})})
    with pytest.raises(ConfigError, match="ends after as_of 2013-02-01.*lookback"):
        training_window(fixed, datetime(2013, 2, 1), as_of_given=True)
    assert training_window(fixed, datetime(2013, 2, 1), as_of_given=False).end == datetime(2013, 3, 1)


def test_binary_target_is_column_above_the_cut() -> None:
    frame = pd.DataFrame({"arr_delay": [-5.0, 15.0, 16.0]})
    target = make_target(frame, TargetConfig(column="arr_delay", task=TaskType.BINARY, positive_above=15))
    assert target.tolist() == [0, 0, 1]


@pytest.fixture(scope="module")
def config():
    return load_model_config(EXAMPLE_CONFIG)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda f: f.drop(columns=["arr_delay"]), r"lacks column\(s\) \['arr_delay'\]"),
        (lambda f: f.drop(columns=["time_hour"]), r"lacks column\(s\) \['time_hour'\]"),
        (lambda f: f.iloc[0:0], r"has no rows in the training window \[2013-01-01"),
        (lambda f: f.assign(arr_delay=np.nan), r"target column 'arr_delay' .* is null in every one"),
    ],
    ids=["missing-target", "missing-timestamp", "empty-window", "all-null-target"],
)
def test_untrainable_snapshot_is_refused_naming_table_column_window(
    flights_small: pd.DataFrame, config, mutate, message: str
) -> None:
    window = TrainingWindow(datetime(2013, 1, 1), datetime(2013, 1, 25), datetime(2013, 1, 25), True, None)
    with pytest.raises(DataError, match=message) as raised:
        check_training_frame(mutate(flights_small.head(500)), config, where="flights_clean", window=window)
    assert "flights_clean" in str(raised.value)


def test_prepare_data_fixes_vocabulary_from_training_rows_only(flights_small: pd.DataFrame, config) -> None:
    data = prepare_data(flights_small, config, where="flights_clean", window=window_around(flights_small))
    train_carriers = set(data.split.train["carrier"])
    assert set(data.encoding.vocabulary["carrier"]) == train_carriers
    assert data.rows == len(flights_small)
    assert data.split.holdout["time_hour"].min() > data.split.train["time_hour"].max()
    assert data.input_types["distance"] == "integer" and data.input_types["temp"] == "float"
    assert data.input_types["carrier"] == "string"
