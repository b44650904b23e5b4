"""Inferring a first data contract from a source table as it is (the contract itself: `retrain.contract`).

Pure, and free of Prefect: `retrain contract infer` runs it without starting any flow or server.

Inferring ranges: the observed `[min, max]` is widened by `RANGE_MARGIN` (a quarter of the observed
span) on each side, so next month's ordinary values are not quarantined for being slightly outside
what one sample happened to hold. A column that never went below zero keeps zero as its floor
(durations, distances and counts do not turn negative because a margin says so); a constant column
is widened by 1% of its value, at least 1; integer bounds are rounded outwards. Calendar and clock fields
(an integer column named month, day, hour, minute, ... whose values lie in that field's domain) are capped at
the domain (`CALENDAR_DOMAINS`: month 1-12, not the 0-15 a margin gave). Whole-number floats (pandas stores an
integer column with NULLs as float) are inferred as integer.

Soft and hard ranges: an inferred range on a feature is soft (`hard: false`): a value outside it is counted and
reported by ingest (and seen by drift), not quarantined, since a record rainfall day is real data the model should
see; the target's range stays hard (a delay of a million minutes is a broken row), and a person marks any rule hard
by hand.

Two kinds of column get no range, because new rows lie beyond any range seen: key columns (a `ride_id`
that reached 21,723 today is 25,000 next month; a string key whose values are all distinct gets no allowed
set either), and numbers
that grow with time (`growing: true`: at least `GROWING_MIN_DISTINCT` distinct values whose rank order
follows the timestamp's, Spearman >= `GROWING_MIN_CORRELATION`). The contract file says so beside them.
Datetime columns say whether a value with a UTC offset is converted to UTC (`offsets: convert`, inferred)
or quarantined (`offsets: refuse`).

Inferring batch rules: `min_rows` is 1, so an empty batch (nothing arrived) is refused; `max_rows` is
twice the rows inferred from, so the first batch, the whole table, passes while a doubled load does
not. Freshness (`max_age_hours`) is left off: the source's cadence cannot be read from one snapshot,
and historical data such as the 2013 example would always be stale. Set it by hand for a live source.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pandas as pd

from retrain.clock import parse_timestamps
from retrain.config import ModelConfig
from retrain.contract import BatchRules, ColumnRule, ColumnType, Contract, TimestampOffsets
from retrain.errors import ConfigError

RANGE_MARGIN = 0.25  # share of the observed span added below the minimum and above the maximum
CONSTANT_MARGIN = 0.01  # share of the value (at least 1) added on each side when a column held a single value
MAX_ALLOWED_VALUES = 200  # a string column with at most this many distinct values gets an allowed set
LENGTH_HEADROOM = 2  # an open string column may be this many times longer than the longest seen
MIN_MAX_LENGTH = 16
ROW_BAND_HEADROOM = 2  # a batch may hold this many times the rows the contract was inferred from
GROWING_MIN_DISTINCT = 50  # fewer distinct values (a year, a month number) are a range, not a growing series
GROWING_MIN_CORRELATION = 0.95  # Spearman rank correlation with the timestamp
# Integer calendar and clock fields, by column name: their inferred range is capped at the field's domain.
CALENDAR_DOMAINS: dict[str, tuple[int, int]] = {
    "month": (1, 12), "day": (1, 31), "dayofmonth": (1, 31), "hour": (0, 23), "minute": (0, 59),
    "second": (0, 59), "dayofweek": (0, 6), "weekday": (0, 6), "quarter": (1, 4), "week": (1, 53),
    "weekofyear": (1, 53), "dayofyear": (1, 366),
}

def infer_contract(frame: pd.DataFrame, config: ModelConfig) -> Contract:
    """A first contract that the given rows satisfy, with ranges widened so ordinary new rows do too.

    Args:
        frame: Rows as the source holds them, typically the whole table at the start.
        config: The model config, which names the timestamp and key columns.

    Raises:
        ConfigError: the timestamp or a key column is not in the frame.
    """
    required = [config.source.timestamp, *config.source.key]
    missing = [name for name in required if name not in frame.columns]
    if missing:
        raise ConfigError(
            f"columns {missing} named in the model config are not in the data; it has {list(frame.columns)}"
        )
    times = parse_timestamps(frame[config.source.timestamp]).values
    columns = {
        str(name): infer_column_rule(
            frame[name], force_datetime=name == config.source.timestamp, key=name in config.source.key, times=times,
            name=str(name), soft=name != config.target.column,
        )
        for name in frame.columns
    }
    for name in required:
        columns[name] = columns[name].model_copy(update={"nullable": False})
    rows = len(frame)
    batch = BatchRules(min_rows=1, max_rows=max(ROW_BAND_HEADROOM * rows, 1))
    return Contract(
        model=config.name, timestamp=config.source.timestamp, key=list(config.source.key), columns=columns, batch=batch
    )


def infer_column_rule(
    values: pd.Series, force_datetime: bool = False, key: bool = False, times: pd.Series | None = None,
    name: str | None = None, soft: bool = False,
) -> ColumnRule:
    """The rule for one column: its type from the values, nulls allowed if any were seen, bounds widened.

    Args:
        values: The column as stored.
        force_datetime: The column is the timestamp, whatever its values look like.
        key: The column is part of the key: no range and no allowed set, since new rows bring new keys.
        times: The rows' timestamps (parsed), to recognise numbers that grow with time; None: no such check.
        name: The column's name, to recognise calendar fields (`CALENDAR_DOMAINS`).
        soft: Write a numeric range as soft (`hard: false`): counted, not quarantined (features, not the target).
    """
    nullable = bool(values.isna().any())
    present = values.dropna()
    if force_datetime or pd.api.types.is_datetime64_any_dtype(values):
        return ColumnRule(type=ColumnType.DATETIME, nullable=nullable, offsets=TimestampOffsets.CONVERT)
    if pd.api.types.is_bool_dtype(values):
        return ColumnRule(type=ColumnType.STRING, nullable=nullable, allowed=["False", "True"])
    if not pd.api.types.is_numeric_dtype(values):
        numbers = pd.to_numeric(present, errors="coerce")
        if len(present) and numbers.notna().all():
            present = numbers
        else:
            return _string_rule(present.astype(str), nullable, key)
    return _number_rule(present, nullable, key, times, name, soft)


def _number_rule(present: pd.Series, nullable: bool, key: bool, times: pd.Series | None, name: str | None = None,
                 soft: bool = False) -> ColumnRule:
    if not len(present):
        return ColumnRule(type=ColumnType.FLOAT, nullable=True)
    integral = bool((present % 1 == 0).all())
    column_type = ColumnType.INTEGER if integral else ColumnType.FLOAT
    if key:
        return ColumnRule(type=column_type, nullable=nullable)
    if times is not None and grows_with_time(present, times):
        return ColumnRule(type=column_type, nullable=nullable, growing=True)
    low, high = widen_range(float(present.min()), float(present.max()), integral)
    domain = CALENDAR_DOMAINS.get((name or "").lower())
    if integral and domain is not None and domain[0] <= present.min() and present.max() <= domain[1]:
        low, high = max(low, domain[0]), min(high, domain[1])
    return ColumnRule(type=column_type, nullable=nullable, min=low, max=high, hard=not soft)


def grows_with_time(numbers: pd.Series, times: pd.Series) -> bool:
    """Whether numbers rise with the timestamp (an ID, a counter): many distinct values in the time's rank order.

    Args:
        numbers: Non-null numbers, indexed like `times`.
        times: The timestamp of every row (NaT where unparseable).
    """
    paired = pd.DataFrame({"number": numbers.astype("float64"), "time": times.reindex(numbers.index)}).dropna()
    if paired["number"].nunique() < GROWING_MIN_DISTINCT or paired["time"].nunique() < 2:
        return False
    correlation = paired["number"].rank().corr(paired["time"].rank())
    return bool(correlation >= GROWING_MIN_CORRELATION)


def widen_range(low: float, high: float, integral: bool) -> tuple[int | float, int | float]:
    """The observed range with the margins described in the module docstring."""
    span = high - low
    margin = span * RANGE_MARGIN if span > 0 else max(abs(low) * CONSTANT_MARGIN, 1.0)
    wide_low = low - margin
    if low >= 0:
        wide_low = max(wide_low, 0.0)
    wide_high = high + margin
    if integral:
        return math.floor(wide_low), math.ceil(wide_high)
    return _round_outwards(wide_low, math.floor), _round_outwards(wide_high, math.ceil)


def _round_outwards(value: float, direction: Callable[[float], int]) -> float:
    # Four significant digits keep the YAML readable while never narrowing the range.
    if value == 0:
        return 0.0
    digits = 3 - math.floor(math.log10(abs(value)))
    scale = 10.0**digits
    return round(direction(value * scale) / scale, max(digits, 0))


def _string_rule(present: pd.Series, nullable: bool, key: bool = False) -> ColumnRule:
    distinct = present.unique()
    # A key column whose every value is distinct is an identifier: new rows bring new values. One that
    # repeats (a carrier within a composite key) is a category like any other.
    identifier = key and len(distinct) == len(present)
    if not identifier and 0 < len(distinct) <= MAX_ALLOWED_VALUES:
        return ColumnRule(type=ColumnType.STRING, nullable=nullable, allowed=sorted(str(v) for v in distinct))
    longest = int(present.str.len().max()) if len(present) else 0
    return ColumnRule(
        type=ColumnType.STRING, nullable=nullable, max_length=max(LENGTH_HEADROOM * longest, MIN_MAX_LENGTH)
    )



