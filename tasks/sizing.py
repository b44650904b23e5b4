"""`retrain init`: read a table once, then write a model config (and its data contract) whose windows and minimums
fit the table's cadence, with the reason for each value beside it.

The defaults of `retrain.config` are sized for flights (hundreds of rows an hour): `split.min_rows: 200`,
`min_new_rows: 2000`, `canary.min_predictions: 200`, a 7-day monitoring window. On a table with one row a day they
mean a canary that needs 200 days of evidence and a retrain that waits five years for new rows. Here every count
is derived from the rows a day holds, and every window from the time it takes to gather enough of them:

- lookback: the days that hold `TARGET_TRAINING_ROWS` rows, at least four weeks (a weekly season seen four times)
  and at most half the table's span (the other half is left to replay and backtest); whole months past 8 weeks;
- split.min_rows: half of the holdout a window holds, so a quiet stretch still trains, at most the usual 200;
- monitoring.window: a week when a week holds `MONITORING_ROWS` rows, else whole months until it does (at most 3);
- monitoring.retrain_every: a week, a month when rows come less than daily; min_new_rows: most of the rows that
  period brings; cooldown: the same period (the signal of fresh labels is keyed by the newest row, so with a 1-day
  cooldown a challenger the gates rejected was retried every day: `retrain backtest` showed about two trainings in
  three days); max_age: two periods;
- canary.min_predictions: the paired rows of about a week, between 20 and 200; canary.max_duration: twice the
  time that takes, between 3 days and 1 month; rollback the same;
- gates.baselines: the metric's constant, the last value, the same hour yesterday for rows more often than daily,
  the same day last week when the lookback holds three weeks.

Pure functions of a DataFrame; the CLI reads the table and writes the files.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pandas as pd
import yaml

from retrain.clock import CalendarDuration, format_duration, parse_timestamps
from retrain.errors import ConfigError, DataError

TARGET_TRAINING_ROWS = 50_000  # rows a training window aims for: LightGBM's trees are stable well before this
MIN_LOOKBACK_DAYS = 28
MONITORING_ROWS = 200
MAX_CATEGORIES = 200  # a text column with more distinct values is an identifier, not a category
MAX_NULL_SHARE = 0.95
MONTH_DAYS = 365.2425 / 12


@dataclass(frozen=True)
class ColumnProfile:
    """One column as read: its kind (numeric, categorical, datetime, text), nulls and distinct values."""

    name: str
    kind: str
    null_share: float
    distinct: int


@dataclass(frozen=True)
class TableProfile:
    """What `init` read from the table: rows, span, cadence, columns, key candidates."""

    table: str
    rows: int
    first: pd.Timestamp
    last: pd.Timestamp
    span_days: float
    rows_per_day: float
    step: timedelta  # the median gap between distinct timestamps
    columns: tuple[ColumnProfile, ...]
    key_candidates: tuple[tuple[str, ...], ...]
    unparseable_timestamps: int

    @property
    def sub_daily(self) -> bool:
        return self.step < timedelta(days=1)


@dataclass(frozen=True)
class Choice:
    """One value `init` chose, where it goes in the config, and why."""

    path: str
    value: Any
    reason: str


@dataclass(frozen=True)
class Sizing:
    """The config `init` writes, as its choices in order, with the profile they came from."""

    profile: TableProfile
    choices: tuple[Choice, ...] = field(default_factory=tuple)

    def value(self, path: str) -> Any:
        return next(choice.value for choice in self.choices if choice.path == path)


def profile_table(frame: pd.DataFrame, table: str, timestamp: str, key: Sequence[str] | None = None) -> TableProfile:
    """Rows, span, cadence, each column's kind and the key candidates of a table.

    Raises:
        ConfigError: the timestamp (or a key column) is not a column of the table.
        DataError: no row has a parseable timestamp, or all share one instant (no cadence to size by).
    """
    missing = [name for name in [timestamp, *(key or [])] if name not in frame.columns]
    if missing:
        raise ConfigError(f"table '{table}' has no column(s) {missing}; it has {list(frame.columns)}")
    parsed = parse_timestamps(frame[timestamp])
    times = pd.Series(parsed.values).dropna()
    if times.empty:
        raise DataError(f"column '{timestamp}' of table '{table}' holds no parseable timestamp")
    distinct = pd.Series(times.unique()).sort_values()
    if len(distinct) < 2:
        raise DataError(f"every row of table '{table}' has the same '{timestamp}' ({distinct.iloc[0]}): a config "
                        "cannot be sized to a cadence of one instant")
    first, last = distinct.iloc[0], distinct.iloc[-1]
    span_days = max((last - first) / pd.Timedelta(days=1), 1e-9)
    steps = distinct.diff().dropna()
    step = steps.median().to_pytimedelta()
    rows_per_day = len(times) / max(span_days, step / timedelta(days=1))
    columns = tuple(_column_profile(frame[name], str(name), name == timestamp) for name in frame.columns)
    candidates = (tuple(key),) if key else key_candidates(frame, timestamp, columns)
    return TableProfile(table, len(frame), first, last, span_days, rows_per_day, step, columns, candidates,
                        int(parsed.unparseable.sum()))


def _column_profile(values: pd.Series, name: str, is_timestamp: bool) -> ColumnProfile:
    present = values.dropna()
    null_share = float(values.isna().mean()) if len(values) else 0.0
    distinct = int(present.nunique())
    if is_timestamp or pd.api.types.is_datetime64_any_dtype(values):
        kind = "datetime"
    elif pd.api.types.is_bool_dtype(values):
        kind = "categorical"
    elif pd.api.types.is_numeric_dtype(values):
        kind = "numeric"
    else:
        numbers = pd.to_numeric(present, errors="coerce")
        if len(present) and numbers.notna().all():
            kind = "numeric"
        else:
            kind = "categorical" if distinct <= MAX_CATEGORIES else "text"
    return ColumnProfile(name, kind, null_share, distinct)


def key_candidates(
    frame: pd.DataFrame, timestamp: str, columns: Sequence[ColumnProfile]
) -> tuple[tuple[str, ...], ...]:
    """Column sets that name one row: the timestamp alone, or with one or two categorical columns (the series)."""
    def unique(names: Sequence[str]) -> bool:
        subset = frame[list(names)]
        return not subset.isna().any().any() and not subset.duplicated().any()

    if unique([timestamp]):
        return ((timestamp,),)
    series = [c.name for c in columns if c.kind in ("categorical", "numeric") and c.name != timestamp
              and c.null_share == 0 and 1 < c.distinct <= MAX_CATEGORIES]
    found = [(timestamp, name) for name in series if unique([timestamp, name])]
    if not found:
        found = [(timestamp, a, b) for i, a in enumerate(series) for b in series[i + 1:] if unique([timestamp, a, b])]
    return tuple(found[:5])


def _days(days: float) -> timedelta:
    """A whole number of days (at least one), or whole months past eight weeks (`2mo`, `1y`)."""
    days = max(1.0, days)
    if days >= 56:
        return CalendarDuration(max(1, round(days / MONTH_DAYS)))
    return timedelta(days=math.ceil(days))


def _clamp(value: float, low: float, high: float) -> float:
    return min(max(value, low), high)


def size_config(profile: TableProfile, target: str, task: str = "regression",
                positive_above: float | None = None) -> Sizing:
    """Every sized value of a model config for this table, with the reason for each.

    Raises:
        ConfigError: the target is not a numeric column, or a binary task has no cut.
    """
    by_name = {column.name: column for column in profile.columns}
    if target not in by_name:
        raise ConfigError(f"table '{profile.table}' has no column '{target}'; it has {list(by_name)}")
    if by_name[target].kind != "numeric":
        raise ConfigError(f"target '{target}' of table '{profile.table}' is not numeric ({by_name[target].kind})")
    if task not in ("regression", "binary"):
        raise ConfigError(f"--task must be regression or binary, got '{task}'")
    key = list(profile.key_candidates[0]) if profile.key_candidates else []
    choices = _Choices()
    choose = choices.choose

    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", profile.table).strip("-") or "model"
    choose("name", name, f"the table '{profile.table}'")
    choose("source.table", profile.table, "read by ingest")
    choose("source.key", key, "given" if len(profile.key_candidates) == 1 and key else
           (f"unique on {profile.rows:,} rows (other candidates: {[list(k) for k in profile.key_candidates[1:]]})"
            if key else "no unique column set found: rows are not deduplicated by key"))
    if task == "binary":
        cut = positive_above if positive_above is not None else 0.5
        choose("target", {"column": target, "task": "binary", "positive_above": cut},
               f"label = {target} > {cut}")
        metric = choose("metric", "auc", "binary task: ranking quality whatever the base rate")
    else:
        choose("target", {"column": target, "task": "regression"}, "numeric target")
        metric = choose("metric", "mae", "regression: mean absolute error, in the target's own unit")

    _choose_features(profile, target, choose)
    lookback = _choose_window(profile, choose)
    _choose_gates(profile, metric, task, lookback, choose)
    _choose_monitoring(profile, lookback, choose)
    _choose_release(profile, choose)
    return Sizing(profile, tuple(choices.made))


class _Choices:
    def __init__(self) -> None:
        self.made: list[Choice] = []

    def choose(self, path: str, value: Any, reason: str) -> Any:
        self.made.append(Choice(path, value, reason))
        return value


Choose = Callable[[str, Any, str], Any]


def _choose_features(profile: TableProfile, target: str, choose: Choose) -> None:
    """Every other column that can be learned from: numbers as numbers, few-valued texts as categories."""
    skip = {target, *(c.name for c in profile.columns if c.kind == "datetime")}
    numeric, categorical, left_out = [], [], []
    for column in profile.columns:
        if column.name in skip:
            continue
        if column.null_share > MAX_NULL_SHARE or column.distinct <= 1:
            left_out.append(f"{column.name} (empty or constant)")
        elif column.kind == "text":
            left_out.append(f"{column.name} ({column.distinct:,} distinct texts: an identifier)")
        elif column.kind == "categorical":
            categorical.append(column.name)
        else:
            numeric.append(column.name)
    if not numeric and not categorical:
        raise ConfigError(f"table '{profile.table}' has no column to learn from besides the timestamp and target")
    choose("features.numeric", numeric, "numeric columns" + (f"; left out: {', '.join(left_out)}" if left_out else "")
           + "; drop any not known when a prediction is asked for")
    choose("features.categorical", categorical, f"text columns with at most {MAX_CATEGORIES} values")


def _choose_window(profile: TableProfile, choose: Choose) -> timedelta:
    """The lookback and split: enough rows to learn from, half the span left to replay."""
    r, span = profile.rows_per_day, profile.span_days
    per_day = f"{r:,.1f} rows a day" if r < 100 else f"{r:,.0f} rows a day"
    needed = TARGET_TRAINING_ROWS / r
    lookback = _days(_clamp(needed, MIN_LOOKBACK_DAYS, max(MIN_LOOKBACK_DAYS, span / 2)))
    lookback_days = lookback / timedelta(days=1)
    choose("training_window.lookback", format_duration(lookback),
           f"{per_day}: {needed:,.0f} days hold {TARGET_TRAINING_ROWS:,} rows; at least {MIN_LOOKBACK_DAYS} days, "
           f"at most half the {span:,.0f}-day span")
    window_rows = r * lookback_days
    holdout = 0.15 * window_rows
    min_rows = int(_clamp(holdout / 2, 3, 200))
    choose("split.validation_fraction", 0.15, "the last 15% before the holdout tunes")
    choose("split.holdout_fraction", 0.15, "the newest 15% of the window judges the gates")
    choose("split.min_rows", min_rows, f"half of the ~{holdout:,.0f} holdout rows a window holds, at most 200")
    return lookback


def _choose_gates(profile: TableProfile, metric: str, task: str, lookback: timedelta, choose: Choose) -> None:
    """The naive forecasters a model must beat, by the cadence."""
    span, lookback_days = profile.span_days, lookback / timedelta(days=1)
    forecasters = ["median" if metric == "mae" else ("base-rate" if task == "binary" else "mean"), "last-value"]
    if profile.sub_daily and span >= 2:
        forecasters.append("seasonal 1d")
    if lookback_days >= 21 and profile.step <= timedelta(days=1):
        forecasters.append("seasonal 7d")
    choose("gates.baselines", forecasters, "what a person would predict: the constant the metric rewards, the last "
           "value" + (", the same hour yesterday" if "seasonal 1d" in forecasters else "")
           + (", the same day last week" if "seasonal 7d" in forecasters else ""))
    choose("gates.baseline_margin", 0.0, "the model must beat the best naive forecaster on the same rows")


def _choose_monitoring(profile: TableProfile, lookback: timedelta, choose: Choose) -> None:
    """The monitoring window and the retrain policy's periods and counts."""
    r = profile.rows_per_day
    if r * 7 >= MONITORING_ROWS:
        window: timedelta = timedelta(days=7)
        why = f"a week holds {r * 7:,.0f} rows (>= {MONITORING_ROWS})"
    else:
        months = int(_clamp(math.ceil(MONITORING_ROWS / max(r * MONTH_DAYS, 1e-9)), 1, 3))
        window = CalendarDuration(months)
        why = f"a week holds {r * 7:,.1f} rows, too few to judge: whole months ({r * MONTH_DAYS * months:,.0f} rows)"
    choose("monitoring.window", format_duration(window), why)
    every = timedelta(days=7) if profile.step <= timedelta(days=1) else CalendarDuration(1)
    every_days = every / timedelta(days=1)
    choose("monitoring.retrain_every", format_duration(every),
           "fresh labels retrain weekly: a seventh of daily retraining's trainings" if every_days == 7
           else "rows come less often than daily: a month of fresh labels")
    min_new = max(1, int(0.8 * r * every_days))
    choose("monitoring.min_new_rows", min_new, f"80% of the {r * every_days:,.0f} rows that period brings")
    choose("monitoring.cooldown", format_duration(every),
           "a challenger the gates rejected is retried a period later, not the next day (with a 1d cooldown the "
           "backtests retrained on about two days in three)")
    choose("monitoring.max_age", format_duration(2 * every if not isinstance(every, CalendarDuration)
                                                 else CalendarDuration(2)), "two retrain periods")
    choose("monitoring.history", format_duration(max(lookback, timedelta(days=60))), "at least the lookback")



def _choose_release(profile: TableProfile, choose: Choose) -> None:
    """Canary and rollback evidence: about a week of paired rows, and time enough to gather it twice."""
    r = profile.rows_per_day
    min_predictions = int(_clamp(round(r * 7), 20, 200))
    choose("release.canary.min_predictions", min_predictions,
           f"the paired rows of about a week ({r * 7:,.0f}), between 20 and 200")
    duration = _days(_clamp(2 * min_predictions / r, 3, 30))
    if not isinstance(duration, CalendarDuration) and duration >= timedelta(days=28):
        duration = CalendarDuration(1)
    choose("release.canary.max_duration", format_duration(duration),
           f"twice the {min_predictions / r:,.1f} days {min_predictions} rows take, between 3 days and a month")
    choose("release.rollback.min_predictions", min_predictions, "as the canary")
    choose("release.rollback.bake", format_duration(duration), "as the canary's max_duration")


def _nested(choices: Sequence[Choice]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for choice in choices:
        node = tree
        *parents, leaf = choice.path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = choice.value
    return tree


def config_yaml(sizing: Sizing, timestamp: str, contract_name: str) -> str:
    """The model config as YAML, each value with a comment saying what it was derived from."""
    profile = sizing.profile
    reasons = {choice.path: choice.reason for choice in sizing.choices}
    tree = _nested(sizing.choices)
    tree["source"] = {"table": tree["source"]["table"], "timestamp": timestamp, "key": tree["source"]["key"]}
    reasons["source.timestamp"] = f"rows every {format_duration(profile.step)} (median step), " \
        f"{profile.first:%Y-%m-%d} to {profile.last:%Y-%m-%d}"
    tree["contract"] = contract_name
    reasons["contract"] = "inferred from the table beside this file (numeric ranges on features soft)"
    order = ["name", "source", "target", "features", "metric", "training_window", "split", "gates", "monitoring",
             "release", "contract"]
    lines = [f"# Written by `retrain init` from table '{profile.table}': {profile.rows:,} rows, "
             f"{profile.rows_per_day:,.1f} a day over {profile.span_days:,.0f} days. Each value says what it was "
             "derived from; edit freely.", ""]

    def emit(node: dict[str, Any], prefix: str, indent: int) -> None:
        for name, value in node.items():
            path = f"{prefix}{name}"
            pad = "  " * indent
            if isinstance(value, dict) and path not in reasons:
                lines.append(f"{pad}{name}:")
                emit(value, f"{path}.", indent + 1)
                continue
            text = yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=10_000).strip()
            text = text.removesuffix("\n...").strip()
            comment = reasons.get(path, "")
            lines.append(f"{pad}{name}: {text}" + (f"  # {comment}" if comment else ""))

    emit({name: tree[name] for name in order if name in tree}, "", 0)
    return "\n".join(lines) + "\n"


def describe_sizing(sizing: Sizing) -> list[dict[str, Any]]:
    """The choices as JSON rows (path, value, reason)."""
    return [{"path": choice.path, "value": choice.value, "reason": choice.reason} for choice in sizing.choices]

