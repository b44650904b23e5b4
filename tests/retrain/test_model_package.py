"""The model package's encoding: raw rows in, LightGBM inputs out, unknown and missing values as NaN."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from retrain.model_package import Encoding, build_encoding, category_labels, encode_columns, encode_rows
from tests.conftest import REPO

pytestmark = pytest.mark.model


TRAIN = pd.DataFrame({"carrier": ["UA", "AA", "UA", None], "distance": [100, 200, 300, 400],
                      "gate": [7, 12, 7, 12]})


def test_vocabulary_is_the_sorted_labels_seen_in_training() -> None:
    encoding = build_encoding(TRAIN, numeric=["distance"], categorical=["carrier", "gate"])
    assert encoding.vocabulary == {"carrier": ("AA", "UA"), "gate": ("12", "7")}
    assert encoding.features == ("distance", "carrier", "gate")
    assert Encoding.from_json(encoding.to_json()) == encoding


def test_unknown_and_missing_categories_become_nan_and_numbers_stay_numbers() -> None:
    encoding = build_encoding(TRAIN, numeric=["distance"], categorical=["carrier", "gate"])
    later = pd.DataFrame({"carrier": ["AA", "ZZ", None, "UA"], "distance": ["250", None, "not a number", 5],
                          "gate": [12.0, np.nan, 7.0, 99.0], "extra": [1, 2, 3, 4]})
    encoded = encode_rows(later, encoding)
    assert list(encoded.columns) == ["distance", "carrier", "gate"]
    assert (encoded.dtypes == "float64").all()
    assert encoded["carrier"].tolist()[::3] == [0.0, 1.0] and encoded["carrier"][1:3].isna().all()
    assert encoded["distance"][0] == 250.0 and encoded["distance"][1:3].isna().all() and encoded["distance"][3] == 5
    assert encoded["gate"][0] == 0.0 and encoded["gate"][2] == 1.0 and encoded["gate"][[1, 3]].isna().all()
    assert later["carrier"].tolist() == ["AA", "ZZ", None, "UA"]  # input untouched


@pytest.mark.parametrize(
    ("values", "labels"),
    [
        (pd.Series([7, 12]), ["7", "12"]),
        (pd.Series([7.0, np.nan]), ["7", None]),  # an integer column with a NULL reads back as floats
        (pd.Series([7.5]), ["7.5"]),
        (pd.Series(["UA", None], dtype=object), ["UA", None]),
    ],
    ids=["integers", "integers-with-null", "fractions", "text"],
)
def test_category_labels_are_canonical_text(values: pd.Series, labels: list[str | None]) -> None:
    assert [None if pd.isna(value) else value for value in category_labels(values)] == labels


def test_a_missing_input_column_is_named() -> None:
    encoding = build_encoding(TRAIN, numeric=["distance"], categorical=["carrier"])
    with pytest.raises(KeyError, match="distance"):
        encode_rows(TRAIN.drop(columns=["distance"]), encoding)


def test_the_model_package_imports_no_training_stack() -> None:
    """Scoring and serving load this module: it must not pull in Prefect, Optuna or pandera."""
    script = (
        "import sys, retrain.model_package\n"
        "print(sorted(m for m in ('prefect', 'optuna', 'pandera') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, check=True,
                            timeout=120)
    assert result.stdout.strip() == "[]"


CALENDAR_ROWS = pd.DataFrame({
    "day": pd.to_datetime(["2024-07-04 13:00", "2024-07-06 00:30", "2024-12-25 23:59", None]),
    "distance": [1.0, 2.0, 3.0, 4.0],
})


def test_calendar_features_come_from_the_timestamp_inside_the_package() -> None:
    calendar = ["hour", "dayofweek", "dayofmonth", "month", "dayofyear", "is_weekend", "holiday"]
    encoding = build_encoding(CALENDAR_ROWS, numeric=["distance"], categorical=[], timestamp="day",
                              calendar=calendar, holidays="US")
    assert encoding.inputs == ("distance", "day")
    assert encoding.features == ("distance", *(f"day_{name}" for name in calendar))
    encoded = encode_rows(CALENDAR_ROWS, encoding)
    assert encoded.iloc[0, 1:].tolist() == [13, 3, 4, 7, 186, 0, 1]  # Thursday 4 July 2024, Independence Day
    assert encoded.iloc[1, 1:].tolist() == [0, 5, 6, 7, 188, 1, 0]  # a Saturday
    assert encoded.iloc[2, 1:].tolist() == [23, 2, 25, 12, 360, 0, 1]  # Christmas
    assert encoded.iloc[3, 1:].isna().all()  # a missing timestamp is missing, not day 0
    assert Encoding.from_json(encoding.to_json()) == encoding


def test_a_timestamp_reads_the_same_as_a_datetime_iso_text_or_epoch_milliseconds() -> None:
    encoding = build_encoding(CALENDAR_ROWS, numeric=["distance"], categorical=[], timestamp="day",
                              calendar=["hour", "dayofweek", "holiday"], holidays="US")
    from_frame = encode_columns({"distance": [1.0], "day": CALENDAR_ROWS["day"].iloc[:1]}, encoding, 1)
    iso = encode_columns({"distance": [1.0], "day": ["2024-07-04T13:00:00"]}, encoding, 1)
    offset = encode_columns({"distance": [1.0], "day": ["2024-07-04T15:00:00+02:00"]}, encoding, 1)
    epoch = encode_columns({"distance": [1.0], "day": [int(pd.Timestamp("2024-07-04 13:00").value // 10**6)]},
                           encoding, 1)
    np.testing.assert_array_equal(from_frame, iso)
    np.testing.assert_array_equal(from_frame, offset)
    np.testing.assert_array_equal(from_frame, epoch)
    unknown = encode_columns({"distance": [1.0], "day": ["__unknown__"]}, encoding, 1)
    assert np.isnan(unknown[0, 1:]).all()


def test_calendar_features_are_refused_when_they_cannot_be_built() -> None:
    with pytest.raises(ValueError, match="unknown calendar feature"):
        build_encoding(CALENDAR_ROWS, numeric=["distance"], categorical=[], timestamp="day", calendar=["week"])
    with pytest.raises(ValueError, match="timestamp"):
        build_encoding(CALENDAR_ROWS, numeric=["distance"], categorical=[], calendar=["hour"])
    taken = CALENDAR_ROWS.assign(day_hour=1.0)
    with pytest.raises(ValueError, match="day_hour"):
        build_encoding(taken, numeric=["day_hour"], categorical=[], timestamp="day", calendar=["hour"])


def test_an_encoding_without_calendar_keeps_its_old_json() -> None:
    encoding = build_encoding(TRAIN, numeric=["distance"], categorical=["carrier"])
    assert set(json.loads(encoding.to_json())) == {"numeric", "categorical", "vocabulary"}
    assert encoding.inputs == encoding.features
