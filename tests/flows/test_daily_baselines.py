"""A daily table where "the same day last week" is hard to beat: the seasonal-naive gate rejects a model that
beats the median, and the same model with calendar features from the timestamp passes it.

The table is real: NYC flights 2013 counted per day and airport (a strong weekly pattern), with that day's
weather and the number of destinations served, March to June."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml

from flows.training import train_model
from retrain.config import load_model_config
from retrain.contract import write_contract
from retrain.warehouse import get_warehouse, write_frame
from tasks.contract import infer_contract

pytestmark = [pytest.mark.usefixtures("prefect_harness"), pytest.mark.model]


def flights_per_day(flights: pd.DataFrame) -> pd.DataFrame:
    """Flights per day and origin with the day's weather: one row a day per airport."""
    frame = flights.assign(day=flights["time_hour"].dt.floor("D"))
    daily = frame.groupby(["day", "origin"]).agg(
        flights=("flight", "size"), temp=("temp", "mean"), wind_speed=("wind_speed", "mean"),
        precip=("precip", "sum"), visib=("visib", "mean"), distance=("distance", "mean"), dests=("dest", "nunique"),
    ).reset_index()
    return daily[(daily["day"] >= "2013-03-01") & (daily["day"] < "2013-07-01")].reset_index(drop=True)


def daily_config(folder: Path, frame: pd.DataFrame, **features: object) -> Path:
    raw = {
        "name": "flights-per-day",
        "source": {"table": "flights_daily", "timestamp": "day", "key": ["day", "origin"]},
        "target": {"column": "flights"},
        "features": {"numeric": ["temp", "wind_speed", "precip", "visib", "distance", "dests"],
                     "categorical": ["origin"], **features},
        "metric": "mae",
        "training_window": {"start": "2013-03-01", "end": "2013-07-01"},
        "split": {"validation_fraction": 0.15, "holdout_fraction": 0.15, "min_rows": 30},
        "tuning": {"trials": 3, "seed": 7, "max_rounds": 150, "early_stopping_rounds": 20},
        "gates": {"baselines": ["median", "last-value", "seasonal 7d"], "baseline_margin": 0.0},
        "contract": "flights_daily.contract.yaml",
    }
    path = folder / "daily.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    contract_path = folder / "flights_daily.contract.yaml"
    if not contract_path.exists():
        write_contract(infer_contract(frame, load_model_config(path)), contract_path)
    return path


def test_seasonal_naive_rejects_a_model_that_beats_the_median_and_calendar_features_pass_it(
    retrain_home: Path, flights_all: pd.DataFrame
) -> None:
    frame = flights_per_day(flights_all)
    write_frame(get_warehouse(), frame, "flights_daily", if_exists="replace")

    plain = train_model(config_path=str(daily_config(retrain_home.parent, frame)))
    assert (plain.decision, plain.gate, plain.version) == ("rejected", "baseline", None)
    assert plain.metric_value < plain.baselines["median"]  # it beats the median...
    assert plain.baseline_name == "seasonal-7d" and plain.metric_value > plain.baselines["seasonal-7d"]  # ...not this
    assert "seasonal-7d" in plain.reason and plain.baseline_metric == plain.baselines["seasonal-7d"]

    weekly = train_model(config_path=str(daily_config(
        retrain_home.parent, frame, calendar=["dayofweek", "is_weekend", "holiday"], holidays="US")))
    assert weekly.decision == "champion" and weekly.released_fit == "refit"
    assert weekly.metric_value < weekly.baselines["seasonal-7d"] == plain.baselines["seasonal-7d"]
