"""The prediction log's writer on a real SQLite warehouse: batches, once-only rows, drops counted, labels first-wins."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from retrain.warehouse import Warehouse, label_table, open_warehouse, prediction_table
from serving.prediction_log import PredictionLog, count_rows, insert_labels

MODEL = "m"


def warehouse(tmp_path: Path) -> Warehouse:
    return open_warehouse(f"sqlite:///{tmp_path / 'warehouse.db'}")


def row(request_id: str, prediction: float = 1.0) -> dict[str, Any]:
    return {"request_id": request_id, "model": MODEL, "version": "1", "arm": "champion",
            "predicted_at": datetime(2013, 1, 1, 5), "event_at": datetime(2013, 1, 1, 5), "prediction": prediction,
            "features": "{}", "key": None,
            "latency_ms": 0.5}


def test_rows_are_written_in_batches_once_and_counted(tmp_path: Path) -> None:
    store = warehouse(tmp_path)
    written: list[int] = []
    log = PredictionLog(store, batch_rows=3, queue_rows=100, flush_seconds=0.05, on_written=written.append)
    log.start()
    assert log.submit([row(f"r{i}") for i in range(7)]) == 0
    assert log.submit([row("r0", prediction=2.0)]) == 0  # a retried request: skipped by the unique key
    assert log.wait_until_written(10)
    log.close()
    assert count_rows(store, prediction_table(), MODEL) == 7
    assert sum(written) == log.counters.written == 8 and max(written) <= 3
    table = prediction_table()
    with store.engine.connect() as connection:
        first = connection.execute(sa.select(table.c.prediction).where(table.c.request_id == "r0")).scalar_one()
    assert first == 1.0  # the first answer logged wins


def test_a_full_queue_drops_and_counts_instead_of_blocking_the_request(tmp_path: Path) -> None:
    dropped: list[int] = []
    log = PredictionLog(warehouse(tmp_path), batch_rows=10, queue_rows=5, flush_seconds=0.05,
                        on_dropped=dropped.append)  # not started: nothing empties the queue
    assert log.submit([row(f"r{i}") for i in range(8)]) == 3
    assert log.depth == 5 and sum(dropped) == log.counters.dropped == 3


def test_close_flushes_what_is_queued(tmp_path: Path) -> None:
    store = warehouse(tmp_path)
    log = PredictionLog(store, batch_rows=100, queue_rows=100, flush_seconds=60)
    log.start()
    log.submit([row(f"r{i}") for i in range(4)])
    log.close(timeout=10)  # long before the 60 s flush: closing writes the partial batch
    assert count_rows(store, prediction_table(), MODEL) == 4


def test_the_first_label_of_a_prediction_wins(tmp_path: Path) -> None:
    store = warehouse(tmp_path)
    label = {"model": MODEL, "request_id": "r1", "key": None, "actual": 3.0,
             "labelled_at": datetime(2013, 1, 2), "event_at": datetime(2013, 1, 2), "source": "feedback"}
    assert insert_labels(store, [label]) == 1
    assert insert_labels(store, [{**label, "actual": 9.0}, {**label, "request_id": "r2"}]) == 1
    table = label_table()
    with store.engine.connect() as connection:
        assert connection.execute(sa.select(table.c.actual).where(table.c.request_id == "r1")).scalar_one() == 3.0
