"""The training flow's steps, in its order, on a few hundred synthetic rows of a table that is not flights: a change
to a step is checked in seconds, without Prefect, MLflow or a warehouse (the flow tests cover those).

The table is what a user brings: one row a day, other names, a growing ID, nulls in a feature, a trend and a weekly
season; and a champion to beat. Each step is called the way its task calls it (`task.fn`-free pure functions).
"""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from retrain.config import ModelConfig
from retrain.model_package import encode_rows
from retrain.outcomes import TrainingWindow, Verdict
from tasks.comparison import compare_with_champion
from tasks.features import make_target, prepare_data
from tasks.training import fit_and_score
from tasks.tuning import tune

DAYS = 420


def daily_sales(days: int = DAYS, seed: int = 3) -> pd.DataFrame:
    generator = np.random.default_rng(seed)
    day = pd.date_range("2023-01-01", periods=days, freq="D")
    weekday = day.dayofweek.to_numpy()
    promo = generator.integers(0, 2, days).astype("float64")
    promo[generator.random(days) < 0.05] = np.nan  # nulls in a feature
    units = 50 + 0.01 * np.arange(days) + 8 * (weekday >= 5) + 6 * np.nan_to_num(promo) + generator.normal(0, 2, days)
    return pd.DataFrame({"sale_day": day, "receipt_id": np.arange(1000, 1000 + days), "weekday": weekday,
                         "promo": promo, "store": np.where(weekday % 2 == 0, "north", "south"), "units": units})


@pytest.fixture(scope="module")
def config() -> ModelConfig:
    return ModelConfig.model_validate({
        "name": "shop-units",
        "source": {"table": "sales", "timestamp": "sale_day", "key": ["sale_day"]},
        "target": {"column": "units"},
        "features": {"numeric": ["weekday", "promo"], "categorical": ["store"]},
        "metric": "mae",
        "training_window": {"lookback": "365d"},
        "split": {"validation_fraction": 0.15, "holdout_fraction": 0.15, "min_rows": 30},
        "tuning": {"trials": 3, "seed": 11, "max_rounds": 80, "early_stopping_rounds": 10, "threads": 1},
        "gates": {"baseline_margin": 0.0, "bootstrap_resamples": 200},
    })


def test_the_training_steps_in_order_on_a_daily_table(config: ModelConfig) -> None:
    frame = daily_sales()
    as_of = frame["sale_day"].max().to_pydatetime() + timedelta(microseconds=1)
    window = config.training_window.ending_at(as_of)
    snapshot = frame[(frame["sale_day"] >= window.start) & (frame["sale_day"] < window.end)].reset_index(drop=True)
    data = prepare_data(snapshot, config, where="sales_clean",
                        window=TrainingWindow(window.start, window.end, as_of, False, config.training_window.lookback))
    assert len(data.split.train) + len(data.split.validation) + len(data.split.holdout) == len(snapshot) == 365
    assert data.split.train["sale_day"].max() < data.split.holdout["sale_day"].min()  # the holdout is the newest

    def encoded(part: pd.DataFrame) -> pd.DataFrame:
        return encode_rows(part, data.encoding)

    tuning = tune(config, encoded(data.split.train), make_target(data.split.train, config.target),
                  encoded(data.split.validation), make_target(data.split.validation, config.target),
                  storage=None, study_name="slice")
    assert tuning.complete >= 1 and tuning.in_study == 3
    fitted = fit_and_score(data, config, tuning.best_params, tuning.best_rounds)
    assert fitted.metrics.value < fitted.metrics.baseline  # the model beats the median on the newest rows

    # A champion that ignores the features (the training median) is beaten; a perfect one cannot be.
    first = compare_with_champion(fitted.holdout_target, fitted.holdout_predictions, None, "mae", None, 0.0, 200,
                                  0.05, seed=1, baseline=fitted.metrics.baseline, baseline_margin=0.0)
    assert first.verdict is Verdict.CHAMPION
    seen = pd.concat([data.split.train, data.split.validation])["units"]
    median = np.full(len(fitted.holdout_target), seen.median())
    beaten = compare_with_champion(fitted.holdout_target, fitted.holdout_predictions, median, "mae", None, 0.0, 200,
                                   0.05, seed=1)
    oracle = compare_with_champion(fitted.holdout_target, fitted.holdout_predictions, fitted.holdout_target, "mae",
                                   None, 0.0, 200, 0.05, seed=1)
    assert beaten.verdict is Verdict.CHALLENGER and oracle.verdict is Verdict.REJECTED


def test_a_window_too_short_to_split_names_the_window(config: ModelConfig) -> None:
    frame = daily_sales(days=60)
    end = datetime(2023, 3, 2)
    with pytest.raises(Exception, match="too few to split in time"):
        prepare_data(frame, config, where="sales_clean",
                     window=TrainingWindow(datetime(2023, 1, 1), end, end, True, None))
