"""deployments/operations.py on a real Prefect server: applied twice it leaves one automation and one limit
per model, read back through Prefect's client; the automation marks a run without heartbeats Crashed."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from prefect import flow
from prefect.automations import Automation
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType
from prefect.events import emit_event
from prefect.events.worker import EventsWorker
from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
from prefect.states import Running

from deployments.operations import (
    CRASH_AUTOMATION,
    apply_automation,
    apply_operations,
    crash_automation,
    deployed_models,
    retrain_flow_names,
)
from retrain.errors import ConfigError
from tests.conftest import REPO

pytestmark = pytest.mark.usefixtures("prefect_harness")


def trigger_ids() -> list[str]:
    """The server-side id of the crashed-run trigger (its watch windows are stored under it)."""
    with get_client(sync_client=True) as client:
        automations = client.request("POST", "/automations/filter", json={}).json()
    return [automation["trigger"]["id"] for automation in automations if automation["name"] == CRASH_AUTOMATION]


@pytest.fixture
def heartbeats_every_30_seconds() -> Iterator[None]:
    with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: 30}):
        yield


def test_every_flow_of_the_project_is_covered() -> None:
    assert {"train-model", "ingest-new-rows", "ingest-when-new-rows"} <= set(retrain_flow_names())


def test_models_come_from_the_deployments_config_paths() -> None:
    assert deployed_models(REPO / "prefect.yaml") == ("flights-delay",)


@pytest.mark.usefixtures("heartbeats_every_30_seconds")
def test_applying_twice_leaves_one_automation_and_one_limit_per_model() -> None:
    first = apply_operations(REPO / "prefect.yaml")
    watching = trigger_ids()
    second = apply_operations(REPO / "prefect.yaml")
    assert first.automation_id == second.automation_id
    assert trigger_ids() == watching  # untouched: the runs it watches are not forgotten
    assert second.window_seconds == 90 and second.limits == {"retrain-model-flights-delay": 1}

    with get_client(sync_client=True) as client:
        automations = client.read_automations_by_name(CRASH_AUTOMATION)
        limit = client.read_global_concurrency_limit_by_name("retrain-model-flights-delay")
    assert len(automations) == 1 and limit.limit == 1
    automation = automations[0]
    trigger = automation.trigger
    assert automation.enabled and trigger.posture == "Proactive" and trigger.within == timedelta(seconds=90)
    assert trigger.after == {"prefect.flow-run.heartbeat"} and "prefect.flow-run.Completed" in trigger.expect
    related = trigger.match_related[0] if isinstance(trigger.match_related, list) else trigger.match_related
    assert set(related["prefect.resource.name"]) == set(retrain_flow_names())
    assert [(action.type, action.state) for action in automation.actions] == [
        ("change-flow-run-state", StateType.CRASHED)
    ]


def test_without_heartbeats_there_is_nothing_to_detect_and_it_says_so() -> None:
    with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}), pytest.raises(
        ConfigError, match="PREFECT_FLOWS_HEARTBEAT_FREQUENCY"
    ):
        apply_operations(REPO / "prefect.yaml")


@pytest.mark.slow
def test_a_run_whose_heartbeats_stop_is_marked_crashed() -> None:
    """A run that sent a heartbeat and then nothing (its process was killed) ends Crashed, with the reason."""
    flow_name = f"zombie-probe-{uuid.uuid4().hex[:6]}"

    @flow(name=flow_name)
    def probe() -> None:
        return None

    automation = crash_automation((flow_name,), heartbeat=10, missed=1)
    automation = apply_automation(automation.model_copy(update={"name": f"{CRASH_AUTOMATION} ({flow_name})"}))
    try:
        with get_client(sync_client=True) as client:
            run = client.create_flow_run(probe, state=Running())
        emit_event(
            event="prefect.flow-run.heartbeat",
            resource={"prefect.resource.id": f"prefect.flow-run.{run.id}", "prefect.resource.name": run.name},
            related=[
                {
                    "prefect.resource.id": f"prefect.flow.{run.flow_id}",
                    "prefect.resource.role": "flow",
                    "prefect.resource.name": flow_name,
                }
            ],
        )
        EventsWorker.drain_all()
        deadline = time.monotonic() + 120
        with get_client(sync_client=True) as client:
            while time.monotonic() < deadline:
                state = client.read_flow_run(run.id).state
                if state.type is not StateType.RUNNING:
                    break
                time.sleep(2)
        assert state.type is StateType.CRASHED and "no heartbeat for 10 s" in state.message
    finally:
        Automation.read(id=automation.id).delete()


def test_applying_without_a_server_is_refused(tmp_path: Path) -> None:
    """Without PREFECT_API_URL Prefect would apply everything to a temporary server of its own, then lose it."""
    environment = {key: value for key, value in os.environ.items() if not key.startswith("PREFECT_API")}
    environment["PREFECT_HOME"] = str(tmp_path)
    result = subprocess.run([sys.executable, "-m", "deployments.operations"], env=environment, cwd=REPO,
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode != 0 and "set PREFECT_API_URL" in result.stderr
    assert not (tmp_path / "prefect.db").exists()
