"""The prediction log: every served prediction written to the warehouse, off the request path.

A request puts its rows on a bounded queue and returns; one background thread writes them in batches
(a batch is full at `log_batch_rows`, or written anyway `log_flush_seconds` after its first row). When the
warehouse does not answer, the writer keeps its batch and retries with a growing pause, the queue fills,
and rows beyond its bound are dropped: counted (`/metrics`) and logged, never silently. Inserts skip a
request id the table already holds for the model (the table's unique key), so a batch retried after a
commit whose answer was lost, or a client's retried request, is never logged twice. Shutdown flushes.

Also here: the labels a client posts to /feedback, inserted the same way (first label wins).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from retrain.warehouse import Warehouse, create_declared_table, insert_new_rows, label_table, prediction_table

logger = logging.getLogger(__name__)

RETRY_FIRST_SECONDS = 0.2
RETRY_LONGEST_SECONDS = 5.0
# Errors that say the warehouse cannot take the batch now (down, locked, schema gone): wait and retry.
# Anything else (a constraint, a value the column refuses) is about the rows: they are dropped one by one.
OUTAGE_ERRORS = (sa.exc.OperationalError, sa.exc.InterfaceError, sa.exc.ProgrammingError)


def count_rows(warehouse: Warehouse, table: sa.Table, model: str) -> int:
    with warehouse.engine.connect() as connection:
        query = sa.select(sa.func.count()).select_from(table).where(table.c.model == model)
        return int(connection.execute(query).scalar() or 0)


@dataclass
class LogCounters:
    """What the writer did since start, for /metrics."""

    written: int = 0
    dropped: int = 0
    failed_attempts: int = 0


class PredictionLog:
    """A bounded queue and the thread that empties it into the prediction table."""

    def __init__(
        self,
        warehouse: Warehouse,
        batch_rows: int = 500,
        queue_rows: int = 100_000,
        flush_seconds: float = 1.0,
        on_dropped: Callable[[int], None] | None = None,
        on_written: Callable[[int], None] | None = None,
    ) -> None:
        self.warehouse = warehouse
        self.table = prediction_table(warehouse.schema)
        self.batch_rows = batch_rows
        self.flush_seconds = flush_seconds
        self.counters = LogCounters()
        self._queue: queue.Queue[dict[str, Any]] = queue.Queue(maxsize=queue_rows)
        self._on_dropped = on_dropped
        self._on_written = on_written
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._table_ready = False
        self._last_drop_log = 0.0

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="retrain-prediction-log", daemon=True)
        self._thread.start()

    def submit(self, rows: Sequence[dict[str, Any]]) -> int:
        """Queue rows without waiting; returns how many were dropped because the queue is full."""
        dropped = 0
        for row in rows:
            try:
                self._queue.put_nowait(row)
            except queue.Full:
                dropped += 1
        if dropped:
            self._drop(dropped, "the log's queue is full (the warehouse is slow or down)")
        return dropped

    def _drop(self, count: int, why: str) -> None:
        self.counters.dropped += count
        if self._on_dropped is not None:
            self._on_dropped(count)
        moment = time.monotonic()
        if moment - self._last_drop_log > 1.0:  # one line a second at most, with the running total
            self._last_drop_log = moment
            logger.error("prediction log dropped %d row(s): %s; %d dropped since start", count, why,
                         self.counters.dropped)

    def wait_until_written(self, timeout: float) -> bool:
        """Block until every queued row is written or dropped (tests, shutdown); False on timeout."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def close(self, timeout: float = 30.0) -> None:
        """Flush what is queued (retrying for up to `timeout`), then stop; what is left is dropped and logged."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        left = self._queue.qsize()
        if left or (self._thread is not None and self._thread.is_alive()):
            self._drop(left, f"the server stopped before the warehouse took them (waited {timeout:.0f} s)")

    def _take_batch(self) -> list[dict[str, Any]]:
        """Up to `batch_rows` rows: waits for the first, then until the batch is full or `flush_seconds` old."""
        try:
            batch = [self._queue.get(timeout=0.05 if self._stop.is_set() else self.flush_seconds)]
        except queue.Empty:
            return []
        deadline = time.monotonic() + (0 if self._stop.is_set() else self.flush_seconds)
        while len(batch) < self.batch_rows:
            try:
                remaining = deadline - time.monotonic()
                batch.append(self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def _run(self) -> None:
        pause = RETRY_FIRST_SECONDS
        pending: list[dict[str, Any]] = []
        while True:
            if not pending:
                if self._stop.is_set() and self._queue.empty():
                    return
                pending = self._take_batch()
                if not pending:
                    continue
            try:
                self._write(pending)
            except OUTAGE_ERRORS as error:
                self.counters.failed_attempts += 1
                logger.warning("prediction log: warehouse did not take %d row(s), retrying in %.1f s: %s",
                               len(pending), pause, str(error).splitlines()[0][:300])
                time.sleep(pause)
                pause = min(pause * 2, RETRY_LONGEST_SECONDS)
                continue
            except sa.exc.SQLAlchemyError:
                self._write_one_by_one(pending)
            self._done(pending)
            pending = []
            pause = RETRY_FIRST_SECONDS

    def _done(self, rows: list[dict[str, Any]]) -> None:
        for _ in rows:
            self._queue.task_done()

    def _write(self, rows: list[dict[str, Any]]) -> None:
        if not self._table_ready:
            create_declared_table(self.warehouse, self.table)
            self._table_ready = True
        with self.warehouse.engine.begin() as connection:
            insert_new_rows(connection, self.table, rows)
        self.counters.written += len(rows)
        if self._on_written is not None:
            self._on_written(len(rows))

    def _write_one_by_one(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            try:
                self._write([row])
            except sa.exc.SQLAlchemyError as error:
                self._drop(1, f"the warehouse refused request {row.get('request_id')!r}: {str(error)[:200]}")


def insert_labels(warehouse: Warehouse, rows: Sequence[dict[str, Any]]) -> int:
    """Insert labels, skipping any the table already holds for the same request id or key; returns how many
    are new (the first label of a prediction wins: a metric "as of" a moment must not change afterwards)."""
    labels = create_declared_table(warehouse, label_table(warehouse.schema))
    models = {row["model"] for row in rows}
    with warehouse.engine.begin() as connection:
        before = sum(_count(connection, labels, model) for model in models)
        insert_new_rows(connection, labels, rows)
        after = sum(_count(connection, labels, model) for model in models)
    return after - before


def _count(connection: sa.Connection, table: sa.Table, model: str) -> int:
    query = sa.select(sa.func.count()).select_from(table).where(table.c.model == model)
    return int(connection.execute(query).scalar() or 0)
