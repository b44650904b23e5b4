"""A manual-mode release on a real Prefect server with a process worker waits for approval longer than a
deployment concurrency lease lives (renewed at ~225 s), and its timeout ends in a recorded rejection, never a
Crashed run; the rejection's event starts the release deployment again, which finds nothing to release.

Everything in separate processes on loopback, as a user runs it (see `test_end_to_end.py`): `prefect server
start`, `prefect work-pool create`, `prefect --no-prompt deploy --all`, `python -m deployments.operations` (the
crashed-run automation, which a paused run must not trip), `prefect worker start`; the example data loaded and
a first model trained (left `challenger`: in manual mode nothing is released without a person) by the CLI
before anything is deployed, so no trigger fires for it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO, write_model_config
from tests.deployments.test_end_to_end import (
    PREFECT,
    READ_LEDGER,
    TERMINAL,
    Stack,
    api,
    deployment_id,
    flow_runs_of,
    prefect_stack,  # noqa: F401 - the fixture, used by name
    run,
    stop_group,
)
from tests.retrain.test_cli_outages import RETRAIN

RELEASE = "release-model/flights-delay-release"
LEASE_RENEWAL_SECONDS = 225  # when a paused run holding a deployment concurrency lease was Crashed (410 Gone)
APPROVAL_TIMEOUT = "5m"
WALL_SECONDS = 1200
READ_LEDGER_DETAILS = READ_LEDGER.replace(
    "[entry.action for entry in", "[[entry.action, entry.actor, entry.details.get('requested_by')] for entry in")


def wait_for(stack: Stack, deployment: str, deadline: float, done: object) -> list[dict]:
    while True:
        runs = flow_runs_of(stack, deployment)
        if done(runs):  # type: ignore[operator]
            return runs
        assert time.monotonic() < deadline, json.dumps([(r["name"], r["state_type"], r["state_name"]) for r in runs])
        time.sleep(3)


@pytest.mark.slow
def test_a_paused_release_waits_past_the_lease_and_its_timeout_is_a_recorded_rejection(
    prefect_stack: Stack,  # noqa: F811 - the fixture imported above
) -> None:
    started = time.monotonic()
    deadline = started + WALL_SECONDS
    stack = prefect_stack
    config = write_model_config(stack.folder, release={"mode": "manual", "approval_timeout": APPROVAL_TIMEOUT,
                                                       "approval_poll_seconds": 10})
    run([RETRAIN, "load-example", "--config", "examples/flights.yaml", "--until", "2013-01-26", "--json"], stack, 300)
    trained = run([RETRAIN, "train", "--config", str(config), "--as-of", "2013-01-25", "--trials", "2", "--json"],
                  stack, 600)
    version = json.loads(trained.stdout.strip().splitlines()[-1])["version"]
    assert version is not None, trained.stdout

    run([PREFECT, "work-pool", "create", "retrain", "--type", "process"], stack, 120)
    run([PREFECT, "--no-prompt", "deploy", "--all"], stack, 300)
    run([sys.executable, "-m", "deployments.operations"], stack, 120)
    release = deployment_id(stack, RELEASE)
    assert api(stack, f"/deployments/{release}")["concurrency_limit"] is None  # type: ignore[index]

    worker_log = open(stack.folder / "worker.log", "wb")  # noqa: SIM115 - closed in the finally below
    worker = subprocess.Popen([PREFECT, "worker", "start", "--pool", "retrain", "--type", "process"],
                              env=stack.environment, cwd=REPO, stdout=worker_log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        api(stack, f"/deployments/{release}/create_flow_run",
            {"parameters": {"config_path": str(config), "actor": "person:tester"}})
        paused = wait_for(stack, release, deadline, lambda runs: runs and runs[0]["state_type"] == "PAUSED")
        paused_at = time.monotonic()
        # Past the moment a leased run was Crashed: still paused, waiting for a person.
        time.sleep(LEASE_RENEWAL_SECONDS + 30)
        now = api(stack, f"/flow_runs/{paused[0]['id']}")
        assert now["state_type"] == "PAUSED", (now["state_name"], (stack.folder / "worker.log").read_text()[-5000:])  # type: ignore[index]

        # Nobody answers: at approval_timeout the run rejects the challenger and completes. The rejection's event
        # starts the release deployment again (its trigger on retrain.model.rejected), which has nothing to do.
        runs = wait_for(stack, release, deadline, lambda runs: len(runs) >= 2 and all(
            r["state_type"] in TERMINAL for r in runs))
    finally:
        stop_group(worker)
        worker_log.close()
    first = next(r for r in runs if r["id"] == paused[0]["id"])
    assert (first["state_type"], first["state_name"]) == ("COMPLETED", "Rejected"), (
        (stack.folder / "worker.log").read_text()[-5000:])
    assert time.monotonic() - paused_at >= 5 * 60 - 30  # it waited its whole approval_timeout
    assert sorted(r["state_name"] for r in runs if r["id"] != first["id"]) == ["Skipped"]

    ledger = json.loads(run([sys.executable, "-c", READ_LEDGER_DETAILS], stack, 120).stdout.strip().splitlines()[-1])
    assert ledger[0] == ["rejected", "flow:release-model", "person:tester"], ledger
    assert "run-failed" not in [action for action, _, _ in ledger]
    assert time.monotonic() - started < WALL_SECONDS
