"""Warehouse reads and writes on SQLite and, where it answers, the PostgreSQL on 127.0.0.1:5432."""

from __future__ import annotations

import uuid
from datetime import datetime

import pandas as pd
import pytest
import sqlalchemy as sa

from retrain.errors import DataError
from tasks.warehouse import append_rows, create_warehouse_engine, ledger_table, read_table, read_window, write_frame


@pytest.fixture(params=["sqlite", "postgres"])
def warehouse(request: pytest.FixtureRequest, tmp_path) -> tuple[sa.Engine, str | None]:
    if request.param == "sqlite":
        return create_warehouse_engine(f"sqlite:///{tmp_path / 'w.db'}"), None
    url, schema = request.getfixturevalue("postgres_schema")
    return create_warehouse_engine(url), schema


def rows() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "ts": pd.to_datetime(["2013-01-01 10:00", "2013-01-01 11:00", "2013-01-02 00:00", "2013-01-03 00:00"]),
            "value": [1.0, 2.0, 3.0, 4.0],
            "name": ["a", "b", "c", "d"],
        }
    )


def test_read_window_is_half_open_ordered_and_typed(warehouse) -> None:
    engine, schema = warehouse
    table = f"t_{uuid.uuid4().hex[:6]}"
    write_frame(engine, rows().iloc[::-1], table, schema=schema, if_exists="replace")
    frame = read_window(engine, table, "ts", datetime(2013, 1, 1, 11), datetime(2013, 1, 3), schema=schema)
    assert frame["value"].tolist() == [2.0, 3.0]
    assert pd.api.types.is_datetime64_any_dtype(frame["ts"])
    everything = read_window(engine, table, "ts", None, None, columns=["name"], schema=schema)
    assert everything["name"].tolist() == list("abcd")


def test_values_are_bound_not_spliced(warehouse) -> None:
    engine, schema = warehouse
    table = f"t_{uuid.uuid4().hex[:6]}"
    write_frame(engine, rows(), table, schema=schema, if_exists="replace")
    hostile = "2013-01-01'; DROP TABLE " + table + "; --"
    try:  # SQLite compares the text as text; PostgreSQL refuses it as a timestamp: either way it is a value
        read_window(engine, table, "ts", hostile, None, schema=schema)  # type: ignore[arg-type]
    except sa.exc.DBAPIError:
        pass
    assert len(read_table(engine, table, schema=schema)) == 4


@pytest.mark.parametrize(
    ("table", "columns", "message"),
    [
        ("nowhere", None, "table '.*nowhere' does not exist"),
        ("EXISTING", ["ghost"], r"has no column\(s\) \['ghost'\]"),
    ],
)
def test_missing_table_or_column_is_named(warehouse, table: str, columns, message: str) -> None:
    engine, schema = warehouse
    existing = f"t_{uuid.uuid4().hex[:6]}"
    write_frame(engine, rows(), existing, schema=schema, if_exists="replace")
    with pytest.raises(DataError, match=message):
        name = existing if table == "EXISTING" else table
        read_window(engine, name, "ts", None, None, columns=columns, schema=schema)


def test_ledger_rows_keep_declared_types_even_when_first_value_is_null(warehouse) -> None:
    engine, schema = warehouse
    columns = (sa.Column("id", sa.Integer, primary_key=True), sa.Column("score", sa.Float))
    table = ledger_table(f"ledger_{uuid.uuid4().hex[:6]}", columns, schema)
    append_rows(engine, table, [{"score": None}])
    append_rows(engine, table, [{"score": 1.5}])
    assert read_table(engine, table.name, schema=schema)["score"].tolist()[1] == 1.5
