"""Warehouse access through SQLAlchemy: the one module that reads and writes tables, and declares ours.

Every query is built with SQLAlchemy Core, so values are bound parameters and names are quoted by the
dialect; the same code runs on SQLite and PostgreSQL. Callers hold a `Warehouse` (engine and schema)
and pass it first.

The tables Retrain writes are declared here and nowhere else, with explicit types, so a first record
holding a NULL cannot fix a column's type to TEXT (which PostgreSQL would then refuse numbers into):
the batch ledger, the clean and quarantine tables of a source, the release ledger of model decisions,
the prediction log and labels, and the lock table. Ingest state belongs to the source table and its clean
table, not to a model, so several models can read one source.

`hold_lock` gives one writer per source (and per model) across processes and machines, on the
warehouse itself: a lock row on SQLite, an advisory lock on PostgreSQL.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as postgres_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Engine

from retrain.clock import wall_clock
from retrain.errors import Busy, DataError
from retrain.settings import get_settings, redact_url

logger = logging.getLogger(__name__)

WRITE_CHUNK_ROWS = 50_000  # measured: ~20% faster than one chunk on SQLite; method="multi" is 13x slower


# ------------------------------------------------------------------------------------------- the handle


@dataclass(frozen=True)
class Warehouse:
    """Where the tables live: an engine (one connection pool per URL and process) and the schema of every
    table read or written (None: the database's default)."""

    engine: Engine
    schema: str | None = None

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @property
    def url(self) -> str:
        """The URL without its password: safe to print."""
        return self.engine.url.render_as_string(hide_password=True)

    def name_of(self, table: str) -> str:
        """The table as a person would write it, schema included."""
        return f"{self.schema}.{table}" if self.schema else table


@lru_cache(maxsize=8)
def create_warehouse_engine(url: str) -> Engine:
    """One engine per URL per process: engines hold the connection pool, so they are made once."""
    engine = sa.create_engine(url, future=True)
    if engine.dialect.name == "sqlite":
        # A monitoring or serving process may read while a flow writes: wait instead of failing.
        sa.event.listen(engine, "connect", _configure_sqlite)
    logger.debug("warehouse engine for %s", redact_url(url))
    return engine


def _configure_sqlite(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def open_warehouse(url: str, schema: str | None = None) -> Warehouse:
    """The warehouse at `url` (engine shared per process) with `schema`."""
    return Warehouse(create_warehouse_engine(url), schema)


def get_warehouse() -> Warehouse:
    """The warehouse named by the settings of this process."""
    settings = get_settings()
    url = settings.resolved_warehouse_url()
    if url.startswith("sqlite:///"):
        settings.resolved_home.mkdir(parents=True, exist_ok=True)
    return open_warehouse(url, settings.warehouse_schema)


# ------------------------------------------------------------------------------------------- our tables

BATCH_LEDGER = "retrain_batches"
LOCK_TABLE = "retrain_locks"
LEDGER_TABLE = "retrain_ledger"
PREDICTION_TABLE = "retrain_predictions"
LABEL_TABLE = "retrain_labels"
MONITORING_METRIC_TABLE = "retrain_monitoring_metrics"
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
    )


def quarantine_table(name: str, schema: str | None = None) -> sa.Table:
    """Rejected rows: the batch, the row's position in it, its reasons (JSON list) and raw values (JSON).

    `fingerprint` is set for rows without a usable timestamp (null or unparseable): no time range can
    place them, so the next batches know them by their content and do not read them again.
    """
    return sa.Table(
        name,
        sa.MetaData(schema=schema),
        sa.Column("batch_id", sa.String(120), nullable=False, index=True),
        sa.Column("source_row", sa.Integer, nullable=False),
        sa.Column("reasons", sa.Text, nullable=False),
        sa.Column("raw", sa.Text, nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=True),
    )


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


def ledger_table(schema: str | None = None) -> sa.Table:
    """The release ledger: one append-only row per decision about a model (registered, gated out, approved,
    rejected, canary started, promoted, rolled back, skipped, retrain requested, run failed).

    `from_version`/`to_version` say what the decision moved (both empty when it moved nothing); `metrics` and
    `details` are JSON objects; `actor` says who or what decided (a person, a schedule, an event, automation).
    """
    return sa.Table(
        LEDGER_TABLE,
        sa.MetaData(schema=schema),
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", sa.DateTime, nullable=False),
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
        sa.Index("ix_retrain_ledger_model_at", "model", "at"),
    )


def prediction_table(schema: str | None = None) -> sa.Table:
    """Every prediction a model answered: served (arm `champion` or `canary`) or batch-scored (arm `batch`).

    `request_id` is unique per model, so a retried write never logs a prediction twice. `features` holds the
    raw record as JSON (what the model saw), `key` the model's key columns as JSON (so a label can arrive by
    key instead of by request id). Times are naive UTC on the Retrain clock.
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
        sa.Column("prediction", sa.Float, nullable=False),
        sa.Column("features", sa.Text, nullable=False),
        sa.Column("key", sa.Text),
        sa.Column("latency_ms", sa.Float),
        sa.UniqueConstraint("model", "request_id", name="uq_retrain_predictions_request"),
        sa.Index("ix_retrain_predictions_model_time", "model", "predicted_at"),
        sa.Index("ix_retrain_predictions_model_key", "model", "key"),
    )


def label_table(schema: str | None = None) -> sa.Table:
    """Actuals as they arrive, by request id or by the model's key columns (JSON, as in the prediction table).

    A label is matured at `labelled_at`: metrics "as of" a moment use only labels that had arrived by then.
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
    """Create one of our tables if it is missing; another process creating it at the same moment is fine."""
    try:
        with warehouse.engine.begin() as connection:
            table.create(connection, checkfirst=True)
    except (sa.exc.OperationalError, sa.exc.ProgrammingError, sa.exc.IntegrityError):
        # Another process created it between our check and our CREATE: what we wanted.
        if not has_table(warehouse, table.name):
            raise
    return table


def _reflect_ours(connection: sa.Connection, declared: sa.Table) -> sa.Table | None:
    """One of our tables as stored (None before its first write); one written by an older Retrain is an error."""
    schema = declared.schema
    if not sa.inspect(connection).has_table(declared.name, schema=schema):
        return None
    stored = sa.Table(declared.name, sa.MetaData(schema=schema), autoload_with=connection)
    lacking = [column.name for column in declared.columns if column.name not in stored.c]
    if lacking:
        where = f"{schema}.{declared.name}" if schema else declared.name
        raise DataError(
            f"table '{where}' was written by an older version of Retrain: it has no column(s) {lacking}. "
            "There is no migration: rename or drop it (and, for a batch ledger, the clean and quarantine tables "
            "it describes), then ingest again"
        )
    return stored


# ------------------------------------------------------------------------------------------ source tables


@dataclass(frozen=True)
class TableDescription:
    """What a model config is checked against: a source table's columns and how unique its key is.

    Attributes:
        name: The table, schema included.
        columns: Column name to kind: `integer`, `float`, `string`, `datetime`, `boolean`, `untyped` (a
            SQLite column declared without a type) or `other`.
        types: Column name to its type as the database declares it, for messages.
        sampled_rows: Rows sampled to judge the key.
        key_duplicates: Sampled rows that share their key with another sampled row (0 without a key).
    """

    name: str
    columns: dict[str, str]
    types: dict[str, str] = field(default_factory=dict)
    sampled_rows: int = 0
    key_duplicates: int = 0


def column_kind(column_type: sa.types.TypeEngine[Any]) -> str:
    """The kind of a reflected column type, as `TableDescription.columns` names them."""
    kinds: list[tuple[type[Any], str]] = [
        (sa.Boolean, "boolean"),
        (sa.Integer, "integer"),
        (sa.Float, "float"),
        (sa.Numeric, "float"),
        (sa.DateTime, "datetime"),
        (sa.Date, "datetime"),
        (sa.String, "string"),
        (sa.types.NullType, "untyped"),
    ]
    return next((kind for cls, kind in kinds if isinstance(column_type, cls)), "other")


def describe_table(
    warehouse: Warehouse, table: str, key: Sequence[str] = (), sample_rows: int = 100_000
) -> TableDescription:
    """The columns of `table` and the share of duplicate keys in a sample of its rows (the first ones stored).

    Raises:
        DataError: the table does not exist.
    """
    source = reflect_table(warehouse, table)
    columns = {column.name: column_kind(column.type) for column in source.columns}
    types = {column.name: _type_name(column.type) for column in source.columns}
    sampled = duplicates = 0
    if key and all(name in source.c for name in key):
        query = sa.select(*[_as_stored(source.c[name]) for name in key]).limit(sample_rows)
        with warehouse.engine.connect() as connection:
            sample = pd.read_sql(query, connection)
        sampled = len(sample)
        duplicates = int(sample.duplicated(list(key), keep=False).sum())
    return TableDescription(warehouse.name_of(table), columns, types, sampled, duplicates)


def _as_stored(column: sa.Column[Any]) -> sa.ColumnElement[Any]:
    """A column as the database returns it: SQLAlchemy's date/time parsing would fail on a malformed value
    (or on SQLite, where they are text, turn it into an error far from its row)."""
    if isinstance(column.type, sa.Date | sa.DateTime | sa.Time):
        return sa.type_coerce(column, sa.String).label(column.name)
    return column


def _type_name(column_type: sa.types.TypeEngine[Any]) -> str:
    if isinstance(column_type, sa.types.NullType):
        return "untyped"
    try:
        return str(column_type)
    except sa.exc.CompileError:
        return type(column_type).__name__


# Which source rows a batch may hold is decided on timestamps parsed in Python (`retrain.clock`), the same
# way validation reads them; SQL only narrows the read to a superset of those rows. Where the database
# compares the column as instants (a PostgreSQL date/time column) the superset is the exact range. Where
# values are text (every SQLite column; a text column anywhere) they sort as text: a value with a UTC offset
# lies up to 14 hours from its instant, and "T" sorts after " "; so the range is widened to whole days on
# either side. A value that does not begin like a date ("yesterday", "01/02/2013", " 2013-..."), or is null,
# sorts anywhere: such rows are read by every batch and placed (or recognised as already quarantined) in Python.
_DATE_PREFIX_GLOB = "[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]*"
_DATE_PREFIX_REGEX = "^[0-9]{4}-[0-9]{2}-[0-9]{2}"


def _orders_as_instants(warehouse: Warehouse, column: sa.Column[Any]) -> bool:
    return warehouse.dialect != "sqlite" and isinstance(column.type, sa.DateTime | sa.Date)


def _bound(column: sa.Column[Any], moment: datetime) -> datetime:
    # A PostgreSQL timestamptz compares with instants: pass UTC explicitly rather than the session's time zone.
    return moment.replace(tzinfo=UTC) if getattr(column.type, "timezone", False) else moment


def _text_bounds(lower: datetime | None, upper: datetime | None) -> tuple[str | None, str | None]:
    """Dates as text that enclose every value whose instant lies in [lower, upper), whatever its offset."""
    low = (lower - timedelta(days=1)).date().isoformat() if lower is not None else None
    high = (upper + timedelta(days=2)).date().isoformat() if upper is not None else None
    return low, high


def _as_text(warehouse: Warehouse, column: sa.Column[Any]) -> sa.ColumnElement[Any]:
    text = sa.type_coerce(column, sa.String)
    return text.collate("C") if warehouse.dialect == "postgresql" else text  # byte order, not the locale's


def _without_date_prefix(warehouse: Warehouse, column: sa.Column[Any]) -> sa.ColumnElement[bool]:
    if warehouse.dialect == "sqlite":
        shaped = sa.func.glob(_DATE_PREFIX_GLOB, column)
    else:
        shaped = sa.type_coerce(column, sa.String).regexp_match(_DATE_PREFIX_REGEX)
    return sa.or_(column.is_(None), sa.not_(shaped))


def _candidate_clause(
    warehouse: Warehouse, column: sa.Column[Any], lower: datetime | None, upper: datetime | None
) -> sa.ColumnElement[bool] | None:
    if lower is None and upper is None:
        return None
    if _orders_as_instants(warehouse, column):
        bounds = []
        if lower is not None:
            bounds.append(column >= _bound(column, lower))
        if upper is not None:
            bounds.append(column < _bound(column, upper))
        return sa.or_(sa.and_(*bounds), column.is_(None))
    low, high = _text_bounds(lower, upper)
    text = _as_text(warehouse, column)
    bounds = ([text >= low] if low else []) + ([text < high] if high else [])
    return sa.or_(sa.and_(*bounds), _without_date_prefix(warehouse, column))


def _source_column(warehouse: Warehouse, source: sa.Table, timestamp: str) -> sa.Column[Any]:
    if timestamp not in source.c:
        raise DataError(
            f"table '{warehouse.name_of(source.name)}' has no column '{timestamp}'; it has {[c.name for c in source.c]}"
        )
    return source.c[timestamp]


def read_source_rows(
    warehouse: Warehouse,
    table: str,
    timestamp: str,
    lower: datetime | None = None,
    upper: datetime | None = None,
) -> pd.DataFrame:
    """Every column of the source rows that may have an instant in `[lower, upper)`, values as stored.

    A superset (see above): the caller parses the timestamps and keeps the rows that belong. Nothing is
    converted on the way: date and time columns come back as the database returns them (text on SQLite), so
    a malformed value reaches validation and quarantine as it was instead of failing the read or silently
    becoming NULL. Ordered by the stored timestamp, so a batch reads in a stable order.

    Raises:
        DataError: the table or its timestamp column does not exist.
    """
    source = reflect_table(warehouse, table)
    column = _source_column(warehouse, source, timestamp)
    query = sa.select(*[_as_stored(c) for c in source.c]).order_by(column)
    clause = _candidate_clause(warehouse, column, lower, upper)
    if clause is not None:
        query = query.where(clause)
    with warehouse.engine.connect() as connection:
        return pd.read_sql(query, connection)


def count_rows_after(warehouse: Warehouse, table: str, timestamp: str, upper: datetime) -> int:
    """Rows that `read_source_rows(..., upper=upper)` leaves out above its range: dated at or after `upper`."""
    source = reflect_table(warehouse, table)
    column = _source_column(warehouse, source, timestamp)
    if _orders_as_instants(warehouse, column):
        clause: sa.ColumnElement[bool] = column >= _bound(column, upper)
    else:
        _, high = _text_bounds(None, upper)
        clause = sa.and_(_as_text(warehouse, column) >= high, sa.not_(_without_date_prefix(warehouse, column)))
    query = sa.select(sa.func.count()).select_from(source).where(clause)
    with warehouse.engine.connect() as connection:
        return int(connection.execute(query).scalar_one())


# ---------------------------------------------------------------------------------------- ingest state


def _as_datetime(value: Any) -> datetime | None:
    # func.max() loses the column type on SQLite and returns the stored text.
    if value is None:
        return None
    return value if isinstance(value, datetime) else pd.Timestamp(value).to_pydatetime()


def read_watermark(warehouse: Warehouse, source_table: str, clean: str) -> datetime | None:
    """Where the next batch of `source_table` into `clean` starts: the end of the latest passed batch's range."""
    with warehouse.engine.connect() as connection:
        ledger = _reflect_ours(connection, batch_ledger(warehouse.schema))
        if ledger is None:
            return None
        query = sa.select(sa.func.max(ledger.c.range_end)).where(
            ledger.c.source_table == source_table, ledger.c.clean_table == clean, ledger.c.status == PASSED
        )
        return _as_datetime(connection.execute(query).scalar())


def read_known_fingerprints(warehouse: Warehouse, source_table: str, clean: str, quarantine: str) -> set[str]:
    """Fingerprints of the timeless rows (null or unparseable timestamp) that passed batches already quarantined.

    Rows of a refused batch do not count: a refused batch is read again once its data is fixed.
    """
    with warehouse.engine.connect() as connection:
        ledger = _reflect_ours(connection, batch_ledger(warehouse.schema))
        stored = _reflect_ours(connection, quarantine_table(quarantine, warehouse.schema))
        if ledger is None or stored is None:
            return set()
        query = (
            sa.select(stored.c.fingerprint)
            .distinct()
            .join_from(stored, ledger, stored.c.batch_id == ledger.c.batch_id)
            .where(
                ledger.c.source_table == source_table,
                ledger.c.clean_table == clean,
                ledger.c.status == PASSED,
                stored.c.fingerprint.is_not(None),
            )
        )
        return {str(value) for value in connection.execute(query).scalars()}


def find_passed_batch(
    warehouse: Warehouse, source_table: str, clean: str, start: datetime | None, end: datetime
) -> dict[str, Any] | None:
    """The ledger row of a passed batch that ended at `end` by request (and began at `start`, if given)."""
    with warehouse.engine.connect() as connection:
        ledger = _reflect_ours(connection, batch_ledger(warehouse.schema))
        if ledger is None:
            return None
        query = sa.select(ledger).where(
            ledger.c.source_table == source_table,
            ledger.c.clean_table == clean,
            ledger.c.status == PASSED,
            ledger.c.end_requested.is_(True),
            ledger.c.range_end == end,
        )
        if start is not None:
            query = query.where(ledger.c.range_start == start)
        row = connection.execute(query.order_by(ledger.c.finished_at.desc()).limit(1)).mappings().first()
    return dict(row) if row is not None else None


def read_batches(warehouse: Warehouse, source_table: str | None = None) -> pd.DataFrame:
    """The batch ledger, oldest first, optionally for one source table."""
    declared = batch_ledger(warehouse.schema)
    with warehouse.engine.connect() as connection:
        ledger = _reflect_ours(connection, declared)
        if ledger is None:
            return pd.DataFrame(columns=[column.name for column in declared.columns])
        query = sa.select(ledger).order_by(ledger.c.started_at)
        if source_table is not None:
            query = query.where(ledger.c.source_table == source_table)
        return pd.read_sql(query, connection)


def read_clean_keys(
    warehouse: Warehouse,
    table: str,
    key: Sequence[str],
    timestamp_column: str,
    start: datetime | None,
    end: datetime | None,
) -> pd.DataFrame | None:
    """Key columns of clean rows that a batch in `[start, end)` could collide with (None: no table yet).

    When the timestamp is part of the key, only clean rows in the same range can share a key, so only
    those are read; otherwise every key is.
    """
    if not key:
        return None
    with warehouse.engine.connect() as connection:
        if not sa.inspect(connection).has_table(table, schema=warehouse.schema):
            return None
        clean = sa.Table(table, sa.MetaData(schema=warehouse.schema), autoload_with=connection)
        query = sa.select(*[clean.c[name] for name in key])
        if timestamp_column in key:
            if start is not None:
                query = query.where(clean.c[timestamp_column] >= start)
            if end is not None:
                query = query.where(clean.c[timestamp_column] < end)
        return pd.read_sql(query, connection)


def record_batch(
    warehouse: Warehouse,
    record: dict[str, Any],
    clean: pd.DataFrame | None,
    clean_table: sa.Table,
    quarantine: pd.DataFrame,
    quarantine_table: sa.Table,
) -> None:
    """Append a batch's clean rows and quarantine and write its ledger record, all in one transaction.

    Either all three land or none does, so the ledger never claims rows that are not there, and a
    crashed write leaves the watermark where it was for the re-run.

    Raises:
        DataError: the existing clean table lacks a column the contract now has, or holds duplicate keys
            (so its unique key cannot be built).
        Busy: another writer landed rows with the same keys while this batch was being validated (only
            possible without the source lock); nothing of this batch was written.
    """
    schema = warehouse.schema
    ledger = create_declared_table(warehouse, batch_ledger(schema))  # shared by every source
    create_declared_table(warehouse, quarantine_table)
    try:
        with warehouse.engine.begin() as connection:
            _reflect_ours(connection, ledger)
            _reflect_ours(connection, quarantine_table)
            if len(quarantine):
                quarantine.to_sql(
                    quarantine_table.name, connection, schema=schema, if_exists="append", index=False,
                    chunksize=WRITE_CHUNK_ROWS,
                )
            if clean is not None:
                unbuilt = _prepare_clean_table(connection, clean_table)
                if len(clean):
                    # A shallow copy takes the extra column without touching the caller's frame; assign() would
                    # copy every value first.
                    rows = clean.copy(deep=False)
                    rows[BATCH_COLUMN] = record["batch_id"]
                    rows.to_sql(
                        clean_table.name, connection, schema=schema, if_exists="append", index=False,
                        chunksize=WRITE_CHUNK_ROWS,
                    )
                for index in unbuilt:
                    index.create(connection)
            connection.execute(sa.insert(ledger), [record])
    except sa.exc.IntegrityError as error:
        raise Busy(
            f"another ingest wrote rows with the same keys into '{warehouse.name_of(clean_table.name)}' while "
            f"batch {record['batch_id']} was being validated; nothing of this batch was written: run the ingest "
            f"again ({type(error.orig).__name__}: {str(error.orig).splitlines()[0]})"
        ) from error


def _prepare_clean_table(connection: sa.Connection, declared: sa.Table) -> list[sa.Index]:
    """Make the clean table ready for a batch; returns the indexes to build once its rows are in.

    A new table gets its unique key index after the first (usually largest) batch is inserted: one sort of
    the keys instead of a B-tree insert per row (measured on 1M flights rows in SQLite: the index costs 14%
    of the write when kept row by row, 1% when built after), and within the same transaction, so the key
    holds before anything is committed.
    """
    if not sa.inspect(connection).has_table(declared.name, schema=declared.schema):
        connection.execute(sa.schema.CreateTable(declared))
        return list(declared.indexes)
    stored = sa.Table(declared.name, sa.MetaData(schema=declared.schema), autoload_with=connection)
    lacking = [c.name for c in declared.columns if c.name not in stored.c]
    if lacking:
        raise DataError(
            f"clean table '{declared.name}' has no column(s) {lacking} that the contract now lists: "
            "add them to the table or point source.clean_table at a new table"
        )
    for index in declared.indexes:  # a clean table made before keys were unique gets its index now
        try:
            index.create(connection, checkfirst=True)
        except sa.exc.IntegrityError as error:
            raise DataError(
                f"clean table '{declared.name}' holds rows with the same key {[c.name for c in index.columns]}, "
                "so its unique key cannot be built: delete the extra copies, then ingest again"
            ) from error
    return []


def read_quarantine(
    warehouse: Warehouse, table: str, batch_id: str | None = None, limit: int | None = None
) -> pd.DataFrame:
    """Quarantined rows in batch order, for one batch or all; empty when nothing was ever quarantined."""
    declared = quarantine_table(table, warehouse.schema)
    with warehouse.engine.connect() as connection:
        if not sa.inspect(connection).has_table(table, schema=warehouse.schema):
            return pd.DataFrame(columns=[column.name for column in declared.columns])
        quarantine = sa.Table(table, sa.MetaData(schema=warehouse.schema), autoload_with=connection)
        query = sa.select(quarantine).order_by(quarantine.c.batch_id, quarantine.c.source_row)
        if batch_id is not None:
            query = query.where(quarantine.c.batch_id == batch_id)
        if limit is not None:
            query = query.limit(limit)
        return pd.read_sql(query, connection)


# ----------------------------------------------------------------------------------------------- locks

LOCK_POLL_SECONDS = 0.2
LOCK_HEARTBEAT_SECONDS = 15.0
LOCK_LEASE_SECONDS = 120.0  # a holder on another machine that has not renewed for this long is gone


@dataclass(frozen=True)
class LockHolder:
    """Who holds a lock: enough to tell a person who to wait for, and to tell whether the holder still lives."""

    name: str
    token: str
    holder: str
    host: str
    pid: int
    process_started: str
    acquired_at: datetime
    heartbeat_at: datetime

    def describe(self) -> str:
        return f"{self.holder} (pid {self.pid} on {self.host}) since {self.acquired_at:%Y-%m-%d %H:%M:%S} UTC"


# Locks this thread of work already holds, so a flow that holds `source:x` can call a subflow that takes it
# too. A context variable, not a process global: Prefect copies it into the threads that run a flow's tasks,
# while an unrelated thread starts with none.
_held_locks: ContextVar[Mapping[str, LockHolder]] = ContextVar("retrain_held_locks", default={})


@contextlib.contextmanager
def hold_lock(
    warehouse: Warehouse, name: str, wait_seconds: float | None = None, holder: str | None = None
) -> Iterator[LockHolder]:
    """Hold the lock `name` (e.g. `source:flights`, `model:flights-delay`) on the warehouse for the block.

    Works across processes and machines that share the warehouse. SQLite: a committed row in
    `retrain_locks` (never an open write transaction, which would block every other writer, this process's
    own included); a holder whose process has died on this machine, or that stopped renewing its lease for
    `LOCK_LEASE_SECONDS` on another, is replaced. PostgreSQL: a session advisory lock, which the server
    releases when the holder's connection ends however it ends, with a row beside it saying who holds it.
    Re-entrant: a block already holding `name` enters at once.

    Args:
        warehouse: Where the lock lives.
        name: What is locked.
        wait_seconds: How long to wait for another holder (default: the `lock_wait_seconds` setting).
        holder: Who is asking, for the message another waiter gets (default: user, host and pid).

    Raises:
        Busy: the lock was still held by someone else after `wait_seconds`; names who and since when.
    """
    identity = f"{warehouse.url}|{warehouse.schema or ''}|{name}"
    held = _held_locks.get()
    if identity in held:
        yield held[identity]
        return
    wait = get_settings().lock_wait_seconds if wait_seconds is None else wait_seconds
    me = _new_holder(name, holder)
    if warehouse.dialect == "postgresql":
        hold: contextlib.AbstractContextManager[LockHolder] = _advisory_lock(warehouse, me, wait)
    else:
        hold = _row_lock(warehouse, me, wait)
    with hold as mine:
        reset = _held_locks.set({**held, identity: mine})
        try:
            yield mine
        finally:
            _held_locks.reset(reset)


def read_lock_holder(warehouse: Warehouse, name: str) -> LockHolder | None:
    """The recorded holder of `name` (on PostgreSQL possibly stale: the advisory lock is the truth)."""
    with warehouse.engine.connect() as connection:
        if not sa.inspect(connection).has_table(LOCK_TABLE, schema=warehouse.schema):
            return None
        table = lock_table(warehouse.schema)
        row = connection.execute(sa.select(table).where(table.c.name == name)).mappings().first()
    return _holder_from_row(row) if row is not None else None


def _holder_from_row(row: Mapping[str, Any]) -> LockHolder:
    return LockHolder(**{key: row[key] for key in LockHolder.__dataclass_fields__})


def _new_holder(name: str, holder: str | None) -> LockHolder:
    moment = wall_clock()
    pid = os.getpid()
    return LockHolder(
        name=name, token=uuid.uuid4().hex, holder=holder or get_settings().actor, host=socket.gethostname(),
        pid=pid, process_started=_process_started(pid) or "", acquired_at=moment, heartbeat_at=moment,
    )


def _stamped(holder: LockHolder) -> LockHolder:
    """The holder as of the moment it acquires the lock (it may have waited since it asked)."""
    moment = wall_clock()
    return replace(holder, acquired_at=moment, heartbeat_at=moment)


def _process_started(pid: int) -> str | None:
    """The start time of process `pid` (Linux: clock ticks since boot), None if it no longer runs.

    Comparing start times tells a dead holder from a new process that happens to reuse its pid.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # the command name, in parentheses, may hold spaces
    state, started = fields[0], fields[19]
    return None if state in ("Z", "X") else started


def _process_alive(pid: int, started: str) -> bool:
    if Path("/proc/self/stat").exists():
        now_started = _process_started(pid)
        return now_started is not None and (not started or now_started == started)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _holder_is_gone(current: LockHolder) -> bool:
    if current.host == socket.gethostname():
        return not _process_alive(current.pid, current.process_started)
    return wall_clock() - current.heartbeat_at > timedelta(seconds=LOCK_LEASE_SECONDS)


def _busy(name: str, wait: float, current: LockHolder | None) -> Busy:
    who = current.describe() if current is not None else "another run"
    return Busy(
        f"'{name}' is held by {who}; gave up after waiting {wait:g} s and changed nothing. Try again when it "
        "finishes, or wait longer with RETRAIN_LOCK_WAIT_SECONDS"
    )


def _create_lock_table(warehouse: Warehouse) -> sa.Table:
    return create_declared_table(warehouse, lock_table(warehouse.schema))


@contextlib.contextmanager
def _row_lock(warehouse: Warehouse, me: LockHolder, wait: float) -> Iterator[LockHolder]:
    table = _create_lock_table(warehouse)
    deadline = time.monotonic() + wait
    current: LockHolder | None = None
    while True:
        me = _stamped(me)
        try:
            with warehouse.engine.begin() as connection:
                connection.execute(sa.insert(table).values(**_row_of(me)))
            break
        except sa.exc.IntegrityError:
            pass
        except sa.exc.OperationalError as error:  # the database is busy with a long write: try again
            logger.debug("lock %s: %s", me.name, error)
        current = read_lock_holder(warehouse, me.name)
        if current is not None and _holder_is_gone(current) and _take_over(warehouse, table, current, me):
            logger.warning("lock %s: took over from %s, which is gone", me.name, current.describe())
            break
        if time.monotonic() >= deadline:
            raise _busy(me.name, wait, current)
        time.sleep(LOCK_POLL_SECONDS)
    heartbeat = _Heartbeat(warehouse, table, me)
    heartbeat.start()
    try:
        yield me
    finally:
        heartbeat.stop()
        try:
            with warehouse.engine.begin() as connection:
                connection.execute(sa.delete(table).where(table.c.name == me.name, table.c.token == me.token))
        except sa.exc.SQLAlchemyError as error:  # the row stays; it is replaced once this process has ended
            logger.warning("lock %s: could not release: %s", me.name, error)


def _row_of(holder: LockHolder) -> dict[str, Any]:
    return {key: getattr(holder, key) for key in LockHolder.__dataclass_fields__}


def _take_over(warehouse: Warehouse, table: sa.Table, gone: LockHolder, me: LockHolder) -> bool:
    """Compare-and-set: replace the dead holder's row only if it is still that holder's (one waiter wins)."""
    values = {key: value for key, value in _row_of(me).items() if key != "name"}
    try:
        with warehouse.engine.begin() as connection:
            result = connection.execute(
                sa.update(table).where(table.c.name == gone.name, table.c.token == gone.token).values(**values)
            )
    except sa.exc.OperationalError:
        return False
    return result.rowcount == 1


@dataclass(eq=False)
class _Heartbeat:
    """Renews a SQLite lock row's lease while its holder works, so holders on other machines see it alive."""

    warehouse: Warehouse
    table: sa.Table
    me: LockHolder
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"lock-heartbeat {self.me.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        table, me = self.table, self.me
        while not self._stop.wait(LOCK_HEARTBEAT_SECONDS):
            try:
                with self.warehouse.engine.begin() as connection:
                    connection.execute(
                        sa.update(table)
                        .where(table.c.name == me.name, table.c.token == me.token)
                        .values(heartbeat_at=wall_clock())
                    )
            except sa.exc.SQLAlchemyError as error:  # busy with this process's own long write: next beat
                logger.debug("lock %s: heartbeat skipped: %s", me.name, error)


def _advisory_key(warehouse: Warehouse, name: str) -> int:
    """A signed 64-bit key for `pg_advisory_lock`; the schema is part of it, since the key space is per database."""
    digest = hashlib.sha256(f"{warehouse.schema or ''}|{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@contextlib.contextmanager
def _advisory_lock(warehouse: Warehouse, me: LockHolder, wait: float) -> Iterator[LockHolder]:
    table = _create_lock_table(warehouse)
    key = _advisory_key(warehouse, me.name)
    deadline = time.monotonic() + wait
    # The lock belongs to this connection's session: it is kept open, and idle outside transactions, for
    # the whole block.
    connection = warehouse.engine.connect()
    try:
        while True:
            acquired = connection.execute(sa.select(sa.func.pg_try_advisory_lock(key))).scalar_one()
            connection.commit()
            if acquired:
                break
            if time.monotonic() >= deadline:
                raise _busy(me.name, wait, read_lock_holder(warehouse, me.name))
            time.sleep(LOCK_POLL_SECONDS)
        me = _stamped(me)
        row = _row_of(me)
        connection.execute(
            postgres_insert(table).values(**row).on_conflict_do_update(
                index_elements=[table.c.name], set_={k: v for k, v in row.items() if k != "name"}
            )
        )
        connection.commit()
        try:
            yield me
        finally:
            try:
                connection.execute(sa.delete(table).where(table.c.name == me.name, table.c.token == me.token))
                connection.execute(sa.select(sa.func.pg_advisory_unlock(key)))
                connection.commit()
            except sa.exc.DBAPIError as error:  # the session is gone, and with it the advisory lock
                logger.warning("lock %s: could not release cleanly: %s", me.name, error)
    finally:
        connection.close()


# --- training reads -------------------------------------------------------------------------------------


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
    return _as_datetime(value)


# --- ledger, predictions and labels -----------------------------------------------------------------------


@dataclass(frozen=True)
class LedgerEntry:
    """One decision about a model, as the ledger keeps it (see `ledger_table`)."""

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


def append_ledger_entry(warehouse: Warehouse, entry: LedgerEntry) -> None:
    """Append one ledger row (the ledger is never updated or deleted from)."""
    row = {
        "at": entry.at,
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
    }
    append_rows(warehouse, create_declared_table(warehouse, ledger_table(warehouse.schema)), [row])


def read_ledger(
    warehouse: Warehouse, model: str | None = None, limit: int | None = None, *, action: str | None = None
) -> list[LedgerEntry]:
    """Ledger rows of one model (or of all), optionally of one action (e.g. every `run-failed`), newest first
    (ties broken by insertion order)."""
    if not has_table(warehouse, LEDGER_TABLE):
        return []
    ledger = ledger_table(warehouse.schema)
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
            flow_run_id=row["flow_run_id"], mlflow_run_id=row["mlflow_run_id"],
        )
        for row in rows
    ]


def read_labelled_predictions(
    warehouse: Warehouse,
    model: str,
    start: datetime,
    end: datetime,
    *,
    matured_by: datetime | None = None,
    arms: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Predictions made in [start, end) joined with their labels, by request id or else by key.

    Columns: request_id, version, arm, predicted_at, prediction, latency_ms, key, actual, labelled_at.
    `actual` is null where no label had arrived by `matured_by` (default: every label), so callers see
    both the traffic and the matured share of it. The canary check and monitoring read this one join.
    """
    columns = [
        "request_id", "version", "arm", "predicted_at", "prediction", "latency_ms", "key", "actual", "labelled_at",
    ]
    if not has_table(warehouse, PREDICTION_TABLE):
        return pd.DataFrame(columns=columns)
    predictions = prediction_table(warehouse.schema)
    labels = create_declared_table(warehouse, label_table(warehouse.schema))
    by_request = labels.alias("by_request")
    by_key = labels.alias("by_key")
    request_match = sa.and_(by_request.c.model == predictions.c.model,
                            by_request.c.request_id == predictions.c.request_id)
    key_match = sa.and_(by_key.c.model == predictions.c.model, by_key.c.request_id.is_(None),
                        predictions.c.key.is_not(None), by_key.c.key == predictions.c.key)
    if matured_by is not None:
        request_match = sa.and_(request_match, by_request.c.labelled_at <= matured_by)
        key_match = sa.and_(key_match, by_key.c.labelled_at <= matured_by)
    query = (
        sa.select(
            predictions.c.request_id, predictions.c.version, predictions.c.arm, predictions.c.predicted_at,
            predictions.c.prediction, predictions.c.latency_ms, predictions.c.key,
            sa.func.coalesce(by_request.c.actual, by_key.c.actual).label("actual"),
            sa.func.coalesce(by_request.c.labelled_at, by_key.c.labelled_at).label("labelled_at"),
        )
        .select_from(
            predictions.outerjoin(by_request, request_match).outerjoin(by_key, key_match)
        )
        .where(predictions.c.model == model, predictions.c.predicted_at >= start, predictions.c.predicted_at < end)
        .order_by(predictions.c.predicted_at, predictions.c.id)
    )
    if arms is not None:
        query = query.where(predictions.c.arm.in_(list(arms)))
    with warehouse.engine.connect() as connection:
        frame = pd.read_sql(query, connection)
    return frame[columns]


def prediction_key(values: Sequence[Any]) -> str:
    """The model's key values as the JSON text that the prediction and label tables join on.

    Every writer (the server's log, feedback by key, batch scoring) goes through this one function, so
    the same row gives the same text: instants as naive-UTC ISO text, numpy scalars as Python numbers,
    whole floats as integers (a JSON client may send 1.0 for an ID the table holds as 1).
    """
    return json.dumps([_key_value(value) for value in values], separators=(",", ":"))


def _key_value(value: Any) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, pd.Timestamp):
        value = value.to_pydatetime()
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
        return value.isoformat()
    if hasattr(value, "item"):  # numpy scalar
        value = value.item()
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def read_prediction_features(
    warehouse: Warehouse, model: str, start: datetime, end: datetime, arms: Sequence[str]
) -> pd.DataFrame:
    """The raw records the model saw for predictions in [start, end) of the given arms: request_id plus one
    column per feature (parsed from the `features` JSON)."""
    if not has_table(warehouse, PREDICTION_TABLE):
        return pd.DataFrame(columns=["request_id"])
    predictions = prediction_table(warehouse.schema)
    query = (
        sa.select(predictions.c.request_id, predictions.c.features)
        .where(predictions.c.model == model, predictions.c.predicted_at >= start, predictions.c.predicted_at < end,
               predictions.c.arm.in_(list(arms)))
        .order_by(predictions.c.predicted_at, predictions.c.id)
    )
    with warehouse.engine.connect() as connection:
        rows = connection.execute(query).all()
    records = pd.DataFrame.from_records([json.loads(row.features) for row in rows])
    records.insert(0, "request_id", [row.request_id for row in rows])
    return records


def count_predictions(
    warehouse: Warehouse, model: str, start: datetime, end: datetime, arms: Sequence[str]
) -> int:
    """Predictions of the given arms made in [start, end)."""
    if not has_table(warehouse, PREDICTION_TABLE):
        return 0
    predictions = prediction_table(warehouse.schema)
    query = sa.select(sa.func.count()).where(
        predictions.c.model == model, predictions.c.predicted_at >= start, predictions.c.predicted_at < end,
        predictions.c.arm.in_(list(arms)),
    )
    with warehouse.engine.connect() as connection:
        return int(connection.execute(query).scalar() or 0)


def insert_new_rows(connection: sa.Connection, table: sa.Table, rows: Sequence[dict[str, Any]]) -> None:
    """Insert rows, skipping any that a unique key of the table already holds (PostgreSQL and SQLite use
    ON CONFLICT DO NOTHING; other databases insert row by row and skip duplicates)."""
    dialect = connection.dialect.name
    if dialect == "postgresql":
        connection.execute(postgres_insert(table).on_conflict_do_nothing(), list(rows))
    elif dialect == "sqlite":
        connection.execute(sqlite_insert(table).on_conflict_do_nothing(), list(rows))
    else:
        for row in rows:
            try:
                with connection.begin_nested():
                    connection.execute(sa.insert(table), [row])
            except sa.exc.IntegrityError:
                continue


def append_new_predictions(
    warehouse: Warehouse, predictions: Sequence[dict[str, Any]], labels: Sequence[dict[str, Any]]
) -> int:
    """Insert the predictions (and their labels) whose request id the model has not logged yet, in one
    transaction; returns how many were new. A re-run over the same rows writes nothing twice."""
    if not predictions:
        return 0
    model = predictions[0]["model"]
    table = create_declared_table(warehouse, prediction_table(warehouse.schema))
    label = create_declared_table(warehouse, label_table(warehouse.schema))
    wanted = [row["request_id"] for row in predictions]
    with warehouse.engine.begin() as connection:
        known: set[str] = set()
        for chunk in range(0, len(wanted), 5000):  # bounded IN lists
            known.update(connection.execute(
                sa.select(table.c.request_id).where(table.c.model == model,
                                                    table.c.request_id.in_(wanted[chunk:chunk + 5000]))
            ).scalars())
        new_predictions = [row for row in predictions if row["request_id"] not in known]
        new_labels = [row for row in labels if row["request_id"] not in known]
        # The same insert as the server's log: a row another writer added since the read is skipped, not an error.
        if new_predictions:
            insert_new_rows(connection, table, new_predictions)
        if new_labels:
            insert_new_rows(connection, label, new_labels)
    return len(new_predictions)


def count_rows_between(
    warehouse: Warehouse, table: str, timestamp_column: str, start: datetime, end: datetime
) -> int:
    """Rows of one of our typed tables (a clean table) with `start <= timestamp < end`."""
    source = reflect_table(warehouse, table)
    column = source.c[timestamp_column]
    query = sa.select(sa.func.count()).where(column >= start, column < end)
    with warehouse.engine.connect() as connection:
        return int(connection.execute(query).scalar() or 0)


def read_monitoring_metric(
    warehouse: Warehouse, model: str, metric: str, version: str, before: datetime, limit: int
) -> list[tuple[datetime, float | None]]:
    """The whole-window value of one metric in the last `limit` monitoring windows of one model version that
    ended before `before`, oldest first: the history the degradation signal counts."""
    if not has_table(warehouse, MONITORING_METRIC_TABLE):
        return []
    table = monitoring_metric_table(warehouse.schema)
    query = (
        sa.select(table.c.window_end, table.c.value)
        .where(table.c.model == model, table.c.metric == metric, table.c.version == version,
               table.c.column == "", table.c.window_end < before)
        .order_by(table.c.window_end.desc(), table.c.id.desc())
        .limit(limit)
    )
    with warehouse.engine.connect() as connection:
        rows = connection.execute(query).all()
    return [(row.window_end, row.value) for row in reversed(rows)]
