"""What a training decided (champion, challenger, rejected or skipped) and how a skip is found.

A training is skipped when the champion, the canary or the challenger was trained on the same snapshot
(fingerprint) with the same settings (`ModelConfig.settings_digest`): it would fit the same model and tie. It is
also skipped when a training on that snapshot with those settings was rejected by a gate that compared numbers
against the same champion: the same model would be rejected again, and the runs list would only grow.
"""

from __future__ import annotations

from mlflow.tracking import MlflowClient
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from retrain import mlflow_keys as keys
from retrain.config import ModelConfig
from retrain.outcomes import SKIPPED, EarlierTraining, TrainingOutcome
from retrain.release_state import read_release_state
from retrain.settings import get_settings
from tasks.comparison import ChampionScore, Decision, score_champion
from tasks.features import PreparedData
from tasks.tracking import find_experiment
from tasks.training import FittedModel
from tasks.tuning import TuningResult


def find_same_training(
    client: MlflowClient, model_name: str, experiment_id: str, fingerprint: str, settings: str
) -> EarlierTraining | None:
    """The champion, the canary, the challenger or a settled rejection trained on this snapshot with these settings."""
    aliases = read_release_state(client, model_name).aliases
    for alias in ("champion", "canary", "challenger"):
        version = aliases.get(alias)
        if version is None:
            continue
        registered = client.get_model_version(model_name, version)
        tags = registered.tags
        if tags.get(keys.FINGERPRINT) == fingerprint and tags.get(keys.SETTINGS) == settings:
            return EarlierTraining(decision=alias, version=version, run_id=registered.run_id)
    rejected = client.search_runs(
        [experiment_id],
        filter_string=(
            f"tags.`{keys.FINGERPRINT}` = '{fingerprint}' and tags.`{keys.SETTINGS}` = '{settings}' "
            f"and tags.`{keys.DECISION}` = 'rejected' and tags.`{keys.SETTLED}` = 'true'"
        ),
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if rejected and rejected[0].data.tags.get(keys.CHAMPION_VERSION) == (aliases.get("champion") or "none"):
        return EarlierTraining(decision="rejected", version=None, run_id=rejected[0].info.run_id)
    return None

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
        baselines=dict(fitted.metrics.baselines),
        baseline_name=fitted.metrics.baseline_name,
        # what refit_released_model registers for a model that passed: the refit unless training.refit is off
        released_fit=None if not decision.passed else "refit" if config.training.refit else "gated",
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
    score = score_champion(MlflowClient(), config.name, data.split.holdout, config.source.timestamp)
    log = get_run_logger()
    if score is None:
        log.info("no champion for '%s' yet", config.name)
    elif score.error:
        log.warning("champion cannot be scored: %s", score.error)
    else:
        log.info("champion v%s scored on the same %d raw holdout rows", score.version, len(score.predictions))
    return score
