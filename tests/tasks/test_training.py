"""Metrics, baselines and the final fit on real rows."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from retrain.config import ModelConfig, TaskType, load_model_config
from tasks.features import prepare_data
from tasks.training import (
    baseline_predictions,
    baseline_scores,
    fit_and_score,
    gated_as_released,
    is_improvement,
    refit_on_window,
    refit_rounds,
    score_predictions,
)
from tests.conftest import EXAMPLE_CONFIG, window_around

pytestmark = pytest.mark.model


def test_regression_metrics_match_hand_computed_values() -> None:
    scores = score_predictions(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 5.0]), TaskType.REGRESSION)
    assert scores["mae"] == pytest.approx(2 / 3)
    assert scores["rmse"] == pytest.approx(math.sqrt(4 / 3))
    assert scores["r2"] == pytest.approx(1 - 4 / 2)


def test_classification_metrics_on_a_perfect_ranking() -> None:
    scores = score_predictions(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.6, 0.9]), TaskType.BINARY)
    assert scores["auc"] == 1.0 and scores["f1"] == 1.0
    assert scores["log_loss"] == pytest.approx(-np.mean(np.log([0.9, 0.6, 0.6, 0.9])))


def test_auc_on_one_class_is_the_constant_predictor_score() -> None:
    assert score_predictions(np.zeros(4), np.array([0.1, 0.2, 0.3, 0.4]), TaskType.BINARY)["auc"] == 0.5


@pytest.mark.parametrize(
    ("metric", "task", "expected"),
    [("mae", TaskType.REGRESSION, 2.0), ("rmse", TaskType.REGRESSION, 25.0 / 4), ("auc", TaskType.BINARY, 6.25)],
)

def test_baseline_is_the_right_constant(metric: str, task: TaskType, expected: float) -> None:
    y = np.array([1.0, 2.0, 2.0, 20.0])
    assert baseline_predictions(y, 3, task, metric).tolist() == [expected] * 3


def test_every_metric_has_its_own_baseline() -> None:
    y_train, y_true = np.array([1.0, 2.0, 2.0, 20.0]), np.array([2.0, 3.0, 4.0])
    scores = baseline_scores(y_train, y_true, TaskType.REGRESSION)
    assert scores["mae"] == pytest.approx(1.0)  # the median, 2
    assert scores["rmse"] == pytest.approx(math.sqrt(np.mean((y_true - 6.25) ** 2)))  # the mean, 6.25
    assert set(baseline_scores(np.array([0, 1, 1.0]), np.array([0, 1.0]), TaskType.BINARY)) == {"auc", "log_loss", "f1"}


@pytest.mark.parametrize(
    ("candidate", "reference", "metric", "margin", "better"),
    [(1.0, 2.0, "mae", 0.0, True), (2.0, 2.0, "mae", 0.0, False), (1.5, 2.0, "mae", 0.5, False),
     (0.8, 0.7, "auc", 0.0, True), (0.7, 0.7, "auc", 0.0, False), (0.75, 0.7, "auc", 0.1, False)],
)
def test_improvement_respects_direction_and_margin(
    candidate: float, reference: float, metric: str, margin: float, better: bool
) -> None:
    assert is_improvement(candidate, reference, metric, margin) is better


def test_final_fit_beats_the_baseline_on_real_flights(flights_small) -> None:
    config = load_model_config(EXAMPLE_CONFIG)
    data = prepare_data(flights_small, config, where="flights", window=window_around(flights_small))
    params = {"objective": "l1", "learning_rate": 0.1, "num_leaves": 31, "verbosity": -1, "seed": 1,
              "deterministic": True, "force_col_wise": True, "num_threads": 2}
    fitted = fit_and_score(data, config, params, rounds=60)
    assert fitted.metrics.value < fitted.metrics.baseline == fitted.metrics.baseline_all["mae"]
    assert set(fitted.metrics.as_mlflow()) >= {"holdout_mae", "baseline_mae", "baseline_rmse", "baseline_r2"}
    assert len(fitted.holdout_predictions) == len(data.split.holdout)
    assert fitted.booster.feature_name() == config.features.all


def test_refit_rounds_scale_with_the_rows() -> None:
    assert refit_rounds(100, rows_all=1000, rows_train=700) == 143
    assert refit_rounds(1, rows_all=10, rows_train=9) == 1
    assert refit_rounds(50, rows_all=100, rows_train=0) == 50


def tiny_daily(days: int = 120) -> pd.DataFrame:
    """A trending daily series with a weekly pattern and one feature: what a refit must follow."""
    rng = np.random.default_rng(3)
    index = pd.date_range("2024-01-01", periods=days, freq="D")
    noise = rng.normal(0, 0.5, days)
    return pd.DataFrame({"day": index, "x": rng.normal(size=days),
                         "units": np.arange(days) * 0.2 + (index.dayofweek >= 5) * 3 + noise})


def tiny_config(**overrides: object) -> ModelConfig:
    raw = {"name": "tiny", "source": {"table": "sales", "timestamp": "day", "key": ["day"]},
           "target": {"column": "units"}, "features": {"numeric": ["x"], "calendar": ["dayofweek", "dayofyear"]},
           "metric": "mae", "training_window": {"lookback": "400d"},
           "split": {"validation_fraction": 0.15, "holdout_fraction": 0.15, "min_rows": 10}, **overrides}
    return ModelConfig.model_validate(raw)


TINY_PARAMS = {"objective": "l1", "learning_rate": 0.2, "num_leaves": 7, "min_data_in_leaf": 3, "verbosity": -1,
               "seed": 1, "deterministic": True, "force_col_wise": True, "num_threads": 1}


def test_the_refit_sees_every_row_and_the_gated_model_never_the_holdout() -> None:
    frame = tiny_daily()
    config = tiny_config()
    data = prepare_data(frame, config, where="sales", window=window_around(frame, "day"))
    fitted = fit_and_score(data, config, TINY_PARAMS, rounds=40)
    refit = refit_on_window(data, config, TINY_PARAMS, fitted.rounds)
    assert refit.refit and refit.rows == len(frame)
    assert refit.rounds == refit_rounds(40, len(frame), len(data.split.train)) > fitted.rounds
    assert refit.booster.feature_name() == ["x", "day_dayofweek", "day_dayofyear"]
    holdout_error = np.abs(refit.holdout_predictions - fitted.holdout_target).mean()
    assert holdout_error < fitted.metrics.value  # the refit has learned the newest rows
    # The gated model's holdout predictions do not change when the holdout's labels do: it never saw them.
    shifted = frame.copy()
    shifted.loc[shifted["day"] >= data.split.holdout["day"].min(), "units"] += 100
    again = fit_and_score(prepare_data(shifted, config, where="sales", window=window_around(shifted, "day")),
                          config, TINY_PARAMS, rounds=40)
    np.testing.assert_array_equal(again.holdout_predictions, fitted.holdout_predictions)
    unchanged = gated_as_released(data, fitted)
    assert not unchanged.refit and unchanged.booster is fitted.booster


def test_seasonal_naive_is_the_bar_on_a_weekly_series() -> None:
    frame = tiny_daily()
    config = tiny_config(gates={"baselines": ["median", "last-value", "seasonal 7d"]})
    data = prepare_data(frame, config, where="sales", window=window_around(frame, "day"))
    fitted = fit_and_score(data, config, TINY_PARAMS, rounds=40)
    assert set(fitted.metrics.baselines) == {"median", "last-value", "seasonal-7d"}
    assert fitted.metrics.baseline_name == "seasonal-7d"  # it knows the weekend; the median and last value do not
    assert fitted.metrics.baseline == min(fitted.metrics.baselines.values())
    assert fitted.metrics.as_mlflow()["baseline_seasonal_7d"] == fitted.metrics.baseline


def test_a_residual_over_last_week_follows_a_trend_the_level_model_cannot() -> None:
    """Trees cannot extrapolate: on a rising series the level model predicts the training range, the residual
    model adds last week's value back and follows the trend. The package looks that value up by itself."""
    frame = tiny_daily(200)
    level_config = tiny_config()
    residual_config = tiny_config(target={"column": "units", "residual_of": "seasonal 7d"})
    level = fit_and_score(prepare_data(frame, level_config, where="sales", window=window_around(frame, "day")),
                          level_config, TINY_PARAMS, rounds=40)
    data = prepare_data(frame, residual_config, where="sales", window=window_around(frame, "day"))
    residual = fit_and_score(data, residual_config, TINY_PARAMS, rounds=40)
    assert data.encoding.residual is not None and data.encoding.inputs == ("x", "day")
    assert residual.metrics.value < 0.75 * level.metrics.value
    # the package, read back from its JSON as a served model reads it, predicts what the flow scored
    from retrain.model_package import Encoding, predict_frame

    packaged = Encoding.from_json(data.encoding.to_json())
    np.testing.assert_array_equal(predict_frame(residual.booster, packaged, data.split.holdout),
                                  residual.holdout_predictions)
    refit = refit_on_window(data, residual_config, TINY_PARAMS, 40)
    assert refit.encoding.residual.cut == pd.Timestamp(data.window.end).isoformat()
    assert len(refit.encoding.residual.values) == len(frame) > len(data.encoding.residual.values)


def test_residual_of_must_follow_the_series() -> None:
    with pytest.raises(ValueError, match="constant"):
        tiny_config(target={"column": "units", "residual_of": "median"})


def test_residual_of_is_refused_on_the_dask_engine() -> None:
    with pytest.raises(ValueError, match="dask"):
        tiny_config(target={"column": "units", "residual_of": "seasonal 7d"}, training={"engine": "dask"})
