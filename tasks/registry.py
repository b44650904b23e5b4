"""MLflow runs, model versions and release state.

Release state is the registry's aliases (champion, challenger, canary, previous). `move_alias` is the
only code that moves one: it also writes an audit record to the warehouse (open-source MLflow keeps no
alias history) and emits a Prefect event that automations can trigger on.
"""

from __future__ import annotations

import json
import logging
import subprocess
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import sqlalchemy as sa
from mlflow.data.dataset_source import DatasetSource
from mlflow.entities import Dataset, DatasetInput, InputTag
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event
from prefect.runtime import flow_run

from retrain.config import FeaturesConfig, ModelConfig
from retrain.errors import GateFailed
from retrain.settings import Settings, get_settings, redact_url
from retrain.stores import connect_mlflow, store_errors
from tasks.comparison import Decision, Verdict
from tasks.features import PreparedData, encode_features
from tasks.training import LIGHTGBM_METRIC, FittedModel, feature_importance
from tasks.tuning import TuningResult
from tasks.warehouse import Warehouse, append_rows, audit_table, get_warehouse, open_warehouse, read_window

logger = logging.getLogger(__name__)

ALIASES = ("champion", "challenger", "canary", "previous")
EVENT_FOR_ALIAS = {
    "champion": "retrain.model.promoted",
    "challenger": "retrain.model.registered",
    "canary": "retrain.model.canary",
    "previous": "retrain.model.retired",
}
MODEL_METADATA_KEY = "retrain"
SCHEMA_SAMPLE_ROWS = 10_000


class WarehouseDatasetSource(DatasetSource):
    """Where a training snapshot came from: a warehouse table and window (URL without password)."""

    def __init__(self, url: str, table: str, timestamp: str, start: str, end: str, schema: str | None = None) -> None:
        self.url, self.table, self.timestamp, self.start, self.end = url, table, timestamp, start, end
        self.schema = schema

    @staticmethod
    def _get_source_type() -> str:
        return "warehouse"

    def load(self, **_: Any) -> pd.DataFrame:
        """Read the snapshot again (the fingerprint tells whether it still has the same content)."""
        return read_window(
            open_warehouse(self.url, self.schema),
            self.table,
            self.timestamp,
            datetime.fromisoformat(self.start),
            datetime.fromisoformat(self.end),
        )

    @staticmethod
    def _can_resolve(raw_source: Any) -> bool:
        return False

    @classmethod
    def _resolve(cls, raw_source: Any) -> WarehouseDatasetSource:
        raise MlflowException(f"a warehouse source is built from its fields, not parsed from {raw_source!r}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "schema": self.schema,
            "table": self.table,
            "timestamp": self.timestamp,
            "start": self.start,
            "end": self.end,
        }

    @classmethod
    def from_dict(cls, source_dict: dict[Any, Any]) -> WarehouseDatasetSource:
        return cls(**source_dict)


@dataclass(frozen=True)
class LoggedRun:
    run_id: str
    model_uri: str
    input_example: pd.DataFrame


@dataclass(frozen=True)
class ChampionScore:
    """The champion's predictions on the challenger's holdout rows, or why there are none."""

    version: str
    predictions: np.ndarray | None = None
    error: str | None = None


@dataclass(frozen=True)
class TrainingOutcome:
    """What one training run decided: the CLI's and the API's answer."""

    model: str
    run_id: str
    version: str | None
    decision: str
    gate: str
    reason: str
    metric_name: str
    metric_value: float
    threshold: float | None
    champion_metric: float | None
    baseline_metric: float
    p_value: float | None
    fingerprint: str
    study: str
    trials: Mapping[str, int] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "run_id": self.run_id,
            "version": self.version,
            "decision": self.decision,
            "gate": self.gate,
            "reason": self.reason,
            "metric": {"name": self.metric_name, "value": self.metric_value},
            "threshold": self.threshold,
            "champion_metric": self.champion_metric,
            "baseline_metric": self.baseline_metric,
            "p_value": self.p_value,
            "fingerprint": self.fingerprint,
            "study": self.study,
            "trials": dict(self.trials),
        }


def configure_mlflow(settings: Settings, experiment: str) -> str:
    """Point MLflow at our store and return the experiment id, creating it where its artifacts belong.

    With a tracking server the server picks the artifact root (unless the settings name one), so every
    machine loads models through it; only a local store gets a folder under our home. An outage while
    looking the experiment up is a `StoreUnavailable`, with the password masked.
    """
    uri = connect_mlflow(settings)
    with store_errors("MLflow tracking store", uri):
        existing = mlflow.get_experiment_by_name(experiment)
        if existing is not None:
            if settings.resolved_artifact_location() is None and existing.artifact_location.startswith("file:"):
                logger.warning(
                    "experiment '%s' keeps its artifacts in %s, on the machine that created it: other machines "
                    "cannot load its models through the tracking server. MLflow cannot move an experiment's "
                    "artifact root; rename or delete the experiment so Retrain creates it on the server's.",
                    experiment, existing.artifact_location,
                )
            return existing.experiment_id
        try:
            return mlflow.create_experiment(experiment, artifact_location=settings.resolved_artifact_location())
        except MlflowException:
            # Another process created it between our look-up and our create.
            return mlflow.get_experiment_by_name(experiment).experiment_id


def snapshot_dataset_input(
    snapshot: pd.DataFrame, source: DatasetSource, name: str, targets: str, digest: str
) -> DatasetInput:
    """The training snapshot as an MLflow dataset input: our fingerprint as digest, the full row count.

    MLflow infers a dataset's schema by walking every value of every object column (1.3 s on 100k
    flights rows, 10x that on 1M); column types are the same in a sample, so the schema comes from one
    and the profile from the whole snapshot.
    """
    sample = snapshot.head(SCHEMA_SAMPLE_ROWS)
    with warnings.catch_warnings():
        # The dataset schema describes the raw snapshot, whose integer columns are real; MLflow's hint
        # about integers and missing values is for model signatures, and ours hold only float64.
        warnings.filterwarnings("ignore", message=".*Integer columns in Python cannot represent missing")
        described = mlflow.data.from_pandas(sample, source=source, name=name, targets=targets, digest=digest).to_dict()
    profile = json.dumps({"num_rows": len(snapshot), "num_elements": int(snapshot.size)})
    dataset = Dataset(
        name=described["name"],
        digest=digest,
        source_type=described["source_type"],
        source=described["source"],
        schema=described["schema"],
        profile=profile,
    )
    return DatasetInput(dataset=dataset, tags=[InputTag(key=MLFLOW_DATASET_CONTEXT, value="training")])


def git_commit() -> str | None:
    """The commit of the code that trained the model, when it runs from a git checkout."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None


def model_metadata(config: ModelConfig, vocabulary: Mapping[str, tuple[str, ...]]) -> dict[str, Any]:
    """What a loader needs besides the booster to turn raw rows into model inputs."""
    return {
        MODEL_METADATA_KEY: {
            "features": config.features.model_dump(mode="json"),
            "vocabulary": {column: list(values) for column, values in vocabulary.items()},
            "task": str(config.target.task),
            "target": config.target.model_dump(mode="json"),
            "metric": config.metric,
        }
    }


def encode_for_model(frame: pd.DataFrame, metadata: Mapping[str, Any]) -> pd.DataFrame:
    """Raw rows → inputs of a logged model, with that model's own features and vocabulary."""
    spec = metadata[MODEL_METADATA_KEY]
    features = FeaturesConfig.model_validate(spec["features"])
    vocabulary = {column: tuple(values) for column, values in spec["vocabulary"].items()}
    return encode_features(frame, features, vocabulary)


def get_alias_version(client: MlflowClient, model_name: str, alias: str) -> str | None:
    """The version an alias points to, None when the model or the alias does not exist."""
    try:
        registered = client.get_registered_model(model_name)
    except MlflowException as error:
        if error.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    version = registered.aliases.get(alias)
    return None if version is None else str(version)


def score_champion(client: MlflowClient, model_name: str, holdout: pd.DataFrame) -> ChampionScore | None:
    """Predict the holdout rows with the current champion; None when there is no champion.

    Any failure to load or predict comes back as an error, which the gate treats as a failure:
    a challenger is never released because the champion happened to be unreadable.
    """
    version = get_alias_version(client, model_name, "champion")
    if version is None:
        return None
    try:
        champion = mlflow.pyfunc.load_model(f"models:/{model_name}@champion")
        inputs = encode_for_model(holdout, champion.metadata.metadata or {})
        predictions = np.asarray(champion.predict(inputs), dtype="float64").ravel()
    except Exception as error:  # noqa: BLE001 - every failure means "cannot compare": fail closed
        return ChampionScore(version=version, error=f"champion v{version}: {type(error).__name__}: {error}")
    if len(predictions) != len(holdout):
        return ChampionScore(version=version, error=f"champion v{version} returned {len(predictions)} predictions "
                             f"for {len(holdout)} rows")
    return ChampionScore(version=version, predictions=predictions)


def check_model_loads(model_uri: str, input_example: pd.DataFrame, expected: np.ndarray) -> str | None:
    """The infra gate: the logged model loads through pyfunc and reproduces its predictions; None if fine."""
    try:
        predictions = np.asarray(mlflow.pyfunc.load_model(model_uri).predict(input_example), dtype="float64").ravel()
    except Exception as error:  # noqa: BLE001 - the gate reports any failure to load or predict
        return f"the logged model {model_uri} does not load and predict through mlflow.pyfunc: {error}"
    if predictions.shape != expected.shape or not np.allclose(predictions, expected, rtol=1e-6, atol=1e-9):
        return f"the logged model {model_uri} predicts {predictions[:3]} where the trained one gave {expected[:3]}"
    return None


def log_model_with_signature(
    booster: Any, input_example: pd.DataFrame, metadata: Mapping[str, Any]
) -> str:
    """Log the booster in the active run with its signature and example; returns the model URI."""
    signature = infer_signature(input_example, booster.predict(input_example))
    info = mlflow.lightgbm.log_model(
        booster,
        name="model",
        signature=signature,
        input_example=input_example,
        metadata=dict(metadata),
        # Stated, not inferred: inference starts a subprocess that re-imports the model (3 s a run) to
        # find what we already know: a LightGBM model read as pandas in, numpy out.
        pip_requirements=[
            *mlflow.lightgbm.get_default_pip_requirements(),
            f"pandas=={pd.__version__}",
            f"numpy=={np.__version__}",
        ],
    )
    return info.model_uri


def move_alias(
    client: MlflowClient,
    engine: sa.Engine,
    model_name: str,
    alias: str,
    version: str | None,
    *,
    actor: str,
    reason: str,
    run_id: str | None = None,
    metrics: Mapping[str, float] | None = None,
    schema: str | None = None,
) -> dict[str, Any]:
    """Point `alias` at `version` (or remove it when version is None); the only code that moves aliases.

    The audit record is written after the alias moved, in the same call, and the event last; the
    record says who or what moved it, why, with which metrics and runs.
    """
    if alias not in ALIASES:
        raise ValueError(f"unknown alias '{alias}': the registry knows {ALIASES}")
    previous = get_alias_version(client, model_name, alias)
    if version is None:
        if previous is not None:
            client.delete_registered_model_alias(model_name, alias)
    else:
        client.set_registered_model_alias(model_name, alias, version)
    return record_decision(
        engine,
        model_name,
        EVENT_FOR_ALIAS[alias],
        actor=actor,
        reason=reason,
        alias=alias,
        version=version,
        previous_version=previous,
        run_id=run_id,
        metrics=metrics,
        schema=schema,
    )


def record_decision(
    engine: sa.Engine,
    model_name: str,
    event: str,
    *,
    actor: str,
    reason: str,
    alias: str | None = None,
    version: str | None = None,
    previous_version: str | None = None,
    run_id: str | None = None,
    metrics: Mapping[str, float] | None = None,
    schema: str | None = None,
) -> dict[str, Any]:
    """Write one audit record and emit the matching Prefect event (resource `retrain.model.<name>`)."""
    record = {
        "recorded_at": datetime.now(UTC).replace(tzinfo=None),
        "model": model_name,
        "event": event,
        "alias": alias,
        "version": version,
        "previous_version": previous_version,
        "actor": actor,
        "reason": reason,
        "run_id": run_id,
        "flow_run_id": flow_run.get_id(),
        "metrics": json.dumps(dict(metrics or {}), sort_keys=True),
    }
    append_rows(Warehouse(engine, schema), audit_table(schema), [record])
    emit_event(
        event=event,
        resource={"prefect.resource.id": f"retrain.model.{model_name}", "prefect.resource.name": model_name},
        payload={key: value for key, value in record.items() if key != "recorded_at"},
    )
    logger.info("%s: %s alias=%s version=%s (%s)", event, model_name, alias, version, reason)
    return record


def describe_source(settings: Settings, config: ModelConfig, table: str) -> WarehouseDatasetSource:
    window = config.training_window
    return WarehouseDatasetSource(
        url=redact_url(settings.resolved_warehouse_url()),
        table=table,
        schema=settings.warehouse_schema,
        timestamp=config.source.timestamp,
        start=window.start.isoformat(),
        end=window.end.isoformat(),
    )


# --- Prefect tasks -------------------------------------------------------------------------------


@task(name="score-champion", cache_policy=NO_CACHE)
def score_current_champion(data: PreparedData, config: ModelConfig) -> ChampionScore | None:
    configure_mlflow(get_settings(), config.name)
    score = score_champion(MlflowClient(), config.name, data.split.holdout)
    log = get_run_logger()
    if score is None:
        log.info("no champion for '%s' yet", config.name)
    elif score.error:
        log.warning("champion cannot be scored: %s", score.error)
    else:
        log.info("champion v%s scored on the same %d holdout rows", score.version, len(score.predictions))
    return score


@task(name="log-training-run", cache_policy=NO_CACHE)
def log_training_run(
    config: ModelConfig,
    snapshot: pd.DataFrame,
    data: PreparedData,
    tuning: TuningResult,
    fitted: FittedModel,
    decision: Decision,
) -> LoggedRun:
    """One MLflow run per training: params, metrics, dataset input, model with signature, artifacts."""
    settings = get_settings()
    experiment_id = configure_mlflow(settings, config.name)
    source = describe_source(settings, config, config.source.clean)
    dataset = snapshot_dataset_input(
        snapshot, source, f"{config.source.clean}{config.training_window}", config.target.column, data.fingerprint
    )
    tags = {
        "retrain.model": config.name,
        "retrain.fingerprint": data.fingerprint,
        "retrain.study": tuning.study_name,
        "retrain.decision": "pending",
        "prefect.flow_run_id": str(flow_run.get_id()),
        "prefect.flow_run_name": str(flow_run.get_name()),
    }
    commit = git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
    window = config.training_window
    params = {
        **{key: value for key, value in tuning.best_params.items()},
        "num_boost_round": fitted.rounds,
        "retrain.metric": config.metric,
        "retrain.task": str(config.target.task),
        "retrain.target": config.target.column,
        "retrain.window_start": window.start.isoformat(),
        "retrain.window_end": window.end.isoformat(),
        "retrain.trials_budget": config.tuning.trials,
        "retrain.threshold": config.gates.threshold,
        "retrain.margin": config.gates.margin,
        "retrain.rows_train": len(data.split.train),
        "retrain.rows_validation": len(data.split.validation),
        "retrain.rows_holdout": len(data.split.holdout),
    }
    metrics = {
        **fitted.metrics.as_mlflow(),
        f"validation_{LIGHTGBM_METRIC[config.metric]}": tuning.best_value,
        "trials_complete": tuning.complete,
        "trials_pruned": tuning.pruned,
    }
    if decision.champion_value is not None:
        metrics[f"champion_holdout_{config.metric}"] = decision.champion_value
    if decision.p_value is not None:
        metrics["bootstrap_p_value"] = decision.p_value
    run_name = f"{config.name}-{data.fingerprint[:8]}"
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=tags) as run:
        mlflow.log_params(params)
        mlflow.log_metrics(metrics)
        MlflowClient().log_inputs(run.info.run_id, datasets=[dataset])
        model_uri = log_model_with_signature(
            fitted.booster, fitted.input_example, model_metadata(config, data.vocabulary)
        )
        mlflow.log_dict(feature_importance(fitted.booster), "feature_importance.json")
        mlflow.log_table(tuning.trials, "optuna_trials.json")
    get_run_logger().info("MLflow run %s logged with model %s", run.info.run_id, model_uri)
    return LoggedRun(run_id=run.info.run_id, model_uri=model_uri, input_example=fitted.input_example)


@task(name="check-model-loads", cache_policy=NO_CACHE)
def verify_logged_model(run: LoggedRun, fitted: FittedModel, decision: Decision) -> Decision:
    """The infra gate, applied to a model that passed the others."""
    if not decision.passed:
        return decision
    expected = np.asarray(fitted.booster.predict(run.input_example), dtype="float64")
    problem = check_model_loads(run.model_uri, run.input_example, expected)
    if problem is None:
        return decision
    return replace(decision, verdict=Verdict.REJECTED, gate="infra", reason=problem)


@task(name="release-model", cache_policy=NO_CACHE)
def release_model(
    config: ModelConfig,
    run: LoggedRun,
    data: PreparedData,
    tuning: TuningResult,
    fitted: FittedModel,
    decision: Decision,
) -> TrainingOutcome:
    """Register a passing model and give it its alias; mark a failing one rejected and raise GateFailed."""
    client = MlflowClient()
    store = get_warehouse()
    engine, schema = store.engine, store.schema
    actor = f"flow run {flow_run.get_name()} ({get_settings().actor})"
    metrics = {f"holdout_{name}": value for name, value in fitted.metrics.all.items()}
    outcome = TrainingOutcome(
        model=config.name,
        run_id=run.run_id,
        version=None,
        decision=str(decision.verdict),
        gate=decision.gate,
        reason=decision.reason,
        metric_name=config.metric,
        metric_value=fitted.metrics.value,
        threshold=decision.threshold,
        champion_metric=decision.champion_value,
        baseline_metric=fitted.metrics.baseline,
        p_value=decision.p_value,
        fingerprint=data.fingerprint,
        study=tuning.study_name,
        trials={"complete": tuning.complete, "pruned": tuning.pruned, "run_now": tuning.run_now},
    )
    client.set_tag(run.run_id, "retrain.gate", decision.gate)
    client.set_tag(run.run_id, "retrain.reason", decision.reason[:5000])
    if not decision.passed:
        client.set_tag(run.run_id, "retrain.decision", "rejected")
        record_decision(
            engine, config.name, "retrain.model.rejected", actor=actor, reason=decision.reason,
            run_id=run.run_id, metrics=metrics, schema=schema,
        )
        raise GateFailed(decision.gate, decision.metric, decision.value, decision.threshold, decision.reason, outcome)
    version = mlflow.register_model(
        run.model_uri,
        config.name,
        tags={"retrain.fingerprint": data.fingerprint, "retrain.decision": str(decision.verdict)},
    ).version
    move_alias(
        client, engine, config.name, str(decision.verdict), version,
        actor=actor, reason=decision.reason, run_id=run.run_id, metrics=metrics, schema=schema,
    )
    client.set_tag(run.run_id, "retrain.decision", str(decision.verdict))
    client.set_tag(run.run_id, "retrain.version", version)
    return replace(outcome, version=str(version))
