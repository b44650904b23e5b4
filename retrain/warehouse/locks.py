"""One writer at a time, across processes and machines that share the warehouse: `hold_lock`.

SQLite: a committed row in `retrain_locks`; PostgreSQL: a session advisory lock with a row beside it saying who
holds it.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as postgres_insert

from retrain.clock import wall_clock
from retrain.errors import Busy
from retrain.settings import get_settings
from retrain.warehouse.engine import Warehouse
from retrain.warehouse.tables import LOCK_TABLE, create_declared_table, lock_table

logger = logging.getLogger(__name__)

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


def live_lock_holder(warehouse: Warehouse, name: str) -> LockHolder | None:
    """Who holds `name` now, if anyone alive does (None: the lock is free, or its holder is gone).

    What `retrain status` asks before it calls a half-applied transition interrupted: one whose holder still
    lives is being applied, not interrupted. A row left by a dead holder is not a holder (the next taker
    replaces it). On PostgreSQL the advisory lock is the truth: it is probed, and let go at once if it was free.
    """
    current = read_lock_holder(warehouse, name)
    if warehouse.dialect == "postgresql":
        key = _advisory_key(warehouse, name)
        with warehouse.engine.connect() as connection:
            free = connection.execute(sa.select(sa.func.pg_try_advisory_lock(key))).scalar_one()
            if free:
                connection.execute(sa.select(sa.func.pg_advisory_unlock(key)))
            connection.commit()
        if free:
            return None
        return current or LockHolder(name, "", "another run", "?", 0, "", wall_clock(), wall_clock())
    if current is None or _holder_is_gone(current):
        return None
    return current


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
    """Compare-and-set: replace the dead holder's row only if it is still that holder's (one waiter wins).

    The dead holder's row is gone once this returns True: the winner's row stands in its place, and is deleted
    when the winner lets go, so no row of a dead holder outlives the next taker.
    """
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
                    renewed = connection.execute(
                        sa.update(table)
                        .where(table.c.name == me.name, table.c.token == me.token)
                        .values(heartbeat_at=wall_clock())
                    ).rowcount
            except sa.exc.SQLAlchemyError as error:  # busy with this process's own long write: next beat
                logger.debug("lock %s: heartbeat skipped: %s", me.name, error)
                continue
            if renewed == 0:
                logger.error("lock %s: this holder's row is gone (taken over after %g s without a heartbeat?)",
                             me.name, LOCK_LEASE_SECONDS)


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

