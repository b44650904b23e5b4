"""Validate a batch of source rows against the model's data contract: coerce, check, quarantine, judge.

Row rules run vectorized: the contract compiles to a pandera schema whose lazy validation reports
every failure by row and column. What pandera does not do is written here: coercion that counts what
it repaired (`"12"`, `" 12 "` and `"12.0"` become 12; `"12,5"` becomes 12.5 only where the contract
opts in), and duplicate keys, within the batch (pandera's `unique=` reports them three times slower)
and against rows that landed in earlier batches. Every row read ends in
exactly one place, the clean rows or the quarantine with all of its reasons, and a batch that breaks
a batch rule is refused whole: its good rows are quarantined too, so nothing of it reaches training
and nothing is lost.

Reasons read `check:column`: `not_integer:dep_time`, `not_number:temp`, `null:carrier`,
`out_of_range:distance`, `not_allowed:origin`, `too_long:tailnum`, `unparseable:time_hour`,
`offset:time_hour` (an offset where the contract refuses them), `future:time_hour`, and for whole rows
`duplicate_key:in_batch`, `duplicate_key:across_batches`, `batch_refused:<rule>`.

Timestamps are parsed value by value (`retrain.clock.parse_timestamps`): a naive value is taken as UTC, a
value with an offset is converted to UTC (or refused, as the contract says), and one value never changes
another.

Which source rows a batch holds is decided before validation, on the same parsed timestamps
(`select_batch`): an open-ended batch holds the rows dated from the watermark up to the horizon (`as_of`
plus the contract's future tolerance) and ends just after the newest of them; rows dated later have not
arrived yet and wait for a later batch; a row without a usable timestamp joins the first batch that sees
it and is known by its fingerprint afterwards. So a quarantined row never moves the watermark, and every
source row is read by exactly one batch unless a person asks for a range again.

Coercion is counted per row: `coerced` is the number of rows read in which at least one value had to
be repaired. Parsing ISO 8601 timestamps stored as text is reading, not repairing (SQLite stores every
timestamp as text), so it is not counted.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import re
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
import pandera.pandas as pa
import pyarrow as arrow
import pyarrow.compute as arrow_compute
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from retrain import clock
from retrain.clock import as_naive_utc, parse_timestamps
from retrain.config import ModelConfig
from retrain.errors import ConfigError, DataContractError
from tasks import warehouse
from tasks.contract import (
    ColumnRule,
    ColumnType,
    Contract,
    TimestampOffsets,
    UnknownColumns,
    check_model_source,
    read_contract,
)
from tasks.retries import retry_when_transient

logger = logging.getLogger(__name__)

PASSED = "passed"
REFUSED = "refused"
DUPLICATE_IN_BATCH = "duplicate_key:in_batch"
DUPLICATE_ACROSS_BATCHES = "duplicate_key:across_batches"
ARTIFACT_SAMPLE_ROWS = 50
RAW_PREVIEW_CHARS = 400

_PANDAS_DTYPES: dict[ColumnType, str | None] = {
    ColumnType.INTEGER: "Int64",
    ColumnType.FLOAT: "float64",
    ColumnType.STRING: None,  # coercion already made every value a str; an element-wise dtype check only costs
    ColumnType.DATETIME: "datetime64[ns]",
}


# ---------------------------------------------------------------------------------------------- results


@dataclass(frozen=True)
class BatchViolation:
    """A broken batch rule: which rule, what was observed, what the contract allows, and what to do."""

    rule: str
    observed: Any
    limit: Any
    detail: str = ""

    def to_error(self) -> DataContractError:
        return DataContractError(self.rule, self.observed, self.limit, self.detail)


@dataclass(frozen=True, eq=False)
class ValidationResult:
    """A validated batch. `clean` holds typed rows in contract column order; `quarantined` holds one
    row per rejected input row with `source_row` (position in the batch), `reasons` (tuple of str) and
    `raw` (the row as it came, as JSON text). `reasons` in the counts maps reason -> rows."""

    clean: pd.DataFrame
    quarantined: pd.DataFrame
    read: int
    coerced: int
    reasons: dict[str, int]
    missing_columns: tuple[str, ...] = ()
    unknown_columns: tuple[str, ...] = ()
    newest_clean: datetime | None = None
    violation: BatchViolation | None = None
    source: pd.DataFrame = field(default_factory=pd.DataFrame, repr=False)

    @property
    def status(self) -> str:
        return REFUSED if self.violation is not None else PASSED

    @property
    def clean_count(self) -> int:
        return len(self.clean)

    @property
    def quarantined_count(self) -> int:
        return len(self.quarantined)


@dataclass(frozen=True)
class BatchPlan:
    """What one ingest run will read, decided before anything is read: or an earlier outcome to replay.

    Attributes:
        batch_id: The new batch's id.
        model: The model whose config started the run (the state belongs to the source).
        source_table: The table read.
        clean_table: The table clean rows land in; with the source, what the watermark belongs to.
        range_start: First instant read (the watermark, or the requested start); None: from the beginning.
        range_end: The requested end (excluded); None for an open-ended batch.
        as_of: The clock of the run: "now" for the future and freshness rules.
        horizon: `as_of` plus the contract's future tolerance: an open-ended batch reads rows dated before it.
        started_at: When the run started (wall clock), for the ledger.
        replay: The outcome of a passed batch with the same requested range: nothing is read again.
    """

    batch_id: str
    model: str
    source_table: str
    clean_table: str
    range_start: datetime | None
    range_end: datetime | None
    as_of: datetime
    horizon: datetime
    started_at: datetime
    replay: BatchOutcome | None = None

    @property
    def end_requested(self) -> bool:
        return self.range_end is not None

    @property
    def upper(self) -> datetime:
        """Where reading stops (excluded): the requested end, or the horizon."""
        return self.range_end if self.range_end is not None else self.horizon


@dataclass(frozen=True, eq=False)
class BatchRows:
    """The source rows one batch holds, chosen on parsed timestamps before validation.

    Attributes:
        frame: The rows, values exactly as stored, in the order read.
        range_end: The end of the range the batch covers (excluded): the requested end, or just after the
            newest row an open-ended batch holds (its start when it holds none).
        fingerprints: Rows without a usable timestamp: position in `frame` to the fingerprint of their values.
        waiting: Rows dated at or after the horizon, left for the batch whose `as_of` reaches them (open-ended
            batches only).
    """

    frame: pd.DataFrame
    range_end: datetime | None
    fingerprints: dict[int, str] = field(default_factory=dict)
    waiting: int = 0

    @property
    def count(self) -> int:
        return len(self.frame)

    @property
    def timed_count(self) -> int:
        """Rows with a usable timestamp: what makes a batch worth starting on a schedule."""
        return len(self.frame) - len(self.fingerprints)


@dataclass(frozen=True)
class BatchOutcome:
    """What an ingest did with one batch: the counts a user sees and the record in the batch ledger."""

    batch_id: str
    model: str
    read: int
    clean: int
    coerced: int
    quarantined: int
    status: str
    reasons: dict[str, int]
    unknown_columns: tuple[str, ...] = ()
    range_start: datetime | None = None
    range_end: datetime | None = None
    violation: BatchViolation | None = None
    flow_run_id: str | None = None
    source_table: str = ""
    waiting: int = 0
    as_of: datetime | None = None

    def summary(self) -> dict[str, Any]:
        """The fields `retrain ingest --json` prints."""
        return {
            "batch_id": self.batch_id,
            "model": self.model,
            "source": self.source_table,
            "as_of": self.as_of,
            "read": self.read,
            "clean": self.clean,
            "coerced": self.coerced,
            "quarantined": self.quarantined,
            "status": self.status,
            "reasons": dict(self.reasons),
            "unknown_columns": list(self.unknown_columns),
            "range_start": self.range_start,
            "range_end": self.range_end,
            "waiting": self.waiting,
            "violation": None if self.violation is None else {
                "rule": self.violation.rule,
                "observed": self.violation.observed,
                "limit": self.violation.limit,
                "detail": self.violation.detail,
            },
        }


class BatchRefused(DataContractError):
    """A DataContractError raised by the ingest flow that also carries the recorded outcome of the batch."""

    def __init__(self, violation: BatchViolation, outcome: BatchOutcome) -> None:
        super().__init__(violation.rule, violation.observed, violation.limit, violation.detail)
        self.violation = violation
        self.outcome = outcome

    def __reduce__(self) -> tuple[Any, ...]:
        # Prefect may pickle a failed state's exception: keep both fields across that round trip.
        return (self.__class__, (self.violation, self.outcome))


# -------------------------------------------------------------------------------------------- coercion


@dataclass(frozen=True, eq=False)
class CoercedColumn:
    """One column in its contract type, with which rows were repaired and which could not be.

    `failed` rows could not be read (reason `failure`); `refused` rows were read but are in a form the
    contract refuses (reason `refusal`: a timestamp with an offset under `offsets: refuse`). Both are null
    in `values`.
    """

    values: pd.Series
    coerced: np.ndarray
    failed: np.ndarray
    failure: str
    refused: np.ndarray | None = None
    refusal: str = ""


def coerce_column(values: pd.Series, rule: ColumnRule) -> CoercedColumn:
    """Convert a column to its contract type, safely: anything that is not clearly the same value fails.

    Args:
        values: The column as read, any dtype, with a RangeIndex.
        rule: The column's contract rule.
    """
    if rule.type is ColumnType.INTEGER:
        return _coerce_number(values, rule, integer=True)
    if rule.type is ColumnType.FLOAT:
        return _coerce_number(values, rule, integer=False)
    if rule.type is ColumnType.DATETIME:
        return _coerce_datetime(values, refuse_offsets=rule.offsets == TimestampOffsets.REFUSE)
    return _coerce_string(values)


def _text_mask(values: pd.Series, present: np.ndarray) -> np.ndarray:
    """Which values are Python strings: cheap for all-text or all-number columns, element-wise otherwise."""
    kind = pd.api.types.infer_dtype(values, skipna=True)
    if kind == "string":
        return present.copy()
    if kind in ("integer", "floating", "mixed-integer-float", "decimal", "boolean", "empty",
                "datetime64", "datetime", "date"):
        return np.zeros(len(values), dtype=bool)
    return np.fromiter((isinstance(v, str) for v in values.to_numpy(dtype=object)), dtype=bool, count=len(values))


def _coerce_number(values: pd.Series, rule: ColumnRule, integer: bool) -> CoercedColumn:
    failure = "not_integer" if integer else "not_number"
    size = len(values)
    nothing = np.zeros(size, dtype=bool)
    if pd.api.types.is_integer_dtype(values) and not pd.api.types.is_bool_dtype(values):
        if isinstance(values.dtype, np.dtype) and integer:
            array = pd.arrays.IntegerArray(values.to_numpy(dtype="int64"), nothing.copy())
            typed = pd.Series(array, index=values.index)
        else:
            typed = values.astype("Int64") if integer else values.astype("float64")
        return CoercedColumn(typed, nothing, nothing, failure)
    if pd.api.types.is_float_dtype(values):
        numbers = values.to_numpy(dtype="float64", na_value=np.nan)
        present = ~np.isnan(numbers)
        coerced = nothing
    else:
        objects = values.astype(object, copy=False)
        present = objects.notna().to_numpy()
        is_text = _text_mask(objects, present)
        numbers = np.full(size, np.nan)
        others = present & ~is_text
        if others.any():
            numbers[others] = pd.to_numeric(objects[others], errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
        if is_text.any():
            text = objects[is_text].astype(str).str.strip()
            if rule.decimal_comma:
                text = text.str.replace(",", ".", regex=False)
            numbers[is_text] = pd.to_numeric(text, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
        coerced = is_text & ~np.isnan(numbers)
    with np.errstate(invalid="ignore"):
        bad = present & ~np.isfinite(numbers)
        if integer:
            bad |= present & np.isfinite(numbers) & (np.mod(numbers, 1) != 0)
    missing = bad | np.isnan(numbers)
    if integer:
        # Built directly: astype("Int64") from floats re-checks every value in Python-speed loops.
        whole = np.where(missing, 0, numbers).astype("int64")
        typed = pd.Series(pd.arrays.IntegerArray(whole, missing), index=values.index)
    else:
        typed = pd.Series(np.where(bad, np.nan, numbers), index=values.index)
    return CoercedColumn(typed, coerced & ~bad, bad, failure)


def _coerce_string(values: pd.Series) -> CoercedColumn:
    # Arrow strings: strip here and the isin/length checks in pandera run in C++, not once per Python object.
    objects = values.astype(object, copy=False)
    present = objects.notna().to_numpy()
    others = present & ~_text_mask(objects, present)
    if others.any():
        objects = objects.copy()
        objects[others] = objects[others].map(str)
    text = arrow.array(objects.to_numpy(), type=arrow.string(), from_pandas=True)
    stripped = arrow_compute.utf8_trim_whitespace(text)
    changed = arrow_compute.fill_null(arrow_compute.not_equal(text, stripped), False).to_numpy(zero_copy_only=False)
    typed = pd.Series(pd.arrays.ArrowStringArray(stripped), index=values.index)
    return CoercedColumn(typed, others | changed, np.zeros(len(values), dtype=bool), "not_text")


def _coerce_datetime(values: pd.Series, refuse_offsets: bool) -> CoercedColumn:
    # ISO 8601 only (spaces around it are fine): another format would be a guess, e.g. 01/02 as Jan 2 or Feb 1.
    # Each value on its own: an offset converts its own value to UTC and never shifts the others.
    parsed = parse_timestamps(values)
    nothing = np.zeros(len(values), dtype=bool)
    if not refuse_offsets or not parsed.had_offset.any() or pd.api.types.is_datetime64_any_dtype(values):
        # A typed column with a time zone (PostgreSQL timestamptz) holds instants, not written offsets.
        return CoercedColumn(parsed.values, nothing, parsed.unparseable, "unparseable")
    typed = parsed.values.mask(parsed.had_offset)
    return CoercedColumn(typed, nothing, parsed.unparseable, "unparseable", parsed.had_offset, "offset")


# ------------------------------------------------------------------------------------------- the schema


@dataclass(frozen=True, eq=False)
class CompiledSchema:
    """The pandera schema of a contract and, per column, the reason each of its checks stands for."""

    schema: pa.DataFrameSchema
    check_reasons: dict[str, list[str]]


def compile_schema(
    rules: dict[str, ColumnRule],
    timestamp: str | None,
    latest_allowed: datetime | None,
) -> CompiledSchema:
    """Compile column rules to a pandera schema for frames already coerced by `coerce_column`.

    Args:
        rules: Rules of the columns present in the frame.
        timestamp: The column that must not lie in the future.
        latest_allowed: The latest acceptable timestamp (None: no future check).
    """
    columns: dict[str, pa.Column] = {}
    check_reasons: dict[str, list[str]] = {}
    for name, rule in rules.items():
        checks: list[pa.Check] = []
        reasons: list[str] = []
        if rule.min is not None or rule.max is not None:
            if rule.min is not None and rule.max is not None:
                checks.append(pa.Check.in_range(rule.min, rule.max))
            elif rule.min is not None:
                checks.append(pa.Check.ge(rule.min))
            else:
                checks.append(pa.Check.le(rule.max))
            reasons.append(f"out_of_range:{name}")
        if rule.allowed is not None:
            checks.append(pa.Check.isin(rule.allowed))
            reasons.append(f"not_allowed:{name}")
        if rule.max_length is not None:
            checks.append(pa.Check.str_length(max_value=rule.max_length))
            reasons.append(f"too_long:{name}")
        if name == timestamp and latest_allowed is not None:
            checks.append(pa.Check.le(pd.Timestamp(latest_allowed)))
            reasons.append(f"future:{name}")
        columns[name] = pa.Column(_PANDAS_DTYPES[rule.type], checks=checks, nullable=rule.nullable, coerce=False)
        check_reasons[name] = reasons
    schema = pa.DataFrameSchema(columns, strict=False)
    return CompiledSchema(schema, check_reasons)


def _schema_failures(compiled: CompiledSchema, frame: pd.DataFrame) -> pd.DataFrame:
    """(row, reason, column) for every failed check, from pandera's lazy validation."""
    try:
        compiled.schema.validate(frame, lazy=True, inplace=True)
    except pa.errors.SchemaErrors as errors:
        cases = errors.failure_cases
    else:
        return _pairs([], [], [])
    rows: list[int] = []
    reasons: list[str] = []
    columns: list[str] = []
    for (context, column, check, number), group in cases.groupby(
        ["schema_context", "column", "check", "check_number"], dropna=False, sort=False
    ):
        if check == "not_nullable":
            reason = f"null:{column}"
        elif context == "Column" and pd.notna(number) and column in compiled.check_reasons:
            reason = compiled.check_reasons[column][int(number)]
        else:
            # A dtype or schema-level failure without row indexes would mean coercion let a wrong type through.
            raise DataContractError(str(check), f"column {column}", "a vectorized row check",
                                    "unexpected schema-level failure: report this as a bug")
        indexes = group["index"].dropna().astype(int).tolist()
        rows.extend(indexes)
        reasons.extend([reason] * len(indexes))
        columns.extend([str(column)] * len(indexes))
    return _pairs(rows, reasons, columns)


def _pairs(rows: Sequence[int] | np.ndarray, reasons: Sequence[str], columns: Sequence[str]) -> pd.DataFrame:
    return pd.DataFrame({"row": np.asarray(rows, dtype="int64"), "reason": list(reasons), "column": list(columns)})


# ------------------------------------------------------------------------------------------ validation


def validate_batch(
    frame: pd.DataFrame,
    contract: Contract,
    as_of: datetime | None,
    existing_keys: pd.DataFrame | None = None,
) -> ValidationResult:
    """Coerce, check and split a batch into clean and quarantined rows; batch rules are judged separately.

    Args:
        frame: Rows as read from the source, values untouched.
        contract: The model's data contract.
        as_of: The run's clock, for the future-timestamp check (None: no future check).
        existing_keys: Key columns of rows already in the clean table; a batch row with one of these
            keys is quarantined as a duplicate across batches.
    """
    latest = None
    if as_of is not None:
        latest = as_naive_utc(as_of) + timedelta(minutes=contract.batch.future_tolerance_minutes)
    return _validate(frame, contract.columns, contract.key, contract.timestamp, latest, existing_keys)


def _validate(
    frame: pd.DataFrame,
    rules: dict[str, ColumnRule],
    key: Sequence[str],
    timestamp: str | None,
    latest_allowed: datetime | None,
    existing_keys: pd.DataFrame | None,
) -> ValidationResult:
    source = frame if isinstance(frame.index, pd.RangeIndex) and frame.index.start == 0 and frame.index.step == 1 \
        else frame.reset_index(drop=True)
    size = len(source)
    present = {name: rule for name, rule in rules.items() if name in source.columns}
    missing = tuple(name for name in rules if name not in source.columns)
    unknown = tuple(str(name) for name in source.columns if name not in rules)

    typed_columns: dict[str, pd.Series] = {}
    coerced = np.zeros(size, dtype=bool)
    failure_rows: list[np.ndarray] = []
    failure_reasons: list[str] = []
    failure_columns: list[str] = []
    for name, rule in present.items():
        column = coerce_column(source[name], rule)
        typed_columns[name] = column.values
        coerced |= column.coerced
        for mask, kind in ((column.failed, column.failure), (column.refused, column.refusal)):
            if mask is not None and mask.any():
                failed_rows = np.flatnonzero(mask)
                failure_rows.append(failed_rows)
                failure_reasons.extend([f"{kind}:{name}"] * len(failed_rows))
                failure_columns.extend([name] * len(failed_rows))
    typed = pd.DataFrame(typed_columns, index=source.index, copy=False)  # a consolidating copy costs ~25%
    coercion_failures = _pairs(
        np.concatenate(failure_rows) if failure_rows else np.array([], dtype="int64"),
        failure_reasons,
        failure_columns,
    )

    compiled = compile_schema(present, timestamp, latest_allowed)
    checked = _schema_failures(compiled, typed)
    if len(coercion_failures) and len(checked):
        # A value that could not be coerced became null: report it once, as what it is, not also as a null.
        failed_cells = pd.MultiIndex.from_frame(coercion_failures[["row", "column"]])
        null_checks = checked["reason"].str.startswith("null:").to_numpy()
        cells = pd.MultiIndex.from_frame(checked[["row", "column"]])
        checked = checked[~(null_checks & cells.isin(failed_cells))]
    within = _duplicates_within_batch(typed, key)
    across = _duplicates_across_batches(typed, present, key, existing_keys)
    pairs = pd.concat([coercion_failures, checked, within, across], ignore_index=True)
    pairs = pairs.drop_duplicates(["row", "reason"])
    return _split(source, typed, pairs, coerced, missing, unknown, timestamp)


def _duplicates_within_batch(typed: pd.DataFrame, key: Sequence[str]) -> pd.DataFrame:
    """Every row whose key occurs more than once: which copy is right cannot be told, so none lands.

    Written by hand although pandera has `unique=`: on 1M rows with a few hundred duplicates its
    report (a formatted repr and a stack/unstack of the failures) cost 0.26 s, `duplicated` 0.08 s.
    """
    if not key or any(name not in typed.columns for name in key):
        return _pairs([], [], [])
    rows = np.flatnonzero(typed.duplicated(list(key), keep=False).to_numpy())
    return _pairs(rows, [DUPLICATE_IN_BATCH] * len(rows), [""] * len(rows))


def _duplicates_across_batches(
    typed: pd.DataFrame,
    rules: dict[str, ColumnRule],
    key: Sequence[str],
    existing_keys: pd.DataFrame | None,
) -> pd.DataFrame:
    if not key or existing_keys is None or existing_keys.empty or any(name not in typed.columns for name in key):
        return _pairs([], [], [])
    existing = pd.DataFrame(
        {name: coerce_column(existing_keys[name].reset_index(drop=True), rules[name]).values for name in key}
    )
    seen = pd.MultiIndex.from_frame(existing.dropna())
    mine = pd.MultiIndex.from_frame(typed[list(key)])
    rows = np.flatnonzero(mine.isin(seen))
    return _pairs(rows, [DUPLICATE_ACROSS_BATCHES] * len(rows), [""] * len(rows))


def _split(
    source: pd.DataFrame,
    typed: pd.DataFrame,
    pairs: pd.DataFrame,
    coerced: np.ndarray,
    missing: tuple[str, ...],
    unknown: tuple[str, ...],
    timestamp: str | None,
) -> ValidationResult:
    size = len(source)
    bad = np.zeros(size, dtype=bool)
    bad[pairs["row"].to_numpy()] = True
    # Pairs are unique per (row, reason), sorted here so each row's reasons are one contiguous slice:
    # splitting at row boundaries is ~50x faster than a groupby that calls tuple() once per group.
    ordered = pairs.sort_values(["row", "reason"], kind="stable")
    rows_sorted = ordered["row"].to_numpy()
    boundaries = np.flatnonzero(np.r_[True, rows_sorted[1:] != rows_sorted[:-1]]) if len(ordered) else np.array([], int)
    bad_rows = rows_sorted[boundaries].astype("int64")
    reasons_of_rows = [tuple(chunk) for chunk in np.split(ordered["reason"].to_numpy(dtype=object), boundaries[1:])]
    if not len(ordered):
        reasons_of_rows = []
    reason_counts = {str(reason): int(count) for reason, count in ordered["reason"].value_counts().items()}
    quarantined = pd.DataFrame(
        {"source_row": bad_rows.astype("int64"), "reasons": reasons_of_rows, "raw": raw_json(source, bad_rows)}
    )
    clean = typed
    if len(bad_rows):
        clean = typed.loc[~bad]
        clean.index = pd.RangeIndex(len(clean))  # reset_index(drop=True) would copy every column again
    newest_clean = None
    if timestamp is not None and timestamp in typed.columns:
        newest_clean = _latest(clean[timestamp])
    return ValidationResult(
        clean=clean,
        quarantined=quarantined,
        read=size,
        coerced=int(coerced.sum()),
        reasons=reason_counts,
        missing_columns=missing,
        unknown_columns=unknown,
        newest_clean=newest_clean,
        source=source,
    )


def _latest(values: pd.Series) -> datetime | None:
    latest = values.max()
    return None if pd.isna(latest) else pd.Timestamp(latest).to_pydatetime()


def raw_json(source: pd.DataFrame, rows: np.ndarray) -> list[str]:
    """The given rows exactly as they came, one JSON object of every column per row (unknown ones too)."""
    if len(rows) == 0:
        return []
    text = source.iloc[rows].to_json(
        orient="records", lines=True, date_format="iso", force_ascii=False, default_handler=str
    )
    # Split on newlines only: JSON escapes them inside strings, but not U+2028, which splitlines() would cut at.
    return text.rstrip("\n").split("\n")


# ---------------------------------------------------------------------------------------- batch rules


def find_batch_violation(
    result: ValidationResult, contract: Contract, as_of: datetime | None
) -> BatchViolation | None:
    """The first batch rule the batch breaks, in the order a user would fix them, or None.

    Args:
        result: The validated batch.
        contract: The contract whose batch rules apply.
        as_of: The run's clock, for freshness (None: no freshness check).
    """
    rules = contract.batch
    if result.missing_columns:
        return BatchViolation(
            "missing_column", list(result.missing_columns), "every contract column present",
            f"the batch has no column(s) {list(result.missing_columns)}"
            + (f" but has unknown column(s) {list(result.unknown_columns)} (renamed?)"
               if result.unknown_columns else "")
            + ": fix the source or the contract",
        )
    if result.unknown_columns and rules.unknown_columns == UnknownColumns.REFUSE:
        return BatchViolation(
            "unknown_column", list(result.unknown_columns), "no columns beyond the contract",
            "add them to the contract's columns or set batch.unknown_columns: report",
        )
    too_many = rules.max_rows is not None and result.read > rules.max_rows
    if result.read < rules.min_rows or too_many:
        return BatchViolation(
            "row_count", result.read, f"[{rules.min_rows}, {rules.max_rows if rules.max_rows is not None else 'any'}]",
            "an empty batch means nothing new arrived; a huge one suggests a duplicated load"
            " (adjust batch.min_rows/max_rows if the volume legitimately changed)",
        )
    share = result.quarantined_count / result.read if result.read else 0.0
    if share > rules.max_bad_share:
        top = ", ".join(f"{reason} ({count})" for reason, count in list(result.reasons.items())[:5])
        return BatchViolation(
            "bad_share", round(share, 6), rules.max_bad_share,
            f"{result.quarantined_count} of {result.read} rows broke row rules; most common: {top}",
        )
    if rules.max_age_hours is not None and as_of is not None and result.newest_clean is not None:
        oldest_allowed = as_naive_utc(as_of) - timedelta(hours=rules.max_age_hours)
        if result.newest_clean < oldest_allowed:
            return BatchViolation(
                "freshness", result.newest_clean.isoformat(), f">= {oldest_allowed.isoformat()}",
                f"the newest {contract.timestamp} is older than {rules.max_age_hours} h before {as_of}",
            )
    return None


def refuse_batch(result: ValidationResult, violation: BatchViolation) -> ValidationResult:
    """The batch with its clean rows moved to quarantine too, so nothing of it is appended and nothing is lost."""
    good = np.setdiff1d(np.arange(result.read), result.quarantined["source_row"].to_numpy())
    reason = f"batch_refused:{violation.rule}"
    refused = pd.DataFrame(
        {"source_row": good.astype("int64"), "reasons": [(reason,)] * len(good), "raw": raw_json(result.source, good)}
    )
    quarantined = (
        pd.concat([result.quarantined, refused], ignore_index=True).sort_values("source_row").reset_index(drop=True)
    )
    reasons = dict(result.reasons)
    if len(good):
        reasons[reason] = len(good)
    return replace(
        result, clean=result.clean.iloc[0:0], quarantined=quarantined, reasons=reasons, violation=violation
    )


def judge_batch(result: ValidationResult, contract: Contract, as_of: datetime | None) -> ValidationResult:
    """The batch as it will be recorded: unchanged if it keeps every batch rule, refused whole otherwise."""
    violation = find_batch_violation(result, contract, as_of)
    return result if violation is None else refuse_batch(result, violation)


def enforce_batch_rules(result: ValidationResult, contract: Contract, as_of: datetime | None) -> None:
    """Raise if the batch breaks a batch rule (the abort rule).

    Raises:
        DataContractError: naming the rule, the observed value and the limit.
    """
    violation = result.violation or find_batch_violation(result, contract, as_of)
    if violation is not None:
        raise violation.to_error()


def check_snapshot(frame: pd.DataFrame, contract: Contract, columns: Sequence[str] | None = None) -> None:
    """Refuse a training snapshot that breaks the contract, e.g. after the contract was tightened.

    Every row must satisfy the row rules of the checked columns and keys must be unique; batch rules
    (row band, freshness, bad share) are about arrivals, not snapshots, and do not apply. Columns the
    contract does not know (such as `_batch_id`) are ignored. Integer columns read back as floats
    because of NULLs are accepted when their values are whole.

    Args:
        frame: The snapshot, as read from the clean table.
        contract: The model's data contract.
        columns: The contract columns the snapshot is expected to hold (default: all of them).

    Raises:
        DataContractError: rule `missing_column`, or `snapshot_rows` with the number of bad rows
            (limit 0) and the most common reasons and first bad row in the message.
    """
    wanted = list(columns) if columns is not None else list(contract.columns)
    unknown = [name for name in wanted if name not in contract.columns]
    if unknown:
        raise DataContractError("unknown_column", unknown, list(contract.columns), "ask only for contract columns")
    missing = [name for name in wanted if name not in frame.columns]
    if missing:
        raise DataContractError("missing_column", missing, "every requested contract column present",
                                "the snapshot lacks them; read them from the clean table")
    rules = {name: contract.columns[name] for name in wanted}
    key = contract.key if all(name in rules for name in contract.key) else []
    timestamp = contract.timestamp if contract.timestamp in rules else None
    result = _validate(frame[wanted], rules, key, timestamp, None, None)
    if result.quarantined_count:
        top = ", ".join(f"{reason} ({count})" for reason, count in list(result.reasons.items())[:5])
        first = result.quarantined.iloc[0]
        raise DataContractError(
            "snapshot_rows", result.quarantined_count, 0,
            f"reasons: {top}; first bad row at position {first['source_row']}: {first['raw'][:RAW_PREVIEW_CHARS]}",
        )


# ------------------------------------------------------------------------------------- which rows a batch holds


def row_fingerprint(values: Sequence[Any]) -> str:
    """A stable fingerprint of one row's stored values, the same however the batch around it was typed.

    A column read as float in one batch (because of a NULL) and as integer in the next must not change
    the fingerprint, so whole floats are written as integers and every other value as its text.
    """
    canonical = [_canonical_value(value) for value in values]
    return hashlib.sha256(json.dumps(canonical, ensure_ascii=False).encode()).hexdigest()[:32]


def _canonical_value(value: Any) -> Any:
    if isinstance(value, float | np.floating) and not math.isnan(value):
        return int(value) if float(value).is_integer() else float(value)
    if value is None or value is pd.NaT or value is pd.NA or isinstance(value, float | np.floating):
        return None  # the only floats left are NaN
    if isinstance(value, bool | np.bool_ | int | np.integer):
        return value.item() if isinstance(value, np.generic) else value
    if isinstance(value, datetime | date):
        return value.isoformat()
    return str(value)


def select_batch(
    candidates: pd.DataFrame,
    timestamp: str,
    start: datetime | None,
    upper: datetime,
    end_requested: bool,
    known_fingerprints: set[str] | frozenset[str] = frozenset(),
) -> BatchRows:
    """The rows of a batch covering `[start, upper)`, decided on each row's own parsed timestamp.

    A row with a timestamp belongs when its instant (an offset converted to UTC) lies in the range. A
    row without one (null or unparseable) has no place in time: it belongs to the first batch that sees it
    and is known afterwards by its fingerprint (`known_fingerprints`: those of passed batches), so it is
    quarantined once instead of by every batch. An open-ended batch (no requested end, `upper` is the
    horizon) ends just after its newest row, so rows that arrive later with a timestamp between that row and
    the horizon are still read by the next batch; rows at or after the horizon are counted as waiting.

    Args:
        candidates: Source rows as read (a superset of the batch), values as stored.
        timestamp: The timestamp column.
        start: First instant of the range (None: from the beginning).
        upper: End of the range, excluded: the requested end or the horizon.
        end_requested: Whether `upper` was asked for (then it is the range's end whatever the rows are).
        known_fingerprints: Fingerprints of timeless rows already quarantined by passed batches.
    """
    frame = candidates.reset_index(drop=True)
    times = parse_timestamps(frame[timestamp]).values.to_numpy(dtype="datetime64[ns]")
    timeless = np.isnat(times)
    in_range = ~timeless & (times < np.datetime64(upper, "ns"))
    if start is not None:
        in_range &= times >= np.datetime64(start, "ns")
    member = in_range.copy()
    fingerprints: dict[int, str] = {}
    for row in np.flatnonzero(timeless):
        fingerprint = row_fingerprint(frame.iloc[row].tolist())
        if fingerprint not in known_fingerprints:
            member[row] = True
            fingerprints[int(row)] = fingerprint
    if member.all():
        rows = frame
    else:
        rows = frame.loc[member].reset_index(drop=True)
        positions = np.cumsum(member) - 1
        fingerprints = {int(positions[row]): value for row, value in fingerprints.items()}
    if end_requested:
        range_end: datetime | None = upper
        waiting = 0
    else:
        newest = times[in_range].max() if in_range.any() else None
        range_end = pd.Timestamp(newest).to_pydatetime() + timedelta(microseconds=1) if newest is not None else start
        waiting = int((~timeless & (times >= np.datetime64(upper, "ns"))).sum())
    return BatchRows(frame=rows, range_end=range_end, fingerprints=fingerprints, waiting=waiting)


def check_requested_range(start: datetime | None, end: datetime | None) -> None:
    """Refuse a requested range that holds nothing by construction, before anything is read or written.

    Raises:
        ConfigError: `start` is not before `end`.
    """
    if start is not None and end is not None and as_naive_utc(start) >= as_naive_utc(end):
        raise ConfigError(
            f"the range start {start.isoformat()} is not before its end {end.isoformat()}: the range [start, end) "
            "holds nothing. Nothing was read or written"
        )


def new_batch_id(source_table: str, started_at: datetime) -> str:
    """A readable, unique batch id: source table, UTC start time and a random suffix."""
    safe = re.sub(r"[^A-Za-z0-9]+", "-", source_table).strip("-").lower()
    return f"{safe}-{started_at:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"


def outcome_of(plan: BatchPlan, rows: BatchRows, result: ValidationResult, flow_run_id: str | None) -> BatchOutcome:
    """The outcome to record and return for a validated, judged batch."""
    return BatchOutcome(
        batch_id=plan.batch_id,
        model=plan.model,
        read=result.read,
        clean=result.clean_count,
        coerced=result.coerced,
        quarantined=result.quarantined_count,
        status=result.status,
        reasons=dict(result.reasons),
        unknown_columns=result.unknown_columns,
        range_start=plan.range_start,
        range_end=rows.range_end,
        violation=result.violation,
        flow_run_id=flow_run_id,
        source_table=plan.source_table,
        waiting=rows.waiting,
        as_of=plan.as_of,
    )


def quarantine_sample(result: ValidationResult, rows: int = ARTIFACT_SAMPLE_ROWS) -> list[dict[str, Any]]:
    """The first quarantined rows, reasons joined and raw values shortened, for tables people read."""
    sample = result.quarantined.head(rows)
    return [
        {"row": int(row.source_row), "reasons": ", ".join(row.reasons), "raw": str(row.raw)[:RAW_PREVIEW_CHARS]}
        for row in sample.itertuples(index=False)
    ]


def summary_markdown(config: ModelConfig, outcome: BatchOutcome) -> str:
    """The run's markdown summary: counts, reasons and the verdict."""
    lines = [
        f"# Ingest of `{outcome.source_table}` (config of `{config.name}`): batch `{outcome.batch_id}` "
        f"{outcome.status}",
        "",
        f"Range [{outcome.range_start or 'start'}, {outcome.range_end or 'open'}) as of {outcome.as_of}.",
        "",
        "| rows | count |",
        "|---|---:|",
        f"| read | {outcome.read} |",
        f"| clean | {outcome.clean} |",
        f"| coerced | {outcome.coerced} |",
        f"| quarantined | {outcome.quarantined} |",
        f"| waiting (dated after as_of + tolerance) | {outcome.waiting} |",
    ]
    if outcome.reasons:
        lines += ["", "| reason | rows |", "|---|---:|"]
        lines += [f"| {reason} | {count} |" for reason, count in outcome.reasons.items()]
    if outcome.unknown_columns:
        lines += ["", f"Unknown columns (not ingested): {', '.join(outcome.unknown_columns)}"]
    if outcome.violation is not None:
        violation = outcome.violation
        lines += ["", f"**Refused** by rule `{violation.rule}`: observed {violation.observed}, "
                  f"limit {violation.limit}. {violation.detail}"]
    return "\n".join(lines)


def batch_record(outcome: BatchOutcome, plan: BatchPlan, finished_at: datetime) -> dict[str, Any]:
    """The batch ledger row of an outcome."""
    violation = outcome.violation
    return {
        "batch_id": outcome.batch_id,
        "source_table": plan.source_table,
        "clean_table": plan.clean_table,
        "model": outcome.model,
        "range_start": outcome.range_start,
        "range_end": outcome.range_end,
        "end_requested": plan.end_requested,
        "rows_read": outcome.read,
        "rows_clean": outcome.clean,
        "rows_coerced": outcome.coerced,
        "rows_quarantined": outcome.quarantined,
        "rows_waiting": outcome.waiting,
        "status": outcome.status,
        "reasons": json.dumps(outcome.reasons),
        "unknown_columns": json.dumps(list(outcome.unknown_columns)),
        "rule": violation.rule if violation else None,
        "violation": json.dumps(
            {"observed": violation.observed, "limit": violation.limit, "detail": violation.detail}, default=str
        ) if violation else None,
        "flow_run_id": outcome.flow_run_id,
        "as_of": plan.as_of,
        "started_at": plan.started_at,
        "finished_at": finished_at,
    }


def outcome_from_record(record: dict[str, Any]) -> BatchOutcome:
    """The outcome of a batch as its ledger row stored it, for replaying an ingest that already ran."""
    violation = None
    if record.get("rule"):
        stored = json.loads(record["violation"] or "{}")
        violation = BatchViolation(
            record["rule"], stored.get("observed"), stored.get("limit"), stored.get("detail", "")
        )
    return BatchOutcome(
        batch_id=record["batch_id"],
        model=record["model"],
        read=int(record["rows_read"]),
        clean=int(record["rows_clean"]),
        coerced=int(record["rows_coerced"]),
        quarantined=int(record["rows_quarantined"]),
        status=record["status"],
        reasons=json.loads(record["reasons"]),
        unknown_columns=tuple(json.loads(record["unknown_columns"])),
        range_start=record["range_start"],
        range_end=record["range_end"],
        violation=violation,
        flow_run_id=record["flow_run_id"],
        source_table=record["source_table"],
        waiting=int(record["rows_waiting"]),
        as_of=record["as_of"],
    )


def quarantine_records(batch_id: str, result: ValidationResult, fingerprints: dict[int, str]) -> pd.DataFrame:
    """Quarantine rows as stored: batch id, position in the batch, reasons as a JSON list, raw row as JSON, and
    the fingerprint of rows without a usable timestamp."""
    quarantined = result.quarantined
    positions = quarantined["source_row"].astype("int64")
    return pd.DataFrame({
        "batch_id": batch_id,
        "source_row": positions,
        "reasons": [json.dumps(list(reasons)) for reasons in quarantined["reasons"]],
        "raw": quarantined["raw"],
        "fingerprint": [fingerprints.get(int(position)) for position in positions],
    })


# ------------------------------------------------------------------------------------------------ tasks

# Warehouse tasks retry only what may pass by itself (a dropped connection, a busy database); a bad config
# or a refused batch fails the same way every time and is never retried.
TRANSIENT_RETRIES: dict[str, Any] = {
    "retries": 2, "retry_delay_seconds": 5, "retry_condition_fn": retry_when_transient,
}


@task(cache_policy=NO_CACHE)
def read_model_contract(config: ModelConfig) -> Contract:
    """The contract beside the model config; a missing one is an error saying how to write it."""
    return read_contract(config.contract_path)


@task(cache_policy=NO_CACHE, **TRANSIENT_RETRIES)
def check_source_config(config: ModelConfig) -> warehouse.TableDescription:
    """Check the model config against its source table and contract: the first thing a flow does.

    Every configured column must exist with a usable type, the key must be a key, and the contract must
    fit (see `tasks.contract.check_config_against_table`). Fails in well under a second with a
    `ConfigError` naming the config file and the field, instead of after retries at the training snapshot.
    """
    return check_model_source(config, warehouse.get_warehouse())


@contextlib.contextmanager
def source_lock(config: ModelConfig, wait_seconds: float | None = None) -> Iterator[warehouse.LockHolder]:
    """Hold `source:<table>` for the block: one writer per source, whichever model's config started it.

    Raises:
        Busy: another run held it for longer than `wait_seconds` (default: the `lock_wait_seconds` setting).
    """
    from prefect.runtime import flow_run

    holder = f"ingest of '{config.source.table}' for model '{config.name}' (flow run {flow_run.get_name() or '-'})"
    with warehouse.hold_lock(
        warehouse.get_warehouse(), f"source:{config.source.table}", wait_seconds=wait_seconds, holder=holder
    ) as held:
        yield held


def _plan(
    config: ModelConfig,
    contract: Contract,
    start: datetime | None,
    end: datetime | None,
    as_of: datetime | None,
) -> BatchPlan:
    check_requested_range(start, end)
    store = warehouse.get_warehouse()
    source, clean = config.source.table, config.source.clean
    start = as_naive_utc(start) if start is not None else None
    end = as_naive_utc(end) if end is not None else None
    moment = as_naive_utc(as_of) if as_of is not None else clock.now()
    replay = None
    if end is not None:
        record = warehouse.find_passed_batch(store, source, clean, start, end)
        replay = outcome_from_record(record) if record is not None else None
    started_at = clock.wall_clock()
    return BatchPlan(
        batch_id=new_batch_id(source, started_at),
        model=config.name,
        source_table=source,
        clean_table=clean,
        range_start=start if start is not None else warehouse.read_watermark(store, source, clean),
        range_end=end,
        as_of=moment,
        horizon=moment + timedelta(minutes=contract.batch.future_tolerance_minutes),
        started_at=started_at,
        replay=replay,
    )


def _select(config: ModelConfig, plan: BatchPlan) -> BatchRows:
    store = warehouse.get_warehouse()
    source = config.source
    candidates = warehouse.read_source_rows(store, source.table, source.timestamp, plan.range_start, plan.upper)
    known = warehouse.read_known_fingerprints(store, source.table, source.clean, source.quarantine)
    rows = select_batch(candidates, source.timestamp, plan.range_start, plan.upper, plan.end_requested, known)
    if not plan.end_requested:
        later = warehouse.count_rows_after(store, source.table, source.timestamp, plan.upper)
        rows = replace(rows, waiting=rows.waiting + later)
    return rows


@task(cache_policy=NO_CACHE, **TRANSIENT_RETRIES)
def plan_batch(
    config: ModelConfig,
    contract: Contract,
    start: datetime | None = None,
    end: datetime | None = None,
    as_of: datetime | None = None,
) -> BatchPlan:
    """Decide the range to read: from `start` or the source's watermark, to `end` or the horizon.

    A request with an end that a passed batch already covered (same end, same start if given) replays
    that batch's outcome instead of reading again: re-running an ingest adds nothing.

    Args:
        config: The model config (its source and clean table own the watermark).
        contract: The data contract, for the future tolerance that sets the horizon.
        start: First instant to read; default the watermark.
        end: Instant to read up to, excluded; default the newest row dated before the horizon.
        as_of: The run's clock; default `retrain.clock.now()`.

    Raises:
        ConfigError: `start` is not before `end`.
    """
    return _plan(config, contract, start, end, as_of)


@task(cache_policy=NO_CACHE, **TRANSIENT_RETRIES)
def read_batch_rows(config: ModelConfig, plan: BatchPlan) -> BatchRows:
    """The source rows the planned batch holds, values exactly as stored, and where its range ends."""
    rows = _select(config, plan)
    log = get_run_logger()
    log.info("batch %s holds %d rows of %s in [%s, %s)", plan.batch_id, rows.count, config.source.table,
             plan.range_start or "start", rows.range_end or "open")
    if rows.waiting:
        log.warning("%d rows of %s are dated at or after %s (as_of + future tolerance): they wait for a later batch",
                    rows.waiting, config.source.table, plan.horizon)
    return rows


@task(cache_policy=NO_CACHE, **TRANSIENT_RETRIES)
def count_new_rows(config: ModelConfig, as_of: datetime | None = None) -> int:
    """Rows an open-ended ingest as of `as_of` would read, dated from the watermark up to the horizon.

    Rows without a usable timestamp are not counted: alone they would make a batch of nothing but bad rows,
    refused (and so read again) at every poll; they join the next batch that brings dated rows. Outside the
    source lock this is only a hint; `flows.ingest.ingest_when_new_rows` counts inside it.
    """
    plan = _plan(config, read_contract(config.contract_path), None, None, as_of)
    return _select(config, plan).timed_count


@task(cache_policy=NO_CACHE, **TRANSIENT_RETRIES)
def validate_new_rows(config: ModelConfig, contract: Contract, plan: BatchPlan, rows: BatchRows) -> ValidationResult:
    """Validate the batch against the contract and the keys already clean, then judge its batch rules."""
    store = warehouse.get_warehouse()
    existing = warehouse.read_clean_keys(
        store, config.source.clean, contract.key, contract.timestamp, plan.range_start, rows.range_end
    )
    result = judge_batch(validate_batch(rows.frame, contract, plan.as_of, existing), contract, plan.as_of)
    log = get_run_logger()
    log.info("batch %s: read %d, clean %d, coerced %d, quarantined %d", plan.batch_id, result.read,
             result.clean_count, result.coerced, result.quarantined_count)
    if result.unknown_columns:
        log.warning("columns not in the contract, not ingested: %s", list(result.unknown_columns))
    return result


@task(cache_policy=NO_CACHE, **TRANSIENT_RETRIES)
def record_batch(
    config: ModelConfig, contract: Contract, plan: BatchPlan, rows: BatchRows, result: ValidationResult
) -> BatchOutcome:
    """Write quarantine, clean rows (if passed) and the batch record in one transaction."""
    from prefect.runtime import flow_run

    outcome = outcome_of(plan, rows, result, flow_run.id)
    store = warehouse.get_warehouse()
    warehouse.record_batch(
        store,
        record=batch_record(outcome, plan, finished_at=clock.wall_clock()),
        clean=result.clean if result.status == PASSED else None,
        clean_table=warehouse.clean_table(
            config.source.clean, {name: rule.type.value for name, rule in contract.columns.items()},
            key=contract.key, schema=store.schema,
        ),
        quarantine=quarantine_records(outcome.batch_id, result, rows.fingerprints),
        quarantine_table=warehouse.quarantine_table(config.source.quarantine, schema=store.schema),
    )
    return outcome


@task(cache_policy=NO_CACHE)
def publish_batch_report(config: ModelConfig, outcome: BatchOutcome, result: ValidationResult) -> None:
    """A markdown summary and a table of sample quarantined rows as Prefect artifacts of the run."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    key = re.sub(r"[^a-z0-9-]+", "-", config.name.lower()).strip("-")
    create_markdown_artifact(
        markdown=summary_markdown(config, outcome), key=f"{key}-ingest-summary",
        description=f"ingest batch {outcome.batch_id}",
    )
    sample = quarantine_sample(result)
    if sample:
        create_table_artifact(
            table=sample, key=f"{key}-quarantine",
            description=f"first {len(sample)} of {outcome.quarantined} quarantined rows of batch {outcome.batch_id}",
        )


def ingesting_flow() -> str | None:
    """The flow that started this ingest: the parent flow when the ingest runs as a subflow (the training
    flow's own ingest, or the scheduled `ingest-when-new-rows`), else the ingest flow itself."""
    from prefect import get_client
    from prefect.runtime import flow_run

    parent = flow_run.get_parent_flow_run_id()
    if parent is None:
        return flow_run.get_flow_name()
    with get_client(sync_client=True) as client:
        return client.read_flow(client.read_flow_run(parent).flow_id).name


@task(cache_policy=NO_CACHE)
def announce_data_arrived(config: ModelConfig, outcome: BatchOutcome) -> None:
    """Emit `retrain.data.arrived` for the model, which deployments can trigger on.

    The event's resource carries `retrain.ingested-by`, the flow that started the ingest, so a training
    deployment's trigger can ignore the rows a training ingested itself (it trains on them already):
    `match: {retrain.ingested-by: "!train-model"}`.
    """
    from prefect.events import emit_event

    emit_event(
        event="retrain.data.arrived",
        resource={"prefect.resource.id": f"retrain.model.{config.name}",
                  "retrain.ingested-by": ingesting_flow() or "unknown"},
        related=[{"prefect.resource.id": f"retrain.source.{config.source.table}", "prefect.resource.role": "source"}],
        payload={
            "model": config.name,
            "source": config.source.table,
            "batch_id": outcome.batch_id,
            "read": outcome.read,
            "clean": outcome.clean,
            "coerced": outcome.coerced,
            "quarantined": outcome.quarantined,
        },
    )
