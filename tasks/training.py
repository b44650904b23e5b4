"""Fitting LightGBM and scoring it: the metrics every run reports, against a naive baseline."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from sklearn import metrics as sk

from retrain.config import LOWER_IS_BETTER, METRICS_BY_TASK, ModelConfig, TaskType
from retrain.model_package import encode_rows
from tasks.features import PreparedData, make_target

# Our metric names → LightGBM's names for the same quantity on the validation set (tuning, pruning).
LIGHTGBM_METRIC: dict[str, str] = {
    "mae": "l1",
    "rmse": "rmse",
    "r2": "l2",
    "auc": "auc",
    "log_loss": "binary_logloss",
    "f1": "binary_logloss",
}
PROBABILITY_CLIP = 1e-15


@dataclass(frozen=True)
class Metrics:
    """A model's holdout scores and the naive baseline's, for the configured metric and every other one.

    The baseline of each metric is the constant that metric rewards (median for MAE, mean for RMSE and
    R², base rate for a binary task): the score of a model that ignores the features.
    """

    name: str
    value: float
    baseline: float
    all: Mapping[str, float] = field(default_factory=dict)
    baseline_all: Mapping[str, float] = field(default_factory=dict)

    def as_mlflow(self, prefix: str = "holdout") -> dict[str, float]:
        values = {f"{prefix}_{name}": value for name, value in self.all.items()}
        values.update({f"baseline_{name}": value for name, value in self.baseline_all.items()})
        values[f"baseline_{self.name}"] = self.baseline
        return values


def _rmse(y: np.ndarray, p: np.ndarray) -> float:
    return float(math.sqrt(sk.mean_squared_error(y, p)))


def _log_loss(y: np.ndarray, p: np.ndarray) -> float:
    return float(sk.log_loss(y, np.clip(p, PROBABILITY_CLIP, 1 - PROBABILITY_CLIP), labels=[0, 1]))


def _auc(y: np.ndarray, p: np.ndarray) -> float:
    # AUC is undefined on one class; 0.5 is what a constant predictor earns, so it never wins a gate.
    return float(sk.roc_auc_score(y, p)) if len(np.unique(y)) == 2 else 0.5


METRIC_FUNCTIONS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "mae": lambda y, p: float(sk.mean_absolute_error(y, p)),
    "rmse": _rmse,
    "r2": lambda y, p: float(sk.r2_score(y, p)) if len(y) >= 2 else math.nan,  # undefined on one row
    "auc": _auc,
    "log_loss": _log_loss,
    "f1": lambda y, p: float(sk.f1_score(y, p >= 0.5, zero_division=0.0)),
}


def score_predictions(y_true: np.ndarray, predictions: np.ndarray, task: TaskType) -> dict[str, float]:
    """Every metric of the task, by name."""
    y_true, predictions = np.asarray(y_true, dtype="float64"), np.asarray(predictions, dtype="float64")
    return {name: METRIC_FUNCTIONS[name](y_true, predictions) for name in METRICS_BY_TASK[task]}


def baseline_scores(y_train: np.ndarray, y_true: np.ndarray, task: TaskType) -> dict[str, float]:
    """Every metric of the task scored for its own naive baseline, trained on `y_train`."""
    return {
        name: METRIC_FUNCTIONS[name](np.asarray(y_true, dtype="float64"),
                                     baseline_predictions(y_train, len(y_true), task, name))
        for name in METRICS_BY_TASK[task]
    }


def baseline_predictions(y_train: np.ndarray, rows: int, task: TaskType, metric: str) -> np.ndarray:
    """What a model that ignores the features would predict: the bar a real model must clear.

    The median minimises MAE, the mean squared error; for a binary task the base rate.
    """
    y_train = np.asarray(y_train, dtype="float64")
    if task is TaskType.BINARY:
        constant = float(y_train.mean())
    else:
        constant = float(np.median(y_train)) if metric == "mae" else float(y_train.mean())
    return np.full(rows, constant)


def base_params(config: ModelConfig) -> dict[str, Any]:
    """The parameters every fit shares: deterministic, seeded, quiet, bounded threads."""
    params: dict[str, Any] = {
        "metric": LIGHTGBM_METRIC[config.metric],
        "seed": config.tuning.seed,
        "deterministic": True,
        "force_col_wise": True,
        "num_threads": config.tuning.threads,
        "verbosity": -1,
        "feature_pre_filter": False,
    }
    if config.target.task is TaskType.BINARY:
        params["objective"] = "binary"
    return params


def make_dataset(features: pd.DataFrame, target: pd.Series, categorical: list[str]) -> lgb.Dataset:
    return lgb.Dataset(
        features,
        label=target.to_numpy(),
        categorical_feature=categorical or "auto",
        # verbosity here too: LightGBM prints Dataset warnings from C++ before the training params apply
        params={"feature_pre_filter": False, "verbosity": -1},
        free_raw_data=False,
    )


def fit_booster(
    features: pd.DataFrame,
    target: pd.Series,
    params: Mapping[str, Any],
    rounds: int,
    categorical: list[str],
) -> lgb.Booster:
    """A final fit for a fixed number of rounds (found by early stopping during tuning)."""
    return lgb.train(dict(params), make_dataset(features, target, categorical), num_boost_round=max(rounds, 1))


def is_improvement(candidate: float, reference: float, metric: str, margin: float = 0.0) -> bool:
    """Whether `candidate` beats `reference` by more than `margin` in the metric's own direction."""
    if LOWER_IS_BETTER[metric]:
        return candidate < reference - margin
    return candidate > reference + margin


def feature_importance(booster: lgb.Booster) -> dict[str, float]:
    """Total gain per feature, largest first: which inputs the model leans on."""
    gains = booster.feature_importance(importance_type="gain")
    pairs = sorted(zip(booster.feature_name(), gains, strict=True), key=lambda pair: -pair[1])
    return {name: float(gain) for name, gain in pairs}


@dataclass(frozen=True)
class FittedModel:
    """The final booster with its holdout inputs, predictions and scores."""

    booster: lgb.Booster
    rounds: int
    metrics: Metrics
    holdout_target: np.ndarray
    holdout_predictions: np.ndarray


def fit_and_score(data: PreparedData, config: ModelConfig, params: Mapping[str, Any], rounds: int) -> FittedModel:
    """Refit on train + validation with the tuned rounds, then score on the untouched holdout.

    Refitting on both parts gives the final model the most recent pre-holdout data, which matters
    when the data drifts; the holdout stays unseen by tuning and fitting alike. Holdout rows are
    encoded by the model package, exactly as the registered model will encode them.
    """
    fit_rows = pd.concat([data.split.train, data.split.validation], ignore_index=True)
    fit_target = make_target(fit_rows, config.target)
    booster = fit_booster(
        encode_rows(fit_rows, data.encoding), fit_target, params, rounds, list(data.encoding.categorical)
    )
    holdout_target = make_target(data.split.holdout, config.target).to_numpy()
    predictions = np.asarray(booster.predict(encode_rows(data.split.holdout, data.encoding)), dtype="float64")
    scores = score_predictions(holdout_target, predictions, config.target.task)
    baselines = baseline_scores(fit_target.to_numpy(), holdout_target, config.target.task)
    return FittedModel(
        booster=booster,
        rounds=rounds,
        metrics=Metrics(
            name=config.metric,
            value=scores[config.metric],
            baseline=baselines[config.metric],
            all=scores,
            baseline_all=baselines,
        ),
        holdout_target=holdout_target,
        holdout_predictions=predictions,
    )


# --- Prefect tasks -------------------------------------------------------------------------------


@task(name="fit-final-model", cache_policy=NO_CACHE)
def fit_final_model(data: PreparedData, config: ModelConfig, params: Mapping[str, Any], rounds: int) -> FittedModel:
    fitted = fit_and_score(data, config, params, rounds)
    get_run_logger().info(
        "final model: %d rounds, holdout %s %.4f (baseline %.4f)",
        rounds,
        config.metric,
        fitted.metrics.value,
        fitted.metrics.baseline,
    )
    return fitted
