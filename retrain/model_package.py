"""The packaged model: an MLflow pyfunc that takes the source table's rows as they are and encodes inside.

What a registered model must be for a user: `mlflow.pyfunc.load_model("models:/NAME@champion")
.predict(rows)` works on rows read from the table (strings for categorical columns, numbers for numeric
ones, missing values allowed), and so does `mlflow models serve`. LightGBM wants numbers, so the model
carries its own encoding: the vocabulary of every categorical column is an artifact of the model, read by
`load_context`, never a file beside it.

This file is also the model's code: it is logged as an MLflow "model from code" and copied into every
model, so a model keeps the encoding it was trained with whatever this file becomes later. That is why
it imports only numpy, pandas, LightGBM and MLflow's pyfunc, and `holidays` when a model marks holidays
(no Prefect, Optuna or pandera, nothing else of Retrain): scoring and serving load it without the training
stack. Training imports the same functions, so the flow's predictions and the served model's are computed
by one piece of code.
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
CALENDAR_FEATURES = ("hour", "dayofweek", "dayofmonth", "month", "dayofyear", "is_weekend", "holiday")


@dataclass(frozen=True)
class Residual:
    """The naive forecaster a residual model predicts the change from, with the values it reads.

    The booster learns `target - naive` and the model adds the naive value back, so a trend the trees cannot
    extrapolate is carried by the naive value. The model carries the labelled series of its training window
    (per entity: times and values) and the cut after which it knows no value, and applies the one rule of
    `retrain.baselines` (tested equal there): `last-value` is the entity's newest value before the row and before
    the cut; `seasonal` the value at `t - k·period` for the smallest `k >= 1` landing before the cut (within one
    period of that slot). A row with no usable value gets `fallback` (the median of the known values).
    """

    kind: str
    period_seconds: float | None
    cut: str
    fallback: float
    timestamp: str
    entity: tuple[str, ...] = ()
    entities: tuple[str, ...] = ()
    times: tuple[int, ...] = ()  # nanoseconds since the epoch, naive UTC
    values: tuple[float, ...] = ()

    @property
    def inputs(self) -> tuple[str, ...]:
        return (self.timestamp, *self.entity)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "period_seconds": self.period_seconds, "cut": self.cut, "fallback": self.fallback,
                "timestamp": self.timestamp, "entity": list(self.entity), "entities": list(self.entities),
                "times": list(self.times), "values": list(self.values)}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Residual:
        return cls(kind=raw["kind"], period_seconds=raw["period_seconds"], cut=raw["cut"], fallback=raw["fallback"],
                   timestamp=raw["timestamp"], entity=tuple(raw["entity"]), entities=tuple(raw["entities"]),
                   times=tuple(raw["times"]), values=tuple(raw["values"]))


def entity_labels(columns: Sequence[Column]) -> np.ndarray:
    """One text label per row naming its series: numbers canonical (7, 7.0 and "7" agree), missing as `<NA>`."""
    def label(value: Any) -> str:
        if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
            return "<NA>"
        if isinstance(value, float | np.floating) and float(value).is_integer():
            return str(int(value))
        if isinstance(value, np.integer):
            return str(int(value))
        return str(value)

    parts = [[label(value) for value in column] for column in columns]
    if not parts:
        return np.array([], dtype=object)
    return np.array(["\x1f".join(values) for values in zip(*parts, strict=True)], dtype=object)


def build_residual(
    history: pd.DataFrame, target: np.ndarray, timestamp: str, entity: Sequence[str], kind: str,
    period_seconds: float | None, cut: pd.Timestamp,
) -> Residual:
    """The residual base learned from labelled `history` rows (`target` their labels) known before `cut`."""
    times = instant_values(history[timestamp])
    values = np.asarray(target, dtype="float64")
    known = np.asarray((times < cut) & ~times.isna()) & np.isfinite(values)
    labels = entity_labels([history[column] for column in entity]) if entity else np.full(len(history), "")
    series = pd.DataFrame({"entity": labels[known], "time": times[known].asi8, "value": values[known]})
    series = series.groupby(["entity", "time"], as_index=False)["value"].mean().sort_values("time", kind="stable")
    fallback = float(np.median(values[known])) if known.any() else 0.0
    return Residual(kind=kind, period_seconds=period_seconds, cut=cut.isoformat(), fallback=fallback,
                    timestamp=timestamp, entity=tuple(entity), entities=tuple(series["entity"]),
                    times=tuple(int(t) for t in series["time"]), values=tuple(float(v) for v in series["value"]))


def residual_base(columns: Mapping[str, Column], residual: Residual, rows: int) -> np.ndarray:
    """The naive value of every row by the residual's rule (see `Residual`), `fallback` where there is none."""
    times = instant_values(columns[residual.timestamp])
    labels = entity_labels([columns[column] for column in residual.entity]) if residual.entity else \
        np.full(rows, "", dtype=object)
    cut = pd.Timestamp(residual.cut)
    stamps = times.asi8  # integer nanoseconds: a float would lose the 1 ns that keeps a row's own value out
    if residual.kind == "last-value":
        slots = np.minimum(stamps - 1, cut.value - 1)
        tolerance = None
    else:
        period = int(round(float(residual.period_seconds) * 1e9))
        steps = np.maximum(np.floor_divide(stamps - cut.value, period) + 1, 1)
        slots = stamps - steps * period
        tolerance = pd.Timedelta(period, unit="ns")
    result = np.full(rows, residual.fallback, dtype="float64")
    valid = ~np.asarray(times.isna())
    if not residual.times or not valid.any():
        return result
    wanted = pd.DataFrame({"entity": labels[valid], "time": pd.to_datetime(slots[valid]),
                           "position": np.flatnonzero(valid)}).sort_values("time", kind="stable")
    series = pd.DataFrame({"entity": np.array(residual.entities, dtype=object),
                           "time": pd.to_datetime(np.array(residual.times, dtype="int64")),
                           "value": np.array(residual.values, dtype="float64")})
    matched = pd.merge_asof(wanted, series, on="time", by="entity", direction="backward", tolerance=tolerance)
    found = matched["value"].to_numpy(dtype="float64")
    positions = matched["position"].to_numpy()
    result[positions] = np.where(np.isnan(found), residual.fallback, found)
    return result


@dataclass(frozen=True)
class Encoding:
    """How raw rows become model inputs: which columns, in which order, and each category's code.

    The code of a category is its position in the column's vocabulary (sorted labels seen in training);
    unknown and missing categories are NaN, which is what LightGBM reads as missing (a negative code
    would be turned into NaN by LightGBM anyway, with a warning printed from C++).

    Calendar features (`calendar`) are derived from the `timestamp` column here, inside the model, so whoever
    sends a raw row (serving, monitoring, a user of the pyfunc) gets them with no code: the row carries its
    timestamp, the model reads its hour, weekday, month, day of year, weekend and (with `holidays`, a country
    code) whether it is a public holiday there.
    """

    numeric: tuple[str, ...]
    categorical: tuple[str, ...]
    vocabulary: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    timestamp: str | None = None
    calendar: tuple[str, ...] = ()
    holidays: str | None = None
    residual: Residual | None = None

    @property
    def calendar_columns(self) -> tuple[str, ...]:
        """The booster's names of the calendar features: `<timestamp>_<feature>` (`day_dayofweek`)."""
        return tuple(f"{self.timestamp}_{name}" for name in self.calendar)

    @property
    def features(self) -> tuple[str, ...]:
        """The booster's input columns in order: numeric, categorical, then the calendar features."""
        return (*self.numeric, *self.categorical, *self.calendar_columns)

    @property
    def inputs(self) -> tuple[str, ...]:
        """The raw columns a row must carry: the features, the timestamp when calendar features use it, and the
        timestamp and series columns a residual model looks its naive value up by."""
        columns = (*self.numeric, *self.categorical, *((self.timestamp,) if self.calendar else ()),
                   *(self.residual.inputs if self.residual is not None else ()))
        return tuple(dict.fromkeys(columns))

    def to_json(self) -> str:
        raw: dict[str, Any] = {
            "numeric": list(self.numeric),
            "categorical": list(self.categorical),
            "vocabulary": {column: list(labels) for column, labels in self.vocabulary.items()},
        }
        if self.calendar:
            raw |= {"timestamp": self.timestamp, "calendar": list(self.calendar), "holidays": self.holidays}
        if self.residual is not None:
            raw["residual"] = self.residual.to_dict()
        return json.dumps(raw, indent=1)

    @classmethod
    def from_json(cls, text: str) -> Encoding:
        raw = json.loads(text)
        return cls(
            numeric=tuple(raw["numeric"]),
            categorical=tuple(raw["categorical"]),
            vocabulary={column: tuple(labels) for column, labels in raw["vocabulary"].items()},
            timestamp=raw.get("timestamp"),
            calendar=tuple(raw.get("calendar", ())),
            holidays=raw.get("holidays"),
            residual=Residual.from_dict(raw["residual"]) if raw.get("residual") else None,
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


def build_encoding(
    frame: pd.DataFrame,
    numeric: Sequence[str],
    categorical: Sequence[str],
    timestamp: str | None = None,
    calendar: Sequence[str] = (),
    holidays: str | None = None,
) -> Encoding:
    """The encoding learned from training rows: each categorical column's sorted distinct labels, and the calendar
    features to derive from `timestamp`.

    Raises:
        ValueError: an unknown calendar feature, calendar features without a timestamp column, or a calendar
            feature's name taken by a column.
    """
    unknown = [name for name in calendar if name not in CALENDAR_FEATURES]
    if unknown:
        raise ValueError(f"unknown calendar feature(s) {unknown}: use some of {list(CALENDAR_FEATURES)}")
    if calendar and not timestamp:
        raise ValueError("calendar features need the timestamp column they are derived from")
    vocabulary = {
        column: tuple(sorted(str(label) for label in category_labels(frame[column]).dropna().unique()))
        for column in categorical
    }
    encoding = Encoding(numeric=tuple(numeric), categorical=tuple(categorical), vocabulary=vocabulary,
                        timestamp=timestamp if calendar else None, calendar=tuple(calendar),
                        holidays=holidays if "holiday" in calendar else None)
    taken = sorted(set(encoding.calendar_columns) & {*numeric, *categorical})
    if taken:
        raise ValueError(f"calendar feature name(s) {taken} are also feature columns: rename the columns")
    return encoding


def instant_values(values: Column) -> pd.DatetimeIndex:
    """A timestamp column as naive UTC instants, NaT where a value is missing or not an instant.

    Takes what rows hold: datetimes (a frame read from the table), ISO 8601 text (an offset converted to UTC,
    each value parsed on its own so one value's offset never shifts another), or epoch milliseconds (how
    pandas' `to_json` writes a timestamp, as a JSON record carries it).
    """
    if isinstance(values, pd.Series | pd.Index) and pd.api.types.is_datetime64_any_dtype(values.dtype):
        index = pd.DatetimeIndex(values)
        return index.tz_convert("UTC").tz_localize(None) if index.tz is not None else index
    return pd.DatetimeIndex([_instant(value) for value in values], dtype="datetime64[ns]")


def _instant(value: Any) -> pd.Timestamp:
    if value is None or isinstance(value, bool):
        return pd.NaT
    try:
        if isinstance(value, int | float | np.integer | np.floating):
            if not math.isfinite(float(value)):
                return pd.NaT
            instant = pd.Timestamp(int(value), unit="ms")
        else:
            instant = pd.Timestamp(value)
    except (TypeError, ValueError, OverflowError, pd.errors.OutOfBoundsDatetime):
        return pd.NaT
    if instant is pd.NaT:
        return pd.NaT
    return instant.tz_convert("UTC").tz_localize(None) if instant.tzinfo is not None else instant


@lru_cache(maxsize=16)
def _holiday_calendar(country: str) -> Any:
    # imported here: only a model with holiday features needs the package (its requirements name it then)
    import holidays

    return holidays.country_holidays(country)


def calendar_values(instants: pd.DatetimeIndex, name: str, country: str | None = None) -> np.ndarray:
    """One calendar feature of naive-UTC instants as float64 (NaN where the instant is missing).

    `dayofweek` is 0 on Monday; `is_weekend` and `holiday` are 1 or 0; `holiday` marks the public holidays of
    `country` (the `holidays` package) on the instant's UTC date.
    """
    missing = np.asarray(instants.isna())
    if name == "hour":
        values = instants.hour
    elif name == "dayofweek":
        values = instants.dayofweek
    elif name == "dayofmonth":
        values = instants.day
    elif name == "month":
        values = instants.month
    elif name == "dayofyear":
        values = instants.dayofyear
    elif name == "is_weekend":
        values = instants.dayofweek >= 5  # noqa: PLR2004 - Saturday and Sunday
    elif name == "holiday":
        if country is None:
            raise ValueError("the holiday feature needs a country")
        calendar = _holiday_calendar(country)
        days = instants.normalize()
        marked = {day: day.date() in calendar for day in days.dropna().unique()}  # each date looked up once
        values = np.array([not gone and marked[day] for day, gone in zip(days, missing, strict=True)], dtype=bool)
    else:
        raise ValueError(f"unknown calendar feature '{name}': use one of {list(CALENDAR_FEATURES)}")
    result = np.asarray(values, dtype="float64")
    result[missing] = np.nan
    return result


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
    inputs = _inputs_of(encoding)
    missing = [column for column in inputs if column not in columns]
    if missing:
        raise KeyError(f"rows lack the model's input column(s) {missing}")
    calendar = tuple(getattr(encoding, "calendar", ()))  # an encoding of an older package has none
    matrix = np.empty((rows, len(encoding.numeric) + len(encoding.categorical) + len(calendar)), dtype="float64")
    for position, column in enumerate(encoding.numeric):
        matrix[:, position] = numeric_values(columns[column])
    offset = len(encoding.numeric)
    for position, column in enumerate(encoding.categorical, start=offset):
        matrix[:, position] = category_codes(columns[column], encoding.vocabulary[column])
    if calendar:
        instants = instant_values(columns[encoding.timestamp])
        offset += len(encoding.categorical)
        for position, name in enumerate(calendar, start=offset):
            matrix[:, position] = calendar_values(instants, name, encoding.holidays)
    return matrix


def _inputs_of(encoding: Any) -> tuple[str, ...]:
    """The raw columns an encoding reads (an encoding of an older package has no `inputs`: its features)."""
    return tuple(getattr(encoding, "inputs", encoding.features))


def encode_rows(frame: pd.DataFrame, encoding: Encoding) -> pd.DataFrame:
    """Raw rows → model inputs, all float64, vectorised; the input frame is not changed.

    Numeric columns are read as numbers (text that is not a number becomes missing); categorical
    columns become their code, NaN for a missing or never-seen category.

    Raises:
        KeyError: a feature column is absent, naming it.
    """
    inputs = _inputs_of(encoding)
    missing = [column for column in inputs if column not in frame.columns]
    if missing:
        raise KeyError(f"rows lack the model's input column(s) {missing}")
    matrix = encode_columns({column: frame[column] for column in inputs}, encoding, len(frame))
    return pd.DataFrame(matrix, index=frame.index, columns=list(encoding.features))


class RawRowModel(PythonModel):
    """The pyfunc: raw rows in, the native LightGBM booster's predictions out (probabilities for binary)."""

    def load_context(self, context: Any) -> None:
        self.booster = lgb.Booster(model_file=context.artifacts[BOOSTER_ARTIFACT])
        self.encoding = Encoding.from_json(Path(context.artifacts[ENCODING_ARTIFACT]).read_text(encoding="utf-8"))

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> np.ndarray:
        return predict_frame(self.booster, self.encoding, model_input)


def predict_frame(booster: lgb.Booster, encoding: Encoding, frame: pd.DataFrame) -> np.ndarray:
    """The model's predictions for raw rows: the booster's, plus the naive value for a residual model. Training
    scores its holdout through here too, so the flow's numbers are the registered model's."""
    predictions = np.asarray(booster.predict(encode_rows(frame, encoding)), dtype="float64")
    residual = getattr(encoding, "residual", None)
    if residual is not None:
        predictions = predictions + residual_base({c: frame[c] for c in residual.inputs}, residual, len(frame))
    return predictions


# MLflow loads a model from code by running its copy of this file under a generated module name and
# taking the object given to `set_model`; imported as `retrain.model_package`, the file does nothing.
if __name__ != "retrain.model_package":
    set_model(RawRowModel())
