"""The tables Retrain writes, declared here and nowhere else, and the generic reads and writes of any table.

Declared with explicit types, so a first record holding a NULL cannot fix a column's type to TEXT (which
PostgreSQL would then refuse numbers into): the batch ledger, the clean and quarantine tables of a source, the
release ledger of model decisions, the prediction log and labels, monitoring metrics and the lock table. Ingest
state belongs to the source table and its clean table, not to a model, so several models can read one source.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as postgres_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from retrain.errors import DataError
from retrain.warehouse.engine import WRITE_CHUNK_ROWS, Warehouse

BATCH_LEDGER = "retrain_batches"
LOCK_TABLE = "retrain_locks"
LEDGER_TABLE = "retrain_ledger"
LEDGER_TRANSITION_INDEX = "uq_retrain_ledger_transition"
PREDICTION_TABLE = "retrain_predictions"
LABEL_TABLE = "retrain_labels"
MONITORING_METRIC_TABLE = "retrain_monitoring_metrics"
BACKFILL = "backfill"  # Column.info key: a column added after the table's first release, filled from this one
BATCH_COLUMN = "_batch_id"  # every clean row names the batch it landed with, so a batch can be traced or undone
PASSED = "passed"

_CLEAN_TYPES: dict[str, type[sa.types.TypeEngine[Any]]] = {
    "integer": sa.BigInteger,
    "float": sa.Float,
    "string": sa.Text,
    "datetime": sa.DateTime,
}


def batch_ledger(schema: str | None = None) -> sa.Table:
    """The batch ledger: one row per ingest of a source into a clean table, passed or refused.

    The watermark of a source is the end of the latest passed batch's range, so it belongs to the source
    and its clean table: every model that reads them shares it.
    """
    return sa.Table(
        BATCH_LEDGER,
        sa.MetaData(schema=schema),
        sa.Column("batch_id", sa.String(120), primary_key=True),
        sa.Column("source_table", sa.String(200), nullable=False, index=True),
        sa.Column("clean_table", sa.String(200), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),  # whose config ran it; the state is the source's
        sa.Column("range_start", sa.DateTime, nullable=True),
        sa.Column("range_end", sa.DateTime, nullable=True),
        sa.Column("end_requested", sa.Boolean, nullable=False),
        sa.Column("rows_read", sa.Integer, nullable=False),
        sa.Column("rows_clean", sa.Integer, nullable=False),
        sa.Column("rows_coerced", sa.Integer, nullable=False),
        sa.Column("rows_quarantined", sa.Integer, nullable=False),
        sa.Column("rows_waiting", sa.Integer, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reasons", sa.Text, nullable=False),
        sa.Column("unknown_columns", sa.Text, nullable=False),
        sa.Column("rule", sa.String(64), nullable=True),
        sa.Column("violation", sa.Text, nullable=True),
        sa.Column("flow_run_id", sa.String(64), nullable=True),
        sa.Column("as_of", sa.DateTime, nullable=False),
        sa.Column("started_at", sa.DateTime, nullable=False),
        sa.Column("finished_at", sa.DateTime, nullable=False),
        # Added later, so nullable: a ledger written before gets them on first use (`reflect_ours`).
        sa.Column("rows_already_clean", sa.Integer, nullable=True),
        sa.Column("rows_copies", sa.Integer, nullable=True),
        sa.Column("rows_already_quarantined", sa.Integer, nullable=True),
        sa.Column("rows_late", sa.Integer, nullable=True),
        sa.Column("kind", sa.String(16), nullable=True),  # "late": a batch of late rows; empty: a range
    )


def quarantine_table(name: str, schema: str | None = None) -> sa.Table:
    """Rejected rows: the batch, the row's position in it, its reasons (JSON list) and raw values (JSON).

    `fingerprint` is the fingerprint of the row's stored values (`tasks.ingest.row_fingerprints`): a row is
    stored once however often it is read (a refused batch tried again, a re-sent day), and rows without a
    usable timestamp, which no time range can place, are known by it and not read again. Rows stored by an
    older Retrain may have none.
    """
    table = sa.Table(
        name,
        sa.MetaData(schema=schema),
        sa.Column("batch_id", sa.String(120), nullable=False, index=True),
        sa.Column("source_row", sa.Integer, nullable=False),
        sa.Column("reasons", sa.Text, nullable=False),
        sa.Column("raw", sa.Text, nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=True),
    )
    sa.Index(_index_name(name, "fingerprint"), table.c.fingerprint)
    return table


def clean_table(
    name: str, column_types: Mapping[str, str], key: Sequence[str] = (), schema: str | None = None
) -> sa.Table:
    """The clean table declared from the contract's types, with a unique index on the key.

    The unique index is what makes a second copy of a row impossible, whatever else goes wrong (two
    writers without the lock, a replayed range): the database refuses it.

    Args:
        name: Table name.
        column_types: Column name to contract type (`integer`, `float`, `string`, `datetime`).
        key: The columns that identify a row.
        schema: Database schema.
    """
    columns = [sa.Column(column, _CLEAN_TYPES[kind]()) for column, kind in column_types.items()]
    table = sa.Table(
        name, sa.MetaData(schema=schema), *columns, sa.Column(BATCH_COLUMN, sa.String(120), nullable=False)
    )
    if key:
        sa.Index(_key_index_name(name), *[table.c[column] for column in key], unique=True)
    return table


def _key_index_name(table: str) -> str:
    # PostgreSQL cuts names at 63 bytes: a long table name keeps a readable head and a unique tail.
    name = f"uq_{table}_key"
    return name if len(name) <= 60 else f"uq_{table[:40]}_{hashlib.sha256(table.encode()).hexdigest()[:12]}_key"


def _index_name(table: str, column: str) -> str:
    name = f"ix_{table}_{column}"
    return name if len(name) <= 60 else f"ix_{table[:30]}_{hashlib.sha256(table.encode()).hexdigest()[:12]}_{column}"


def ledger_table(schema: str | None = None) -> sa.Table:
    """The release ledger: one append-only row per decision about a model (registered, gated out, approved,
    rejected, canary started, promoted, rolled back, skipped, retrain requested, run failed).

    `from_version`/`to_version` say what the decision moved (both empty when it moved nothing); `metrics` and
    `details` are JSON objects; `actor` says who or what decided (`person:<user>`, `flow:<flow>`, `schedule`,
    `event`). `at` is the instant on the Retrain clock (the decision's `as_of`, which a replay sets), by which
    the ledger is ordered; `recorded_at` the wall time the row was written. `transition_id` is set on rows of
    alias transitions, unique: whatever the interleaving of two processes finishing one transition, the
    database keeps its row once.
    """
    return sa.Table(
        LEDGER_TABLE,
        sa.MetaData(schema=schema),
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", sa.DateTime, nullable=False),
        sa.Column("recorded_at", sa.DateTime, nullable=False, info={BACKFILL: "at"}),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("action", sa.String(60), nullable=False),
        sa.Column("from_version", sa.String(50)),
        sa.Column("to_version", sa.String(50)),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("metrics", sa.Text, nullable=False, default="{}"),
        sa.Column("details", sa.Text, nullable=False, default="{}"),
        sa.Column("flow_run_id", sa.String(64)),
        sa.Column("mlflow_run_id", sa.String(64)),
        sa.Column("transition_id", sa.String(64), nullable=True),
        sa.Index("ix_retrain_ledger_model_at", "model", "at"),
        sa.Index(LEDGER_TRANSITION_INDEX, "transition_id", unique=True),
    )


def prediction_table(schema: str | None = None) -> sa.Table:
    """Every prediction a model answered: served (arm `champion` or `canary`) or batch-scored (arm `batch`).

    `request_id` is unique per model, so a retried write never logs a prediction twice. `features` holds the
    raw record as JSON (what the model saw), `key` the model's key columns as JSON (so a label can arrive by
    key instead of by request id). Times are naive UTC: `event_at` is the prediction's instant on the Retrain
    clock (the record's timestamp column when it has one, else the request time; a batch-scored row's time),
    which the canary check, the rollback rule and monitoring select by; `predicted_at` is when the request
    was answered.
    """
    return sa.Table(
        PREDICTION_TABLE,
        sa.MetaData(schema=schema),
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("request_id", sa.String(100), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("version", sa.String(50), nullable=False),
        sa.Column("arm", sa.String(20), nullable=False),
        sa.Column("predicted_at", sa.DateTime, nullable=False),
        sa.Column("event_at", sa.DateTime, nullable=False, info={BACKFILL: "predicted_at"}),
        sa.Column("prediction", sa.Float, nullable=False),
        sa.Column("features", sa.Text, nullable=False),
        sa.Column("key", sa.Text),
        sa.Column("latency_ms", sa.Float),
        sa.UniqueConstraint("model", "request_id", name="uq_retrain_predictions_request"),
        sa.Index("ix_retrain_predictions_model_time", "model", "predicted_at"),
        sa.Index("ix_retrain_predictions_model_event", "model", "event_at"),
        sa.Index("ix_retrain_predictions_model_key", "model", "key"),
    )


def label_table(schema: str | None = None) -> sa.Table:
    """Actuals as they arrive, by request id or by the model's key columns (JSON, as in the prediction table).

    A label is matured at `event_at`, on the Retrain clock (when the outcome was known: the instant a client
    sends with it, else its arrival): metrics "as of" a moment use only labels matured by then. `labelled_at`
    is when it arrived.
    """
    return sa.Table(
        LABEL_TABLE,
        sa.MetaData(schema=schema),
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("request_id", sa.String(100)),
        sa.Column("key", sa.Text),
        sa.Column("actual", sa.Float, nullable=False),
        sa.Column("labelled_at", sa.DateTime, nullable=False),
        sa.Column("event_at", sa.DateTime, nullable=False, info={BACKFILL: "labelled_at"}),
        sa.Column("source", sa.String(50), nullable=False, default="feedback"),
        sa.UniqueConstraint("model", "request_id", name="uq_retrain_labels_request"),
        sa.UniqueConstraint("model", "key", name="uq_retrain_labels_key"),
    )


def monitoring_metric_table(schema: str | None = None) -> sa.Table:
    """Every number a monitoring run read from its reports: one row per (model, version, window, metric, column).

    `column` is empty for whole-window numbers (drift share, MAE) and names the column for per-column drift
    scores, so history can be plotted and queried with plain SQL.
    """
    return sa.Table(
        MONITORING_METRIC_TABLE,
        sa.MetaData(schema=schema),
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("version", sa.String(50), nullable=False),
        sa.Column("window_start", sa.DateTime, nullable=False),
        sa.Column("window_end", sa.DateTime, nullable=False),
        sa.Column("metric", sa.String(100), nullable=False),
        sa.Column("column", sa.String(200), nullable=False, default=""),
        sa.Column("value", sa.Float),
        sa.Column("recorded_at", sa.DateTime, nullable=False),
        sa.Column("flow_run_id", sa.String(64)),
        sa.Index("ix_retrain_monitoring_metrics_model", "model", "metric", "window_end"),
    )


def lock_table(schema: str | None = None) -> sa.Table:
    """Who holds which lock since when: the lock itself on SQLite, a note beside the advisory lock on PostgreSQL."""
    return sa.Table(
        LOCK_TABLE,
        sa.MetaData(schema=schema),
        sa.Column("name", sa.String(300), primary_key=True),
        sa.Column("token", sa.String(64), nullable=False),
        sa.Column("holder", sa.Text, nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("process_started", sa.String(32), nullable=False),
        sa.Column("acquired_at", sa.DateTime, nullable=False),
        sa.Column("heartbeat_at", sa.DateTime, nullable=False),
    )


# ------------------------------------------------------------------------------------ generic reads/writes


def has_table(warehouse: Warehouse, table: str) -> bool:
    return sa.inspect(warehouse.engine).has_table(table, schema=warehouse.schema)


def list_tables(warehouse: Warehouse) -> list[str]:
    return sorted(sa.inspect(warehouse.engine).get_table_names(schema=warehouse.schema))


def reflect_table(warehouse: Warehouse, table: str) -> sa.Table:
    """The table as the database has it; a missing table is a DataError naming it."""
    if not has_table(warehouse, table):
        raise DataError(f"table '{warehouse.name_of(table)}' does not exist in the warehouse {warehouse.url}")
    return sa.Table(table, sa.MetaData(schema=warehouse.schema), autoload_with=warehouse.engine)


def read_window(
    warehouse: Warehouse,
    table: str,
    timestamp_column: str,
    start: datetime | None,
    end: datetime | None,
    columns: Sequence[str] | None = None,
    tie_breakers: Sequence[str] = (),
) -> pd.DataFrame:
    """Rows with `start <= timestamp < end`, ordered by time; half-open so adjacent windows never overlap.

    Meant for tables Retrain wrote (the clean table), whose timestamps are typed. Rows sharing a timestamp
    come back in whatever order the database likes unless `tie_breakers` (the key) fix it; a snapshot that
    must fingerprint and train the same everywhere passes them.

    Raises:
        DataError: the table, the timestamp column or a requested column does not exist.
    """
    source = reflect_table(warehouse, table)
    wanted = list(columns) if columns is not None else [c.name for c in source.columns]
    missing = [name for name in [timestamp_column, *wanted, *tie_breakers] if name not in source.c]
    if missing:
        raise DataError(
            f"table '{warehouse.name_of(table)}' has no column(s) {sorted(set(missing))}; "
            f"it has {[c.name for c in source.columns]}"
        )
    timestamp = source.c[timestamp_column]
    query = sa.select(*[source.c[name] for name in wanted]).order_by(
        timestamp, *[source.c[name] for name in tie_breakers]
    )
    if start is not None:
        query = query.where(timestamp >= start)
    if end is not None:
        query = query.where(timestamp < end)
    with warehouse.engine.connect() as connection:
        return pd.read_sql(query, connection, parse_dates=[timestamp_column] if timestamp_column in wanted else None)


def write_frame(warehouse: Warehouse, frame: pd.DataFrame, table: str, if_exists: str = "append") -> int:
    """Write rows in chunks inside one transaction, so a failure leaves no partial write."""
    with warehouse.engine.begin() as connection:
        frame.to_sql(
            table, connection, schema=warehouse.schema, if_exists=if_exists, index=False, chunksize=WRITE_CHUNK_ROWS
        )
    return len(frame)


def append_rows(warehouse: Warehouse, table: sa.Table, rows: Sequence[dict[str, Any]]) -> int:
    """Insert rows as bound parameters, creating the (declared) table on first use."""
    if not rows:
        return 0
    with warehouse.engine.begin() as connection:
        table.create(connection, checkfirst=True)
        connection.execute(sa.insert(table), list(rows))
    return len(rows)


def read_table(warehouse: Warehouse, table: str) -> pd.DataFrame:
    """A whole (small) table: bookkeeping such as the audit log or the batch ledger."""
    source = reflect_table(warehouse, table)
    with warehouse.engine.connect() as connection:
        return pd.read_sql(sa.select(source), connection)


def create_declared_table(warehouse: Warehouse, table: sa.Table) -> sa.Table:
    """Create one of our tables if it is missing; another process creating it at the same moment is fine.

    A table an earlier Retrain wrote gets the columns added since (see `add_new_columns`), so an upgrade keeps
    the prediction log and the ledger.
    """
    try:
        with warehouse.engine.begin() as connection:
            table.create(connection, checkfirst=True)
    except (sa.exc.OperationalError, sa.exc.ProgrammingError, sa.exc.IntegrityError):
        # Another process created it between our check and our CREATE: what we wanted.
        if not has_table(warehouse, table.name):
            raise
    add_new_columns(warehouse, table)
    return table


def addable(column: sa.Column[Any]) -> bool:
    """Whether a column added after a table's first release can be added to a stored table: it may be empty in
    the rows stored before (nullable), or is filled from another column (`info={BACKFILL: column}`)."""
    return bool(column.nullable) or BACKFILL in column.info


def add_new_columns(warehouse: Warehouse, table: sa.Table) -> list[str]:
    """Add to a stored table the declared columns it lacks that can be added (`addable`): nullable ones stay empty
    in the rows stored before, those marked `info={BACKFILL: column}` are filled from that column (the event time
    of old predictions is their request time); returns the names added, and builds the indexes on them.

    Raises:
        DataError: the table lacks a column that cannot be added this way.
    """
    stored = {column["name"] for column in sa.inspect(warehouse.engine).get_columns(table.name, schema=table.schema)}
    missing = [column for column in table.columns if column.name not in stored]
    if not missing:
        return []
    unaddable = [column.name for column in missing if not addable(column)]
    if unaddable:
        raise DataError(
            f"table '{warehouse.name_of(table.name)}' was written by an older version of Retrain: it has no "
            f"column(s) {unaddable}. There is no migration for them: rename or drop it"
        )
    try:
        with warehouse.engine.begin() as connection:
            quote = connection.dialect.identifier_preparer
            for column in missing:
                kind = column.type.compile(dialect=connection.dialect)
                connection.execute(sa.text(
                    f"ALTER TABLE {quote.format_table(table)} ADD COLUMN {quote.quote(column.name)} {kind}"))
                if BACKFILL in column.info:
                    connection.execute(sa.update(table).where(table.c[column.name].is_(None))
                                       .values({column.name: table.c[column.info[BACKFILL]]}))
            for index in table.indexes:
                if any(column.name in {added.name for added in missing} for column in index.columns):
                    index.create(connection, checkfirst=True)
    except (sa.exc.OperationalError, sa.exc.ProgrammingError):
        # Another process added them between our look and our ALTER: what we wanted.
        again = {column["name"] for column in sa.inspect(warehouse.engine).get_columns(table.name,
                                                                                      schema=table.schema)}
        if any(column.name not in again for column in missing):
            raise
    return [column.name for column in missing]


def reflect_ours(connection: sa.Connection, declared: sa.Table) -> sa.Table | None:
    """One of our tables as stored (None before its first write).

    A table written by an older Retrain may lack the columns added since that can be added (`addable`): it is
    read as it is, and gets them at its next write (`create_declared_table`). One that lacks any other column is
    an error saying what to do.
    """
    schema = declared.schema
    if not sa.inspect(connection).has_table(declared.name, schema=schema):
        return None
    stored = sa.Table(declared.name, sa.MetaData(schema=schema), autoload_with=connection)
    lacking = [column.name for column in declared.columns if column.name not in stored.c and not addable(column)]
    if lacking:
        where = f"{schema}.{declared.name}" if schema else declared.name
        raise DataError(
            f"table '{where}' was written by an older version of Retrain: it has no column(s) {lacking}. "
            "There is no migration: rename or drop it (and, for a batch ledger, the clean and quarantine tables "
            "it describes), then ingest again"
        )
    return stored


def stored_datetime(value: Any) -> datetime | None:
    # func.max() loses the column type on SQLite and returns the stored text.
    if value is None:
        return None
    return value if isinstance(value, datetime) else pd.Timestamp(value).to_pydatetime()



def read_newest_timestamp(warehouse: Warehouse, table: str, timestamp_column: str) -> datetime | None:
    """The newest timestamp of `table` (None when it holds no row): where a training's `as_of` defaults to.

    Raises:
        DataError: the table or the timestamp column does not exist.
    """
    source = reflect_table(warehouse, table)
    if timestamp_column not in source.c:
        raise DataError(f"table '{table}' has no column '{timestamp_column}'; it has {[c.name for c in source.c]}")
    with warehouse.engine.connect() as connection:
        value = connection.execute(sa.select(sa.func.max(source.c[timestamp_column]))).scalar()
    return stored_datetime(value)



def count_rows_between(
    warehouse: Warehouse, table: str, timestamp_column: str, start: datetime, end: datetime
) -> int:
    """Rows of one of our typed tables (a clean table) with `start <= timestamp < end`."""
    source = reflect_table(warehouse, table)
    column = source.c[timestamp_column]
    query = sa.select(sa.func.count()).where(column >= start, column < end)
    with warehouse.engine.connect() as connection:
        return int(connection.execute(query).scalar() or 0)



def insert_new_rows(connection: sa.Connection, table: sa.Table, rows: Sequence[dict[str, Any]]) -> int:
    """Insert rows, skipping any that a unique key of the table already holds (PostgreSQL and SQLite use
    ON CONFLICT DO NOTHING; other databases insert row by row and skip duplicates); returns how many were new
    (where the driver reports it: -1 when it does not)."""
    dialect = connection.dialect.name
    if dialect in ("postgresql", "sqlite"):
        statement = (postgres_insert if dialect == "postgresql" else sqlite_insert)(table).on_conflict_do_nothing()
        primary = list(table.primary_key.columns)
        if primary and len(rows) == 1:
            # The driver's rowcount is -1 where SQLAlchemy adds RETURNING itself (psycopg): count what came back.
            return len(connection.execute(statement.returning(*primary), dict(rows[0])).all())
        return int(connection.execute(statement, list(rows)).rowcount)
    inserted = 0
    for row in rows:
        try:
            with connection.begin_nested():
                connection.execute(sa.insert(table), [row])
            inserted += 1
        except sa.exc.IntegrityError:
            continue
    return inserted

