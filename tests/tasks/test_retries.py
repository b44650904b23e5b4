"""Only transient failures are retried: a store that blinked, never a verdict on the data."""

from __future__ import annotations

import sqlite3

import pytest
import sqlalchemy as sa
from prefect.states import Failed

from retrain.errors import Busy, ConfigError, DataContractError, DataError, StoreUnavailable
from tasks.retries import is_transient, retry_when_transient


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
        (sa.exc.IntegrityError("INSERT", {}, Exception("UNIQUE constraint failed")), False),
        (Busy("'source:flights' is held by another run"), False),  # it has waited already
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else str(value),
)
def test_only_store_outages_are_transient(error: BaseException, transient: bool) -> None:
    assert is_transient(error) is transient
    assert retry_when_transient(None, None, Failed(data=error)) is transient
