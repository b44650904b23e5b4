"""Validate rows against the data contract: coerce, check, split into clean and quarantined, judge a batch.

Pure: rows and a contract in, a `ValidationResult` out, no I/O and no Prefect. Row rules run vectorized: the
contract compiles to a pandera schema whose lazy validation reports every failure by row and column. What
pandera does not do is written here: coercion that counts what it repaired (`"12"`, `" 12 "` and `"12.0"`
become 12; `"12,5"` becomes 12.5 only where the contract opts in), and duplicate keys, within the batch
(pandera's `unique=` reports them three times slower) and against rows that landed in earlier batches. Every
row read ends in exactly one place: the clean rows, the quarantine with all of its reasons, or "already there"
(a row equal in every column to a row already clean, such as one read again by a replayed range, or a
byte-identical copy of an earlier row of the same batch: it lands once). A batch that breaks a batch rule is
refused whole: its good rows are quarantined too, so nothing of it reaches training and nothing is lost. Which
rows a batch holds, and how it is recorded, is `tasks.ingest`'s.

Reasons read `check:column`: `not_integer:dep_time`, `not_number:temp`, `null:carrier`,
`out_of_range:distance`, `not_allowed:origin`, `too_long:tailnum`, `unparseable:time_hour`,
`offset:time_hour` (an offset where the contract refuses them), `future:time_hour`, `too_large:distance` (a whole
number beyond what a 64-bit integer column holds, such as 1e20), and for whole rows
`duplicate_key:in_batch` (rows of the batch sharing a key with other content), `duplicate_key:across_batches`
(a key already clean, with other content), `batch_refused:<rule>`.

Timestamps are parsed value by value (`retrain.clock.parse_timestamps`): a naive value is taken as UTC, a
value with an offset is converted to UTC (or refused, as the contract says), and one value never changes
another.

Coercion is counted per row: `coerced` is the number of rows read in which at least one value had to
be repaired. Parsing ISO 8601 timestamps stored as text is reading, not repairing (SQLite stores every
timestamp as text), so it is not counted.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
import pandera.pandas as pa
import pyarrow as arrow
import pyarrow.compute as arrow_compute

from retrain.clock import as_naive_utc, parse_timestamps
from retrain.contract import ColumnRule, ColumnType, Contract, TimestampOffsets, UnknownColumns
from retrain.errors import DataContractError

logger = logging.getLogger(__name__)

PASSED = "passed"
REFUSED = "refused"
DUPLICATE_IN_BATCH = "duplicate_key:in_batch"
DUPLICATE_ACROSS_BATCHES = "duplicate_key:across_batches"
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
    `raw` (the row as it came, as JSON text). `reasons` in the counts maps reason -> rows.

    `already_clean` and `copies` hold the positions of rows that are neither: equal to a row already in the
    clean table, or byte-identical to an earlier row of the batch. So `read` is clean + quarantined + both.
    """

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
    already_clean: np.ndarray = field(default_factory=lambda: np.array([], dtype="int64"), repr=False)
    copies: np.ndarray = field(default_factory=lambda: np.array([], dtype="int64"), repr=False)
    out_of_range: dict[str, int] = field(default_factory=dict)  # rows outside a soft range, by column: kept

    @property
    def status(self) -> str:
        return REFUSED if self.violation is not None else PASSED

    @property
    def clean_count(self) -> int:
        return len(self.clean)

    @property
    def quarantined_count(self) -> int:
        return len(self.quarantined)

    @property
    def already_clean_count(self) -> int:
        return len(self.already_clean)

    @property
    def copies_count(self) -> int:
        return len(self.copies)


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


_TYPE_OF = np.frompyfunc(type, 1, 1)


def _text_mask(values: pd.Series, present: np.ndarray) -> np.ndarray:
    """Which values are Python strings: cheap for all-text or all-number columns, element-wise otherwise."""
    return _value_kinds(values, present)[0]


def _value_kinds(values: pd.Series, present: np.ndarray) -> tuple[np.ndarray, bool]:
    """Which values are Python strings, and whether all the others are plain Python floats and ints (so numpy
    can convert them itself, see `_numbers_of`).

    A mixed column (numbers with a few text values, as SQLite returns a column with faults) is typed value by
    value in one C-level pass and compared once: twice as fast as `isinstance` in a generator, which was the
    largest single cost of validating 1M rows with faults; the set of the other types is a handful (float, int,
    NoneType, rarely a subclass of str).
    """
    kind = pd.api.types.infer_dtype(values, skipna=True)
    if kind == "string":
        return present.copy(), False
    if kind in ("integer", "floating", "mixed-integer-float", "decimal", "boolean", "empty",
                "datetime64", "datetime", "date"):
        return np.zeros(len(values), dtype=bool), kind in ("integer", "floating", "mixed-integer-float")
    types = _TYPE_OF(values.to_numpy(dtype=object))
    text = (types == str).astype(bool, copy=False)  # noqa: E721 - element-wise over a numpy array of types
    others = set(types[~text])
    if any(issubclass(kind_of_value, str) for kind_of_value in others):  # numpy.str_ and the like: rare, slow way
        objects = values.to_numpy(dtype=object)
        text = np.fromiter((isinstance(value, str) for value in objects), dtype=bool, count=len(objects))
    return text, others <= {float, int, type(None)}


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
        is_text, plain = _value_kinds(objects, present)
        numbers = np.full(size, np.nan)
        others = present & ~is_text
        if others.any():
            numbers[others] = _numbers_of(objects[others], plain)
        if is_text.any():
            text = objects[is_text].astype(str).str.strip()
            if rule.decimal_comma:
                text = text.str.replace(",", ".", regex=False)
            numbers[is_text] = pd.to_numeric(text, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
        coerced = is_text & ~np.isnan(numbers)
    with np.errstate(invalid="ignore"):
        bad = present & ~np.isfinite(numbers)
        too_large = np.zeros(size, dtype=bool)
        if integer:
            bad |= present & np.isfinite(numbers) & (np.mod(numbers, 1) != 0)
            # A whole number beyond 64 bits ("1e20") is no integer the column can hold: converting it would wrap.
            too_large = present & ~bad & (np.abs(numbers) >= 2.0**63)
    missing = bad | too_large | np.isnan(numbers)
    if integer:
        # Built directly: astype("Int64") from floats re-checks every value in Python-speed loops.
        whole = np.where(missing, 0, numbers).astype("int64")
        typed = pd.Series(pd.arrays.IntegerArray(whole, missing), index=values.index)
    else:
        typed = pd.Series(np.where(bad, np.nan, numbers), index=values.index)
    return CoercedColumn(typed, coerced & ~bad & ~too_large, bad, failure, too_large, "too_large")


def _numbers_of(values: pd.Series, plain: bool = False) -> np.ndarray:
    """Non-text values of an object column as floats; an integer too long for a float (Python reads a 400-digit
    one from JSON or a NUMERIC column) is not a number here: NaN, which the caller reports as bad.

    `plain` says they are all Python floats and ints (what SQLite returns beside a fault's text): numpy converts
    those in one C loop, ~5x faster than `to_numeric`'s inference value by value; an int too long for a float
    raises there and takes the way below.
    """
    if plain:
        with contextlib.suppress(OverflowError):
            return values.to_numpy(dtype=object).astype("float64")
    try:
        return pd.to_numeric(values, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
    except OverflowError:
        largest = sys.float_info.max
        fitting = values.map(lambda value: value if not isinstance(value, int) or -largest <= value <= largest
                             else np.nan)
        return pd.to_numeric(fitting, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)


def _coerce_string(values: pd.Series) -> CoercedColumn:
    # Arrow strings: strip here and the isin/length checks in pandera run in C++, not once per Python object.
    objects = values.astype(object, copy=False)
    if pd.api.types.infer_dtype(objects, skipna=True) in ("string", "empty"):
        others = np.zeros(len(objects), dtype=bool)  # all text (or null): Arrow finds the nulls itself
    else:
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
        if (rule.min is not None or rule.max is not None) and rule.hard:
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
    existing: pd.DataFrame | None = None,
) -> ValidationResult:
    """Coerce, check and split a batch into clean, quarantined and already-there rows; batch rules are judged
    separately.

    Args:
        frame: Rows as read from the source, values untouched.
        contract: The model's data contract.
        as_of: The run's clock, for the future-timestamp check (None: no future check).
        existing: Rows already in the clean table that the batch's keys may meet: the key columns and the other
            contract columns. A batch row with one of these keys is already there when it equals that row in
            every contract column, and is quarantined as a duplicate across batches otherwise (also when
            `existing` holds only the keys, so nothing can be compared).
    """
    latest = None
    if as_of is not None:
        latest = as_naive_utc(as_of) + timedelta(minutes=contract.batch.future_tolerance_minutes)
    return _validate(frame, contract.columns, contract.key, contract.timestamp, latest, existing)


def _validate(
    frame: pd.DataFrame,
    rules: dict[str, ColumnRule],
    key: Sequence[str],
    timestamp: str | None,
    latest_allowed: datetime | None,
    existing: pd.DataFrame | None,
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
    shared = typed.duplicated(list(key), keep=False).to_numpy() if _has_key(typed, key) else np.zeros(size, bool)
    copies = _exact_copies(source, shared)
    within = _duplicates_within_batch(typed, key, shared, copies)
    across, already_clean = _compare_with_clean(typed, present, key, existing, copies)
    pairs = pd.concat([coercion_failures, checked, within, across], ignore_index=True)
    pairs = pairs.drop_duplicates(["row", "reason"])
    skipped = copies | already_clean
    if skipped.any():  # equal to a row that is clean already: not this batch's to judge again
        pairs = pairs[~skipped[pairs["row"].to_numpy()]]
    result = _split(source, typed, pairs, coerced, missing, unknown, timestamp, already_clean, copies)
    soft = soft_out_of_range(typed, present, skipped)
    return replace(result, out_of_range=soft) if soft else result


def soft_out_of_range(typed: pd.DataFrame, rules: dict[str, ColumnRule], skipped: np.ndarray) -> dict[str, int]:
    """Rows outside a soft range (`hard: false`), by column: counted and reported, not quarantined."""
    counts: dict[str, int] = {}
    for name, rule in rules.items():
        if rule.hard or (rule.min is None and rule.max is None) or name not in typed.columns:
            continue
        values = pd.to_numeric(typed[name], errors="coerce").to_numpy(dtype="float64")
        outside = np.zeros(len(values), dtype=bool)
        if rule.min is not None:
            outside |= values < rule.min
        if rule.max is not None:
            outside |= values > rule.max
        count = int((outside & ~skipped).sum())
        if count:
            counts[name] = count
    return counts


def _has_key(typed: pd.DataFrame, key: Sequence[str]) -> bool:
    return bool(key) and all(name in typed.columns for name in key)


def _exact_copies(source: pd.DataFrame, shared_key: np.ndarray) -> np.ndarray:
    """Rows byte-identical (every column as stored) to an earlier row of the batch that shares their key.

    Such a copy (a row sent twice) is the same row: the first lands (or is quarantined) and the copies are not
    rows of their own. Only rows sharing a key (`shared_key`) are compared, so a batch without repeated keys
    costs nothing more; a table without a key keeps every row (two equal rows may be two events).
    """
    copies = np.zeros(len(source), dtype=bool)
    shared = np.flatnonzero(shared_key)
    if len(shared):
        copies[shared[source.iloc[shared].duplicated(keep="first").to_numpy()]] = True
    return copies


def _duplicates_within_batch(
    typed: pd.DataFrame, key: Sequence[str], shared: np.ndarray, copies: np.ndarray
) -> pd.DataFrame:
    """Every row whose key occurs more than once with other content: which one is right cannot be told, so
    none lands (byte-identical copies are not counted: they are one row).

    Written by hand although pandera has `unique=`: on 1M rows with a few hundred duplicates its
    report (a formatted repr and a stack/unstack of the failures) cost 0.26 s, `duplicated` 0.08 s.
    """
    if not _has_key(typed, key):
        return _pairs([], [], [])
    if copies.any():
        rows = np.flatnonzero(shared & ~copies)
        shared = np.zeros(len(typed), dtype=bool)
        shared[rows[typed.iloc[rows].duplicated(list(key), keep=False).to_numpy()]] = True
    rows = np.flatnonzero(shared)
    return _pairs(rows, [DUPLICATE_IN_BATCH] * len(rows), [""] * len(rows))


def _compare_with_clean(
    typed: pd.DataFrame,
    rules: dict[str, ColumnRule],
    key: Sequence[str],
    existing: pd.DataFrame | None,
    copies: np.ndarray,
) -> tuple[pd.DataFrame, np.ndarray]:
    """Rows whose key is clean already: equal in every contract column (already there), or duplicates.

    Returns:
        The duplicate pairs (reason `duplicate_key:across_batches`) and the mask of rows already there.
    """
    already = np.zeros(len(typed), dtype=bool)
    if not _has_key(typed, key) or existing is None or existing.empty:
        return _pairs([], [], []), already
    compared = [name for name in typed.columns if name in existing.columns and name in rules]
    stored = pd.DataFrame(
        {name: coerce_column(existing[name].reset_index(drop=True), rules[name]).values for name in compared}
    ).dropna(subset=list(key)).drop_duplicates(list(key))
    mine = pd.MultiIndex.from_frame(typed[list(key)])
    meets = mine.isin(pd.MultiIndex.from_frame(stored[list(key)])) & ~copies
    rows = np.flatnonzero(meets)
    others = [name for name in typed.columns if name not in key]
    if len(rows) and all(name in compared for name in others):
        batch_rows = typed.iloc[rows].reset_index(drop=True)
        joined = batch_rows.merge(stored, on=list(key), how="left", suffixes=("", "_stored"))
        equal = np.ones(len(rows), dtype=bool)
        for name in others:
            mine_values, theirs = joined[name], joined[f"{name}_stored"]
            same = (mine_values == theirs).fillna(False).to_numpy(dtype=bool)
            equal &= same | (mine_values.isna().to_numpy() & theirs.isna().to_numpy())
        already[rows[equal]] = True
        rows = rows[~equal]
    return _pairs(rows, [DUPLICATE_ACROSS_BATCHES] * len(rows), [""] * len(rows)), already


def _split(
    source: pd.DataFrame,
    typed: pd.DataFrame,
    pairs: pd.DataFrame,
    coerced: np.ndarray,
    missing: tuple[str, ...],
    unknown: tuple[str, ...],
    timestamp: str | None,
    already_clean: np.ndarray,
    copies: np.ndarray,
) -> ValidationResult:
    size = len(source)
    bad = np.zeros(size, dtype=bool)
    bad[pairs["row"].to_numpy()] = True
    bad |= already_clean | copies  # not clean rows of this batch either: they are there already
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
    if bad.any():
        clean = typed.loc[~bad]
        clean.index = pd.RangeIndex(len(clean))  # reset_index(drop=True) would copy every column again
    newest_clean = None
    if timestamp is not None and timestamp in typed.columns:
        newest_clean = _latest(clean[timestamp])
    return ValidationResult(
        clean=clean,
        quarantined=quarantined,
        read=size,
        coerced=int((coerced & ~(already_clean | copies)).sum()),
        reasons=reason_counts,
        missing_columns=missing,
        unknown_columns=unknown,
        newest_clean=newest_clean,
        source=source,
        already_clean=np.flatnonzero(already_clean),
        copies=np.flatnonzero(copies),
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
    there = np.concatenate([result.quarantined["source_row"].to_numpy(), result.already_clean, result.copies])
    good = np.setdiff1d(np.arange(result.read), there)
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
    if result.copies_count:  # a snapshot holds each row once: the clean table's key says so
        raise DataContractError(
            "snapshot_rows", result.copies_count, 0,
            f"{result.copies_count} rows are copies of another row with the same key {list(key)}; first at "
            f"position {int(result.copies[0])}",
        )
    if result.quarantined_count:
        top = ", ".join(f"{reason} ({count})" for reason, count in list(result.reasons.items())[:5])
        first = result.quarantined.iloc[0]
        raise DataContractError(
            "snapshot_rows", result.quarantined_count, 0,
            f"reasons: {top}; first bad row at position {first['source_row']}: {first['raw'][:RAW_PREVIEW_CHARS]}",
        )


