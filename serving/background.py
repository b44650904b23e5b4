"""The prediction server in a thread of this process, on a free loopback port: for a replay that drives it through
HTTP on the Retrain clock (`retrain demo`), and for tests. Served by uvicorn exactly as `retrain serve` serves it;
stopping it runs the app's shutdown, which flushes the prediction log."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import uvicorn
from fastapi import FastAPI

READY_SECONDS = 120.0


def free_port() -> int:
    with contextlib.closing(socket.socket()) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def serving_in_background(app: FastAPI, ready_path: str = "/ready") -> Iterator[str]:
    """Serve `app` on loopback until the block ends; yields its base URL once `ready_path` answers 200.

    Raises:
        TimeoutError: the app did not become ready within `READY_SECONDS` (no champion loaded, say).
    """
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="retrain-background-server", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + READY_SECONDS
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}{ready_path}", timeout=5).status_code == 200:
                    break
            if time.monotonic() > deadline or not thread.is_alive():
                raise TimeoutError(f"the prediction server on {url} was not ready within {READY_SECONDS:g} s")
            time.sleep(0.05)
        yield url
    finally:
        server.should_exit = True
        thread.join(60)
