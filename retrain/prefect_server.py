"""A Prefect server for one CLI command when no `PREFECT_API_URL` is set, that ends with the command.

Prefect's own temporary server (what a flow starts when no API is configured) is a plain child process:
when its parent is killed with SIGKILL (an OOM kill, `kill -9`, a CI timeout) nothing tells it, and it
was measured still running, holding its port and ~200 MB, long after its parent was gone. The command
therefore starts the server itself, through Prefect's public `prefect server start`, with a parent-death
signal (Linux `PR_SET_PDEATHSIG`): the kernel sends the server SIGTERM the moment the command's process
ends, however it ends.

The server is a full one minus its UI, scheduler and late-runs marker (those serve deployments, which
a shared server runs): its repossessor expires the concurrency leases of a killed command (kept on disk
under `PREFECT_HOME`, so the next command's server finds them), and its triggers run automations such
as the crashed-run detector of `deployments/operations.py`.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx

from retrain.errors import StoreUnavailable

logger = logging.getLogger(__name__)

READY_TIMEOUT_SECONDS = 90.0  # a first start migrates a fresh database: ~12 s here, more on a busy machine
STOP_TIMEOUT_SECONDS = 10.0
PR_SET_PDEATHSIG = 1  # from <sys/prctl.h>
# Applied only where the user has not set them: the temporary server serves this command's flow runs.
SERVER_ENVIRONMENT = {
    "PREFECT_SERVER_UI_ENABLED": "false",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false",
    "PREFECT_SERVER_SERVICES_LATE_RUNS_ENABLED": "false",
    # Leases on disk, so a lease held by a killed command is expired by a later command's server.
    "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": "prefect.server.concurrency.lease_storage.filesystem",
}


def free_port() -> int:
    """A port on the loopback interface that nothing listens on right now."""
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def end_with_parent(parent_pid: int) -> Callable[[], None] | None:
    """A `preexec_fn` that makes the child receive SIGTERM when `parent_pid` ends; None off Linux.

    The C library is loaded here, in the parent, so the child (between fork and exec) only makes one
    system call. If the parent ended before the call, the child exits at once instead of living on.
    """
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)

    def request_signal() -> None:
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent_pid:
            os._exit(1)

    return request_signal


def start_server(log_path: Path) -> tuple[subprocess.Popen[bytes], str]:
    """Start `prefect server start` on a free loopback port; returns the process and its API URL.

    Its output goes to `log_path`, never to our stdout, which belongs to the command's JSON.
    """
    port = free_port()
    environment = {**SERVER_ENVIRONMENT, **os.environ}
    command = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            command,
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            # The only way to ask for a parent-death signal; it makes one system call, no Python locks.
            preexec_fn=end_with_parent(os.getpid()),  # noqa: PLW1509
        )
    return process, f"http://127.0.0.1:{port}/api"


def wait_until_ready(process: subprocess.Popen[bytes], url: str, log_path: Path, timeout: float) -> float:
    """Poll the health endpoint until the server answers; returns the seconds it took.

    Raises:
        StoreUnavailable: the server exited or did not answer within `timeout` (its log names why).
    """
    started = time.monotonic()
    with httpx.Client(timeout=2.0) as client:
        while time.monotonic() - started < timeout:
            if process.poll() is not None:
                raise StoreUnavailable(
                    f"the temporary Prefect server exited with code {process.returncode}; see {log_path}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if client.get(f"{url}/health").status_code == 200:
                    return time.monotonic() - started
            time.sleep(0.2)
    raise StoreUnavailable(f"the temporary Prefect server did not answer within {timeout:g} s; see {log_path}")


def stop_server(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM (uvicorn shuts down cleanly), then SIGKILL if it has not ended within a few seconds."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=STOP_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextlib.contextmanager
def temporary_prefect_server() -> Iterator[str | None]:
    """Run the block against `PREFECT_API_URL` if one is set, else against a server of its own.

    Yields the temporary server's API URL, or None when the configured API is used. The URL is handed
    to Prefect with `temporary_settings`, the way Prefect's own test harness does, since Prefect reads
    its environment once, at import.
    """
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

    if PREFECT_API_URL.value():
        yield None
        return
    log_path = Path(PREFECT_HOME.value()) / "temporary-server.log"
    process, url = start_server(log_path)
    try:
        seconds = wait_until_ready(process, url, log_path, READY_TIMEOUT_SECONDS)
        logger.debug("temporary Prefect server on %s ready in %.1f s", url, seconds)
        with temporary_settings({PREFECT_API_URL: url}):
            try:
                yield url
            finally:
                # Logs and events are sent in the background: deliver them while the server still answers.
                APILogWorker.drain_all()
                EventsWorker.drain_all()
    finally:
        stop_server(process)
