"""The example data as the package ships it: dates cut where the data itself dates its flights."""

from __future__ import annotations

from datetime import datetime

import pandas as pd

from tasks.example_data import read_flights_example


def test_until_cuts_at_the_local_date_the_data_gives_each_flight(flights_all: pd.DataFrame) -> None:
    until_march = read_flights_example(until=datetime(2013, 3, 1))
    assert len(until_march) == int((flights_all["month"] < 3).sum()) == 50_009
    assert until_march["month"].max() == 2  # a Feb 28 evening flight is already March 1 in UTC, and kept
    assert until_march["time_hour"].max() >= pd.Timestamp("2013-03-01")
    assert until_march["time_hour"].dt.tz is None  # the warehouse's timestamps stay naive UTC
