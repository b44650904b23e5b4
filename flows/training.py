"""The training flow: from new warehouse rows to a gated, registered LightGBM model.

Wiring only: every step is a task in `tasks/`; this file reads like the table of contents of a run.
"""

from __future__ import annotations

from prefect import flow

from flows.ingest import ingest_new_rows
from retrain.config import load_model_config
from tasks.comparison import decide_release
from tasks.features import check_training_snapshot, load_training_snapshot, prepare_training_data
from tasks.registry import (
    TrainingOutcome,
    log_training_run,
    release_model,
    score_current_champion,
    verify_logged_model,
)
from tasks.stores import verify_stores
from tasks.training import fit_final_model
from tasks.tuning import tune_hyperparameters
from tasks.validation import count_new_rows, read_model_contract


@flow(name="train-model", log_prints=False)
def train_model(
    config_path: str = "examples/flights.yaml",
    trials: int | None = None,
    timeout_seconds: float | None = None,
    threshold: float | None = None,
) -> TrainingOutcome:
    """Tune, fit, gate and register one model.

    Args:
        config_path: The model config YAML (source table, target, features, metric, budget, gates).
        trials: Optuna trials, overriding the config.
        timeout_seconds: Tuning budget in seconds, overriding the config.
        threshold: Absolute gate on the holdout metric, overriding the config.
    """
    verify_stores()  # warehouse, MLflow and Optuna answer, or the run fails here in seconds naming which
    config = load_model_config(config_path).with_overrides(
        trials=trials, timeout_seconds=timeout_seconds, threshold=threshold
    )

    # Ingest: rows that arrived since the last batch pass the data contract before training sees them;
    # a refused batch fails this run here, before any training starts. Counted first so a run with
    # nothing new does not pay for a subflow (~1 s).
    if count_new_rows(config):
        ingest_new_rows(config_path=config_path)

    # Data: the training window of clean rows, checked against the contract, fingerprinted, split in time.
    contract = read_model_contract(config)
    snapshot = load_training_snapshot(config)
    check_training_snapshot(snapshot, contract, config)
    data = prepare_training_data(snapshot, config)

    # Model: Optuna search on train/validation, then the final fit scored on the holdout.
    tuning = tune_hyperparameters(data, config)
    fitted = fit_final_model(data, config, tuning.best_params, tuning.best_rounds)

    # Gates: absolute threshold, champion on the identical holdout rows, then the model must load.
    champion = score_current_champion(data, config)
    decision = decide_release(fitted, champion, config)
    run = log_training_run(config, snapshot, data, tuning, fitted, decision)
    decision = verify_logged_model(run, fitted, decision)

    # Release: register and alias a passing model; mark a failing one rejected and fail the run.
    return release_model(config, run, data, tuning, fitted, decision)
