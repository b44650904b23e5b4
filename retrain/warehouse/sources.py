"""Reading a source table as it is stored: its description, and the rows a batch may hold.

Nothing is converted on the way: a malformed value reaches validation and quarantine as it was.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd
import sqlalchemy as sa

from retrain.errors import DataError
from retrain.warehouse.engine import Warehouse
from retrain.warehouse.tables import reflect_table


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
    """The columns of `table` and the share of duplicate keys in a sample of its rows (the first ones stored):
    rows sharing a key with another row of other content (byte-identical copies of a row count once).

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
        if duplicates:  # a row stored twice byte for byte is one row (ingest lands it once), not a second key
            whole = sa.select(*[_as_stored(column) for column in source.c]).limit(sample_rows)
            with warehouse.engine.connect() as connection:
                rows = pd.read_sql(whole, connection).drop_duplicates()
            duplicates = int(rows.duplicated(list(key), keep=False).sum())
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



def replace_source_rows(
    warehouse: Warehouse, table: str, timestamp: str, start: datetime, end: datetime, rows: pd.DataFrame
) -> int:
    """Replace the source rows dated in `[start, end)` by `rows`, in one transaction: what fixing a broken feed
    looks like from the warehouse (a re-delivered day). Returns how many rows were written.

    Raises:
        DataError: the table or its timestamp column does not exist.
    """
    source = reflect_table(warehouse, table)
    column = _source_column(warehouse, source, timestamp)
    with warehouse.engine.begin() as connection:
        connection.execute(sa.delete(source).where(column >= start, column < end))
        rows.to_sql(table, connection, schema=warehouse.schema, if_exists="append", index=False)
    return len(rows)
