"""The training flow: from new warehouse rows to a gated, registered LightGBM model, or a reasoned skip.

Wiring only: every step is a task in `tasks/`; this file reads like the table of contents of a run.
A run ends in one of three normal outcomes, each a Completed flow run: a registered model (the challenger; the
first model of a name is released at once in auto mode and ends champion), `Skipped` (nothing new to learn
from) or `Rejected` (a gate said no, with the reason).
Failed is for real failures.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from prefect import flow
from prefect.states import Completed, State
from pydantic import Field

from flows.ingest import ingest_when_new_rows
from flows.release import release_challenger
from retrain.config import TrainingEngine, load_model_config
from retrain.outcomes import SKIPPED, TrainingOutcome
from tasks.comparison import decide_release
from tasks.dask_training import fit_final_model_on_dask, prepare_partitioned_snapshot, release_gated_model
from tasks.failures import record_failed_run
from tasks.features import (
    check_training_snapshot,
    load_training_snapshot,
    prepare_training_data,
    resolve_training_window,
)
from tasks.ingest import check_source_config, count_new_rows, read_model_contract
from tasks.limits import hold_model
from tasks.outcome import find_earlier_training, score_current_champion
from tasks.release import record_skipped_training, register_trained_model, released_outcome
from tasks.stores import verify_stores
from tasks.tracking import (
    close_abandoned_training_runs,
    close_runs_of_failed_training,
    finish_training_run,
    label_training_run,
    log_training_results,
    publish_training_report,
    start_training_run,
    verify_logged_model,
)
from tasks.training import fit_final_model, refit_released_model
from tasks.tuning import tune_hyperparameters


def outcome_state(outcome: TrainingOutcome) -> State:
    """How the flow run ends: Completed, named `Skipped` or `Rejected` when it is one of those.

    A rejection is a normal outcome, not a failure: a Failed state would be retried by flow retries and
    fire failure alerts. Calling the flow returns the outcome itself (the state's data).
    """
    name = {SKIPPED: "Skipped", "rejected": "Rejected"}.get(outcome.decision, "Completed")
    return Completed(name=name, message=outcome.reason, data=outcome)


@flow(
    name="train-model",
    log_prints=False,
    on_failure=[close_runs_of_failed_training, record_failed_run],
    on_crashed=[close_runs_of_failed_training, record_failed_run],
)
def train_model(
    config_path: str = "examples/flights.yaml",
    as_of: datetime | None = None,
    trials: Annotated[int, Field(ge=0)] = 0,
    timeout_seconds: Annotated[float, Field(ge=0)] = 0.0,
    threshold: float | None = None,
    workers: Annotated[int, Field(ge=0, le=256)] = 0,
) -> TrainingOutcome:
    """Tune, fit, gate and register one model on the training window as of `as_of`.

    Args:
        config_path: The model config YAML (source table, target, features, metric, window, budget, gates).
        as_of: Train as of this instant (naive UTC): the window is the lookback before it. Empty: just
            after the newest clean row, so new rows move the window and nothing new skips.
        trials: Finished Optuna trials the snapshot's study must hold (0: the config's `tuning.trials`).
        timeout_seconds: Tuning budget in seconds (0: the config's `tuning.timeout_seconds`).
        threshold: Absolute gate on the holdout metric (empty: the config's).
        workers: Parallel tuning workers on the study (0: the config's `tuning.workers`; more than 1 needs
            PostgreSQL as the Optuna storage).
    """
    verify_stores()  # warehouse, MLflow and Optuna answer, or the run fails here in seconds naming which
    config = load_model_config(config_path).with_overrides(
        trials=trials or None, timeout_seconds=timeout_seconds or None, threshold=threshold, workers=workers or None
    )
    check_source_config(config)  # every configured column exists with a usable type, before any work

    # One training of a model at a time, whoever started it: its Prefect slot and its warehouse lock.
    with hold_model(config):
        # Start: runs of this model that a killed training left open are closed.
        close_abandoned_training_runs(config=config)

        # Ingest: rows that arrived since the last batch (up to as_of) pass the data contract first; a refused
        # batch fails this run here. Counted first so a run with nothing new pays for no subflow, and counted
        # again under the source's lock, so rows another run has just ingested are "nothing new", not a refusal.
        if count_new_rows(config, as_of=as_of):
            ingest_when_new_rows(config_path=config_path, as_of=as_of, config=config)

        # Window: as of the given instant, or just after the newest clean row; the run is named after it.
        window = resolve_training_window(config=config, as_of=as_of)
        label_training_run(config=config, window=window)

        # Data: the window of clean rows, checked against the contract, fingerprinted, split in time.
        contract = read_model_contract(config)
        partitioned = None
        if config.training.engine is TrainingEngine.DASK:  # partitions stay on the Dask workers, checked there
            partitioned = prepare_partitioned_snapshot(config=config, window=window, contract=contract)
            data = partitioned.data
            snapshot = data.split.validation  # what the MLflow dataset input describes: in-process rows only
        else:
            snapshot = load_training_snapshot(config=config, window=window)
            check_training_snapshot(snapshot=snapshot, contract=contract, config=config)
            data = prepare_training_data(snapshot=snapshot, config=config, window=window, contract=contract)

        # Nothing new: the champion or challenger was trained on this snapshot with these settings.
        skipped = find_earlier_training(data=data, config=config)
        if skipped is not None:
            record_skipped_training(config=config, outcome=skipped, as_of=window.as_of)
            publish_training_report(config=config, outcome=skipped)
            return outcome_state(skipped)

        # Model: one MLflow run spans the Optuna search and the final fit scored on the holdout.
        run = start_training_run(config=config, snapshot=snapshot, data=data)
        tuning = tune_hyperparameters(data=data, config=config)
        if partitioned is not None:
            fitted = fit_final_model_on_dask(snapshot=partitioned, config=config, params=tuning.best_params,
                                             rounds=tuning.best_rounds, contract=contract)
        else:
            fitted = fit_final_model(data=data, config=config, params=tuning.best_params, rounds=tuning.best_rounds)

        # Gates: absolute threshold, naive baseline, champion on the identical raw holdout rows, then the
        # logged model must load and predict those rows exactly.
        champion = score_current_champion(data=data, config=config)
        decision = decide_release(fitted=fitted, champion=champion, config=config)
        # Refit: a model that passed is refitted on the whole window (training.refit), the newest rows included;
        # the run keeps the gated model's holdout metrics, and the infra check runs on what is registered.
        if partitioned is not None:
            released = release_gated_model(snapshot=partitioned, fitted=fitted)
        else:
            released = refit_released_model(data=data, config=config, params=tuning.best_params, fitted=fitted,
                                            passed=decision.passed)
        logged = log_training_results(
            run=run, config=config, data=data, tuning=tuning, fitted=fitted, decision=decision, released=released
        )
        decision = verify_logged_model(logged=logged, data=data, fitted=fitted, decision=decision, released=released)

        # Register: a passing model becomes the challenger, a rejection is recorded. The first model of its name
        # goes on through the release path at once in auto mode, so every champion got there the same way.
        outcome = register_trained_model(
            config=config, logged=logged, data=data, tuning=tuning, fitted=fitted, decision=decision
        )
        if outcome.version is not None and decision.verdict == "champion" and config.release.mode == "auto":
            release = release_challenger(config_path=config_path, as_of=window.as_of, actor="flow:train-model",
                                         config=config)
            outcome = released_outcome(outcome, release)
        finish_training_run(run=run, config=config, data=data, tuning=tuning, outcome=outcome)
        publish_training_report(config=config, outcome=outcome, run=run)
        return outcome_state(outcome)
