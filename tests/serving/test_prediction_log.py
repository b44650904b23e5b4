"""The prediction journal and its writer on a real SQLite warehouse: batches, once-only rows, nothing dropped, a
killed server's journal shipped by the next one, labels first-wins."""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from retrain.warehouse import Warehouse, label_table, open_warehouse, prediction_table
from serving.journal import JournalUnavailable, PredictionJournal
from serving.prediction_log import PredictionLog, count_rows, insert_labels
from tests.conftest import REPO

MODEL = "m"


def warehouse(tmp_path: Path) -> Warehouse:
    return open_warehouse(f"sqlite:///{tmp_path / 'warehouse.db'}")


def row(request_id: str, prediction: float = 1.0) -> dict[str, Any]:
    return {"request_id": request_id, "model": MODEL, "version": "1", "arm": "champion",
            "predicted_at": datetime(2013, 1, 1, 5), "event_at": datetime(2013, 1, 1, 5), "prediction": prediction,
            "features": "{}", "key": None,
            "latency_ms": 0.5}


def journal(tmp_path: Path, **options: Any) -> PredictionJournal:
    return PredictionJournal(tmp_path / "journal" / MODEL, **options)


def test_rows_are_written_in_batches_once_and_counted(tmp_path: Path) -> None:
    store = warehouse(tmp_path)
    written: list[int] = []
    log = PredictionLog(store, journal(tmp_path), batch_rows=3, flush_seconds=0.05, on_written=written.append)
    log.start()
    log.submit([row(f"r{i}") for i in range(7)])
    log.submit([row("r0", prediction=2.0)])  # a retried request: skipped by the unique key
    assert log.wait_until_written(10)
    log.close()
    assert count_rows(store, prediction_table(), MODEL) == 7
    assert sum(written) == log.counters.written == 8 and max(written) <= 3
    table = prediction_table()
    with store.engine.connect() as connection:
        first = connection.execute(sa.select(table.c.prediction).where(table.c.request_id == "r0")).scalar_one()
        stamp = connection.execute(sa.select(table.c.predicted_at).where(table.c.request_id == "r3")).scalar_one()
    assert first == 1.0  # the first answer logged wins
    assert stamp == datetime(2013, 1, 1, 5)
    assert not list((tmp_path / "journal" / MODEL).iterdir())  # shipped to its end: the segments are gone


def test_rows_wait_in_the_journal_not_in_memory_and_nothing_is_dropped(tmp_path: Path) -> None:
    log = PredictionLog(warehouse(tmp_path), journal(tmp_path), batch_rows=10, flush_seconds=0.05)
    log.journal.open()  # not started: nothing ships
    log.submit([row(f"r{i}") for i in range(8)])
    assert log.depth == 8 and log.counters.dropped == 0
    lines = b"".join(path.read_bytes() for path in (tmp_path / "journal" / MODEL).glob("*.jsonl"))
    assert lines.count(b"\n") == 8 and b'"request_id":"r7"' in lines
    log.journal.close()


def test_close_flushes_what_is_journaled(tmp_path: Path) -> None:
    store = warehouse(tmp_path)
    log = PredictionLog(store, journal(tmp_path), batch_rows=100, flush_seconds=60)
    log.start()
    log.submit([row(f"r{i}") for i in range(4)])
    log.close(timeout=10)  # long before the 60 s flush: closing writes the partial batch
    assert count_rows(store, prediction_table(), MODEL) == 4


def test_what_a_killed_server_left_is_shipped_once_by_the_next_one(tmp_path: Path) -> None:
    """The journal of a process that died (its lock gone) is adopted: shipped from where it got, then deleted."""
    store = warehouse(tmp_path)
    folder = tmp_path / "journal" / MODEL
    killed = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(folder)], cwd=REPO, capture_output=True,
                            text=True, timeout=120, check=False)
    assert killed.returncode == -9, killed.stderr
    segment = next(folder.glob("*.jsonl"))
    segment.with_suffix(".shipped").write_text(str(len(segment.read_bytes().split(b"\n")[0]) + 1))  # r0 shipped
    with open(segment, "ab") as stream:  # a write cut short by the kill: never answered, skipped
        stream.write(b'{"request_id":"half')
    dropped: list[int] = []
    log = PredictionLog(store, journal(tmp_path), batch_rows=2, flush_seconds=0.05, on_dropped=dropped.append)
    log.start()
    assert log.wait_until_written(10)
    log.close()
    table = prediction_table()
    with store.engine.connect() as connection:
        logged = sorted(connection.execute(sa.select(table.c.request_id)).scalars())
    assert logged == [f"k{i}" for i in range(1, 5)]  # k0 was shipped by the killed process already
    assert sum(dropped) == 1 and not list(folder.iterdir())


def test_a_live_servers_journal_is_not_adopted(tmp_path: Path) -> None:
    first, second = journal(tmp_path), journal(tmp_path)
    first.open()
    first.append([row("a")])
    second.open()
    assert second.adopt_orphans() == []  # the first server lives: its segment is its own
    first.close()
    assert [segment.own for segment in second.adopt_orphans()] == [False]  # gone: adopted
    second.close()


def test_fsync_always_and_a_closed_journal_refuses_to_answer(tmp_path: Path) -> None:
    synced = journal(tmp_path, fsync="always")
    synced.open()
    assert synced.append([row("a")]) > 0
    synced.close()
    with pytest.raises(JournalUnavailable):
        synced.append([row("b")])


KILLED_WRITER = """
import os, sys
from datetime import datetime
from pathlib import Path
from serving.journal import PredictionJournal
journal = PredictionJournal(Path(sys.argv[1]), fsync="never")
journal.open()
for i in range(5):
    journal.append([{"request_id": f"k{i}", "model": "m", "version": "1", "arm": "champion",
                     "predicted_at": datetime(2013, 1, 1, 5), "event_at": datetime(2013, 1, 1, 5), "prediction": 1.0,
                     "features": "{}", "key": None, "latency_ms": 0.5}])
os.kill(os.getpid(), 9)
"""


def test_the_first_label_of_a_prediction_wins(tmp_path: Path) -> None:
    store = warehouse(tmp_path)
    label = {"model": MODEL, "request_id": "r1", "key": None, "actual": 3.0,
             "labelled_at": datetime(2013, 1, 2), "event_at": datetime(2013, 1, 2), "source": "feedback"}
    assert insert_labels(store, [label]) == 1
    assert insert_labels(store, [{**label, "actual": 9.0}, {**label, "request_id": "r2"}]) == 1
    table = label_table()
    with store.engine.connect() as connection:
        assert connection.execute(sa.select(table.c.actual).where(table.c.request_id == "r1")).scalar_one() == 3.0
