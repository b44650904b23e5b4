"""The policy backtest's day loop never peeks: a day's decision and training see only rows before that day,
and each flight is predicted by the model that was current when it departed."""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import pandas as pd

from benchmarks.policy_backtest import DayView, TrainedModel, every, never, replay, replay_days

START = datetime(2013, 1, 1, 5)
LOOKBACK = timedelta(days=3)


def hourly_rows(days: int = 10) -> pd.DataFrame:
    times = pd.date_range(START, periods=days * 24, freq="h")
    return pd.DataFrame({"time_hour": times, "x": np.arange(len(times), dtype="float64"),
                         "arr_delay": np.arange(len(times), dtype="float64") % 24})


def run(frame: pd.DataFrame, decide: object) -> tuple[pd.DataFrame, list[tuple[datetime, pd.Timestamp]], list]:
    """Replay with a model that predicts the mean target of its training rows, recording what each step saw."""
    trained: list[tuple[datetime, pd.Timestamp]] = []

    def fit(rows: pd.DataFrame, as_of: datetime) -> TrainedModel:
        trained.append((as_of, rows["time_hour"].max()))
        mean = float(rows["arr_delay"].mean())
        return TrainedModel(as_of, as_of - LOOKBACK, lambda today: np.full(len(today), mean))

    seen: list[DayView] = []

    def watch(view: DayView) -> str | None:
        seen.append(view)
        return decide(view)  # type: ignore[operator]

    days = replay_days(frame, "time_hour", LOOKBACK)
    result = replay(frame, "time_hour", "arr_delay", days, LOOKBACK, fit, watch)
    return result.predictions, trained, seen


def test_each_day_sees_only_rows_before_it() -> None:
    predictions, trained, seen = run(hourly_rows(), every(2))
    assert [as_of for as_of, _ in trained] == [START + timedelta(days=day) for day in (3, 5, 7, 9)]
    assert all(newest < pd.Timestamp(as_of) for as_of, newest in trained)
    for view in seen:
        assert view.seen["time_hour"].max() < pd.Timestamp(view.as_of)
        assert view.served.empty or view.served["time"].max() < pd.Timestamp(view.as_of)
    # Every flight after the warm-up is predicted once, by a model trained before it departed.
    assert len(predictions) == 7 * 24 and (predictions["trained_at"] <= predictions["time"]).all()
    assert (predictions["time"] - predictions["trained_at"] < pd.Timedelta(days=2)).all()


def test_changing_the_future_changes_nothing_before_it() -> None:
    frame = hourly_rows()
    changed = frame.copy()
    cut = pd.Timestamp(START + timedelta(days=6))
    changed.loc[changed["time_hour"] >= cut, ["x", "arr_delay"]] = 1e6
    for policy in (never, every(1), every(2)):
        before, _, _ = run(frame, policy)
        after, _, _ = run(changed, policy)
        early = before["time"] < cut
        pd.testing.assert_frame_equal(before[early], after[after["time"] < cut])
        assert not before[~early]["actual"].equals(after[~early]["actual"])  # the future did change
