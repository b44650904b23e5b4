"""prefect.yaml on a real Prefect server with a process worker: the monitor deployment's policy asks for a
retrain and the train deployment's trigger starts exactly one training, which completes.

Everything a user does, in separate processes on loopback: `prefect server start`, `prefect work-pool create`,
`prefect --no-prompt deploy --all` from the project root, `python -m deployments.operations`, `prefect worker
start`; a temporary RETRAIN_HOME with the example data loaded and a first model trained by `retrain train`.
The server's scheduler is off, so no cron run of any deployment can start during the test: every flow run of
the train deployment here was started by the event trigger. Other deployments in prefect.yaml are deployed
too and left alone (the test names only the monitor and train deployments).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from retrain.prefect_server import free_port
from tests.conftest import REPO
from tests.retrain.test_cli_outages import RETRAIN, command_environment

PREFECT = str(Path(sys.executable).parent / "prefect")
CONFIG = "examples/flights.yaml"
MODEL = "flights-delay"
MONITOR = "monitor-model/flights-delay-monitor"
TRAIN = "train-model/flights-delay-train"
READ_LEDGER = f"""
import json
from retrain.warehouse import get_warehouse, read_ledger
print(json.dumps([entry.action for entry in read_ledger(get_warehouse(), "{MODEL}", limit=100)]))
"""
WALL_SECONDS = 900  # the whole scenario; each wait below has its own, smaller bound
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


@dataclass(frozen=True)
class Stack:
    url: str
    environment: dict[str, str]
    folder: Path


def stop_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the process group we started (server or worker and their children), then SIGKILL."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def run(args: list[str], stack: Stack, timeout: float) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(args, env=stack.environment, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          check=False)
    assert done.returncode == 0, f"{args}: {done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture
def prefect_stack(tmp_path: Path) -> Iterator[Stack]:
    """A Prefect server on a free loopback port (scheduler off), with its own PREFECT_HOME and RETRAIN_HOME."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    environment = command_environment(tmp_path / "home", PREFECT_API_URL=url,
                                      PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED="false",
                                      PREFECT_SERVER_UI_ENABLED="false",
                                      PREFECT_FLOWS_HEARTBEAT_FREQUENCY="30")
    (tmp_path / "home").mkdir()
    log = open(tmp_path / "server.log", "wb")  # noqa: SIM115 - closed in the finally below
    server = subprocess.Popen([PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                              env=environment, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the Prefect server did not answer within 120 s"
            time.sleep(0.5)
        yield Stack(url, environment, tmp_path)
    finally:
        stop_group(server)
        log.close()


def api(stack: Stack, path: str, body: dict | None = None) -> object:
    """One call of the Prefect REST API (POST with a body, GET without)."""
    with httpx.Client(base_url=stack.url, timeout=30) as client:
        response = client.post(path, json=body) if body is not None else client.get(path)
    assert response.status_code < 300, f"{path}: {response.status_code} {response.text[:500]}"
    return response.json()


def deployment_id(stack: Stack, name: str) -> str:
    return str(api(stack, f"/deployments/name/{name}")["id"])  # type: ignore[index]


def flow_runs_of(stack: Stack, deployment: str) -> list[dict]:
    return api(stack, "/flow_runs/filter", {"deployments": {"id": {"any_": [deployment]}}})  # type: ignore[return-value]


def wait_for_terminal(stack: Stack, deployment: str, count: int, deadline: float) -> list[dict]:
    """The deployment's flow runs once `count` of them exist and all are in a terminal state."""
    while True:
        runs = flow_runs_of(stack, deployment)
        if len(runs) >= count and all(run["state_type"] in TERMINAL for run in runs):
            return runs
        assert time.monotonic() < deadline, f"runs of {deployment} not finished in time: " + json.dumps(
            [(run["name"], run["state_type"], run["state_name"]) for run in runs])
        time.sleep(3)


@pytest.mark.slow
def test_the_monitor_policy_starts_exactly_one_training_through_the_deployed_trigger(prefect_stack: Stack) -> None:
    started = time.monotonic()
    deadline = started + WALL_SECONDS
    stack = prefect_stack
    # The user's setup: example data up to Feb 5, a first champion trained as of Jan 25 (11 days stale).
    run([RETRAIN, "load-example", "--config", CONFIG, "--until", "2013-02-05", "--json"], stack, 300)
    first = run([RETRAIN, "train", "--config", CONFIG, "--as-of", "2013-01-25", "--trials", "4", "--json"], stack,
                600)
    assert json.loads(first.stdout.strip().splitlines()[-1])["decision"] == "champion"

    # Deploy as the README says: the work pools prefect.yaml names, every deployment, the operations.
    pools = {spec["work_pool"]["name"] for spec in yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]
             if spec.get("work_pool")}
    for pool in sorted(pools):
        run([PREFECT, "work-pool", "create", pool, "--type", "process"], stack, 120)
    run([PREFECT, "--no-prompt", "deploy", "--all"], stack, 300)
    run([sys.executable, "-m", "deployments.operations"], stack, 120)
    monitor, train = deployment_id(stack, MONITOR), deployment_id(stack, TRAIN)
    assert flow_runs_of(stack, train) == []

    worker_log = open(stack.folder / "worker.log", "wb")  # noqa: SIM115 - closed in the finally below
    worker = subprocess.Popen([PREFECT, "worker", "start", "--pool", "retrain", "--type", "process"],
                              env=stack.environment, cwd=REPO, stdout=worker_log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        # Monitoring as of just after the newest row: ~10,000 new labelled rows, the champion 11 days old.
        api(stack, f"/deployments/{monitor}/create_flow_run", {"parameters": {}})
        monitored = wait_for_terminal(stack, monitor, 1, deadline)
        assert [run["state_type"] for run in monitored] == ["COMPLETED"], (stack.folder / "worker.log").read_text()[
            -5000:]

        trained = wait_for_terminal(stack, train, 1, deadline)
        time.sleep(20)  # a second trigger of the same request, if any, would have started by now
        trained = wait_for_terminal(stack, train, 1, deadline)
        assert len(trained) == 1, [(run["name"], run["state_name"]) for run in trained]
        assert trained[0]["state_type"] == "COMPLETED", (stack.folder / "worker.log").read_text()[-5000:]
        assert trained[0]["parameters"]["config_path"] == CONFIG
    finally:
        stop_group(worker)
        worker_log.close()

    # The policy's decision is in the ledger (the request the trigger answered), and nothing failed.
    ledger = run([sys.executable, "-c", READ_LEDGER], stack, 120)
    actions = json.loads(ledger.stdout.strip().splitlines()[-1])
    assert actions.count("retrain-requested") == 1 and "run-failed" not in actions, actions
    assert time.monotonic() - started < WALL_SECONDS
