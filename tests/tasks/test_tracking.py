"""MLflow runs that tell their story, the raw-row signature, and runs that never stay RUNNING."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient
from mlflow.types.schema import AnyType

from retrain.outcomes import TrainingWindow
from tasks.tracking import (
    close_abandoned_runs,
    fail_runs_of_flow_run,
    input_column,
    run_name,
    training_report_markdown,
)


def window(end: datetime) -> TrainingWindow:
    return TrainingWindow(datetime(2013, 1, 1), end, end, True, None)


@pytest.mark.parametrize(
    ("end", "name"),
    [(datetime(2013, 4, 1), "flights-delay 2013-04-01"),
     (datetime(2013, 4, 30, 23, 0, 0, 1), "flights-delay 2013-04-30 23:00")],
)
def test_run_name_is_the_model_and_the_window_end(end: datetime, name: str) -> None:
    assert run_name("flights-delay", window(end)) == name


def test_signature_types_take_raw_table_values_with_missing_ones() -> None:
    assert input_column("carrier", "string").type.name == "string"
    assert input_column("temp", "float").type.name == "double"
    assert isinstance(input_column("distance", "integer").type, AnyType)  # int64 rows and NaN both pass
    assert input_column("distance", "integer").required


def test_training_report_shows_metric_baseline_champion_decision_and_link() -> None:
    summary = {
        "model": "m", "decision": "challenger", "reason": "beats the champion", "version": "2", "gate": "relative",
        "metric": {"name": "mae", "value": 20.5}, "metrics": {"mae": 20.5, "rmse": 30.0},
        "baseline_metric": 25.0, "baseline": {"mae": 25.0, "rmse": 33.0}, "champion_metric": 21.0,
        "threshold": None, "p_value": 0.01, "fingerprint": "f" * 32, "rows": 1000, "study": "s",
        "trials": {"run_now": 3, "in_study": 3}, "same_as": None,
        "window": {"start": "2013-01-01", "end": "2013-03-01", "as_of": "2013-03-01", "as_of_source": "given",
                   "lookback": "59d"},
    }
    text = training_report_markdown(summary, "http://mlflow/#/experiments/1/runs/abc")
    assert "| **mae** | 20.5000 | 25.0000 | 21.0000 | – |" in text
    assert "| rmse | 30.0000 | 33.0000 |" in text
    assert "p-value: 0.0100" in text and "version: 2" in text and "runs/abc" in text


def test_runs_left_running_are_closed_killed_and_a_failed_flow_closes_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from retrain.settings import Settings

    monkeypatch.setenv("RETRAIN_HOME", str(tmp_path))
    settings = Settings()
    mlflow.set_tracking_uri(settings.resolved_tracking_uri())
    client = MlflowClient()
    experiment = client.create_experiment("m", artifact_location=(tmp_path / "artifacts").as_uri())
    dead = client.create_run(experiment, tags={"retrain.model": "m", "prefect.flow_run_id": "dead"}).info.run_id
    mine = client.create_run(experiment, tags={"retrain.model": "m", "prefect.flow_run_id": "mine"}).info.run_id
    other = client.create_run(experiment, tags={"retrain.model": "other", "prefect.flow_run_id": "x"}).info.run_id

    assert close_abandoned_runs(client, experiment, "m", current_flow_run="mine") == [dead]
    assert fail_runs_of_flow_run(settings, "m", "mine", "tuning failed") == [mine]
    status = {run_id: client.get_run(run_id).info.status for run_id in (dead, mine, other)}
    assert status == {dead: "KILLED", mine: "FAILED", other: "RUNNING"}
    assert client.get_run(mine).data.tags["retrain.reason"] == "tuning failed"
