"""The training flow end to end: real flights rows in a SQLite (or PostgreSQL) warehouse, a real MLflow
store and Optuna study under a temporary folder, Prefect's test server. Assertions read the returned
outcome, the flow run's state, the registry and the MLflow store, never log text."""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import httpx
import mlflow
import numpy as np
import optuna
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    FlowRunFilter,
    FlowRunFilterId,
)
from prefect.events import Event
from prefect.events.filters import (
    EventFilter,
    EventNameFilter,
    EventOccurredFilter,
    EventRelatedFilter,
    EventResourceFilter,
)

from flows.training import train_model
from retrain.errors import ConfigError, DataError
from retrain.settings import get_settings
from retrain.warehouse import get_warehouse, open_warehouse, read_ledger, write_frame
from tests.conftest import POSTGRES_URL, REPO, write_model_config

pytestmark = [pytest.mark.usefixtures("prefect_harness"), pytest.mark.model]

MODEL = "flights-delay"
QUICK = {"trials": 2, "seed": 7, "max_rounds": 60, "early_stopping_rounds": 10}


def load_source(frame: pd.DataFrame, if_exists: str = "replace") -> None:
    write_frame(get_warehouse(), frame, "flights", if_exists=if_exists)


@dataclass(frozen=True)
class RegistryState:
    client: MlflowClient
    versions: list[str]
    aliases: dict[str, str]

    @property
    def release(self) -> tuple[list[str], dict[str, str]]:
        """Versions and aliases: what a rejected or skipped run must leave unchanged."""
        return self.versions, self.aliases


def registry(model: str) -> RegistryState:
    mlflow.set_tracking_uri(get_settings().resolved_tracking_uri())
    client = MlflowClient()
    versions = sorted(str(v.version) for v in client.search_model_versions(f"name='{model}'"))
    aliases = {alias: str(version) for alias, version in client.get_registered_model(model).aliases.items()}
    return RegistryState(client, versions, aliases)


def runs(model: str = MODEL) -> pd.DataFrame:
    mlflow.set_tracking_uri(get_settings().resolved_tracking_uri())
    return mlflow.search_runs(experiment_names=[model])


def ledger_actions(model: str = MODEL) -> list[str]:
    """The model's ledger actions, oldest first."""
    return [entry.action for entry in reversed(read_ledger(get_warehouse(), model))]


def raw_holdout_rows(run_id: str, frame: pd.DataFrame, features: list[str]) -> tuple[pd.DataFrame, np.ndarray]:
    """The holdout rows as they are in the table, and the flow's own predictions for them (run artifact)."""
    path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="holdout_predictions.parquet")
    predicted = pd.read_parquet(path)
    key = ["time_hour", "carrier", "flight", "origin"]
    rows = predicted[key].merge(frame, on=key, how="left", validate="one_to_one")
    return rows[features], predicted["prediction"].to_numpy()


def assert_refit_registered(first, run, champion, rows: pd.DataFrame, flow_predictions: np.ndarray) -> None:
    """The registered model is the refit; the run keeps the gated model's out-of-sample evidence and each naive
    forecaster's predictions on the same rows."""
    assert champion.metadata.metadata["retrain"]["fit"] == "refit" and first.released_fit == "refit"
    assert run.data.params["released_fit"] == "refit" and run.data.tags["retrain.released_fit"] == "refit"
    assert int(run.data.params["released_rounds"]) > int(run.data.params["num_boost_round"])
    assert int(run.data.params["released_rows"]) == sum(
        int(run.data.params[f"retrain.rows_{part}"]) for part in ("train", "validation", "holdout"))
    refit_predictions = np.asarray(champion.predict(rows), dtype="float64")
    evidence = pd.read_parquet(mlflow.artifacts.download_artifacts(run_id=first.run_id,
                                                                   artifact_path="holdout_predictions.parquet"))
    labels = evidence["label"].to_numpy()
    assert {f"naive_{name}" for name in first.baselines} <= set(evidence.columns)
    assert first.baselines == pytest.approx({name: float(np.mean(np.abs(evidence[f"naive_{name}"] - labels)))
                                             for name in first.baselines})
    assert run.data.metrics["baseline_seasonal_7d"] == pytest.approx(first.baselines["seasonal-7d"])
    assert np.mean(np.abs(flow_predictions - labels)) == pytest.approx(first.metric_value)  # the gated model's
    assert np.mean(np.abs(refit_predictions - labels)) < first.metric_value  # the refit has learned these rows


@pytest.fixture
def model_config(retrain_home: Path, flights_small: pd.DataFrame) -> Path:
    load_source(flights_small)
    return write_model_config(retrain_home.parent)


def test_champion_serves_raw_rows_then_same_data_skips_then_a_gate_rejects(
    model_config: Path, flights_small: pd.DataFrame
) -> None:
    first = train_model(config_path=str(model_config))
    assert (first.decision, first.version, first.champion_metric) == ("champion", "1", None)
    assert first.metric_value < first.baseline_metric - 0.5  # the example's baseline margin
    assert set(first.baseline) == {"mae", "rmse", "r2"} and first.window.end == datetime(2013, 1, 25)

    state = registry(MODEL)
    client = state.client
    assert state.release == (["1"], {"champion": "1"})
    run = client.get_run(first.run_id)
    assert run.info.run_name == "flights-delay 2013-01-25" and run.info.status == "FINISHED"
    assert run.data.tags["retrain.decision"] == "champion" and run.data.metrics["passed_gates"] == 1.0
    assert "flights_clean" in run.data.tags["mlflow.note.content"]
    assert {"objective", "num_boost_round", "retrain.window_start", "retrain.window_end"} <= set(run.data.params)
    assert {"holdout_mae", "baseline_mae", "baseline_rmse", "baseline_r2", "trials_run_now"} <= set(run.data.metrics)
    dataset = run.inputs.dataset_inputs[0].dataset
    assert dataset.digest == first.fingerprint and dataset.name.endswith("[2013-01-01 00:00:00, 2013-01-25 00:00:00)")
    assert {a.path for a in client.list_artifacts(first.run_id)} >= {
        "feature_importance.json", "optuna_trials.json", "holdout_predictions.parquet"}

    # The registered model takes rows as they are in the table. It is the gated model refitted on the whole window
    # (training.refit, the default), so it has seen the holdout: the run keeps the gated model's out-of-sample
    # predictions and metrics, and the infra gate proved the refit predicts raw rows as its booster did.
    features = list(yaml.safe_load(model_config.read_text())["features"]["numeric"]) + ["carrier", "origin", "dest"]
    champion = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion")
    assert champion.metadata.get_input_schema().input_names() == features
    rows, flow_predictions = raw_holdout_rows(first.run_id, flights_small, features)
    assert_refit_registered(first, run, champion, rows, flow_predictions)
    odd = rows.head(2).copy()
    odd.loc[odd.index[0], "carrier"] = "NEVER-SEEN"
    odd.loc[odd.index[1]] = [np.nan] * 14 + [None] * 3  # every value missing
    assert all(math.isfinite(value) for value in champion.predict(odd))

    # The same snapshot with the same settings: skipped, nothing logged, a Completed run named Skipped.
    skipped_state = train_model(config_path=str(model_config), return_state=True)
    skipped = skipped_state.result()
    assert (skipped_state.type.value, skipped_state.name) == ("COMPLETED", "Skipped")
    assert (skipped.decision, skipped.run_id, skipped.same_as.version) == ("skipped", None, "1")
    assert skipped.same_as.decision == "champion"
    assert skipped.fingerprint == first.fingerprint and len(runs()) == 1

    # A gate says no: the run keeps its metrics but no model; the flow run is Completed, named Rejected.
    rejected_state = train_model(config_path=str(model_config), threshold=0.0001, return_state=True)
    rejected = rejected_state.result()
    assert (rejected_state.type.value, rejected_state.name) == ("COMPLETED", "Rejected")
    assert (rejected.decision, rejected.version, rejected.gate) == ("rejected", None, "absolute")
    # The champion is the refit, which has fitted every row of this holdout: scored on them, it does better than
    # the gated model's out-of-sample error (the relative gate would compare on rows after its window only).
    assert rejected.threshold == 0.0001 and rejected.champion_metric < first.metric_value
    kept = client.get_run(rejected.run_id)
    assert kept.data.tags["retrain.decision"] == "rejected" and kept.data.metrics["passed_gates"] == 0.0
    assert "holdout_mae" in kept.data.metrics and not kept.outputs.model_outputs
    assert registry(MODEL).release == (["1"], {"champion": "1"})
    assert ledger_actions() == ["registered", "promoted", "skipped", "gated-out"]
    # The same rejection would follow against the same champion: skipped, no second rejected run.
    repeated = train_model(config_path=str(model_config), threshold=0.0001)
    assert (repeated.decision, repeated.same_as.decision, repeated.same_as.run_id) == (
        "skipped", "rejected", rejected.run_id)
    assert len(runs()) == 2

    # The Prefect runs are named and tagged after the model, each with its markdown report.
    with get_client(sync_client=True) as prefect:
        flow_runs = {run.name: run for run in prefect.read_flow_runs(flow_run_filter=FlowRunFilter(
            id=FlowRunFilterId(any_=[uuid.UUID(o.flow_run_id) for o in (first, skipped, rejected, repeated)])))}
        assert set(flow_runs) == {"flights-delay 2013-01-25"}
        assert all(f"model:{MODEL}" in run.tags for run in flow_runs.values())
        reports = prefect.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[uuid.UUID(first.flow_run_id)])))
    assert any(a.key == f"{MODEL}-training" and "| **mae** |" in a.data for a in reports)
@pytest.mark.slow  # a long scenario (the suite stays under 8 minutes): `make test-all`


def test_the_window_follows_as_of_and_new_rows_are_trained_on(
    retrain_home: Path, flights_small: pd.DataFrame
) -> None:
    january_18 = pd.Timestamp("2013-01-18")
    load_source(flights_small[flights_small["time_hour"] < january_18])
    config = str(write_model_config(retrain_home.parent, training_window={"lookback": "10d"}, tuning=QUICK))

    early = train_model(config_path=config, as_of=datetime(2013, 1, 12))
    again = train_model(config_path=config, as_of=datetime(2013, 1, 12))
    later = train_model(config_path=config, as_of=datetime(2013, 1, 16))
    assert (early.window.start, early.window.end) == (datetime(2013, 1, 2), datetime(2013, 1, 12))
    assert early.decision == "champion" and again.decision == "skipped" and again.fingerprint == early.fingerprint
    assert later.window.start == datetime(2013, 1, 6) and later.fingerprint != early.fingerprint
    assert later.decision in ("challenger", "rejected") and later.rows != early.rows

    # New rows land in the source; a training with no as_of ingests them and trains just after the newest.
    load_source(flights_small[flights_small["time_hour"] >= january_18], if_exists="append")
    newest = train_model(config_path=config)
    assert newest.window.end == flights_small["time_hour"].max() + pd.Timedelta(microseconds=1)
    assert newest.window.as_of_source == "newest clean row"
    assert newest.decision in ("challenger", "rejected") and newest.fingerprint != later.fingerprint
    run = registry(MODEL).client.get_run(newest.run_id)
    assert run.data.tags["retrain.window_end"] == newest.window.end.isoformat()  # exact; the param shows seconds
    assert run.data.params["retrain.window_end"] == "2013-01-24 23:00:00"
    assert run.inputs.dataset_inputs[0].dataset.digest == newest.fingerprint
    predicted = pd.read_parquet(mlflow.artifacts.download_artifacts(
        run_id=newest.run_id, artifact_path="holdout_predictions.parquet"))
    assert predicted["time_hour"].min() >= january_18  # the holdout is made of the rows that just arrived


def wait_for_events(
    prefect, name: str, resource: str, since: datetime, count: int, seconds: float = 60
) -> list[Event]:
    """Events as the server stored them since `since` (earlier tests share the server); events are sent
    in the background, so poll briefly."""
    deadline = time.monotonic() + seconds
    while True:
        found = prefect.read_events(filter=EventFilter(
            event=EventNameFilter(name=[name]), resource=EventResourceFilter(id=[resource]),
            occurred=EventOccurredFilter(since=since)), limit=50).events
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


def executed_actions(prefect, triggering_event: Event) -> list[Event]:
    """The automation actions the server executed because of `triggering_event`."""
    return prefect.read_events(filter=EventFilter(
        event=EventNameFilter(name=["prefect.automation.action.executed"]),
        related=EventRelatedFilter(id=[f"prefect.event.{triggering_event.id}"])), limit=50).events


def wait_for_actions(prefect, triggering_event: Event, seconds: float = 90) -> list[Event]:
    deadline = time.monotonic() + seconds
    while not (found := executed_actions(prefect, triggering_event)) and time.monotonic() < deadline:
        time.sleep(1)
    return found


def test_a_wrong_column_fails_once_without_retries(retrain_home: Path, flights_small: pd.DataFrame) -> None:
    load_source(flights_small.head(3000))
    raw = yaml.safe_load((REPO / "examples" / "flights.yaml").read_text())
    numeric = [name if name != "distance" else "distanse" for name in raw["features"]["numeric"]]
    config = str(write_model_config(retrain_home.parent, features={"numeric": numeric}, tuning=QUICK))
    state = train_model(config_path=config, return_state=True)
    assert state.is_failed()
    with pytest.raises(ConfigError, match=r"features.numeric\[2\] 'distanse' is not a column of table 'flights'"):
        state.result()
    with get_client(sync_client=True) as prefect:
        attempts = prefect.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id])),
        )
    # checked once, first: nothing was read, tuned or logged
    assert {run.name.rsplit("-", 1)[0]: run.run_count for run in attempts} == {
        "check-stores": 1, "check_source_config": 1}
@pytest.mark.slow  # a long scenario (the suite stays under 8 minutes): `make test-all`


def test_a_failed_training_ends_its_mlflow_run_failed_and_closes_a_dead_trainings_run(
    retrain_home: Path, flights_small: pd.DataFrame
) -> None:
    load_source(flights_small)
    config = str(write_model_config(retrain_home.parent, tuning=QUICK))
    # The experiment's artifact root is a file, so logging the training's artifacts fails mid-run.
    not_a_folder = retrain_home / "artifacts-is-a-file"
    not_a_folder.write_text("artifacts cannot be written below a file")
    mlflow.set_tracking_uri(get_settings().resolved_tracking_uri())
    client = MlflowClient()
    experiment = client.create_experiment(MODEL, artifact_location=not_a_folder.as_uri())
    # What a training killed outright leaves behind: a run still RUNNING.
    dead = client.create_run(experiment, tags={"retrain.model": MODEL, "prefect.flow_run_id": "killed"}).info.run_id

    state = train_model(config_path=config, return_state=True)

    assert state.is_failed()
    failed = set(runs()["run_id"]) - {dead}
    assert [client.get_run(run_id).info.status for run_id in failed] == ["FAILED"]
    assert client.get_run(failed.pop()).data.tags["retrain.decision"] == "failed"
    assert client.get_run(dead).info.status == "KILLED"
    assert client.get_run(dead).data.tags["retrain.decision"] == "abandoned"


@pytest.mark.slow
def test_a_training_killed_during_tuning_resumes_without_repeating_trials(
    retrain_home: Path, flights_small: pd.DataFrame
) -> None:
    """A real `retrain train` process, killed with SIGKILL mid-study, then run again."""
    load_source(flights_small)
    config = str(write_model_config(retrain_home.parent, tuning={**QUICK, "trials": 8, "max_rounds": 120}))
    environment = {**os.environ, "RETRAIN_HOME": str(retrain_home)}
    command = [str(REPO / ".venv" / "bin" / "retrain"), "train", "--config", config, "--json"]
    storage = f"sqlite:///{retrain_home / 'optuna.db'}"
    # Its own process group, so the kill takes the temporary Prefect server it started along with it.
    process = subprocess.Popen(command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and process.poll() is None:
            summaries = optuna.get_all_study_summaries(storage) if (retrain_home / "optuna.db").exists() else []
            if summaries and summaries[0].n_trials >= 4:
                study = optuna.load_study(study_name=summaries[0].study_name, storage=storage)
                states = [trial.state for trial in study.trials]
                if TrialState.RUNNING in states and sum(state.is_finished() for state in states) >= 3:
                    break
            time.sleep(0.2)
        assert process.poll() is None, "the training ended before it could be killed mid-trial"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=60)
    study_name = optuna.get_all_study_summaries(storage)[0].study_name
    before = optuna.load_study(study_name=study_name, storage=storage).trials
    finished_before = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in before)
    assert [t.state for t in before].count(TrialState.RUNNING) == 1

    resumed = subprocess.run(command, check=False, env=environment, capture_output=True, text=True, timeout=600)
    outcome = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert resumed.returncode == 0 and outcome["decision"] == "champion", outcome
    assert outcome["trials"]["run_now"] == 8 - finished_before
    assert (outcome["trials"]["in_study"], outcome["trials"]["abandoned"]) == (8, 1)
    after = optuna.load_study(study_name=study_name, storage=storage).trials
    params = [t.params for t in after if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(params) == 8 and all(params.count(p) == 1 for p in params), "the resumed study repeated parameters"
    assert TrialState.RUNNING not in [t.state for t in after]
    mlflow.set_tracking_uri(get_settings().resolved_tracking_uri())
    statuses = sorted(runs()["status"])
    assert statuses == ["FINISHED", "KILLED"]  # the killed run was closed by the next training


@pytest.mark.slow
def test_mlflow_models_serve_answers_raw_json_records(
    retrain_home: Path, flights_small: pd.DataFrame, tmp_path: Path
) -> None:
    """`mlflow models serve --env-manager local` on loopback, fed the table's rows as JSON records."""
    load_source(flights_small)
    outcome = train_model(config_path=str(write_model_config(retrain_home.parent, tuning=QUICK)))
    assert outcome.decision == "champion"
    champion = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion")
    rows = flights_small.tail(20)[champion.metadata.get_input_schema().input_names()].reset_index(drop=True)
    rows.loc[0, "carrier"] = "NEVER-SEEN"
    rows.loc[1] = [np.nan] * 14 + [None] * 3
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    environment = {**os.environ, "MLFLOW_TRACKING_URI": get_settings().resolved_tracking_uri(),
                   "PATH": f"{REPO / '.venv' / 'bin'}:{os.environ['PATH']}"}
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen(
        [str(REPO / ".venv" / "bin" / "mlflow"), "models", "serve", "-m", f"models:/{MODEL}@champion",
         "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)],
        env=environment, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and server.poll() is None:
            try:
                if httpx.get(f"{url}/ping", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.5)
        body = {"dataframe_records": json.loads(rows.to_json(orient="records"))}
        response = httpx.post(f"{url}/invocations", json=body, timeout=60)
        assert response.status_code == 200, response.text
        served = np.asarray(response.json()["predictions"], dtype="float64")
        assert np.array_equal(served, np.asarray(champion.predict(rows), dtype="float64"))
        assert np.isfinite(served).all()
        wrong = httpx.post(f"{url}/invocations", json={"dataframe_records": [{"nonsense": 1}]}, timeout=60)
        assert wrong.status_code == 400 and "distance" in wrong.text
        # Loading and scoring the registered model needs none of the training stack.
        script = ("import sys, mlflow, pandas as pd\n"
                  f"rows = pd.read_json(sys.stdin, orient='records')\n"
                  f"mlflow.pyfunc.load_model('models:/{MODEL}@champion').predict(rows)\n"
                  "print(sorted(m for m in ('prefect', 'optuna', 'pandera') if m in sys.modules))\n")
        loaded = subprocess.run([sys.executable, "-c", script], input=rows.to_json(orient="records"), env=environment,
                                capture_output=True, text=True, timeout=300, check=True)
        assert loaded.stdout.strip().splitlines()[-1] == "[]"
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
@pytest.mark.slow  # a long scenario (the suite stays under 8 minutes): `make test-all`


def test_binary_classification_config_passes_the_same_flow(retrain_home: Path, flights_small: pd.DataFrame) -> None:
    load_source(flights_small)
    config = write_model_config(
        retrain_home.parent,
        name="flights-delayed",
        target={"column": "arr_delay", "task": "binary", "positive_above": 15},
        metric="auc",
        gates={"threshold": 0.55, "baseline_margin": 0.02},
    )
    outcome = train_model(config_path=str(config))
    assert outcome.decision == "champion" and outcome.metric_name == "auc"
    assert outcome.metric_value > max(outcome.baseline_metric + 0.02, 0.55)
    assert outcome.baselines["base-rate"] == 0.5 and outcome.baseline_metric == max(outcome.baselines.values())
    champion = mlflow.pyfunc.load_model("models:/flights-delayed@champion")
    rows = flights_small.tail(50)[champion.metadata.get_input_schema().input_names()]
    probabilities = champion.predict(rows)
    assert len(probabilities) == 50 and ((probabilities >= 0) & (probabilities <= 1)).all()
@pytest.mark.slow  # a long scenario (the suite stays under 8 minutes): `make test-all`


def test_unscorable_champion_fails_closed(model_config: Path, retrain_home: Path) -> None:
    first = train_model(config_path=str(model_config))
    shutil.rmtree(retrain_home / "mlartifacts")  # the champion's files are gone: it cannot be scored
    rejected = train_model(config_path=str(model_config), threshold=1000.0)
    assert rejected.decision == "rejected" and rejected.gate == "relative"
    assert "could not be scored" in rejected.reason
    assert registry(first.model).release == (["1"], {"champion": "1"})
    # A champion that could not be read is no verdict on the model: the next training tries again.
    assert train_model(config_path=str(model_config), threshold=1000.0).decision == "rejected"


def test_empty_window_is_refused_before_training(retrain_home: Path, flights_small: pd.DataFrame) -> None:
    load_source(flights_small)
    config = write_model_config(retrain_home.parent, training_window={"start": "2014-06-01", "end": "2014-07-01"})
    with pytest.raises(DataError, match=r"flights_clean.*no rows in the training window \[2014-06-01"):
        train_model(config_path=str(config))
    mlflow.set_tracking_uri(get_settings().resolved_tracking_uri())
    assert mlflow.search_runs(search_all_experiments=True).empty


@pytest.mark.slow
def test_same_snapshot_and_seed_give_the_same_model(
    retrain_home: Path, flights_small: pd.DataFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    outcomes, params = [], []
    for name in ("a", "b"):
        monkeypatch.setenv("RETRAIN_HOME", str(retrain_home / name))
        get_settings.cache_clear()
        load_source(flights_small)
        outcome = train_model(config_path=str(write_model_config(retrain_home.parent)))
        outcomes.append(outcome)
        params.append(registry(outcome.model).client.get_run(outcome.run_id).data.params)
    assert params[0] == params[1]
    assert outcomes[0].metric_value == outcomes[1].metric_value
    assert outcomes[0].fingerprint == outcomes[1].fingerprint


@pytest.mark.postgres
def test_training_flow_on_a_postgresql_warehouse(
    retrain_home: Path, flights_small: pd.DataFrame, postgres_warehouse: str
) -> None:
    schema = postgres_warehouse
    load_source(flights_small)
    outcome = train_model(config_path=str(write_model_config(retrain_home.parent, tuning=QUICK)))
    assert outcome.decision == "champion"
    ledger = read_ledger(open_warehouse(POSTGRES_URL, schema), MODEL)
    promoted = [entry.to_version for entry in ledger if entry.action == "promoted"]
    assert promoted == ["1"]
    assert mlflow.get_run(outcome.run_id).inputs.dataset_inputs[0].dataset.digest == outcome.fingerprint
