"""The retrain policy, pure: each signal alone, combinations, cooldown, dedupe, manual override."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from monitoring.triggers import (
    DRIFT_DETECTED,
    EVENT_DEGRADED,
    EVENT_DRIFT,
    EVENT_RETRAIN,
    MONITORED,
    PERFORMANCE_DEGRADED,
    RETRAIN_REQUESTED,
    Signals,
    TriggerPolicy,
    decide_retrain,
    degraded_windows,
    windows_losing_to_naive,
)

AS_OF = datetime(2013, 6, 1)
POLICY = TriggerPolicy(min_new_rows=1000, retrain_every=timedelta(days=4), max_age=timedelta(days=14),
                       cooldown=timedelta(days=1), drift_share=0.5, key_features=("temp",), degradation=0.2,
                       consecutive_windows=2, drift_retrains=True)


def signals(**overrides: object) -> Signals:
    """A quiet model: trained 2 days ago, a few new rows, no drift, live metric as on the holdout."""
    base = {"as_of": AS_OF, "data_end": AS_OF - timedelta(hours=1), "drift_share": 0.1, "drifted_columns": (),
            "live_metrics": (20.0, 20.0), "holdout_metric": 20.0, "new_labelled_rows": 100,
            "last_training_at": AS_OF - timedelta(days=2)}
    return Signals(**{**base, **overrides})  # type: ignore[arg-type]


def test_quiet_model_is_only_monitored() -> None:
    decision = decide_retrain(signals(), POLICY)
    assert (decision.retrain, decision.action, decision.events, decision.signals) == (False, MONITORED, (), ())
    assert decision.reason == "no new signal"


def test_fresh_labels_and_time_retrain() -> None:
    decision = decide_retrain(signals(new_labelled_rows=5000, last_training_at=AS_OF - timedelta(days=5)), POLICY)
    assert decision.retrain and decision.action == RETRAIN_REQUESTED and decision.events == (EVENT_RETRAIN,)
    assert [s.name for s in decision.fired] == ["fresh-labels"] and "5,000 new labelled rows" in decision.reason


@pytest.mark.parametrize(("rows", "days"), [(5000, 3), (500, 10)])
def test_fresh_labels_need_both_rows_and_time(rows: int, days: int) -> None:
    decision = decide_retrain(signals(new_labelled_rows=rows, last_training_at=AS_OF - timedelta(days=days)), POLICY)
    assert not decision.retrain


def test_stale_model_retrains_with_any_new_row() -> None:
    decision = decide_retrain(signals(new_labelled_rows=10, last_training_at=AS_OF - timedelta(days=20)), POLICY)
    assert decision.retrain and [s.name for s in decision.fired] == ["stale-model"]


def test_drift_alone_without_new_data_is_reported_not_retrained() -> None:
    decision = decide_retrain(signals(drift_share=0.8, drifted_columns=("temp", "dewp")), POLICY)
    assert not decision.retrain and decision.action == DRIFT_DETECTED and decision.events == (EVENT_DRIFT,)
    assert {s.name for s in decision.fired} == {"drift", "key-feature-drift"}
    assert "need 1,000 to learn from" in decision.reason


def test_drift_with_enough_new_rows_brings_retrain_forward() -> None:
    decision = decide_retrain(signals(drift_share=0.8, new_labelled_rows=2000), POLICY)
    assert decision.retrain and decision.events == (EVENT_DRIFT, EVENT_RETRAIN)


def test_drift_is_only_reported_when_drift_may_not_retrain() -> None:
    policy = TriggerPolicy(**{**POLICY.__dict__, "drift_retrains": False})
    decision = decide_retrain(signals(drift_share=0.8, new_labelled_rows=2000), policy)
    assert not decision.retrain and decision.action == DRIFT_DETECTED and decision.events == (EVENT_DRIFT,)
    assert TriggerPolicy().drift_retrains is False  # the default, from benchmarks/policy_backtest.py


def test_key_feature_drift_alone_is_a_signal() -> None:
    decision = decide_retrain(signals(drift_share=0.1, drifted_columns=("temp",)), POLICY)
    assert [s.name for s in decision.fired] == ["key-feature-drift"] and decision.action == DRIFT_DETECTED


def test_degradation_needs_k_consecutive_windows() -> None:
    once = decide_retrain(signals(live_metrics=(20.0, 30.0)), POLICY.__class__(**{**POLICY.__dict__,
                                                                                  "consecutive_windows": 3}))
    assert once.action == MONITORED
    twice = decide_retrain(signals(live_metrics=(20.0, 30.0, 31.0)), POLICY)
    assert twice.action == PERFORMANCE_DEGRADED and twice.events == (EVENT_DEGRADED,) and not twice.retrain
    with_rows = decide_retrain(signals(live_metrics=(30.0, 31.0), new_labelled_rows=3000), POLICY)
    assert with_rows.retrain and [s.name for s in with_rows.fired] == ["performance"]


def test_degraded_windows_counts_from_the_newest_and_stops_at_a_gap() -> None:
    assert degraded_windows([30.0, None, 30.0, 31.0], 20.0, 0.2, lower_is_better=True) == 2
    assert degraded_windows([30.0, 30.0], 20.0, 0.2, lower_is_better=True) == 2
    assert degraded_windows([0.5, 0.9], 0.8, 0.2, lower_is_better=False) == 0
    assert degraded_windows([0.5, 0.6], 0.8, 0.2, lower_is_better=False) == 2


def test_cooldown_holds_back_a_retrain_but_reports_the_signal() -> None:
    decision = decide_retrain(signals(new_labelled_rows=5000, drift_share=0.9, last_training_at=AS_OF - timedelta(
        days=5), last_request_at=AS_OF - timedelta(hours=6)), POLICY)
    assert not decision.retrain and decision.reason.startswith("cooldown: 6h since the last training or request")
    assert decision.action == DRIFT_DETECTED and decision.events == (EVENT_DRIFT,)


def test_same_signal_on_same_data_never_fires_twice() -> None:
    first = decide_retrain(signals(new_labelled_rows=5000, last_training_at=AS_OF - timedelta(days=5)), POLICY)
    again = decide_retrain(signals(new_labelled_rows=5000, last_training_at=AS_OF - timedelta(days=5),
                                   fired=frozenset(s.key for s in first.fired)), POLICY)
    assert first.retrain and not again.retrain and again.action == MONITORED and again.events == ()
    assert again.reason.startswith("already fired on this data")
    newer = decide_retrain(signals(new_labelled_rows=5000, last_training_at=AS_OF - timedelta(days=5),
                                   data_end=AS_OF, fired=frozenset(s.key for s in first.fired)), POLICY)
    assert newer.retrain  # new data: the same signal may fire again


def test_manual_request_overrides_the_cooldown() -> None:
    decision = decide_retrain(signals(manual="new feature pipeline", last_request_at=AS_OF - timedelta(hours=1)),
                              POLICY)
    assert decision.retrain and decision.reason == "manual request: new feature pipeline"
    assert decision.events == (EVENT_RETRAIN,)


def test_no_champion_yet_with_rows_asks_for_a_first_training() -> None:
    decision = decide_retrain(signals(last_training_at=None, new_labelled_rows=5000, live_metrics=(),
                                      holdout_metric=None), POLICY)
    assert decision.retrain and "no training yet" in decision.reason


def test_a_champion_losing_to_a_naive_forecaster_for_k_windows_is_a_performance_signal() -> None:
    """Within its holdout's error (no degradation), but the same day last week does better on the same rows."""
    naive = ({"median": 30.0, "seasonal-7d": 15.0}, {"median": 31.0, "seasonal-7d": 16.0})
    decision = decide_retrain(signals(live_metrics=(20.0, 21.0), naive_metrics=naive), POLICY)
    assert decision.action == PERFORMANCE_DEGRADED and decision.events == (EVENT_DEGRADED,)
    assert [s.name for s in decision.fired] == ["performance"]
    assert "loses to the naive forecaster seasonal-7d (16 on the same matured rows) for 2 consecutive windows" \
        in decision.reason
    with_rows = decide_retrain(signals(live_metrics=(20.0, 21.0), naive_metrics=naive, new_labelled_rows=3000),
                               POLICY)
    assert with_rows.retrain and "seasonal-7d" in with_rows.reason


@pytest.mark.parametrize(
    ("live", "naive"),
    [((20.0, 21.0), ({"seasonal-7d": 25.0}, {"seasonal-7d": 16.0})),  # lost only the newest window
     ((20.0, 21.0), ({}, {"seasonal-7d": 16.0})),  # the older window has no naive number
     ((20.0, 21.0), ({"seasonal-7d": 20.0}, {"seasonal-7d": 21.0}))],  # a tie is no loss
)
def test_losing_to_a_naive_forecaster_needs_k_windows_in_a_row(live: tuple, naive: tuple) -> None:
    assert decide_retrain(signals(live_metrics=live, naive_metrics=naive), POLICY).action == MONITORED


def test_windows_losing_to_naive_follows_the_metric_direction() -> None:
    assert windows_losing_to_naive([0.6, 0.6], [{"last-value": 0.7}, {"last-value": 0.65}], lower_is_better=False) \
        == (2, "last-value", 0.65)
    assert windows_losing_to_naive([0.8], [{"last-value": 0.7}], lower_is_better=False) == (0, None, None)
