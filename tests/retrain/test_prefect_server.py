"""The CLI's temporary Prefect server ends with its command, even when the command is killed with SIGKILL."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from retrain.prefect_server import temporary_prefect_server
from tests.conftest import write_model_config
from tests.retrain.test_cli_outages import RETRAIN, command_environment

PARENT = """
import os, subprocess, sys, time
from retrain.prefect_server import end_with_parent
sleeper = [sys.executable, "-c", "import time; time.sleep(120)"]
child = subprocess.Popen(sleeper, preexec_fn=end_with_parent(os.getpid()))
print(child.pid, flush=True)
time.sleep(120)
"""


def gone_within(pid: int, seconds: float) -> bool:
    """True once `pid` no longer exists (or is a zombie nobody reaps), polling for up to `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state == "Z":
            return True
        time.sleep(0.2)
    return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signals are a Linux feature")
def test_a_child_started_with_end_with_parent_dies_with_a_killed_parent() -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    try:
        assert not gone_within(child, 1)  # alive while its parent lives
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        assert gone_within(child, 10)
    finally:
        if not gone_within(child, 0):
            os.kill(child, signal.SIGKILL)


@pytest.mark.usefixtures("prefect_harness")
def test_a_configured_api_is_used_and_no_server_is_started() -> None:
    with temporary_prefect_server() as url:
        assert url is None


def run_states(database: Path) -> dict[str, str]:
    """Flow run id → state type: by id, since the killed training and the next one share their name (the window)."""
    with sqlite3.connect(database) as connection:
        return dict(connection.execute("select id, state_type from flow_run"))


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signals are a Linux feature")
def test_a_killed_training_leaves_no_server_and_its_run_ends_crashed(tmp_path: Path) -> None:
    """kill -9 of `retrain train`: its temporary server ends within a minute; the run it left Running is
    marked Crashed by the crashed-run automation once a later command's server sees its heartbeats missing."""
    config = write_model_config(tmp_path, tuning={"trials": 200, "seed": 7, "max_rounds": 400})
    home = tmp_path / "home"
    environment = command_environment(home, PREFECT_FLOWS_HEARTBEAT_FREQUENCY="30")  # 90 s without one: crashed
    loaded = subprocess.run([RETRAIN, "load-example", "--config", str(config), "--until", "2013-01-25"],
                            env=environment, cwd=tmp_path, capture_output=True, timeout=300, check=False)
    assert loaded.returncode == 0, loaded.stderr
    training = subprocess.Popen([RETRAIN, "train", "--config", str(config), "--json"], env=environment, cwd=tmp_path,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    server_pid = None
    try:
        for line in training.stderr:
            if "temporary Prefect server" in line:
                port = re.search(r"127\.0\.0\.1:(\d+)", line).group(1)
                server_pid = int(subprocess.run(
                    ["pgrep", "-P", str(training.pid), "-f", f"port {port}"],
                    capture_output=True, text=True, check=True,
                ).stdout.split()[0])
            if "tune-hyperparameters" in line:  # the flow is well under way
                break
        assert server_pid is not None and not gone_within(server_pid, 0)
        training.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        training.wait(10)
        assert gone_within(server_pid, 60), "the temporary Prefect server outlived its killed command"
    finally:
        if training.poll() is None:
            training.kill()
        if server_pid is not None and not gone_within(server_pid, 0):
            os.kill(server_pid, signal.SIGKILL)

    database = home / "prefect" / "prefect.db"
    assert "RUNNING" in run_states(database).values()
    time.sleep(max(0.0, killed_at + 95 - time.monotonic()))  # past the 90 s window
    outputs = []
    for _ in range(2):  # the next command's server evaluates the automation every few seconds while it runs
        later = subprocess.run([RETRAIN, "train", "--config", str(config), "--trials", "3", "--json"],
                               env=environment, cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False)
        outputs.append(later.stderr[-2000:])
        if "RUNNING" not in run_states(database).values():
            break
    states = run_states(database)
    assert "CRASHED" in states.values() and "RUNNING" not in states.values(), (states, outputs)
