"""Warehouse access through SQLAlchemy: the one module that reads and writes tables.

Every query is built with SQLAlchemy Core from reflected tables, so values are bound parameters
and names are quoted by the dialect; the same code runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from retrain.errors import DataError
from retrain.settings import get_settings, redact_url

logger = logging.getLogger(__name__)

WRITE_CHUNK_ROWS = 50_000  # measured: ~20% faster than one chunk on SQLite; method="multi" is 13x slower


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


def get_warehouse() -> tuple[Engine, str | None]:
    """The engine and schema named by the settings of this process."""
    settings = get_settings()
    url = settings.resolved_warehouse_url()
    if url.startswith("sqlite:///"):
        settings.resolved_home.mkdir(parents=True, exist_ok=True)
    return create_warehouse_engine(url), settings.warehouse_schema


def has_table(engine: Engine, table: str, schema: str | None = None) -> bool:
    return sa.inspect(engine).has_table(table, schema=schema)


def reflect_table(engine: Engine, table: str, schema: str | None = None) -> sa.Table:
    """The table as the database has it; a missing table is a DataError naming it."""
    if not has_table(engine, table, schema):
        where = f"{schema}.{table}" if schema else table
        raise DataError(f"table '{where}' does not exist in the warehouse {redact_url(str(engine.url))}")
    return sa.Table(table, sa.MetaData(schema=schema), autoload_with=engine)


def table_columns(engine: Engine, table: str, schema: str | None = None) -> list[str]:
    return [column.name for column in reflect_table(engine, table, schema).columns]


def read_window(
    engine: Engine,
    table: str,
    timestamp_column: str,
    start: datetime | None,
    end: datetime | None,
    columns: Sequence[str] | None = None,
    schema: str | None = None,
) -> pd.DataFrame:
    """Rows with `start <= timestamp < end`, ordered by time; half-open so adjacent windows never overlap.

    Raises:
        DataError: the table, the timestamp column or a requested column does not exist.
    """
    source = reflect_table(engine, table, schema)
    where = f"{schema}.{table}" if schema else table
    wanted = list(columns) if columns is not None else [c.name for c in source.columns]
    missing = [name for name in [timestamp_column, *wanted] if name not in source.c]
    if missing:
        raise DataError(
            f"table '{where}' has no column(s) {sorted(set(missing))}; it has {[c.name for c in source.columns]}"
        )
    timestamp = source.c[timestamp_column]
    query = sa.select(*[source.c[name] for name in wanted]).order_by(timestamp)
    if start is not None:
        query = query.where(timestamp >= start)
    if end is not None:
        query = query.where(timestamp < end)
    with engine.connect() as connection:
        frame = pd.read_sql(query, connection, parse_dates=[timestamp_column] if timestamp_column in wanted else None)
    return frame


def write_frame(
    engine: Engine,
    frame: pd.DataFrame,
    table: str,
    schema: str | None = None,
    if_exists: str = "append",
) -> int:
    """Write rows in chunks inside one transaction, so a failure leaves no partial write."""
    with engine.begin() as connection:
        frame.to_sql(
            table, connection, schema=schema, if_exists=if_exists, index=False, chunksize=WRITE_CHUNK_ROWS
        )
    return len(frame)


def ledger_table(name: str, columns: Sequence[sa.Column], schema: str | None = None) -> sa.Table:
    """A bookkeeping table (audit log, batch ledger) declared with explicit types.

    Declared rather than inferred by pandas so a first record holding a NULL cannot fix a column's
    type to TEXT, which PostgreSQL would then refuse numbers into.
    """
    return sa.Table(name, sa.MetaData(schema=schema), *[column._copy() for column in columns])


def append_rows(engine: Engine, table: sa.Table, rows: Sequence[dict[str, Any]]) -> int:
    """Insert rows as bound parameters, creating the table on first use."""
    if not rows:
        return 0
    with engine.begin() as connection:
        table.create(connection, checkfirst=True)
        connection.execute(sa.insert(table), list(rows))
    return len(rows)


def read_table(engine: Engine, table: str, schema: str | None = None) -> pd.DataFrame:
    """A whole (small) table: bookkeeping such as the audit log or the batch ledger."""
    source = reflect_table(engine, table, schema)
    with engine.connect() as connection:
        return pd.read_sql(sa.select(source), connection)
