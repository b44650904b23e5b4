"""The prediction log: the journal of answered predictions, shipped to the warehouse in order, off the request path.

A request appends its predictions to the local journal (`serving.journal`) before it is answered, and returns;
one background thread reads the journal and writes its rows to the prediction table in batches (a batch is full at
`log_batch_rows`, or written anyway `log_flush_seconds` after the writer last looked), recording after each batch
how far it got. When the warehouse does not answer, the writer retries the same rows with a growing pause; the
journal holds what waits, on disk, so nothing is dropped and a `kill -9` loses nothing: the next server of the
model ships what this one left. Inserts skip a request id the table already holds for the model (its unique key),
so a batch shipped again (its progress not recorded before a crash) or a client's retried request is never logged
twice. Shutdown ships what is left (for up to its timeout; the rest stays in the journal for the next server).

Also here: the labels a client posts to /feedback, inserted the same way (first label wins).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from retrain.warehouse import Warehouse, create_declared_table, insert_new_rows, label_table, prediction_table
from serving.journal import PredictionJournal, Segment

logger = logging.getLogger(__name__)

RETRY_FIRST_SECONDS = 0.2
RETRY_LONGEST_SECONDS = 5.0
ORPHAN_LOOK_SECONDS = 30.0  # how often a running server looks for segments left by another server that died
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
    """The journal of one server and the thread that ships it into the prediction table."""

    def __init__(
        self,
        warehouse: Warehouse,
        journal: PredictionJournal,
        batch_rows: int = 500,
        flush_seconds: float = 1.0,
        on_dropped: Callable[[int], None] | None = None,
        on_written: Callable[[int], None] | None = None,
    ) -> None:
        self.warehouse = warehouse
        self.journal = journal
        self.table = prediction_table(warehouse.schema)
        self.batch_rows = batch_rows
        self.flush_seconds = flush_seconds
        self.counters = LogCounters()
        self._times = [column.name for column in self.table.columns if isinstance(column.type, sa.DateTime)]
        self._on_dropped = on_dropped
        self._on_written = on_written
        self._pending = 0
        self._pending_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._table_ready = False

    @property
    def depth(self) -> int:
        """Predictions this server answered that are not in the warehouse yet (they wait in the journal)."""
        return self._pending

    def start(self) -> None:
        """Open the journal, adopt what servers that are gone left in it, and start shipping."""
        self.journal.open()
        self.journal.adopt_orphans()
        self._thread = threading.Thread(target=self._run, name="retrain-prediction-log", daemon=True)
        self._thread.start()

    def submit(self, rows: Sequence[dict[str, Any]]) -> None:
        """Journal the rows of answered predictions: call before answering them.

        Raises:
            serving.journal.JournalUnavailable: they could not be journaled: do not answer them.
        """
        self.journal.append(rows)
        with self._pending_lock:
            self._pending += len(rows)
            full = self._pending >= self.batch_rows
        if full:
            self._wake.set()

    def _drop(self, count: int, why: str) -> None:
        self.counters.dropped += count
        if self._on_dropped is not None:
            self._on_dropped(count)
        logger.error("prediction log dropped %d row(s): %s; %d dropped since start", count, why,
                     self.counters.dropped)

    def wait_until_written(self, timeout: float) -> bool:
        """Block until the journal is shipped to its end (tests, shutdown); False on timeout."""
        deadline = time.monotonic() + timeout
        self._wake.set()
        while self._pending > 0 or self.journal.unshipped_bytes() > 0:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
            self._wake.set()
        return True

    def close(self, timeout: float = 30.0) -> None:
        """Ship what is journaled (retrying for up to `timeout`), then stop; what is left stays in the journal,
        for the next server of the model to ship."""
        self.journal.seal()
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._pending or (self._thread is not None and self._thread.is_alive()):
            logger.error("prediction log: %d prediction(s) not shipped within %.0f s stay in the journal %s; the next "
                         "server of the model ships them", self._pending, timeout, self.journal.folder)
        self.journal.close()

    def _run(self) -> None:
        pause = RETRY_FIRST_SECONDS
        looked = time.monotonic()
        while True:
            try:
                shipped, full = self._ship_some()
            except OUTAGE_ERRORS as error:
                self.counters.failed_attempts += 1
                logger.warning("prediction log: warehouse did not take a batch, retrying in %.1f s: %s", pause,
                               str(error).splitlines()[0][:300])
                time.sleep(pause)
                pause = min(pause * 2, RETRY_LONGEST_SECONDS)
                continue
            except Exception:  # noqa: BLE001 - the writer must outlive any surprise; the journal keeps the rows
                logger.exception("prediction log: shipping failed; the rows stay in the journal, retrying")
                time.sleep(pause)
                pause = min(pause * 2, RETRY_LONGEST_SECONDS)
                continue
            pause = RETRY_FIRST_SECONDS
            if full:
                continue
            if self._stop.is_set():
                if not shipped:
                    return
                continue
            if time.monotonic() - looked > ORPHAN_LOOK_SECONDS:
                self.journal.adopt_orphans()
                looked = time.monotonic()
            self._wake.wait(self.flush_seconds)
            self._wake.clear()

    def _ship_some(self) -> tuple[int, bool]:
        """Ship one batch from the oldest segment with rows left; (rows shipped, whether the batch was full)."""
        for segment in self.journal.segments():
            offset = self.journal.shipped(segment)
            position = self.journal.read(segment, offset, self.batch_rows)
            if position.offset == offset:
                self.journal.finish(segment)
                continue
            if position.rows:
                self._write_batch(self._decoded(position.rows))
            if position.corrupt:
                self._drop(position.corrupt, f"lines of {segment.name} could not be read")
            self.journal.record_shipped(segment, position.offset)
            self._shipped(segment, len(position.rows))
            return len(position.rows) + position.corrupt, len(position.rows) >= self.batch_rows
        return 0, False

    def _shipped(self, segment: Segment, count: int) -> None:
        if segment.own:
            with self._pending_lock:
                self._pending = max(self._pending - count, 0)

    def _decoded(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for row in rows:
            for name in self._times:
                if isinstance(row.get(name), str):
                    row[name] = datetime.fromisoformat(row[name])
        return rows

    def _write_batch(self, rows: list[dict[str, Any]]) -> None:
        try:
            self._write(rows)
        except OUTAGE_ERRORS:
            raise
        except sa.exc.SQLAlchemyError:
            self._write_one_by_one(rows)

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
            except OUTAGE_ERRORS:
                raise
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
