"""Model versions, aliases and the audit record; the champion's score and what a training decided.

Release state is the registry's aliases (champion, challenger, canary, previous). `move_alias` is the
only code that moves one: it also writes an audit record to the warehouse (open-source MLflow keeps no
alias history) and emits a Prefect event that automations can trigger on. MLflow runs and the packaged
model are `tasks.tracking`'s.

A training is skipped when the champion or the challenger was trained on the same snapshot (fingerprint)
with the same settings (`ModelConfig.settings_digest`): it would fit the same model and tie. It is also
skipped when a training on that snapshot with those settings was rejected by a gate that compared numbers
against the same champion: the same model would be rejected again, and the runs list would only grow.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event
from prefect.runtime import flow_run

from retrain.clock import now
from retrain.config import ModelConfig
from retrain.settings import get_settings
from tasks.comparison import Decision, Verdict
from tasks.features import PreparedData, TrainingWindow
from tasks.tracking import LoggedRun, find_experiment, run_name
from tasks.training import FittedModel
from tasks.tuning import TuningResult
from tasks.warehouse import Warehouse, append_rows, audit_table, get_warehouse

logger = logging.getLogger(__name__)

ALIASES = ("champion", "challenger", "canary", "previous")
EVENT_FOR_ALIAS = {
    "champion": "retrain.model.promoted",
    "challenger": "retrain.model.registered",
    "canary": "retrain.model.canary",
    "previous": "retrain.model.retired",
}
SKIPPED = "skipped"


@dataclass(frozen=True)
class ChampionScore:
    """The champion's predictions on the challenger's holdout rows, or why there are none."""

    version: str
    predictions: np.ndarray | None = None
    error: str | None = None


@dataclass(frozen=True)
class EarlierTraining:
    """An earlier training on the same snapshot with the same settings: the champion's, the challenger's,
    or a rejection against the current champion (then `version` is None)."""

    decision: str
    version: str | None
    run_id: str | None

    def summary(self) -> dict[str, Any]:
        return {"decision": self.decision, "version": self.version, "run_id": self.run_id}


@dataclass(frozen=True)
class TrainingOutcome:
    """What one training decided (champion, challenger, rejected or skipped): the CLI's and the API's answer.

    `run_id` is None for a skipped training (nothing was logged), `version` is None unless a version was
    registered; `same_as` names the version a skipped training would have repeated.
    """

    model: str
    decision: str
    reason: str
    fingerprint: str
    rows: int
    window: TrainingWindow
    settings: str
    metric_name: str
    run_id: str | None = None
    version: str | None = None
    gate: str | None = None
    metric_value: float | None = None
    threshold: float | None = None
    champion_metric: float | None = None
    champion_version: str | None = None
    baseline_metric: float | None = None
    metrics: Mapping[str, float] = field(default_factory=dict)
    baseline: Mapping[str, float] = field(default_factory=dict)
    p_value: float | None = None
    study: str | None = None
    trials: Mapping[str, int] = field(default_factory=dict)
    same_as: EarlierTraining | None = None
    flow_run_id: str | None = None
    settled: bool = False  # a rejection the same model would meet again against the same champion

    @property
    def rejected(self) -> bool:
        return self.decision == Verdict.REJECTED

    def summary(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "decision": self.decision,
            "reason": self.reason,
            "run_id": self.run_id,
            "version": self.version,
            "gate": self.gate,
            "metric": {"name": self.metric_name, "value": self.metric_value},
            "metrics": dict(self.metrics),
            "threshold": self.threshold,
            "champion_metric": self.champion_metric,
            "champion_version": self.champion_version,
            "baseline_metric": self.baseline_metric,
            "baseline": dict(self.baseline),
            "p_value": self.p_value,
            "fingerprint": self.fingerprint,
            "rows": self.rows,
            "window": self.window.summary(),
            "settings": self.settings,
            "study": self.study,
            "trials": dict(self.trials),
            "same_as": None if self.same_as is None else self.same_as.summary(),
            "flow_run_id": self.flow_run_id,
        }


def get_alias_version(client: MlflowClient, model_name: str, alias: str) -> str | None:
    """The version an alias points to, None when the model or the alias does not exist."""
    aliases = get_aliases(client, model_name)
    return aliases.get(alias)


def get_aliases(client: MlflowClient, model_name: str) -> dict[str, str]:
    """Every alias of the model and its version; empty when the model is not registered yet."""
    try:
        registered = client.get_registered_model(model_name)
    except MlflowException as error:
        if error.error_code == "RESOURCE_DOES_NOT_EXIST":
            return {}
        raise
    return {alias: str(version) for alias, version in registered.aliases.items()}


def find_same_training(
    client: MlflowClient, model_name: str, experiment_id: str, fingerprint: str, settings: str
) -> EarlierTraining | None:
    """The champion, the challenger or a settled rejection trained on this snapshot with these settings."""
    aliases = get_aliases(client, model_name)
    for alias in ("champion", "challenger"):
        version = aliases.get(alias)
        if version is None:
            continue
        registered = client.get_model_version(model_name, version)
        tags = registered.tags
        if tags.get("retrain.fingerprint") == fingerprint and tags.get("retrain.settings") == settings:
            return EarlierTraining(decision=alias, version=version, run_id=registered.run_id)
    rejected = client.search_runs(
        [experiment_id],
        filter_string=(
            f"tags.`retrain.fingerprint` = '{fingerprint}' and tags.`retrain.settings` = '{settings}' "
            "and tags.`retrain.decision` = 'rejected' and tags.`retrain.settled` = 'true'"
        ),
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if rejected and rejected[0].data.tags.get("retrain.champion_version") == aliases.get("champion", "none"):
        return EarlierTraining(decision="rejected", version=None, run_id=rejected[0].info.run_id)
    return None


def score_champion(client: MlflowClient, model_name: str, holdout: pd.DataFrame) -> ChampionScore | None:
    """Predict the raw holdout rows with the current champion; None when there is no champion.

    The champion gets the rows as they are in the table, like any user of the registered model, and
    takes the columns its own signature names. Any failure to load or predict comes back as an error,
    which the gate treats as a failure: a challenger is never released because the champion happened
    to be unreadable.
    """
    version = get_alias_version(client, model_name, "champion")
    if version is None:
        return None
    try:
        champion = mlflow.pyfunc.load_model(f"models:/{model_name}@champion")
        schema = champion.metadata.get_input_schema()
        rows = holdout[schema.input_names()] if schema is not None else holdout
        predictions = np.asarray(champion.predict(rows), dtype="float64").ravel()
    except Exception as error:  # noqa: BLE001 - every failure means "cannot compare": fail closed
        return ChampionScore(version=version, error=f"champion v{version}: {type(error).__name__}: {error}")
    if len(predictions) != len(holdout):
        return ChampionScore(version=version, error=f"champion v{version} returned {len(predictions)} predictions "
                             f"for {len(holdout)} rows")
    return ChampionScore(version=version, predictions=predictions)


def move_alias(
    client: MlflowClient,
    warehouse: Warehouse,
    model_name: str,
    alias: str,
    version: str | None,
    *,
    actor: str,
    reason: str,
    run_id: str | None = None,
    metrics: Mapping[str, float] | None = None,
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
        warehouse,
        model_name,
        EVENT_FOR_ALIAS[alias],
        actor=actor,
        reason=reason,
        alias=alias,
        version=version,
        previous_version=previous,
        run_id=run_id,
        metrics=metrics,
    )


def record_decision(
    warehouse: Warehouse,
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
) -> dict[str, Any]:
    """Write one audit record and emit the matching Prefect event (resource `retrain.model.<name>`)."""
    record = {
        "recorded_at": now(),
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
    append_rows(warehouse, audit_table(warehouse.schema), [record])
    emit_event(
        event=event,
        resource={"prefect.resource.id": f"retrain.model.{model_name}", "prefect.resource.name": model_name},
        payload={key: value for key, value in record.items() if key != "recorded_at"},
    )
    logger.info("%s: %s alias=%s version=%s (%s)", event, model_name, alias, version, reason)
    return record


def trained_outcome(
    config: ModelConfig,
    data: PreparedData,
    tuning: TuningResult,
    fitted: FittedModel,
    decision: Decision,
    run_id: str,
    version: str | None,
) -> TrainingOutcome:
    """The outcome of a training that ran: every number behind its decision."""
    return TrainingOutcome(
        model=config.name,
        decision=str(decision.verdict),
        reason=decision.reason,
        fingerprint=data.fingerprint,
        rows=data.rows,
        window=data.window,
        settings=config.settings_digest(),
        metric_name=config.metric,
        run_id=run_id,
        version=version,
        gate=decision.gate,
        metric_value=fitted.metrics.value,
        threshold=decision.threshold,
        champion_metric=decision.champion_value,
        champion_version=decision.champion_version,
        baseline_metric=fitted.metrics.baseline,
        metrics=dict(fitted.metrics.all),
        baseline=dict(fitted.metrics.baseline_all),
        p_value=decision.p_value,
        study=tuning.study_name,
        trials=tuning.counts(),
        flow_run_id=flow_run.get_id(),
        settled=decision.settled,
    )


def skipped_outcome(config: ModelConfig, data: PreparedData, earlier: EarlierTraining) -> TrainingOutcome:
    """The outcome of a training with nothing new to learn from: no tuning, no run, no version."""
    what = (
        f"the {earlier.decision} (version {earlier.version}) was trained on"
        if earlier.version is not None
        else f"a training rejected against the same champion (run {earlier.run_id}) was trained on"
    )
    return TrainingOutcome(
        model=config.name,
        decision=SKIPPED,
        reason=(
            f"nothing new: {what} this snapshot ({data.fingerprint}, window {data.window}) with the same "
            f"settings ({config.settings_digest()})"
        ),
        fingerprint=data.fingerprint,
        rows=data.rows,
        window=data.window,
        settings=config.settings_digest(),
        metric_name=config.metric,
        threshold=config.gates.threshold,
        same_as=earlier,
        flow_run_id=flow_run.get_id(),
    )


# --- Prefect tasks -------------------------------------------------------------------------------


@task(name="find-earlier-training", cache_policy=NO_CACHE)
def find_earlier_training(data: PreparedData, config: ModelConfig) -> TrainingOutcome | None:
    """A skipped outcome when the champion, the challenger or a settled rejection was trained on this snapshot
    with these settings."""
    experiment_id = find_experiment(get_settings(), config.name)
    if experiment_id is None:
        return None  # nothing was ever trained for this model
    earlier = find_same_training(
        MlflowClient(), config.name, experiment_id, data.fingerprint, config.settings_digest()
    )
    if earlier is None:
        return None
    outcome = skipped_outcome(config, data, earlier)
    get_run_logger().info("skipped: %s", outcome.reason)
    return outcome


@task(name="score-champion", cache_policy=NO_CACHE)
def score_current_champion(data: PreparedData, config: ModelConfig) -> ChampionScore | None:
    find_experiment(get_settings(), config.name)  # points MLflow at our store
    score = score_champion(MlflowClient(), config.name, data.split.holdout)
    log = get_run_logger()
    if score is None:
        log.info("no champion for '%s' yet", config.name)
    elif score.error:
        log.warning("champion cannot be scored: %s", score.error)
    else:
        log.info("champion v%s scored on the same %d raw holdout rows", score.version, len(score.predictions))
    return score


@task(name="release-model", cache_policy=NO_CACHE)
def release_model(
    config: ModelConfig,
    logged: LoggedRun,
    data: PreparedData,
    tuning: TuningResult,
    fitted: FittedModel,
    decision: Decision,
) -> TrainingOutcome:
    """Register a passing model and give it its alias; record a rejection in the audit log."""
    client = MlflowClient()
    warehouse = get_warehouse()
    actor = f"flow run '{run_name(config.name, data.window)}' ({get_settings().actor})"
    metrics = {f"holdout_{name}": value for name, value in fitted.metrics.all.items()}
    if not decision.passed or logged.model_uri is None:
        record_decision(
            warehouse, config.name, "retrain.model.rejected", actor=actor, reason=decision.reason,
            run_id=logged.run_id, metrics=metrics,
        )
        get_run_logger().info("rejected: %s", decision.reason)
        return trained_outcome(config, data, tuning, fitted, decision, logged.run_id, version=None)
    version = str(mlflow.register_model(
        logged.model_uri,
        config.name,
        tags={
            "retrain.fingerprint": data.fingerprint,
            "retrain.settings": config.settings_digest(),
            "retrain.decision": str(decision.verdict),
            "retrain.window_end": data.window.end.isoformat(),
        },
    ).version)
    client.update_model_version(
        config.name,
        version,
        description=f"Trained as of {data.window.as_of.isoformat()} on {config.source.clean} {data.window} "
        f"({data.rows:,} rows): holdout {config.metric} {fitted.metrics.value:.4f}, naive baseline "
        f"{fitted.metrics.baseline:.4f}. {decision.reason}",
    )
    move_alias(
        client, warehouse, config.name, str(decision.verdict), version,
        actor=actor, reason=decision.reason, run_id=logged.run_id, metrics=metrics,
    )
    return trained_outcome(config, data, tuning, fitted, decision, logged.run_id, version=version)
