"""Ingest of a source: which rows a batch holds, validating them, and recording the batch; pure first, tasks last.

Which source rows a batch holds is decided before validation, on the same parsed timestamps
(`select_batch`): an open-ended batch holds the rows dated from the watermark up to the horizon (`as_of`
plus the contract's future tolerance) and ends just after the newest of them; rows dated later have not
arrived yet and wait for a later batch; a row without a usable timestamp joins the first batch that sees
it and is known by its fingerprint afterwards. So a quarantined row never moves the watermark, and every
source row is read by exactly one batch unless a person asks for a range again.

The rows are validated by `tasks.validation` (pure), and the clean rows, the quarantine and the batch's
ledger row are written in one transaction (`retrain.warehouse.record_batch`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import re
import uuid
from collections.abc import Iterator, Sequence
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
    judge_batch,
    validate_batch,
)

ARTIFACT_SAMPLE_ROWS = 50

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
    flow_run_id: str | None = json_field(None, default=None)  # in the batch ledger, not in `ingest --json`
    source_table: str = json_field("source", default="")
    waiting: int = 0
    as_of: datetime | None = None


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


def new_batch_id(source_table: str, as_of: datetime) -> str:
    """A readable, unique batch id: source table, the batch's `as_of` (the Retrain clock, so a replay's ids name
    the replayed instant, not the wall time) and a random suffix."""
    safe = re.sub(r"[^A-Za-z0-9]+", "-", source_table).strip("-").lower()
    return f"{safe}-{as_of:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"


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
    return BatchPlan(
        batch_id=new_batch_id(source, moment),
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


@task(cache_policy=NO_CACHE, **STORE_RETRIES)
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


@task(cache_policy=NO_CACHE, **STORE_RETRIES)
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


@task(cache_policy=NO_CACHE, **STORE_RETRIES)
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
