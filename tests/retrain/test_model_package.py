"""The model package's encoding: raw rows in, LightGBM inputs out, unknown and missing values as NaN."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from retrain.model_package import Encoding, build_encoding, category_labels, encode_rows
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
