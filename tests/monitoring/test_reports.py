"""Reports on real flights rows: January against July drifts and names the columns; a window against itself
does not. Numbers are read by metric and column name (monitoring/metrics.py)."""

from __future__ import annotations

from datetime import date, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from monitoring.metrics import read_drift, read_performance
from monitoring.reports import (
    PREDICTION,
    ReportColumns,
    ReportLabel,
    build_drift_report,
    build_performance_report,
    daily_metric_chart,
    performance_page,
    save_report,
)

NUMERIC = ("sched_dep_time", "distance", "temp", "dewp", "humid", "wind_speed", "pressure", "visib")
CATEGORICAL = ("carrier", "origin")
COLUMNS = ReportColumns(NUMERIC, CATEGORICAL, target="arr_delay")


def month(frame: pd.DataFrame, number: int, rows: int = 5000) -> pd.DataFrame:
    """A seeded sample of one month, with a stand-in prediction (the target's monthly mean) so the preset runs."""
    part = frame[frame["time_hour"].dt.month == number].dropna(subset=["arr_delay"])
    part = part.sample(n=rows, random_state=1).reset_index(drop=True)
    part[PREDICTION] = float(part["arr_delay"].mean())
    return part


@pytest.fixture(scope="module")
def january(flights_all: pd.DataFrame) -> pd.DataFrame:
    return month(flights_all, 1)


@pytest.fixture(scope="module")
def july(flights_all: pd.DataFrame) -> pd.DataFrame:
    return month(flights_all, 7)


def test_january_against_july_drifts_and_names_the_columns(january: pd.DataFrame, july: pd.DataFrame,
                                                          tmp_path: Path) -> None:
    snapshot = build_drift_report(january, july, COLUMNS, drift_share=0.5)
    drift = read_drift(snapshot.dict(), COLUMNS.features)
    assert {"temp", "dewp"} <= set(drift.drifted_columns)  # winter against summer weather
    assert drift.column("temp").method and drift.column("temp").score >= drift.column("temp").threshold
    assert drift.drift_share == pytest.approx(sum(c.drifted for c in drift.columns if c.column in COLUMNS.features)
                                              / len(COLUMNS.features))
    assert drift.column("arr_delay") is not None and drift.column(PREDICTION) is not None  # reported, not counted
    path = save_report(snapshot, tmp_path / "drift.html")
    assert path.stat().st_size > 100_000 and "temp" in path.read_text(encoding="utf-8")


def test_a_window_against_itself_shows_no_drift(january: pd.DataFrame) -> None:
    drift = read_drift(build_drift_report(january, january, COLUMNS, 0.5).dict(), COLUMNS.features)
    assert drift.drift_share == 0.0 and drift.drifted_columns == ()


def test_performance_numbers_are_read_by_name(january: pd.DataFrame) -> None:
    scored = january.assign(**{PREDICTION: january["arr_delay"] + 3.0})
    numbers = read_performance(build_performance_report(january, scored, COLUMNS).dict())
    assert numbers["mae"] == pytest.approx(3.0) and numbers["rmse"] == pytest.approx(3.0)
    assert abs(numbers["mean_error"]) == pytest.approx(3.0)


def test_read_drift_refuses_a_report_without_a_feature(january: pd.DataFrame) -> None:
    snapshot = build_drift_report(january, january, COLUMNS, 0.5)
    with pytest.raises(ValueError, match=r"no ValueDrift metric for feature\(s\) \['wind_gust'\]"):
        read_drift(snapshot.dict(), [*COLUMNS.features, "wind_gust"])


def test_performance_page_charts_the_metric_by_day_per_version() -> None:
    daily = pd.DataFrame({"day": [date(2013, 7, 1), date(2013, 7, 2), date(2013, 7, 2)], "version": ["1", "1", "2"],
                          "rows": [900, 880, 870], "value": [24.5, 30.1, 22.0]})
    page = performance_page("flights-delay", "mae", daily, {"mae": 25.0, "rmse": None}, None, "title")
    assert page.count("<polyline") == 2 and "version 2" in page and "<td>2013-07-02</td><td>2</td>" in page
    assert "<td>rmse</td><td>null</td>" in page
    assert "No matured labels" in daily_metric_chart(daily.iloc[0:0], "mae")
    assert not np.isnan(daily["value"]).any()


def test_mape_is_left_out_where_the_target_can_be_zero(january: pd.DataFrame) -> None:
    """Flights' delays hold zeros: MAPE would read 1e19 and overflow its tile; with no zero it is reported."""
    scored = january.assign(**{PREDICTION: january["arr_delay"] + 3.0})
    assert (january["arr_delay"] == 0).any()
    kinds = {metric["config"]["type"].rsplit(":", 1)[-1] for metric in
             build_performance_report(january, scored, COLUMNS).dict()["metrics"]}
    assert "MAPE" not in kinds and {"MAE", "RMSE", "MeanError", "R2Score", "AbsMaxError"} <= kinds
    shifted = january.assign(arr_delay=january["arr_delay"].abs() + 100.0)
    kinds = {metric["config"]["type"].rsplit(":", 1)[-1] for metric in
             build_performance_report(shifted, shifted.assign(**{PREDICTION: 101.0}), COLUMNS).dict()["metrics"]}
    assert "MAPE" in kinds


def test_a_report_names_its_model_version_and_windows(january: pd.DataFrame, tmp_path: Path) -> None:
    label = ReportLabel("flights-delay", "3", datetime(2013, 2, 1, 5), "[2013-01-25, 2013-02-01)",
                        "[2012-11-25, 2013-01-25)")
    snapshot = build_drift_report(january, january, COLUMNS, 0.5, label)
    page = save_report(snapshot, tmp_path / "drift.html", label.header("drift")).read_text(encoding="utf-8")
    header = page[page.index("<body>"):page.index("<body>") + 1000]
    assert "flights-delay v3 drift as of 2013-02-01 05:00" in header and "[2012-11-25, 2013-01-25)" in header


def test_the_performance_page_links_evidentlys_report_instead_of_framing_it() -> None:
    daily = pd.DataFrame({"day": [date(2013, 7, 1)], "version": ["1"], "rows": [900], "value": [24.5]})
    page = performance_page("flights-delay", "mae", daily, {"mae": 25.0}, "2013-07-02-evidently-performance.html",
                            "title", "the 60d before as_of", {"mae": 25.0})
    assert "<iframe" not in page and 'href="2013-07-02-evidently-performance.html"' in page
    assert "by day per model version over the 60d before as_of" in page
