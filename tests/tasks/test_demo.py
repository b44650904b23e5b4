"""The demo's pure steps on inline frames: the plan of a replay, a day's faults, what the server is sent, the month
table read back from a ledger, batches and served predictions."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from retrain.warehouse import LedgerEntry
from tasks.demo import (
    FAULTS,
    REFUSED_SHARE,
    arrived_day,
    labels_of,
    plan_replay,
    records_of,
    request_id,
    story_counts,
    summarise_months,
)

START = datetime(2013, 3, 1)
KEY = ["time_hour", "carrier", "flight", "origin"]


def flights(days: int = 3, per_day: int = 20) -> pd.DataFrame:
    times = [START + timedelta(days=day, hours=hour % 24) for day in range(days) for hour in range(per_day)]
    count = len(times)
    return pd.DataFrame({"time_hour": times, "carrier": ["UA"] * count, "flight": np.arange(count),
                         "origin": ["EWR"] * count, "distance": np.full(count, 1000), "tailnum": ["N1"] * count,
                         "arr_delay": np.arange(count, dtype="float64")})


def test_a_plan_brings_faults_every_fifth_day_and_refuses_one_feed() -> None:
    plan = plan_replay(START, 21, 3)
    assert plan.end == START + timedelta(days=21) and plan.refused_day == 7
    assert sorted(plan.faulty_days) == [2, 12, 17] and set(plan.faulty_days.values()) <= set(FAULTS)
    assert plan.refused_day not in plan.faulty_days


@pytest.mark.parametrize("kind", list(FAULTS))
def test_a_faulty_day_breaks_three_rows_and_leaves_the_truth_alone(kind: str) -> None:
    frame = flights()
    plan = plan_replay(START, 21, 3)
    day = arrived_day(frame, "time_hour", plan.__class__(START, 3, 3, {1: kind}, None), 1)
    column, value = FAULTS[kind]
    broken = day.delivered[column].map(lambda cell: cell == value if value is not None else cell is None)
    assert broken.sum() == 3 and len(day.delivered) == len(day.clean) == 20
    assert (day.clean["time_hour"] >= START + timedelta(days=1)).all() and day.clean[column].notna().all()
    assert day.fault == kind


def test_the_refused_day_breaks_a_fifth_of_its_rows() -> None:
    day = arrived_day(flights(), "time_hour", plan_replay(START, 3, 3), 1)
    assert (day.delivered["distance"] == "n/a").sum() == int(np.ceil(20 * REFUSED_SHARE))


def test_records_and_labels_are_what_a_client_sends() -> None:
    frame = flights(days=1, per_day=2)
    record = records_of(frame, ["distance", *KEY])[0]
    assert record["time_hour"].startswith("2013-03-01T00:00:00") and record["distance"] == 1000
    assert request_id(record, KEY) == f"{record['time_hour']}/UA/0/EWR"
    assert labels_of(frame, KEY, "arr_delay") == [{"request_id": request_id(r, KEY), "actual": r["arr_delay"]}
                                                  for r in records_of(frame, [*KEY, "arr_delay"])]


def test_the_month_table_counts_what_the_stores_hold() -> None:
    batches = pd.DataFrame({"as_of": [START + timedelta(days=1), START + timedelta(days=2), START + timedelta(days=32)],
                            "rows_read": [100, 50, 80], "rows_quarantined": [3, 50, 0],
                            "status": ["passed", "refused", "passed"]})
    ledger = [
        LedgerEntry("m", "retrain-requested", "fresh-labels: 2,000 new labelled rows", "flow:monitor-model",
                    START + timedelta(days=3)),
        LedgerEntry("m", "gated-out", "does not beat the champion", "flow:train-model", START + timedelta(days=3)),
        LedgerEntry("m", "promoted", "canary no worse", "schedule", START + timedelta(days=35), "1", "2"),
        LedgerEntry("m", "rolled-back", "a person", "person:demo", START + timedelta(days=40), "2", "1"),
    ]
    served = pd.DataFrame({"predicted_at": [START, START + timedelta(days=33)], "version": ["1", "2"],
                           "prediction": [10.0, 20.0], "actual": [12.0, np.nan]})
    months = summarise_months(batches, ledger, served, pd.Series([0.0, 0.0]), START, START + timedelta(days=45))
    march, april = months
    assert (march.month, march.rows_in, march.quarantined, march.refused_batches) == ("2013-03", 150, 53, 1)
    assert (march.retrains, march.rejections, march.promotions, march.champion) == (1, 1, 0, None)
    assert (march.served, march.labelled, march.mae, march.naive_mae) == (1, 1, 2.0, 12.0)
    assert (april.promotions, april.rollbacks, april.champion, april.labelled, april.mae) == (1, 1, "1", 0, None)
    story = story_counts(months, ledger)
    assert story["retrain_requests"] == 1 and story["rollbacks"] == 1 and story["served_predictions"] == 2


def test_the_naive_column_is_the_best_of_the_models_forecasters_on_the_served_rows(
    retrain_home: Path, tmp_path: Path
) -> None:
    """Every flight repeats its delay a week later: the seasonal forecaster (same flight, a week earlier) is exact
    and wins over the median, and it reads only labelled rows of earlier weeks."""
    from retrain.config import load_model_config
    from retrain.warehouse import get_warehouse, write_frame
    from tasks.demo import naive_predictions
    from tests.conftest import write_model_config

    config = load_model_config(write_model_config(tmp_path, gates={"baselines": ["median", "seasonal 7d"]}))
    days = [START + timedelta(days=day, hours=9) for day in range(21)]
    clean = pd.DataFrame({"time_hour": [moment for moment in days for _ in range(2)],
                          "carrier": ["UA", "AA"] * 21, "flight": [1, 2] * 21, "origin": ["EWR"] * 42,
                          "arr_delay": [float(day.weekday() * 10 + flight) for day in days for flight in (1, 2)]})
    write_frame(get_warehouse(), clean, config.source.clean, if_exists="replace")
    served = clean[clean["time_hour"] >= START + timedelta(days=14)].reset_index(drop=True)
    served = pd.DataFrame({"event_at": served["time_hour"], "actual": served["arr_delay"],
                           "key": [json.dumps([str(t), c, f, o]) for t, c, f, o in
                                   served[["time_hour", "carrier", "flight", "origin"]].itertuples(index=False)]})
    naive = naive_predictions(get_warehouse(), config, served)
    assert naive.name == "seasonal-7d"
    assert naive.tolist() == served["actual"].tolist()
