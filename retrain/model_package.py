"""The packaged model: an MLflow pyfunc that takes the source table's rows as they are and encodes inside.

What a registered model must be for a user: `mlflow.pyfunc.load_model("models:/NAME@champion")
.predict(rows)` works on rows read from the table (strings for categorical columns, numbers for numeric
ones, missing values allowed), and so does `mlflow models serve`. LightGBM wants numbers, so the model
carries its own encoding: the vocabulary of every categorical column is an artifact of the model, read by
`load_context`, never a file beside it.

This file is also the model's code: it is logged as an MLflow "model from code" and copied into every
model, so a model keeps the encoding it was trained with whatever this file becomes later. That is why
it imports only numpy, pandas, LightGBM and MLflow's pyfunc (no Prefect, Optuna or pandera, nothing
else of Retrain): scoring and serving load it without the training stack. Training imports the same
functions, so the flow's predictions and the served model's are computed by one piece of code.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd
from mlflow.models import set_model
from mlflow.pyfunc import PythonModel

BOOSTER_ARTIFACT = "booster"
ENCODING_ARTIFACT = "encoding"


@dataclass(frozen=True)
class Encoding:
    """How raw rows become model inputs: which columns, in which order, and each category's code.

    The code of a category is its position in the column's vocabulary (sorted labels seen in training);
    unknown and missing categories are NaN, which is what LightGBM reads as missing (a negative code
    would be turned into NaN by LightGBM anyway, with a warning printed from C++).
    """

    numeric: tuple[str, ...]
    categorical: tuple[str, ...]
    vocabulary: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def features(self) -> tuple[str, ...]:
        """Model input columns in the booster's order: numeric first, then categorical."""
        return (*self.numeric, *self.categorical)

    def to_json(self) -> str:
        return json.dumps(
            {
                "numeric": list(self.numeric),
                "categorical": list(self.categorical),
                "vocabulary": {column: list(labels) for column, labels in self.vocabulary.items()},
            },
            indent=1,
        )

    @classmethod
    def from_json(cls, text: str) -> Encoding:
        raw = json.loads(text)
        return cls(
            numeric=tuple(raw["numeric"]),
            categorical=tuple(raw["categorical"]),
            vocabulary={column: tuple(labels) for column, labels in raw["vocabulary"].items()},
        )


def category_labels(values: pd.Series) -> pd.Series:
    """A categorical column as text labels with missing values kept missing (`pd.NA`).

    Numbers are written canonically, so a category stored as an integer reads the same whether it
    arrives as 7 or 7.0 (an integer column with a NULL reads back as floats): "7" either way.
    """
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        numbers = values.astype("float64")
        whole = np.isfinite(numbers) & (numbers == np.round(numbers))
        labels = numbers.astype(str).astype("string")
        labels[whole] = numbers[whole].astype("int64").astype(str)
        labels[numbers.isna()] = pd.NA
        return labels
    return values.astype("string")


def build_encoding(frame: pd.DataFrame, numeric: Sequence[str], categorical: Sequence[str]) -> Encoding:
    """The encoding learned from training rows: each categorical column's sorted distinct labels."""
    vocabulary = {
        column: tuple(sorted(str(label) for label in category_labels(frame[column]).dropna().unique()))
        for column in categorical
    }
    return Encoding(numeric=tuple(numeric), categorical=tuple(categorical), vocabulary=vocabulary)


# Values a JSON record holds whose encoding needs no pandas: the fast, exact case of each rule below.
_NUMBER_TYPES = frozenset({int, float})
_NONE = type(None)
Column = Sequence[Any] | pd.Series


def numeric_values(values: Column) -> np.ndarray:
    """A numeric column as float64: numbers as they are, anything that is not a number missing (NaN).

    A list of ints, floats and None (what JSON records hold) is read directly; anything else through pandas, as a
    pandas column built from the same list would be, so both give the same numbers.
    """
    if isinstance(values, list):
        if {type(value) for value in values} <= _NUMBER_TYPES | {_NONE}:
            try:
                return np.array(values, dtype="float64")  # None becomes NaN
            except OverflowError:  # an integer beyond float64: pandas decides what it is
                pass
        values = pd.Series(values)
    return pd.to_numeric(values, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)


@lru_cache(maxsize=256)
def _codes_of(vocabulary: tuple[str, ...]) -> dict[str, float]:
    return {label: float(code) for code, label in enumerate(vocabulary)}


def category_codes(values: Column, vocabulary: Sequence[str]) -> np.ndarray:
    """A categorical column as its codes (the label's position in the vocabulary), NaN when missing or unseen.

    Labels are `category_labels`'s; a list of text (or of numbers) and None is labelled directly, anything else
    through a pandas column built from the same list, so both give the same codes.
    """
    if isinstance(values, list):
        kinds = {type(value) for value in values} - {_NONE}
        if kinds <= {str} or kinds <= _NUMBER_TYPES:
            codes = _codes_of(tuple(vocabulary))
            nan = float("nan")
            if kinds <= {str}:
                return np.array([nan if value is None else codes.get(value, nan) for value in values], dtype="float64")
            return np.array([nan if value is None else codes.get(_number_label(value), nan) for value in values],
                            dtype="float64")
        values = pd.Series(values)
    codes = pd.Categorical(category_labels(values), categories=list(vocabulary)).codes
    return np.where(codes < 0, np.nan, codes.astype("float64"))


def _number_label(value: float) -> str | None:
    """`category_labels`' text of one number: whole numbers as integers ("7"), others as Python writes them."""
    if value != value:  # NaN  # noqa: PLR0124
        return None
    if isinstance(value, int) or (math.isfinite(value) and value == round(value)):
        return str(int(value))
    return str(float(value))


def encode_columns(columns: Mapping[str, Column], encoding: Encoding, rows: int) -> np.ndarray:
    """Raw columns → the booster's input matrix (rows × features, float64): the one encoding of Retrain.

    Training, the registered pyfunc and the prediction server all encode through here, column by column, so a
    model sees the same numbers however its rows arrive (a frame read from the table, or JSON records).

    Raises:
        KeyError: a feature column is absent, naming it.
    """
    missing = [column for column in encoding.features if column not in columns]
    if missing:
        raise KeyError(f"rows lack the model's input column(s) {missing}")
    matrix = np.empty((rows, len(encoding.features)), dtype="float64")
    for position, column in enumerate(encoding.numeric):
        matrix[:, position] = numeric_values(columns[column])
    offset = len(encoding.numeric)
    for position, column in enumerate(encoding.categorical, start=offset):
        matrix[:, position] = category_codes(columns[column], encoding.vocabulary[column])
    return matrix


def encode_rows(frame: pd.DataFrame, encoding: Encoding) -> pd.DataFrame:
    """Raw rows → model inputs, all float64, vectorised; the input frame is not changed.

    Numeric columns are read as numbers (text that is not a number becomes missing); categorical
    columns become their code, NaN for a missing or never-seen category.

    Raises:
        KeyError: a feature column is absent, naming it.
    """
    missing = [column for column in encoding.features if column not in frame.columns]
    if missing:
        raise KeyError(f"rows lack the model's input column(s) {missing}")
    matrix = encode_columns({column: frame[column] for column in encoding.features}, encoding, len(frame))
    return pd.DataFrame(matrix, index=frame.index, columns=list(encoding.features))


class RawRowModel(PythonModel):
    """The pyfunc: raw rows in, the native LightGBM booster's predictions out (probabilities for binary)."""

    def load_context(self, context: Any) -> None:
        self.booster = lgb.Booster(model_file=context.artifacts[BOOSTER_ARTIFACT])
        self.encoding = Encoding.from_json(Path(context.artifacts[ENCODING_ARTIFACT]).read_text(encoding="utf-8"))

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> np.ndarray:
        return np.asarray(self.booster.predict(encode_rows(model_input, self.encoding)), dtype="float64")


# MLflow loads a model from code by running its copy of this file under a generated module name and
# taking the object given to `set_model`; imported as `retrain.model_package`, the file does nothing.
if __name__ != "retrain.model_package":
    set_model(RawRowModel())
