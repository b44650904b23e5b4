"""Only transient failures are retried: a store that blinked, never a verdict on the data."""

from __future__ import annotations

import sqlite3

import pytest
import sqlalchemy as sa

from retrain.errors import ConfigError, DataContractError, DataError, StoreUnavailable
from tasks.retries import is_transient


def wrapped(message: str) -> sa.exc.OperationalError:
    return sa.exc.OperationalError("SELECT 1", {}, sqlite3.OperationalError(message))


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (wrapped("database is locked"), True),
        (wrapped("could not connect to server: Connection refused"), True),
        (ConnectionResetError("reset by peer"), True),
        (TimeoutError("timed out"), True),
        (StoreUnavailable("MLflow does not answer"), True),
        (wrapped("no such column: distanse"), False),
        (wrapped("no such table: flights_clean"), False),
        (DataError("table 'flights_clean' has no column(s) ['distanse']"), False),
        (DataContractError("snapshot_rows", 3, 0), False),
        (ConfigError("bad config"), False),
        (ValueError("a bug"), False),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else str(value),
)
def test_only_store_outages_are_transient(error: BaseException, transient: bool) -> None:
    assert is_transient(error) is transient
