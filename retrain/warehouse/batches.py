"""Ingest state of a source: the batch ledger, the watermark, clean keys, quarantine, and landing a batch.

The watermark of a source is the end of the latest passed batch's range, so it belongs to the source and its
clean table: every model that reads them shares it.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from datetime import datetime
from typing import Any

import pandas as pd
import sqlalchemy as sa

from retrain.errors import Busy, DataError
from retrain.warehouse.engine import WRITE_CHUNK_ROWS, Warehouse
from retrain.warehouse.tables import (
    BATCH_COLUMN,
    PASSED,
    batch_ledger,
    create_declared_table,
    quarantine_table,
    reflect_ours,
    stored_datetime,
)


def read_watermark(warehouse: Warehouse, source_table: str, clean: str) -> datetime | None:
    """Where the next batch of `source_table` into `clean` starts: the end of the latest passed batch's range."""
    with warehouse.engine.connect() as connection:
        ledger = reflect_ours(connection, batch_ledger(warehouse.schema))
        if ledger is None:
            return None
        query = sa.select(sa.func.max(ledger.c.range_end)).where(
            ledger.c.source_table == source_table, ledger.c.clean_table == clean, ledger.c.status == PASSED
        )
        return stored_datetime(connection.execute(query).scalar())


IN_CHUNK = 500  # values per IN (...) list: well under every database's limit on bound parameters


def _chunks(values: Sequence[Any], size: int = IN_CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(values), size):
        yield values[start:start + size]


def read_known_fingerprints(
    warehouse: Warehouse, source_table: str, clean: str, quarantine: str, fingerprints: Collection[str]
) -> set[str]:
    """Which of `fingerprints` (of rows without a usable timestamp) passed batches already quarantined.

    Rows of a refused batch do not count: a refused batch is read again once its data is fixed.
    """
    wanted = sorted(set(fingerprints))
    if not wanted:
        return set()
    found: set[str] = set()
    with warehouse.engine.connect() as connection:
        ledger = reflect_ours(connection, batch_ledger(warehouse.schema))
        stored = reflect_ours(connection, quarantine_table(quarantine, warehouse.schema))
        if ledger is None or stored is None:
            return set()
        for chunk in _chunks(wanted):
            query = (
                sa.select(stored.c.fingerprint)
                .distinct()
                .join_from(stored, ledger, stored.c.batch_id == ledger.c.batch_id)
                .where(
                    ledger.c.source_table == source_table,
                    ledger.c.clean_table == clean,
                    ledger.c.status == PASSED,
                    stored.c.fingerprint.in_(chunk),
                )
            )
            found.update(str(value) for value in connection.execute(query).scalars())
    return found


def read_quarantined_fingerprints(
    warehouse: Warehouse, quarantine: str, fingerprints: Collection[str]
) -> dict[str, str]:
    """Which of `fingerprints` the quarantine table holds already (from any batch), each with the newest batch
    that stored it: a row is stored in quarantine once, however often it is read."""
    wanted = sorted(set(fingerprints))
    found: dict[str, str] = {}
    if not wanted:
        return found
    with warehouse.engine.connect() as connection:
        stored = reflect_ours(connection, quarantine_table(quarantine, warehouse.schema))
        if stored is None:
            return found
        for chunk in _chunks(wanted):
            query = (
                sa.select(stored.c.fingerprint, sa.func.max(stored.c.batch_id))
                .where(stored.c.fingerprint.in_(chunk))
                .group_by(stored.c.fingerprint)
            )
            found.update({str(value): str(batch) for value, batch in connection.execute(query)})
    return found


def read_batch_record(warehouse: Warehouse, batch_ids: Collection[str]) -> list[dict[str, Any]]:
    """The batch ledger rows of the given batches, newest first."""
    wanted = sorted(set(batch_ids))
    with warehouse.engine.connect() as connection:
        ledger = reflect_ours(connection, batch_ledger(warehouse.schema))
        if ledger is None or not wanted:
            return []
        rows = [dict(row) for chunk in _chunks(wanted)
                for row in connection.execute(sa.select(ledger).where(ledger.c.batch_id.in_(chunk))).mappings()]
    return sorted(rows, key=lambda row: row["finished_at"], reverse=True)


def find_passed_batch(
    warehouse: Warehouse, source_table: str, clean: str, start: datetime | None, end: datetime
) -> dict[str, Any] | None:
    """The ledger row of a passed batch that ended at `end` by request (and began at `start`, if given)."""
    with warehouse.engine.connect() as connection:
        ledger = reflect_ours(connection, batch_ledger(warehouse.schema))
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
        ledger = reflect_ours(connection, declared)
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


def read_clean_rows(
    warehouse: Warehouse,
    table: str,
    columns: Sequence[str],
    timestamp: str,
    start: datetime | None,
    end: datetime | None,
) -> pd.DataFrame | None:
    """The `columns` of clean rows dated in `[start, end)` (None: no table yet), to compare a batch's rows with.

    Used where the timestamp is part of the key, so only clean rows in a batch's own range can share its keys.
    """
    with warehouse.engine.connect() as connection:
        if not sa.inspect(connection).has_table(table, schema=warehouse.schema):
            return None
        clean = sa.Table(table, sa.MetaData(schema=warehouse.schema), autoload_with=connection)
        query = sa.select(*[clean.c[name] for name in columns if name in clean.c])
        if start is not None:
            query = query.where(clean.c[timestamp] >= start)
        if end is not None:
            query = query.where(clean.c[timestamp] < end)
        return pd.read_sql(query, connection)


def read_clean_rows_by_key(
    warehouse: Warehouse, table: str, columns: Sequence[str], key: Sequence[str], keys: pd.DataFrame
) -> pd.DataFrame | None:
    """The `columns` of the clean rows whose key is one of `keys` (values exactly as the clean table holds
    them, e.g. from `read_clean_keys`); None when there is no clean table yet."""
    with warehouse.engine.connect() as connection:
        if not sa.inspect(connection).has_table(table, schema=warehouse.schema):
            return None
        clean = sa.Table(table, sa.MetaData(schema=warehouse.schema), autoload_with=connection)
        selected = [clean.c[name] for name in columns if name in clean.c]
        wanted = [tuple(row) for row in keys[list(key)].itertuples(index=False, name=None)]
        key_columns = sa.tuple_(*[clean.c[name] for name in key])
        frames = [pd.read_sql(sa.select(*selected).where(key_columns.in_(list(chunk))), connection)
                  for chunk in _chunks(wanted)]
    if not frames:
        return pd.DataFrame(columns=[column.name for column in selected])
    return pd.concat(frames, ignore_index=True)


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
            reflect_ours(connection, ledger)  # a table from an older Retrain gets its new columns here
            reflect_ours(connection, quarantine_table)
            for index in quarantine_table.indexes:  # and its quarantine the fingerprint index
                index.create(connection, checkfirst=True)
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

