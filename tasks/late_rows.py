"""Late rows: source rows dated before the watermark (within the contract's `late_window_hours`) that no batch
has read, because they arrived after the batch of their time was read.

Every ingest counts them (its outcome and ledger row say `late`); with the contract's `late_rows: ingest` an
open-ended ingest lands them first as a batch of their own (`kind = "late"`), which never moves the watermark.
A late row is told from a row already read by what the stores hold: equal to a clean row, a copy of one, or its
fingerprint in quarantine (`unread_rows`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime, timedelta

import numpy as np
import pandas as pd
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from retrain import clock, warehouse
from retrain.clock import parse_timestamps
from retrain.config import ModelConfig
from retrain.contract import Contract, LateRows
from tasks.ingest import BatchPlan, BatchRows, new_batch_id, read_existing_rows, row_fingerprints
from tasks.retries import STORE_RETRIES
from tasks.validation import validate_batch


def unread_rows(
    frame: pd.DataFrame, contract: Contract, existing: pd.DataFrame | None, quarantined: Mapping[str, str] | set[str]
) -> np.ndarray:
    """Positions of the rows of `frame` that no batch has read: not equal to a clean row, not (a copy of) a row
    the quarantine holds.

    Args:
        frame: Source rows with usable timestamps, values as stored.
        contract: The data contract (how values compare).
        existing: The clean rows they may meet (`read_existing_rows`).
        quarantined: Fingerprints the quarantine holds, among those of `frame`'s rows.
    """
    result = validate_batch(frame, contract, None, existing)
    there = np.zeros(len(frame), dtype=bool)
    there[result.already_clean] = True
    there[result.copies] = True
    candidates = np.flatnonzero(~there)
    fingerprints = row_fingerprints(frame.reset_index(drop=True), candidates)
    return np.array([row for row, fingerprint in zip(candidates, fingerprints, strict=True)
                     if fingerprint not in quarantined], dtype="int64")


def _late(config: ModelConfig, contract: Contract, plan: BatchPlan, rows: BatchRows) -> BatchRows:
    empty = BatchRows(frame=pd.DataFrame(), range_end=None)
    window = contract.batch.late_window_hours
    if plan.watermark is None or not window:
        return empty
    store = warehouse.get_warehouse()
    source = config.source
    lower, upper = plan.watermark - timedelta(hours=window), plan.watermark
    candidates = warehouse.read_source_rows(store, source.table, source.timestamp, lower, upper).reset_index(drop=True)
    times = parse_timestamps(candidates[source.timestamp]).values.to_numpy(dtype="datetime64[ns]")
    inside = ~np.isnat(times) & (times >= np.datetime64(lower, "ns")) & (times < np.datetime64(upper, "ns"))
    if plan.kind is None and rows.range_end is not None:  # rows this batch reads now are not late
        start = np.datetime64(plan.range_start, "ns") if plan.range_start is not None else None
        ours = times < np.datetime64(rows.range_end, "ns")
        if start is not None:
            ours &= times >= start
        inside &= ~ours
    frame = candidates.loc[inside].reset_index(drop=True)
    if frame.empty:
        return empty
    existing = read_existing_rows(config, contract, frame, lower, upper)
    fingerprints = row_fingerprints(frame)
    quarantined = warehouse.read_quarantined_fingerprints(store, source.quarantine, fingerprints)
    late = frame.iloc[unread_rows(frame, contract, existing, quarantined)].reset_index(drop=True)
    if late.empty:
        return empty
    late_times = parse_timestamps(late[source.timestamp]).values
    return BatchRows(frame=late, range_end=late_times.max().to_pydatetime() + timedelta(microseconds=1))


@task(cache_policy=NO_CACHE, **STORE_RETRIES)
def find_late_rows(config: ModelConfig, contract: Contract, plan: BatchPlan, rows: BatchRows) -> BatchRows:
    """Late rows: source rows dated within `late_window_hours` before the watermark that no batch has read
    (arrived after the batch of their time was read), other than those this batch reads now.

    Returns:
        The late rows, values as stored, and the end of their range (just after the newest).
    """
    late = _late(config, contract, plan, rows)
    if late.count:
        get_run_logger().warning(
            "%d late rows of %s: dated before the watermark %s, read by no batch; %s", late.count,
            config.source.table, plan.watermark,
            "they land as a batch of their own" if contract.batch.late_rows == LateRows.INGEST
            else "replay their range (retrain ingest --start ... --end ...) to land them, or set the contract's "
                 "batch.late_rows: ingest",
        )
    return late


def late_batch_plan(plan: BatchPlan, late: BatchRows, timestamp: str) -> BatchPlan:
    """The plan of a batch of late rows: its own id, the range its rows span, marked `late` (it never moves the
    watermark: its range ends before it)."""
    started_at = clock.wall_clock()
    first = parse_timestamps(late.frame[timestamp]).values.min().to_pydatetime()
    return replace(plan, batch_id=new_batch_id(plan.source_table, started_at), range_start=first, range_end=None,
                   started_at=started_at, replay=None, kind="late")


@task(cache_policy=NO_CACHE)
def plan_late_batch(plan: BatchPlan, late: BatchRows, contract: Contract) -> BatchPlan:
    """The plan of the batch that lands late rows (`late_batch_plan`)."""
    return late_batch_plan(plan, late, contract.timestamp)


def takes_late_rows(contract: Contract, start: datetime | None, end: datetime | None, late: BatchRows) -> bool:
    """Whether this ingest lands the late rows it found as a batch of their own: open-ended, and the contract
    says `late_rows: ingest`."""
    return bool(late.count) and start is None and end is None and contract.batch.late_rows == LateRows.INGEST
