"""`retrain serve` as a real process: killed with SIGKILL under load, nothing it answered is missing from the log
once the next server has started; stopped with SIGTERM, it ships its journal and ends 0 with its JSON outcome."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import sqlalchemy as sa

from retrain.warehouse import open_warehouse, prediction_table
from tests.conftest import REPO
from tests.serving.conftest import MODEL, Registry

LOAD_THREADS = 4


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def serving(registry: Registry, port: int, log: Path) -> Iterator[subprocess.Popen[str]]:
    """`retrain serve --json` on `port`, ready; killed at the end if the test has not stopped it."""
    env = {**os.environ, "RETRAIN_HOME": str(registry.home), "RETRAIN_LOG_FLUSH_SECONDS": "0.2"}
    with open(log, "a", encoding="utf-8") as stderr:
        process = subprocess.Popen(
            [str(REPO / ".venv" / "bin" / "retrain"), "serve", "--config", str(registry.config.config_path),
             "--port", str(port), "--json"],
            cwd=registry.home.parent, env=env, stdout=subprocess.PIPE, stderr=stderr, text=True,
        )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, log.read_text()[-3000:]
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code == 200:
                    break
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(30)


def load(port: int, records: list[dict], prefix: str, answered: list[str], stop: threading.Event) -> None:
    """Predict until stopped (or the server dies); every request id answered 200 goes to `answered`."""
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        index = 0
        while not stop.is_set():
            size = 1 + index % 3
            body = {"records": records[index % 50: index % 50 + size], "request_id": f"{prefix}-{index}"}
            index += 1
            try:
                response = client.post("/predict", json=body)
            except httpx.HTTPError:
                return  # the server is gone: whatever it answered before is what counts
            if response.status_code == 200:
                answered.extend(p["request_id"] for p in response.json()["predictions"])


def logged_ids(registry: Registry) -> list[str]:
    warehouse = open_warehouse(f"sqlite:///{registry.home / 'warehouse.db'}")
    table = prediction_table()
    with warehouse.engine.connect() as connection:
        return list(connection.execute(sa.select(table.c.request_id).where(table.c.model == MODEL)).scalars())


def test_a_killed_server_loses_no_answered_prediction_and_a_stopped_one_ends_cleanly(
    registry: Registry, tmp_path: Path
) -> None:
    records = registry.raw_rows(60, offset=500)
    port, log = free_port(), tmp_path / "serve.log"
    answered: list[str] = []
    with serving(registry, port, log) as first:
        stop = threading.Event()
        threads = [threading.Thread(target=load, args=(port, records, f"kill{n}", answered, stop))
                   for n in range(LOAD_THREADS)]
        for thread in threads:
            thread.start()
        time.sleep(4)
        first.send_signal(signal.SIGKILL)  # under load: requests in flight, rows in the journal not shipped
        first.wait(30)
        stop.set()
        for thread in threads:
            thread.join(30)
    assert first.returncode == -signal.SIGKILL and len(answered) > 200
    journal = registry.home / "journal" / MODEL
    assert list(journal.glob("*.jsonl"))  # what it left is on disk

    with serving(registry, port, log) as second:  # ships what the killed server left, on start
        deadline = time.monotonic() + 60
        while not set(answered) <= set(logged_ids(registry)):
            assert time.monotonic() < deadline, "answered predictions missing from the log"
            time.sleep(0.2)
        after = httpx.post(f"http://127.0.0.1:{port}/predict",
                           json={"records": records[:1], "request_id": "after-restart"}).json()
        second.send_signal(signal.SIGTERM)
        stdout, _ = second.communicate(timeout=60)

    logged = logged_ids(registry)
    assert set(answered) <= set(logged) and len(logged) == len(set(logged))  # nothing missing, nothing twice
    assert "after-restart" in logged and after["predictions"][0]["request_id"] == "after-restart"
    assert second.returncode == 0, log.read_text()[-3000:]
    assert json.loads(stdout) == {"model": MODEL, "stopped": True}
    assert not list(journal.glob("*.jsonl"))  # everything shipped, nothing left behind
    assert "Traceback" not in log.read_text()
