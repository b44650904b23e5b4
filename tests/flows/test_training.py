"""The training flow end to end: real flights rows in a SQLite (or PostgreSQL) warehouse, a real MLflow
store and Optuna study under a temporary folder, Prefect's test server. Assertions read the returned
outcome and the registry, never log text."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from flows.training import train_model
from retrain.errors import DataError, GateFailed
from retrain.settings import get_settings
from tasks.registry import encode_for_model
from tasks.warehouse import AUDIT_TABLE, get_warehouse, open_warehouse, read_table, write_frame
from tests.conftest import POSTGRES_URL, write_model_config

pytestmark = pytest.mark.usefixtures("prefect_harness")


def load_source(frame: pd.DataFrame) -> None:
    write_frame(get_warehouse(), frame, "flights", if_exists="replace")


@dataclass(frozen=True)
class RegistryState:
    client: MlflowClient
    versions: list[str]
    aliases: dict[str, str]

    @property
    def release(self) -> tuple[list[str], dict[str, str]]:
        """Versions and aliases: what a rejected run must leave unchanged."""
        return self.versions, self.aliases


def registry(model: str) -> RegistryState:
    mlflow.set_tracking_uri(get_settings().resolved_tracking_uri())
    client = MlflowClient()
    versions = sorted(str(v.version) for v in client.search_model_versions(f"name='{model}'"))
    aliases = {alias: str(version) for alias, version in client.get_registered_model(model).aliases.items()}
    return RegistryState(client, versions, aliases)


def audit() -> pd.DataFrame:
    return read_table(get_warehouse(), AUDIT_TABLE)


@pytest.fixture
def model_config(retrain_home: Path, flights_small: pd.DataFrame) -> Path:
    load_source(flights_small)
    return write_model_config(retrain_home.parent)


def test_champion_then_impossible_gate_then_tie(model_config: Path) -> None:
    first = train_model(config_path=str(model_config))
    assert (first.decision, first.version, first.champion_metric) == ("champion", "1", None)
    assert first.metric_value < first.baseline_metric < 40.0

    state = registry(first.model)
    client, versions, aliases = state.client, state.versions, state.aliases
    assert versions == ["1"] and aliases == {"champion": "1"}
    run = client.get_run(first.run_id)
    assert {"objective", "learning_rate", "num_boost_round", "retrain.window_start"} <= set(run.data.params)
    assert {"holdout_mae", "holdout_rmse", "holdout_r2", "baseline_mae"} <= set(run.data.metrics)
    assert run.data.tags["retrain.decision"] == "champion" and run.data.tags["prefect.flow_run_id"]
    dataset = run.inputs.dataset_inputs[0].dataset
    assert dataset.digest == first.fingerprint and dataset.source_type == "warehouse"
    assert {a.path for a in client.list_artifacts(first.run_id)} >= {"feature_importance.json", "optuna_trials.json"}
    info = mlflow.models.get_model_info(f"models:/{first.model}@champion")
    assert info.signature is not None and info.flavors.get("lightgbm")

    with pytest.raises(GateFailed) as rejected:
        train_model(config_path=str(model_config), threshold=0.0001)
    impossible = rejected.value.outcome
    assert (impossible.decision, impossible.version, impossible.gate) == ("rejected", None, "absolute")
    assert impossible.threshold == 0.0001 and impossible.champion_metric == pytest.approx(first.metric_value)
    assert registry(first.model).release == (["1"], {"champion": "1"})
    assert client.get_run(impossible.run_id).data.tags["retrain.decision"] == "rejected"

    with pytest.raises(GateFailed) as tied:
        train_model(config_path=str(model_config))
    tie = tied.value.outcome
    assert tie.gate == "relative" and tie.p_value == 1.0 and tie.metric_value == pytest.approx(first.metric_value)
    assert registry(first.model).release == (["1"], {"champion": "1"})

    events = audit()[["event", "alias", "version"]].values.tolist()
    assert events[0] == ["retrain.model.promoted", "champion", "1"]
    assert [row[0] for row in events[1:]] == ["retrain.model.rejected", "retrain.model.rejected"]


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


def test_binary_classification_config_passes_the_same_flow(retrain_home: Path, flights_small: pd.DataFrame) -> None:
    load_source(flights_small)
    config = write_model_config(
        retrain_home.parent,
        name="flights-delayed",
        target={"column": "arr_delay", "task": "binary", "positive_above": 15},
        metric="auc",
        gates={"threshold": 0.55},
    )
    outcome = train_model(config_path=str(config))
    assert outcome.decision == "champion" and outcome.metric_name == "auc"
    assert outcome.metric_value > max(outcome.baseline_metric, 0.55)
    champion = mlflow.pyfunc.load_model("models:/flights-delayed@champion")
    probabilities = champion.predict(encode_for_model(flights_small.tail(50), champion.metadata.metadata))
    assert len(probabilities) == 50 and ((probabilities >= 0) & (probabilities <= 1)).all()


def test_unscorable_champion_fails_closed(model_config: Path, retrain_home: Path) -> None:
    first = train_model(config_path=str(model_config))
    shutil.rmtree(retrain_home / "mlartifacts")  # the champion's files are gone: it cannot be scored
    with pytest.raises(GateFailed) as rejected:
        train_model(config_path=str(model_config), threshold=1000.0)
    outcome = rejected.value.outcome
    assert outcome.gate == "relative" and "could not be scored" in outcome.reason
    assert registry(first.model).release == (["1"], {"champion": "1"})


def test_empty_window_is_refused_before_training(retrain_home: Path, flights_small: pd.DataFrame) -> None:
    load_source(flights_small)
    config = write_model_config(retrain_home.parent, training_window={"start": "2014-06-01", "end": "2014-07-01"})
    with pytest.raises(DataError, match=r"flights_clean.*no rows in the training window \[2014-06-01"):
        train_model(config_path=str(config))
    mlflow.set_tracking_uri(get_settings().resolved_tracking_uri())
    assert mlflow.search_runs(search_all_experiments=True).empty


@pytest.mark.postgres
def test_training_flow_on_a_postgresql_warehouse(
    retrain_home: Path, flights_small: pd.DataFrame, postgres_warehouse: str
) -> None:
    schema = postgres_warehouse
    load_source(flights_small)
    outcome = train_model(config_path=str(write_model_config(retrain_home.parent)))
    assert outcome.decision == "champion"
    assert read_table(open_warehouse(POSTGRES_URL, schema), AUDIT_TABLE)["version"].tolist() == ["1"]
    assert mlflow.get_run(outcome.run_id).inputs.dataset_inputs[0].dataset.digest == outcome.fingerprint
