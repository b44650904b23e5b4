"""Ingest of a source: which rows a batch holds, validating them, and recording the batch; pure first, tasks last.

Which source rows a batch holds is decided before validation, on the same parsed timestamps
(`select_batch`): an open-ended batch holds the rows dated from the watermark up to the horizon (`as_of`
plus the contract's future tolerance) and ends just after the newest of them; rows dated later have not
arrived yet and wait for a later batch; a row without a usable timestamp joins the first batch that sees
it and is known by its fingerprint afterwards. So a quarantined row never moves the watermark, and every
source row is read by exactly one batch unless a person asks for a range again.

The rows are validated by `tasks.validation` (pure), and the clean rows, the quarantine and the batch's
ledger row are written in one transaction (`retrain.warehouse.record_batch`).

Nothing is stored twice. A row equal to one already clean is "already there" (a replayed range lands exactly
the rows it did not hold: its late rows), a byte-identical copy of a row lands once, and a row is stored in
quarantine once, known by its fingerprint: a batch refused again on the same rows (tried again, or by a second
ingest that waited on the lock) stores nothing and answers with the earlier refusal. Late rows (dated before the
watermark, within the contract's `late_window_hours`, that no batch has read) are counted in every ingest's
outcome and ledger row; with `late_rows: ingest` an open-ended ingest lands them first, as a batch of their own.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import re
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from retrain import clock, warehouse
from retrain.clock import as_naive_utc, parse_timestamps
from retrain.config import ModelConfig
from retrain.contract import Contract, check_model_source, read_contract
from retrain.errors import ConfigError, DataContractError
from retrain.jsonable import json_field
from tasks.retries import STORE_RETRIES
from tasks.validation import (
    PASSED,
    RAW_PREVIEW_CHARS,
    BatchViolation,
    ValidationResult,
    coerce_column,
    judge_batch,
    validate_batch,
)

ARTIFACT_SAMPLE_ROWS = 50
KEPT_PREFIX = "kept:"  # a reasons key of rows that were counted and kept (a soft range), not quarantined

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
        replay: The outcome of a passed batch with the same requested range: answered again when the range
            still holds the rows it read (`unchanged_replay`), read again when rows arrived since.
        watermark: The source's watermark when the run started (where late rows end).
        kind: `late` for a batch of late rows; None for a batch of a range.
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
    watermark: datetime | None = None
    kind: str | None = None

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
    flow_run_id: str | None = json_field(None, default=None)  # in the batch ledger, not in `ingest --json`
    source_table: str = json_field("source", default="")
    waiting: int = 0
    as_of: datetime | None = None
    already_clean: int = 0  # rows equal to a row already clean: not stored again
    copies: int = 0  # byte-identical copies of an earlier row of the batch: the row lands once
    already_quarantined: int = 0  # of the quarantined rows, those the quarantine held already (not stored again)
    late: int = 0  # rows dated before the watermark (within late_window_hours) that no batch had read
    late_batch: str | None = None  # the batch that took the late rows, when the contract says `late_rows: ingest`
    repeats: str | None = None  # the earlier refused batch of the same rows: this one stored nothing
    kind: str | None = None  # "late" for a batch of late rows
    out_of_range: dict[str, int] = field(default_factory=dict)  # rows outside a soft range, by column: kept, counted


class BatchRefused(DataContractError):
    """A DataContractError raised by the ingest flow that also carries the recorded outcome of the batch."""

    def __init__(self, violation: BatchViolation, outcome: BatchOutcome) -> None:
        super().__init__(violation.rule, violation.observed, violation.limit, violation.detail)
        self.violation = violation
        self.outcome = outcome

    def __reduce__(self) -> tuple[Any, ...]:
        # Prefect may pickle a failed state's exception: keep both fields across that round trip.
        return (self.__class__, (self.violation, self.outcome))



# ------------------------------------------------------------------------------------- which rows a batch holds


def row_fingerprint(values: Sequence[Any]) -> str:
    """A stable fingerprint of one row's stored values, the same however the batch around it was typed.

    A column read as float in one batch (because of a NULL) and as integer in the next must not change
    the fingerprint, so whole floats are written as integers and every other value as its text.
    """
    canonical = [_canonical_value(value) for value in values]
    return hashlib.sha256(json.dumps(canonical, ensure_ascii=False).encode()).hexdigest()[:32]


def row_fingerprints(frame: pd.DataFrame, rows: Sequence[int] | np.ndarray | None = None) -> list[str]:
    """`row_fingerprint` of the given rows of `frame` (default: all), the same text built column by column.

    Every quarantined row is stored with its fingerprint, so a refused batch of a million rows fingerprints a
    million rows: per column instead of per cell, about 25 times faster than calling `row_fingerprint` per row.
    """
    positions = np.arange(len(frame)) if rows is None else np.asarray(rows, dtype="int64")
    if not len(positions):
        return []
    subset = frame.iloc[positions]
    columns = [_json_texts(subset.iloc[:, index]) for index in range(subset.shape[1])]
    return [hashlib.sha256(f"[{', '.join(texts)}]".encode()).hexdigest()[:32] for texts in zip(*columns, strict=True)]


_NEEDS_ESCAPE = r'["\\\x00-\x1f\x7f\u2028\u2029]'  # what json.dumps(ensure_ascii=False) writes other than as is


def _json_texts(values: pd.Series) -> list[str]:
    """Each value as `json.dumps(_canonical_value(value), ensure_ascii=False)` writes it, by column where the
    dtype allows (numbers, instants, plain text) and value by value otherwise."""
    if pd.api.types.is_bool_dtype(values) and values.dtype != object:
        return ["true" if value else "false" for value in values.to_numpy()]
    if pd.api.types.is_integer_dtype(values) and isinstance(values.dtype, np.dtype):
        return values.to_numpy().astype(str).tolist()
    if pd.api.types.is_float_dtype(values) and isinstance(values.dtype, np.dtype):
        numbers = values.to_numpy(dtype="float64")
        with np.errstate(invalid="ignore"):
            whole = np.isfinite(numbers) & (np.mod(numbers, 1) == 0) & (np.abs(numbers) < 2**62)
        texts = np.where(whole, np.where(whole, numbers, 0).astype("int64").astype(str), "null").astype(object)
        finite = np.flatnonzero(~whole & np.isfinite(numbers))
        # What json.dumps writes for a float (repr), or for a whole one too large for int64 (its integer).
        texts[finite] = [str(int(number)) if number.is_integer() else repr(number)
                         for number in numbers[finite].tolist()]
        infinite = np.flatnonzero(np.isinf(numbers))
        texts[infinite] = [json.dumps(number) for number in numbers[infinite].tolist()]
        return texts.tolist()
    if pd.api.types.is_datetime64_dtype(values):
        instants = values.to_numpy(dtype="datetime64[ns]")
        stamps = np.char.add(np.char.add('"', np.datetime_as_string(instants, unit="s")), '"').astype(object)
        missing = np.isnat(instants)
        fractional = np.flatnonzero(~missing & (instants.astype("int64") % 1_000_000_000 != 0))
        stamps[fractional] = [json.dumps(_canonical_value(value)) for value in values.iloc[fractional]]
        stamps[missing] = "null"
        return stamps.tolist()
    if pd.api.types.infer_dtype(values, skipna=True) == "string":
        present = values.notna().to_numpy()
        plain = present & ~values.str.contains(_NEEDS_ESCAPE, regex=True, na=False).to_numpy()
        texts = np.full(len(values), "null", dtype=object)
        texts[plain] = ('"' + values[plain] + '"').to_numpy()
        rest = np.flatnonzero(present & ~plain)
        texts[rest] = [json.dumps(value, ensure_ascii=False) for value in values.iloc[rest].tolist()]
        return texts.tolist()
    return [json.dumps(_canonical_value(value), ensure_ascii=False) for value in values.tolist()]


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
    timeless_rows = np.flatnonzero(timeless)
    for row, fingerprint in zip(timeless_rows, row_fingerprints(frame, timeless_rows), strict=True):
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


def new_batch_id(source_table: str, as_of: datetime) -> str:
    """A readable, unique batch id: source table, the batch's `as_of` (the Retrain clock, so a replay's ids name
    the replayed instant, not the wall time) and a random suffix."""
    safe = re.sub(r"[^A-Za-z0-9]+", "-", source_table).strip("-").lower()
    return f"{safe}-{as_of:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"


def outcome_of(
    plan: BatchPlan, rows: BatchRows, result: ValidationResult, flow_run_id: str | None, late: int = 0
) -> BatchOutcome:
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
        out_of_range=dict(result.out_of_range),
        unknown_columns=result.unknown_columns,
        range_start=plan.range_start,
        range_end=rows.range_end,
        violation=result.violation,
        flow_run_id=flow_run_id,
        source_table=plan.source_table,
        waiting=rows.waiting,
        as_of=plan.as_of,
        already_clean=result.already_clean_count,
        copies=result.copies_count,
        late=late,
        kind=plan.kind,
    )


def unchanged_replay(plan: BatchPlan, rows: BatchRows) -> BatchOutcome | None:
    """The earlier outcome of the same requested range, when the range still holds the rows it read.

    Re-running an ingest of a range answers as before without writing; once rows arrived in the range since
    (late rows), it is read again, and only the rows not already clean land.
    """
    if plan.replay is None or rows.count != plan.replay.read:
        return None
    return plan.replay


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
        f"| of which in quarantine already | {outcome.already_quarantined} |",
        f"| already clean (not stored again) | {outcome.already_clean} |",
        f"| byte-identical copies (landed once) | {outcome.copies} |",
        f"| waiting (dated after as_of + tolerance) | {outcome.waiting} |",
        f"| late (dated before the watermark, read by no batch) | {outcome.late} |",
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
        # rows kept outside a soft range ride in the reasons column as `kept:out_of_range:<column>`
        "reasons": json.dumps({**outcome.reasons,
                               **{f"{KEPT_PREFIX}out_of_range:{name}": n for name, n in outcome.out_of_range.items()}}),
        "unknown_columns": json.dumps(list(outcome.unknown_columns)),
        "rule": violation.rule if violation else None,
        "violation": json.dumps(
            {"observed": violation.observed, "limit": violation.limit, "detail": violation.detail}, default=str
        ) if violation else None,
        "flow_run_id": outcome.flow_run_id,
        "as_of": plan.as_of,
        "started_at": plan.started_at,
        "finished_at": finished_at,
        "rows_already_clean": outcome.already_clean,
        "rows_copies": outcome.copies,
        "rows_already_quarantined": outcome.already_quarantined,
        "rows_late": outcome.late,
        "kind": outcome.kind,
    }


def kept_out_of_range(reasons: dict[str, int]) -> dict[str, int]:
    """The soft-range counts a batch record keeps among its reasons (`kept:out_of_range:<column>`), by column."""
    prefix = f"{KEPT_PREFIX}out_of_range:"
    return {key.removeprefix(prefix): count for key, count in reasons.items() if key.startswith(prefix)}


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
        reasons={k: v for k, v in json.loads(record["reasons"]).items() if not k.startswith(KEPT_PREFIX)},
        out_of_range=kept_out_of_range(json.loads(record["reasons"])),
        unknown_columns=tuple(json.loads(record["unknown_columns"])),
        range_start=record["range_start"],
        range_end=record["range_end"],
        violation=violation,
        flow_run_id=record["flow_run_id"],
        source_table=record["source_table"],
        waiting=int(record["rows_waiting"]),
        as_of=record["as_of"],
        already_clean=_count(record.get("rows_already_clean")),
        copies=_count(record.get("rows_copies")),
        already_quarantined=_count(record.get("rows_already_quarantined")),
        late=_count(record.get("rows_late")),
        kind=record.get("kind"),
    )


def _count(value: Any) -> int:
    """A count from the ledger; NULL (a row written before the column existed) is 0."""
    return 0 if value is None or (isinstance(value, float) and math.isnan(value)) else int(value)


def quarantine_records(batch_id: str, result: ValidationResult) -> pd.DataFrame:
    """Quarantine rows as stored: batch id, position in the batch, reasons as a JSON list, raw row as JSON, and
    the fingerprint of the row's values (by which it is stored once, however often it is read)."""
    quarantined = result.quarantined
    positions = quarantined["source_row"].astype("int64")
    return pd.DataFrame({
        "batch_id": batch_id,
        "source_row": positions,
        "reasons": [json.dumps(list(reasons)) for reasons in quarantined["reasons"]],
        "raw": quarantined["raw"],
        "fingerprint": row_fingerprints(result.source, positions.to_numpy()),
    })


def new_quarantine(records: pd.DataFrame, stored: Mapping[str, str]) -> pd.DataFrame:
    """The quarantine rows the table does not hold yet (`stored`: fingerprints it holds, to their batch)."""
    if not stored or records.empty:
        return records
    return records[~records["fingerprint"].isin(list(stored))].reset_index(drop=True)


def repeated_refusal(
    outcome: BatchOutcome, records: pd.DataFrame, stored: Mapping[str, str], earlier: Sequence[Mapping[str, Any]]
) -> BatchOutcome | None:
    """The earlier refusal this batch repeats, or None: refused on the same rule, with every row it would
    quarantine stored already by that refused batch, so it has nothing to add.

    Args:
        outcome: This batch's outcome, as judged.
        records: Its quarantine rows (with fingerprints).
        stored: The fingerprints of those rows the quarantine holds already, to the batch that stored them.
        earlier: The batch ledger rows of the batches in `stored`, newest first.
    """
    if outcome.violation is None or records.empty or len(new_quarantine(records, stored)):
        return None
    refusals = {record["batch_id"]: record for record in earlier
                if record["status"] != PASSED and record.get("rule") == outcome.violation.rule
                and record["source_table"] == outcome.source_table}
    holders = {stored[fingerprint] for fingerprint in records["fingerprint"]}
    if not holders <= set(refusals):
        return None
    newest = max(holders, key=lambda batch: refusals[batch]["finished_at"])
    return replace(outcome, batch_id=newest, already_quarantined=len(records), repeats=newest)


@task(cache_policy=NO_CACHE)
def read_model_contract(config: ModelConfig) -> Contract:
    """The contract beside the model config; a missing one is an error saying how to write it."""
    return read_contract(config.contract_path)


@task(cache_policy=NO_CACHE, **STORE_RETRIES)
def check_source_config(config: ModelConfig) -> warehouse.TableDescription:
    """Check the model config against its source table and contract: the first thing a flow does.

    Every configured column must exist with a usable type, the key must be a key, and the contract must
    fit (see `retrain.contract.check_config_against_table`). Fails in well under a second with a
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
    moment = clock.arrival_as_of(as_of)
    replay = None
    if end is not None:
        record = warehouse.find_passed_batch(store, source, clean, start, end)
        replay = outcome_from_record(record) if record is not None else None
    started_at = clock.wall_clock()
    watermark = warehouse.read_watermark(store, source, clean)
    return BatchPlan(
        batch_id=new_batch_id(source, moment),
        model=config.name,
        source_table=source,
        clean_table=clean,
        # A request like an earlier batch's reads that batch's range again, to see whether rows arrived in it since.
        range_start=start if start is not None else replay.range_start if replay is not None else watermark,
        range_end=end,
        as_of=moment,
        horizon=moment + timedelta(minutes=contract.batch.future_tolerance_minutes),
        started_at=started_at,
        replay=replay,
        watermark=watermark,
    )


def timeless_fingerprints(candidates: pd.DataFrame, timestamp: str) -> list[str]:
    """Fingerprints of the rows without a usable timestamp (null or unparseable), which only they identify."""
    frame = candidates.reset_index(drop=True)
    times = parse_timestamps(frame[timestamp]).values.to_numpy(dtype="datetime64[ns]")
    return row_fingerprints(frame, np.flatnonzero(np.isnat(times)))


def _select(config: ModelConfig, plan: BatchPlan) -> BatchRows:
    store = warehouse.get_warehouse()
    source = config.source
    candidates = warehouse.read_source_rows(store, source.table, source.timestamp, plan.range_start, plan.upper)
    known = warehouse.read_known_fingerprints(store, source.table, source.clean, source.quarantine,
                                              timeless_fingerprints(candidates, source.timestamp))
    rows = select_batch(candidates, source.timestamp, plan.range_start, plan.upper, plan.end_requested, known)
    if not plan.end_requested:
        later = warehouse.count_rows_after(store, source.table, source.timestamp, plan.upper)
        rows = replace(rows, waiting=rows.waiting + later)
    return rows


@task(cache_policy=NO_CACHE, **STORE_RETRIES)
def plan_batch(
    config: ModelConfig,
    contract: Contract,
    start: datetime | None = None,
    end: datetime | None = None,
    as_of: datetime | None = None,
) -> BatchPlan:
    """Decide the range to read: from `start` or the source's watermark, to `end` or the horizon.

    A request with an end that a passed batch already covered (same end, same start if given) carries that
    batch's outcome, answered again unless rows arrived in the range since (`unchanged_replay`): re-running an
    ingest adds nothing.

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


@task(cache_policy=NO_CACHE, **STORE_RETRIES)
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


@task(cache_policy=NO_CACHE, **STORE_RETRIES)
def count_new_rows(config: ModelConfig, as_of: datetime | None = None) -> int:
    """Rows an open-ended ingest as of `as_of` would read, dated from the watermark up to the horizon.

    Rows without a usable timestamp are not counted: alone they would make a batch of nothing but bad rows,
    refused (and so read again) at every poll; they join the next batch that brings dated rows. Outside the
    source lock this is only a hint; `flows.ingest.ingest_when_new_rows` counts inside it.
    """
    plan = _plan(config, read_contract(config.contract_path), None, None, as_of)
    return _select(config, plan).timed_count


def meeting_keys(frame: pd.DataFrame, contract: Contract, clean_keys: pd.DataFrame) -> pd.DataFrame:
    """The clean keys (as the clean table holds them) that rows of `frame` have too, compared as contract values
    (so `"12"` in the source meets 12 in the clean table, as validation would see it)."""
    if clean_keys.empty or frame.empty or any(name not in frame.columns for name in contract.key):
        return clean_keys.iloc[0:0]
    key = list(contract.key)
    typed_clean = pd.MultiIndex.from_frame(pd.DataFrame(
        {name: coerce_column(clean_keys[name].reset_index(drop=True), contract.columns[name]).values for name in key}
    ))
    typed_batch = pd.MultiIndex.from_frame(pd.DataFrame(
        {name: coerce_column(frame[name].reset_index(drop=True), contract.columns[name]).values for name in key}
    ))
    return clean_keys.reset_index(drop=True)[typed_clean.isin(typed_batch)]


def read_existing_rows(
    config: ModelConfig, contract: Contract, frame: pd.DataFrame, start: datetime | None, end: datetime | None
) -> pd.DataFrame | None:
    """The clean rows (every contract column) that rows of `frame`, dated in `[start, end)`, may share a key with.

    With the timestamp in the key only the range's clean rows can, and they are read at once; otherwise the keys
    are read, those the batch meets found, and only their rows read.
    """
    store = warehouse.get_warehouse()
    clean, columns = config.source.clean, list(contract.columns)
    if not contract.key:
        return None
    if contract.timestamp in contract.key:
        return warehouse.read_clean_rows(store, clean, columns, contract.timestamp, start, end)
    keys = warehouse.read_clean_keys(store, clean, contract.key, contract.timestamp, start, end)
    if keys is None or keys.empty:
        return keys
    return warehouse.read_clean_rows_by_key(store, clean, columns, contract.key, meeting_keys(frame, contract, keys))


@task(cache_policy=NO_CACHE, **STORE_RETRIES)
def validate_new_rows(config: ModelConfig, contract: Contract, plan: BatchPlan, rows: BatchRows) -> ValidationResult:
    """Validate the batch against the contract and the rows already clean, then judge its batch rules."""
    existing = read_existing_rows(config, contract, rows.frame, plan.range_start, rows.range_end)
    result = judge_batch(validate_batch(rows.frame, contract, plan.as_of, existing), contract, plan.as_of)
    log = get_run_logger()
    log.info("batch %s: read %d, clean %d, coerced %d, quarantined %d, already clean %d, copies %d", plan.batch_id,
             result.read, result.clean_count, result.coerced, result.quarantined_count, result.already_clean_count,
             result.copies_count)
    if result.unknown_columns:
        log.warning("columns not in the contract, not ingested: %s", list(result.unknown_columns))
    return result


@task(cache_policy=NO_CACHE, **STORE_RETRIES)
def record_batch(
    config: ModelConfig, contract: Contract, plan: BatchPlan, rows: BatchRows, result: ValidationResult,
    late: int = 0, late_batch: str | None = None,
) -> BatchOutcome:
    """Write quarantine, clean rows (if passed) and the batch record in one transaction.

    A quarantined row the quarantine holds already is not stored again (counted in `already_quarantined`); a
    refused batch with nothing new to store, refused by the same rule as the batch that stored its rows,
    writes nothing and answers with that refusal (`repeats`).

    Args:
        late: Late rows found before this batch (`find_late_rows`), for the outcome and the ledger.
        late_batch: The batch that landed them, if this ingest took them.
    """
    from prefect.runtime import flow_run

    outcome = replace(outcome_of(plan, rows, result, flow_run.id, late), late_batch=late_batch)
    store = warehouse.get_warehouse()
    quarantine = quarantine_records(outcome.batch_id, result)
    stored = warehouse.read_quarantined_fingerprints(store, config.source.quarantine, quarantine["fingerprint"])
    repeated = repeated_refusal(outcome, quarantine, stored, warehouse.read_batch_record(store, stored.values()))
    if repeated is not None:
        get_run_logger().warning("batch %s: the same rows were refused by batch %s (rule %s); nothing was stored "
                                 "again", plan.batch_id, repeated.repeats, repeated.violation.rule)  # type: ignore
        return repeated
    fresh = new_quarantine(quarantine, stored)
    outcome = replace(outcome, already_quarantined=len(quarantine) - len(fresh))
    warehouse.record_batch(
        store,
        record=batch_record(outcome, plan, finished_at=clock.wall_clock()),
        clean=result.clean if result.status == PASSED else None,
        clean_table=warehouse.clean_table(
            config.source.clean, {name: rule.type.value for name, rule in contract.columns.items()},
            key=contract.key, schema=store.schema,
        ),
        quarantine=fresh,
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
