"""Split, fingerprint, encoding and the refusal of untrainable snapshots."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from retrain.config import FeaturesConfig, TargetConfig, TaskType, load_model_config
from retrain.errors import DataError
from tasks.features import (
    UNKNOWN_CODE,
    build_vocabulary,
    check_training_frame,
    encode_features,
    fingerprint_frame,
    make_target,
    prepare_data,
    split_by_time,
)
from tests.conftest import EXAMPLE_CONFIG


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


def test_encoding_maps_unknown_and_missing_categories_to_minus_one() -> None:
    train = pd.DataFrame({"c": ["UA", "AA", "UA"], "n": [1, 2, 3]})
    vocabulary = build_vocabulary(train, ["c"])
    assert vocabulary == {"c": ("AA", "UA")}
    later = pd.DataFrame({"c": ["AA", "ZZ", None], "n": ["4", None, 6]})
    encoded = encode_features(later, FeaturesConfig(numeric=["n"], categorical=["c"]), vocabulary)
    assert encoded["c"].tolist() == [0, UNKNOWN_CODE, UNKNOWN_CODE]
    assert encoded["n"].dtype == "float64" and np.isnan(encoded["n"][1])
    assert later["c"].tolist() == ["AA", "ZZ", None]  # input untouched


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
    with pytest.raises(DataError, match=message) as raised:
        check_training_frame(mutate(flights_small.head(500)), config, where="flights_clean")
    assert "flights_clean" in str(raised.value)


def test_prepare_data_fixes_vocabulary_from_training_rows_only(flights_small: pd.DataFrame, config) -> None:
    data = prepare_data(flights_small, config, where="flights_clean")
    train_carriers = set(data.split.train["carrier"])
    assert set(data.vocabulary["carrier"]) == train_carriers
    assert data.rows == len(flights_small)
    assert data.split.holdout["time_hour"].min() > data.split.train["time_hour"].max()
