"""The release ledger: one append-only row per decision about a model, and its reader.

A row of an alias transition carries the transition's id in `transition_id`, which a unique index backs: the
database, not the care of its writers, keeps a transition's row once.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from retrain.clock import wall_clock
from retrain.warehouse.engine import Warehouse
from retrain.warehouse.tables import (
    LEDGER_TABLE,
    create_declared_table,
    has_table,
    insert_new_rows,
    ledger_table,
)


@dataclass(frozen=True)
class LedgerEntry:
    """One decision about a model, as the ledger keeps it (see `ledger_table`).

    `at` is the decision's instant on the Retrain clock; `recorded_at` the wall time its row was written (set
    when it is appended, from the machine's clock even while a replay or a test holds `now()`).
    """

    model: str
    action: str
    reason: str
    actor: str
    at: datetime
    from_version: str | None = None
    to_version: str | None = None
    metrics: Mapping[str, float] = field(default_factory=dict)
    details: Mapping[str, Any] = field(default_factory=dict)
    flow_run_id: str | None = None
    mlflow_run_id: str | None = None
    recorded_at: datetime | None = None
    transition_id: str | None = None  # set for alias transitions: unique in the ledger


def append_ledger_entry(warehouse: Warehouse, entry: LedgerEntry) -> bool:
    """Append one ledger row (the ledger is never updated or deleted from).

    Returns:
        False when the entry names a transition the ledger holds already (nothing was written), else True.
    """
    row = {
        "at": entry.at,
        # The machine's clock even inside a replay (whose `now()` is the replayed instant): when it was written.
        "recorded_at": entry.recorded_at or wall_clock(),
        "model": entry.model,
        "action": entry.action,
        "from_version": entry.from_version,
        "to_version": entry.to_version,
        "reason": entry.reason,
        "actor": entry.actor,
        "metrics": json.dumps(dict(entry.metrics), sort_keys=True, default=str),
        "details": json.dumps(dict(entry.details), sort_keys=True, default=str),
        "flow_run_id": entry.flow_run_id,
        "mlflow_run_id": entry.mlflow_run_id,
        "transition_id": entry.transition_id,
    }
    table = _ready_ledger(warehouse)
    with warehouse.engine.begin() as connection:
        if entry.transition_id is None:
            connection.execute(sa.insert(table), [row])
            return True
        return insert_new_rows(connection, table, [row]) == 1


def _ready_ledger(warehouse: Warehouse) -> sa.Table:
    """The ledger table, created if missing; one written before gets the columns added since (`recorded_at`
    filled from `at`; `transition_id` empty in old rows, with its unique index, which old rows never break)."""
    return create_declared_table(warehouse, ledger_table(warehouse.schema))


def read_ledger(
    warehouse: Warehouse, model: str | None = None, limit: int | None = None, *, action: str | None = None
) -> list[LedgerEntry]:
    """Ledger rows of one model (or of all), optionally of one action (e.g. every `run-failed`), newest first on
    the Retrain clock (`at`; ties broken by insertion order), so a replay reads in the order it decided."""
    if not has_table(warehouse, LEDGER_TABLE):
        return []
    ledger = create_declared_table(warehouse, ledger_table(warehouse.schema))
    query = sa.select(ledger).order_by(ledger.c.at.desc(), ledger.c.id.desc())
    if model is not None:
        query = query.where(ledger.c.model == model)
    if action is not None:
        query = query.where(ledger.c.action == action)
    if limit is not None:
        query = query.limit(limit)
    with warehouse.engine.connect() as connection:
        rows = connection.execute(query).mappings().all()
    return [
        LedgerEntry(
            model=row["model"], action=row["action"], reason=row["reason"], actor=row["actor"], at=row["at"],
            from_version=row["from_version"], to_version=row["to_version"],
            metrics=json.loads(row["metrics"] or "{}"), details=json.loads(row["details"] or "{}"),
            flow_run_id=row["flow_run_id"], mlflow_run_id=row["mlflow_run_id"], recorded_at=row["recorded_at"],
            transition_id=row.get("transition_id"),
        )
        for row in rows
    ]

