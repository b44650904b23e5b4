"""Fitting LightGBM and scoring it: the metrics every run reports, against the naive forecasters, and the refit.

The naive forecasters (`retrain.baselines`) are scored on the identical holdout rows, by the no-leak rule: only
values known before the holdout cut-off, which is what the model was fitted on. The best of them is the bar of
the baseline gate.
"""

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

from retrain.baselines import (
    NaiveForecaster,
    default_forecasters,
    entity_columns,
    forecast_all,
    parse_forecaster,
)
from retrain.config import LOWER_IS_BETTER, METRICS_BY_TASK, ModelConfig, TaskType
from retrain.model_package import Encoding, encode_rows, predict_frame
from tasks.features import PreparedData, learning_target, make_target, model_encoding, with_residual

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
    """A model's holdout scores and the naive forecasters', for the configured metric and every other one.

    `baselines` holds each naive forecaster's score in the configured metric, by name (`median`, `last-value`,
    `seasonal-7d`); `baseline` is the best of them, `baseline_name` which one, and `baseline_all` that one's
    score in every metric: the bar the model must clear.
    """

    name: str
    value: float
    baseline: float
    all: Mapping[str, float] = field(default_factory=dict)
    baseline_all: Mapping[str, float] = field(default_factory=dict)
    baselines: Mapping[str, float] = field(default_factory=dict)
    baseline_name: str | None = None

    def as_mlflow(self, prefix: str = "holdout") -> dict[str, float]:
        values = {f"{prefix}_{name}": value for name, value in self.all.items()}
        values.update({f"baseline_{name}": value for name, value in self.baseline_all.items()})
        values[f"baseline_{self.name}"] = self.baseline
        # one metric per naive forecaster, in the configured metric: baseline_median, baseline_seasonal_7d
        values.update({f"baseline_{_metric_key(name)}": value for name, value in self.baselines.items()})
        return values


def _metric_key(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name)


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


def configured_forecasters(config: ModelConfig, times: pd.Series) -> list[NaiveForecaster]:
    """The naive forecasters of `gates.baselines`, or the defaults for the metric and the window's cadence."""
    if config.gates.baselines is not None:
        return [parse_forecaster(spec) for spec in config.gates.baselines]
    return default_forecasters(config.metric, config.target.task is TaskType.BINARY, times)


@dataclass(frozen=True)
class NaiveScores:
    """Every naive forecaster's holdout predictions and scores, and which one is the bar."""

    predictions: Mapping[str, np.ndarray]
    scores: Mapping[str, Mapping[str, float]]  # forecaster → metric → value
    best: str


def score_naive_forecasters(
    history: pd.DataFrame, holdout: pd.DataFrame, config: ModelConfig, forecasters: list[NaiveForecaster]
) -> NaiveScores:
    """Score each naive forecaster on the holdout rows from the history before the holdout's first instant.

    The label of the history is `make_target`'s (for a binary task the 0/1 label, so the constant is the base
    rate and last-value is the last label).
    """
    timestamp = config.source.timestamp
    labelled = history[[c for c in dict.fromkeys([timestamp, *_entity(config)]) if c in history.columns]].copy()
    labelled["__label"] = make_target(history, config.target).to_numpy()
    cut = pd.Timestamp(holdout[timestamp].min()) if len(holdout) else None
    predictions = forecast_all(
        forecasters, labelled, holdout, timestamp=timestamp, target="__label", entity=_entity(config),
        known_until=None if cut is None else cut.to_pydatetime(),
    )
    y_true = make_target(holdout, config.target).to_numpy()
    scores = {name: score_predictions(y_true, values, config.target.task) for name, values in predictions.items()}
    direction = 1.0 if LOWER_IS_BETTER[config.metric] else -1.0
    best = min(scores, key=lambda name: direction * _finite(scores[name][config.metric], direction))
    return NaiveScores(predictions=predictions, scores=scores, best=best)


def _finite(value: float, direction: float) -> float:
    return value if math.isfinite(value) else direction * math.inf


def _entity(config: ModelConfig) -> list[str]:
    return entity_columns(config.source.key, config.source.timestamp, config.gates.baseline_group)


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
    naive_predictions: Mapping[str, np.ndarray] = field(default_factory=dict)


def fit_and_score(data: PreparedData, config: ModelConfig, params: Mapping[str, Any], rounds: int) -> FittedModel:
    """Refit on train + validation with the tuned rounds, then score on the untouched holdout.

    Refitting on both parts gives the final model the most recent pre-holdout data, which matters
    when the data drifts; the holdout stays unseen by tuning and fitting alike. Holdout rows are
    encoded by the model package, exactly as the registered model will encode them.
    """
    fit_rows = pd.concat([data.split.train, data.split.validation], ignore_index=True)
    fit_target = learning_target(fit_rows, config, data.encoding)  # the label, or its change from the naive value
    booster = fit_booster(
        encode_rows(fit_rows, data.encoding), fit_target, params, rounds, list(data.encoding.categorical)
    )
    predictions = predict_frame(booster, data.encoding, data.split.holdout)
    return scored_model(booster, rounds, predictions, fit_rows, data, config)


def scored_model(
    booster: Any, rounds: int, predictions: np.ndarray, known: pd.DataFrame, data: PreparedData, config: ModelConfig
) -> FittedModel:
    """A booster's holdout predictions scored for every metric, next to the naive forecasters fed `known` (the
    labelled rows before the holdout), whichever engine fitted it."""
    holdout_target = make_target(data.split.holdout, config.target).to_numpy()
    scores = score_predictions(holdout_target, predictions, config.target.task)
    forecasters = configured_forecasters(
        config, pd.concat([known[config.source.timestamp], data.split.holdout[config.source.timestamp]])
    )
    naive = score_naive_forecasters(known, data.split.holdout, config, forecasters)
    return FittedModel(
        booster=booster,
        rounds=rounds,
        metrics=Metrics(
            name=config.metric,
            value=scores[config.metric],
            baseline=naive.scores[naive.best][config.metric],
            all=scores,
            baseline_all=dict(naive.scores[naive.best]),
            baselines={name: values[config.metric] for name, values in naive.scores.items()},
            baseline_name=naive.best,
        ),
        holdout_target=holdout_target,
        holdout_predictions=predictions,
        naive_predictions=naive.predictions,
    )


@dataclass(frozen=True)
class ReleasedModel:
    """The booster that is logged and registered, with its encoding and its predictions on the holdout rows.

    `refit` tells whether it is the gated model refitted on the whole window (the holdout's metrics remain the
    gated model's: the refit has seen the holdout) or the gated model itself.
    """

    booster: lgb.Booster
    encoding: Encoding
    rounds: int
    rows: int
    refit: bool
    holdout_predictions: np.ndarray


def refit_rounds(rounds: int, rows_all: int, rows_train: int) -> int:
    """Boosting rounds for a fit on more rows: the tuned rounds (found by early stopping on `rows_train` rows)
    scaled by `rows_all / rows_train`, as each round's step covers a share of the rows' error."""
    if rows_train <= 0:
        return max(rounds, 1)
    return max(1, int(round(rounds * rows_all / rows_train)))


def refit_on_window(data: PreparedData, config: ModelConfig, params: Mapping[str, Any], rounds: int) -> ReleasedModel:
    """The gated model's recipe fitted on every labelled row of the window: train, validation and holdout.

    The newest rows reach the released model (on a trending target, leaving the holdout out cost about 28% MAE);
    the encoding is learned from the whole window, so a category first seen in the holdout is known too.
    """
    rows = pd.concat([data.split.train, data.split.validation, data.split.holdout], ignore_index=True)
    encoding = with_residual(model_encoding(rows, config), rows, config, data.window.end)
    scaled = refit_rounds(rounds, len(rows), len(data.split.train))
    booster = fit_booster(encode_rows(rows, encoding), learning_target(rows, config, encoding), params, scaled,
                          list(encoding.categorical))
    predictions = predict_frame(booster, encoding, data.split.holdout)
    return ReleasedModel(booster=booster, encoding=encoding, rounds=scaled, rows=len(rows), refit=True,
                         holdout_predictions=predictions)


def gated_as_released(data: PreparedData, fitted: FittedModel) -> ReleasedModel:
    """The gated model released as it is (`training.refit: false`, or a rejected model that is not released)."""
    rows = len(data.split.train) + len(data.split.validation)
    return ReleasedModel(booster=fitted.booster, encoding=data.encoding, rounds=fitted.rounds, rows=rows,
                         refit=False, holdout_predictions=fitted.holdout_predictions)


# --- Prefect tasks -------------------------------------------------------------------------------


@task(name="fit-final-model", cache_policy=NO_CACHE)
def fit_final_model(data: PreparedData, config: ModelConfig, params: Mapping[str, Any], rounds: int) -> FittedModel:
    fitted = fit_and_score(data, config, params, rounds)
    get_run_logger().info(
        "final model: %d rounds, holdout %s %.4f; naive forecasters %s (best %s)",
        rounds,
        config.metric,
        fitted.metrics.value,
        ", ".join(f"{name} {value:.4f}" for name, value in fitted.metrics.baselines.items()),
        fitted.metrics.baseline_name,
    )
    return fitted


@task(name="refit-released-model", cache_policy=NO_CACHE)
def refit_released_model(
    data: PreparedData, config: ModelConfig, params: Mapping[str, Any], fitted: FittedModel, passed: bool
) -> ReleasedModel:
    """After the gates passed, refit on the whole window (`training.refit`); otherwise the gated model as it is."""
    if not passed or not config.training.refit:
        return gated_as_released(data, fitted)
    released = refit_on_window(data, config, params, fitted.rounds)
    get_run_logger().info(
        "refitted on the whole window: %d rows, %d rounds (the gated model: %d rows, %d rounds)",
        released.rows, released.rounds, len(data.split.train) + len(data.split.validation), fitted.rounds,
    )
    return released
