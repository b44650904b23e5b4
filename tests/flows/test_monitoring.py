"""The monitoring flow end to end on real flights rows: a trained champion, batch scoring, reports, stored
numbers, a decision in the ledger; a re-run on the same data fires nothing twice; a failed run is recorded
and listed; the train deployment's trigger starts exactly one training per retrain request."""

from __future__ import annotations

import json
import subprocess
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
from prefect.events import DeploymentEventTrigger, emit_event

from flows.monitoring import monitor_model
from flows.training import train_model
from retrain.jsonable import to_jsonable
from retrain.warehouse import (
    MONITORING_METRIC_TABLE,
    count_predictions,
    get_warehouse,
    read_ledger,
    read_table,
)
from tests.conftest import REPO, cli_environment, write_model_config
from tests.flows.test_training import QUICK, executed_actions, load_source, wait_for_actions, wait_for_events

pytestmark = pytest.mark.usefixtures("prefect_harness")
MODEL = "flights-delay"


def test_monitoring_scores_reports_decides_and_dedupes(retrain_home: Path, flights_small: pd.DataFrame) -> None:
    load_source(flights_small)
    config = str(write_model_config(retrain_home.parent, training_window={"start": "2013-01-01", "end": "2013-01-15"},
                                    tuning=QUICK, monitoring={"window": "3d", "min_new_rows": 500,
                                                              "retrain_every": "2d", "sample_rows": 5000}))
    trained = train_model(config_path=config, as_of=datetime(2013, 1, 15))
    assert trained.decision == "champion"

    outcome = monitor_model(config_path=config, as_of=datetime(2013, 1, 24))
    summary = to_jsonable(outcome)
    assert summary["window"] == {"start": "2013-01-21T00:00:00", "end": "2013-01-24T00:00:00"}
    assert summary["source"] == "batch" and summary["champion_version"] == "1"
    january = flights_small["time_hour"]
    assert outcome.scored == int(((january >= pd.Timestamp("2013-01-15")) & (january < pd.Timestamp("2013-01-24")))
                                 .sum())
    assert 0 <= summary["drift_share"] <= 1 and summary["metrics"]["mae"] > 0
    assert summary["decision"]["retrain"] and summary["decision"]["action"] == "retrain-requested"
    assert "fresh-labels" in summary["decision"]["reason"]
    paths = [Path(p) for p in summary["reports"]]
    assert [p.name for p in paths][:2] == ["2013-01-24-drift.html", "2013-01-24-performance.html"]
    assert all(p.is_file() and p.parent == retrain_home / "reports" / MODEL for p in paths)
    assert "<polyline" in paths[1].read_text(encoding="utf-8")  # MAE by day per version, charted

    warehouse = get_warehouse()
    numbers = read_table(warehouse, MONITORING_METRIC_TABLE)
    whole = numbers[numbers["column"] == ""].set_index("metric")["value"]
    assert whole["mae"] == pytest.approx(summary["metrics"]["mae"]) and "drift_share" in whole.index
    assert set(numbers.loc[numbers["metric"] == "drift_score", "column"]) >= {"temp", "carrier", "prediction"}
    entry = read_ledger(warehouse, MODEL, limit=1)[0]
    assert (entry.action, entry.actor, entry.from_version) == ("retrain-requested", "flow:monitor-model", "1")
    assert entry.details["fired"] == summary["decision"]["fired"] and entry.mlflow_run_id == outcome.mlflow_run_id

    again = monitor_model(config_path=config, as_of=datetime(2013, 1, 24))  # same data: nothing new fires
    assert again.scored == 0 and not again.decision.retrain and again.decision.action == "monitored"
    assert count_predictions(warehouse, MODEL, datetime(2013, 1, 1), datetime(2013, 2, 1), ["batch"]) == \
        outcome.scored

    manual = monitor_model(config_path=config, as_of=datetime(2013, 1, 24), manual_reason="checking the alarm")
    assert manual.decision.retrain and manual.decision.reason == "manual request: checking the alarm"
    assert read_ledger(warehouse, MODEL, limit=1)[0].actor.startswith("person:")
@pytest.mark.slow  # a long scenario (the suite stays under 8 minutes): `make test-all`


def test_a_failed_run_is_recorded_listed_and_rerun(retrain_home: Path, flights_small: pd.DataFrame) -> None:
    load_source(flights_small.head(2000))
    config = write_model_config(retrain_home.parent, tuning=QUICK)
    raw = yaml.safe_load(config.read_text())
    raw["source"]["table"] = "no_such_table"
    config.write_text(yaml.safe_dump(raw))
    state = monitor_model(config_path=str(config), return_state=True)
    assert state.is_failed()
    listed = subprocess.run([str(REPO / ".venv/bin/retrain"), "failures", "--json"], capture_output=True, check=False,
                            text=True, env=cli_environment(), cwd=retrain_home.parent, timeout=60)
    result = json.loads(listed.stdout)
    assert listed.returncode == 0 and result["count"] == 1
    failure = result["failures"][0]
    assert failure["flow"] == "monitor-model" and failure["flow_run_id"] == str(state.state_details.flow_run_id)
    assert failure["parameters"]["config_path"] == str(config) and "no_such_table" in failure["error"]
    rerun = subprocess.run([str(REPO / ".venv/bin/retrain"), "rerun", failure["flow_run_id"], "--json"],
                           capture_output=True, check=False, text=True, env=cli_environment(), cwd=retrain_home.parent,
                           timeout=120)
    again = json.loads(rerun.stdout)
    assert rerun.returncode == 3 and again["rerun_of"] == failure["flow_run_id"] and again["state"] == "Failed"
    assert again["parameters"] == failure["parameters"]


def test_a_refused_ingest_inside_a_training_is_one_failure_naming_the_inner_one(
    retrain_home: Path, flights_small: pd.DataFrame
) -> None:
    broken = flights_small.iloc[:3000].copy()
    broken.loc[broken.index[::2], "distance"] = -1  # half the rows break the contract: the batch is refused
    load_source(broken)
    config = write_model_config(retrain_home.parent, tuning=QUICK)
    state = train_model(config_path=str(config), return_state=True)
    assert state.is_failed()
    failed = [entry for entry in read_ledger(get_warehouse(), MODEL, limit=50) if entry.action == "run-failed"]
    assert len(failed) == 1, [(entry.actor, entry.reason) for entry in failed]
    entry = failed[0]
    assert entry.actor == "flow:train-model" and entry.flow_run_id == str(state.state_details.flow_run_id)
    assert entry.details["failed_subflows"] and entry.details["failed_subflows"][0].startswith("ingest-when-new-rows")
    assert "inner failure: ingest-when-new-rows" in entry.reason and "bad_share" in entry.reason


def test_one_retrain_request_starts_exactly_one_training_and_drift_alone_none(retrain_home: Path) -> None:
    """The train deployment's trigger in prefect.yaml, as an automation on the test server."""
    spec = next(d for d in yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]
                if d["name"] == "flights-delay-train")
    trigger = {**spec["triggers"][0], "name": f"test-{uuid.uuid4().hex[:8]}"}
    deployment = train_model.to_deployment(name=f"count-{uuid.uuid4().hex[:8]}",
                                           triggers=[DeploymentEventTrigger(**trigger)])
    deployment_id = deployment.apply()
    resource = f"retrain.model.{MODEL}"
    since = datetime.now(UTC)
    try:
        with get_client(sync_client=True) as prefect:
            emit_event(event="retrain.drift.detected", resource={"prefect.resource.id": resource},
                       payload={"reason": "drift: temp"})
            emit_event(event="retrain.retrain.requested", resource={"prefect.resource.id": resource},
                       payload={"reason": "drift: temp; 5,000 new labelled rows"})
            requested = wait_for_events(prefect, "retrain.retrain.requested", resource, since, 1)[0]
            drift = wait_for_events(prefect, "retrain.drift.detected", resource, since, 1)[0]
            assert len(wait_for_actions(prefect, requested)) == 1
            assert executed_actions(prefect, drift) == []
            started = prefect.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(
                any_=[deployment_id])))
            assert len(started) == 1
    finally:
        with get_client(sync_client=True) as prefect:
            prefect.delete_resource_owned_automations(f"prefect.deployment.{deployment_id}")
            prefect.delete_deployment(deployment_id)
@pytest.mark.slow  # a long scenario (the suite stays under 8 minutes): `make test-all`


def test_cli_monitor_json_without_a_champion(retrain_home: Path, flights_small: pd.DataFrame) -> None:
    load_source(flights_small.head(3000))
    config = write_model_config(retrain_home.parent, tuning=QUICK)
    done = subprocess.run([str(REPO / ".venv/bin/retrain"), "monitor", "--config", str(config), "--json"],
                          capture_output=True, check=False, text=True, env=cli_environment(),
                          cwd=retrain_home.parent, timeout=180)
    result = json.loads(done.stdout)
    assert done.returncode == 0, done.stderr[-2000:]
    assert result["champion_version"] is None and result["drift_share"] is None and result["reports"] == []
    assert result["decision"]["retrain"] is False and result["decision"]["reason"]
