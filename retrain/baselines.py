"""Naive forecasters: what a person would predict without a model, scored on the same rows as the model.

A model is worth releasing only if it beats them. Four kinds, named as in a model config's `gates.baselines`:

- `median`, `mean`, `base-rate`: one constant learned from the history (the median minimises MAE, the mean
  squared error, the base rate is the mean of a 0/1 label);
- `last-value`: the entity's newest value before the row;
- `seasonal <period>` (`seasonal 1d`, `seasonal: 7d`, `{seasonal: 7d}`): the entity's value one period
  earlier (same hour yesterday, same day last week).

The entity is a set of columns (a store, a flight number); an empty set means the whole table is one series.

The no-leak rule, one for every kind: a value is usable for a row at time `t` only if its timestamp is strictly
before `known_until` (the instant the forecast is made: the holdout cut-off for the gates, as the model was fitted
on rows before it) and, for a seasonal forecaster, at or before `t - k·period` for the smallest `k >= 1` that
lands before `known_until` (Hyndman's seasonal naive: a holdout row 10 days after the cut-off is forecast from
the same weekday in the last week before the cut-off, never from a value the forecaster could not have seen).
`last-value` never uses a value at `t` itself. Without `known_until` (live monitoring: labels of earlier rows are
known by the time a row's own label matures), only the period rule applies. A row with no usable value (a new
entity, too little history) gets the `fallback` constant, so every row is forecast and the scores stay comparable.

Pure pandas/numpy, no Prefect and no MLflow: training, monitoring and `retrain backtest` call the same code.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd

from retrain.clock import format_duration, parse_duration

CONSTANT_KINDS = ("median", "mean", "base-rate")
KINDS = (*CONSTANT_KINDS, "last-value", "seasonal")
_ENTITY_COLUMN = "__entity"
_TIME_COLUMN = "__time"
_VALUE_COLUMN = "__value"


@dataclass(frozen=True)
class NaiveForecaster:
    """One naive forecaster: its kind and, for `seasonal`, its period."""

    kind: str
    period: timedelta | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown naive forecaster '{self.kind}': use one of {list(KINDS)}")
        if (self.kind == "seasonal") != (self.period is not None):
            raise ValueError("a seasonal forecaster needs a period (seasonal 7d); the others take none")
        if self.period is not None and self.period <= timedelta(0):
            raise ValueError(f"a seasonal period must be positive, got {self.period}")

    @property
    def name(self) -> str:
        """`median`, `last-value`, `seasonal-7d`: how reports, JSON and the backtest name it."""
        return f"seasonal-{format_duration(self.period)}" if self.period is not None else self.kind

    @property
    def metric_key(self) -> str:
        """`last_value`, `seasonal_7d`: the name as an MLflow metric suffix (`baseline_seasonal_7d`)."""
        return re.sub(r"[^A-Za-z0-9]+", "_", self.name)

    @property
    def is_constant(self) -> bool:
        return self.kind in CONSTANT_KINDS

    @property
    def spec(self) -> str:
        """The text a config holds for it (`seasonal 7d`), which `parse_forecaster` reads back."""
        return f"seasonal {format_duration(self.period)}" if self.period is not None else self.kind


def parse_forecaster(spec: Any) -> NaiveForecaster:
    """A forecaster from its config text: `median`, `last-value`, `seasonal 7d`, `seasonal: 7d` or `{seasonal: 7d}`.

    Raises:
        ValueError: an unknown kind or a bad period, naming what was given.
    """
    if isinstance(spec, NaiveForecaster):
        return spec
    if isinstance(spec, Mapping):
        if len(spec) != 1:
            raise ValueError(f"a naive forecaster is one entry such as {{seasonal: 7d}}, got {dict(spec)}")
        ((kind, period),) = spec.items()
        return NaiveForecaster(str(kind).strip().lower(), parse_duration(period))
    if not isinstance(spec, str):
        raise ValueError(f"a naive forecaster is text such as 'median' or 'seasonal 7d', got {spec!r}")
    kind, _, rest = spec.strip().lower().replace(":", " ").replace("_", "-").partition(" ")
    rest = rest.strip()
    return NaiveForecaster(kind, parse_duration(rest) if rest else None)


def constant_kind(metric: str, binary: bool) -> str:
    """The constant a metric rewards: the base rate for a 0/1 label, the median for MAE, else the mean."""
    if binary:
        return "base-rate"
    return "median" if metric == "mae" else "mean"


def constant_value(kind: str, history: np.ndarray) -> float:
    """The constant of `median`, `mean` or `base-rate` learned from the history's target values."""
    values = np.asarray(history, dtype="float64")
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return math.nan
    return float(np.median(values)) if kind == "median" else float(values.mean())


def default_forecasters(metric: str, binary: bool, times: pd.Series) -> list[NaiveForecaster]:
    """What a model must beat when the config lists none: the metric's constant, the last value, and the seasons
    the cadence has room for.

    `seasonal 1d` when rows come more often than daily (the same hour yesterday) and the window spans at least two
    days; `seasonal 7d` when the window spans at least three weeks (the same day last week). Both are what a person
    planning by hand would look at first.
    """
    forecasters = [NaiveForecaster(constant_kind(metric, binary)), NaiveForecaster("last-value")]
    ordered = pd.to_datetime(times).dropna().sort_values()
    if len(ordered) < 2:
        return forecasters
    span = ordered.iloc[-1] - ordered.iloc[0]
    steps = ordered.diff().dropna()
    steps = steps[steps > pd.Timedelta(0)]
    typical_step = steps.median() if len(steps) else span
    if typical_step < pd.Timedelta(days=1) and span >= pd.Timedelta(days=2):
        forecasters.append(NaiveForecaster("seasonal", timedelta(days=1)))
    if span >= pd.Timedelta(days=21):
        forecasters.append(NaiveForecaster("seasonal", timedelta(days=7)))
    return forecasters


def _entity_labels(frame: pd.DataFrame, entity: Sequence[str]) -> pd.Series:
    """One text label per row naming its entity (all rows the same label when there is no entity)."""
    if not entity:
        return pd.Series("", index=frame.index, dtype="object")
    parts = [_labels(frame[column]) for column in entity]
    label = parts[0]
    for part in parts[1:]:
        label = label + "\x1f" + part
    return label.astype("object")


def _labels(values: pd.Series) -> pd.Series:
    """An entity column as text, numbers canonical (7, 7.0 and "7" name the same store; a key read back from JSON
    and the table's integer column with a NULL agree), missing values as one label."""
    def label(value: Any) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
            return "<NA>"
        if isinstance(value, float | np.floating) and float(value).is_integer():
            return str(int(value))
        if isinstance(value, np.integer):
            return str(int(value))
        return str(value)

    return values.map(label).astype("object")


def _history_series(history: pd.DataFrame, timestamp: str, target: str, entity: Sequence[str]) -> pd.DataFrame:
    """The labelled history as one value per entity and instant (rows sharing both are averaged), time-ordered."""
    values = pd.to_numeric(history[target], errors="coerce").astype("float64")
    table = pd.DataFrame({
        _ENTITY_COLUMN: _entity_labels(history, entity).to_numpy(),
        _TIME_COLUMN: pd.to_datetime(history[timestamp]).to_numpy(),
        _VALUE_COLUMN: values.to_numpy(),
    })
    table = table[table[_VALUE_COLUMN].notna() & table[_TIME_COLUMN].notna()]
    table = table.groupby([_ENTITY_COLUMN, _TIME_COLUMN], sort=False, as_index=False)[_VALUE_COLUMN].mean()
    return table.sort_values(_TIME_COLUMN, kind="stable").reset_index(drop=True)


def lookup_times(
    forecaster: NaiveForecaster, times: pd.Series, known_until: datetime | None
) -> pd.Series:
    """For each row time `t`, the newest instant whose value the forecaster may use (inclusive bound).

    `last-value`: just before `t` and before `known_until`. `seasonal`: `t - k·period` with the smallest `k >= 1`
    that lands before `known_until` (or `k = 1` without one).
    """
    times = pd.to_datetime(times)
    tiny = pd.Timedelta(nanoseconds=1)
    if forecaster.kind == "last-value":
        bound = times - tiny
        if known_until is not None:
            bound = bound.clip(upper=pd.Timestamp(known_until) - tiny)
        return bound
    assert forecaster.period is not None
    period = pd.Timedelta(forecaster.period)
    if known_until is None:
        return times - period
    cut = pd.Timestamp(known_until)
    # smallest k >= 1 with t - k·period < cut  ⇔  k > (t - cut) / period
    ahead = (times - cut).to_numpy(dtype="timedelta64[ns]").astype("int64")  # integer ns: exact slots
    steps = np.maximum(np.floor_divide(ahead, period.value) + 1, 1)
    return times - pd.to_timedelta(steps * period.value, unit="ns")


def naive_predictions(
    forecaster: NaiveForecaster,
    history: pd.DataFrame,
    rows: pd.DataFrame,
    *,
    timestamp: str,
    target: str,
    entity: Sequence[str] = (),
    known_until: datetime | None = None,
    fallback: float | None = None,
) -> np.ndarray:
    """The forecaster's prediction for every row of `rows`, from the labelled `history` only, by the no-leak rule.

    Args:
        history: Rows with the timestamp, entity columns and the target (the label); may include `rows` themselves
            (their labels are used only where the rule allows, e.g. live monitoring of earlier matured rows).
        rows: The rows to forecast: the timestamp and entity columns are read, their target never.
        known_until: Values at or after this instant are unknown to the forecaster (the holdout cut-off).
        fallback: What a row with no usable value gets; default the history's median (mean for `mean` and
            `base-rate` forecasters) of the values known before `known_until`.

    Returns:
        One float per row, in the order of `rows`.
    """
    known = history
    if known_until is not None:
        known = history[pd.to_datetime(history[timestamp]) < pd.Timestamp(known_until)]
    known_values = pd.to_numeric(known[target], errors="coerce").to_numpy(dtype="float64")
    if forecaster.is_constant:
        return np.full(len(rows), constant_value(forecaster.kind, known_values))
    if fallback is None:
        fallback = constant_value("median", known_values)
    series = _history_series(known, timestamp, target, entity)
    wanted = pd.DataFrame({
        _ENTITY_COLUMN: _entity_labels(rows, entity).to_numpy(),
        _TIME_COLUMN: lookup_times(forecaster, pd.Series(pd.to_datetime(rows[timestamp]).to_numpy()),
                                   known_until).to_numpy(),
        "__position": np.arange(len(rows)),
    })
    wanted = wanted[wanted[_TIME_COLUMN].notna()]  # a row without a time has no season: the fallback
    if series.empty or wanted.empty:
        return np.full(len(rows), fallback, dtype="float64")
    ordered = wanted.sort_values(_TIME_COLUMN, kind="stable")
    # A seasonal value must come from the same phase: at most one period older than the slot it stands for.
    tolerance = pd.Timedelta(forecaster.period) if forecaster.period is not None else None
    matched = pd.merge_asof(
        ordered, series, on=_TIME_COLUMN, by=_ENTITY_COLUMN, direction="backward", tolerance=tolerance,
        allow_exact_matches=True,
    )
    predictions = np.full(len(rows), np.nan)
    predictions[matched["__position"].to_numpy()] = matched[_VALUE_COLUMN].to_numpy(dtype="float64")
    return np.where(np.isnan(predictions), fallback, predictions)


def forecast_all(
    forecasters: Sequence[NaiveForecaster],
    history: pd.DataFrame,
    rows: pd.DataFrame,
    *,
    timestamp: str,
    target: str,
    entity: Sequence[str] = (),
    known_until: datetime | None = None,
) -> dict[str, np.ndarray]:
    """Every forecaster's predictions for the same rows, by name, in the order given."""
    return {
        forecaster.name: naive_predictions(
            forecaster, history, rows, timestamp=timestamp, target=target, entity=entity, known_until=known_until
        )
        for forecaster in forecasters
    }


def entity_columns(key: Sequence[str], timestamp: str, group: Sequence[str] | None = None) -> list[str]:
    """The columns that name a series: the configured group, else the row key without the timestamp."""
    if group is not None:
        return list(group)
    return [column for column in key if column != timestamp]
