"""Which failures are worth a retry: a store that blinked, not a mistake that will fail the same way again.

A missing column, an empty window or a broken contract gives the same answer on every attempt;
retrying it only delays the message (it used to cost 10 s and 71 lines of tracebacks). A dropped
connection, a locked SQLite file or a timeout may pass a few seconds later. Tasks that talk to a store
pass `retry_when_transient` as Prefect's `retry_condition_fn`.
"""

from __future__ import annotations

import logging
import sqlite3
from typing import Any

import sqlalchemy as sa

from retrain.errors import RetrainError, StoreUnavailable

logger = logging.getLogger(__name__)

TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    sa.exc.OperationalError,  # connection refused or lost, server restarting, "database is locked"
    sa.exc.InterfaceError,
    sa.exc.TimeoutError,  # the connection pool was exhausted for a while
    sa.exc.DisconnectionError,
    sqlite3.OperationalError,
    ConnectionError,
    TimeoutError,
    StoreUnavailable,
)


def is_transient(error: BaseException) -> bool:
    """Whether `error` may pass on a retry: a store outage, never one of our verdicts on the data.

    SQLAlchemy wraps driver errors, so a statement that names a missing column surfaces as an
    OperationalError on SQLite too ("no such column"): those are deterministic and not retried.
    """
    if isinstance(error, RetrainError) and not isinstance(error, StoreUnavailable):
        return False  # our verdicts (a refused batch, a bad config, Busy after its wait) stand
    if isinstance(error, sa.exc.DBAPIError) and error.connection_invalidated:
        return True
    if not isinstance(error, TRANSIENT_ERRORS):
        return False
    message = str(error).lower()
    return not any(sign in message for sign in ("no such column", "no such table", "syntax error", "does not exist"))


def retry_when_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect `retry_condition_fn`: retry the task only when its failure is transient."""
    try:
        state.result()
    except Exception as error:  # noqa: BLE001 - this is where the task's exception is read back
        transient = is_transient(error)
        if not transient:
            logger.info("not retrying %s: %s is not transient", getattr(task, "name", task), type(error).__name__)
        return transient
    return False


# The one retry policy of tasks that talk to a store: twice, after 2 s then 10 s, and only when the failure may
# pass by itself (a dropped connection, a busy database); a bad config or a refused batch fails the same way
# every time and is never retried. `@task(**STORE_RETRIES)`.
STORE_RETRIES: dict[str, Any] = {
    "retries": 2, "retry_delay_seconds": [2, 10], "retry_condition_fn": retry_when_transient,
}
