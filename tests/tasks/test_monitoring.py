"""The pure parts of monitoring's steps, on tiny inline frames: ids, rows, metrics by day, ledger history."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from monitoring.metrics import ColumnDrift, DriftSummary
from monitoring.triggers import RETRAIN_REQUESTED, Signal, TriggerDecision
from retrain.baselines import parse_forecaster
from retrain.clock import Window
from retrain.config import ModelConfig, TaskType, load_model_config
from retrain.warehouse import LedgerEntry, prediction_key
from tasks.monitoring import (
    BATCH_ARM,
    MonitoringOutcome,
    batch_prediction_rows,
    batch_request_ids,
    best_naive,
    current_window,
    daily_metric,
    decision_entry,
    entity_rows,
    holdout_reference,
    ledger_history,
    live_naive_scores,
    metric_rows,
    trigger_policy,
    window_metrics,
)
from tests.conftest import EXAMPLE_CONFIG

T0 = datetime(2013, 3, 1)


@pytest.fixture(scope="module")
def config() -> ModelConfig:
    return load_model_config(EXAMPLE_CONFIG)


def rows(config: ModelConfig, count: int = 3) -> pd.DataFrame:
    frame = pd.DataFrame({name: np.arange(count, dtype="float64") for name in config.features.numeric})
    for name in config.features.categorical:
        frame[name] = ["UA", None, "AA"][:count]
    frame["time_hour"] = [T0 + timedelta(hours=i) for i in range(count)]
    frame["flight"] = [10, 11, 12][:count]
    frame[config.target.column] = [5.0, np.nan, -3.0][:count]
    return frame


def test_the_policy_takes_its_knobs_from_the_config(config: ModelConfig) -> None:
    policy = trigger_policy(config)
    assert policy.min_new_rows == config.monitoring.min_new_rows and policy.lower_is_better
    assert current_window(config, T0) == Window(T0 - config.monitoring.window, T0)


def test_batch_request_ids_are_stable_and_unique_without_a_key() -> None:
    frame = pd.DataFrame({"time_hour": [T0, T0], "flight": [1, 2]})
    keyed = batch_request_ids(frame, ["time_hour", "flight"], "time_hour")
    assert keyed == [f"batch:{prediction_key([T0, 1])}", f"batch:{prediction_key([T0, 2])}"]
    assert keyed == batch_request_ids(frame, ["time_hour", "flight"], "time_hour")  # the same rows, the same ids
    unkeyed = batch_request_ids(frame, [], "time_hour")
    assert len(set(unkeyed)) == 2 and unkeyed[0].endswith("#0")


def test_batch_rows_are_predicted_and_labelled_at_the_rows_time(config: ModelConfig) -> None:
    frame = rows(config)
    predictions, labels = batch_prediction_rows(frame, np.array([1.0, 2.0, 3.0]), config, "4")
    assert [row["arm"] for row in predictions] == [BATCH_ARM] * 3
    assert [row["predicted_at"] for row in predictions] == list(frame["time_hour"])
    assert [row["event_at"] for row in predictions] == list(frame["time_hour"])  # a batch row's time is both
    assert json.loads(predictions[1]["features"])["carrier"] is None  # missing stays missing, as JSON null
    assert [label["actual"] for label in labels] == [5.0, -3.0]  # the row without a target has no label
    assert [label["labelled_at"] for label in labels] == [T0, T0 + timedelta(hours=2)]
    assert [label["event_at"] for label in labels] == [T0, T0 + timedelta(hours=2)]


def test_the_metric_by_day_and_version_uses_matured_labels_only() -> None:
    labelled = pd.DataFrame({
        "event_at": [T0, T0 + timedelta(hours=1), T0 + timedelta(days=1), T0 + timedelta(days=1)],
        "version": ["1", "1", "1", "2"],
        "prediction": [1.0, 3.0, 0.0, 0.0],
        "actual": [2.0, 1.0, np.nan, 4.0],
    })
    daily = daily_metric(labelled, "mae", TaskType.REGRESSION)
    assert daily[["version", "rows", "value"]].to_dict("records") == [
        {"version": "1", "rows": 2, "value": 1.5}, {"version": "2", "rows": 1, "value": 4.0}]
    assert daily_metric(labelled.iloc[2:3], "mae", TaskType.REGRESSION).empty


def test_window_metrics_are_null_until_a_label_matures(config: ModelConfig) -> None:
    current = rows(config).assign(prediction=[4.0, 0.0, -1.0])
    assert window_metrics(current, config)["mae"] == pytest.approx(1.5)
    assert window_metrics(current.iloc[1:2], config) == {"mae": None, "rmse": None, "r2": None}


def test_metric_rows_hold_whole_window_numbers_and_per_column_drift(config: ModelConfig) -> None:
    drift = DriftSummary(0.5, 1, (ColumnDrift("temp", "wasserstein", 0.2, 0.1, True),
                                  ColumnDrift("carrier", "jensenshannon", 0.01, 0.1, False)))
    written = metric_rows(config, "3", Window(T0, T0 + timedelta(days=7)), drift, {"mae": 20.0, "rmse": None},
                          T0, "run")
    summary = {(row["metric"], row["column"]): row["value"] for row in written}
    assert summary[("mae", "")] == 20.0 and summary[("rmse", "")] is None and summary[("drift_share", "")] == 0.5
    assert summary[("drifted", "temp")] == 1.0 and summary[("drift_score", "carrier")] == 0.01


def test_ledger_history_gives_fired_keys_and_the_last_request() -> None:
    entries = [
        LedgerEntry("m", RETRAIN_REQUESTED, "r", "flow:monitor-model", T0, details={"fired": ["fresh@1"]}),
        LedgerEntry("m", "monitored", "r", "flow:monitor-model", T0 + timedelta(days=2), details={"fired": []}),
        LedgerEntry("m", RETRAIN_REQUESTED, "r", "flow:monitor-model", T0 + timedelta(days=1),
                    details={"fired": ["drift@2"]}),
    ]
    assert ledger_history(entries) == (frozenset({"fresh@1", "drift@2"}), T0 + timedelta(days=1))
    assert ledger_history([]) == (frozenset(), None)


def test_a_decision_becomes_one_ledger_row_with_its_signals(config: ModelConfig) -> None:
    signal = Signal("fresh-labels", "2,000 new labelled rows", "fresh-labels@2013-03-01T00:00:00")
    decision = TriggerDecision(True, "fresh-labels: 2,000 new labelled rows", RETRAIN_REQUESTED, (signal,), (signal,),
                               ("retrain.retrain.requested",))
    outcome = MonitoringOutcome(model=config.name, as_of=T0, window=Window(T0 - timedelta(days=7), T0),
                                champion_version="2", source="batch", rows=10, labelled=8, scored=10,
                                drift_share=0.25, drifted_columns=("temp",), metrics={"mae": 21.0, "rmse": None},
                                decision=decision)
    entry = decision_entry(config, decision, outcome, "flow:monitor-model", "run-1")
    assert (entry.action, entry.at, entry.from_version) == (RETRAIN_REQUESTED, T0, "2")
    assert entry.metrics == {"mae": 21.0, "drift_share": 0.25}
    assert entry.details["fired"] == [signal.key] and entry.details["signals"][0]["name"] == "fresh-labels"
    assert entry.details["window"] == {"start": "2013-02-22T00:00:00", "end": "2013-03-01T00:00:00"}


def daily_config() -> ModelConfig:
    return ModelConfig.model_validate({
        "name": "sales", "source": {"table": "sales", "timestamp": "day", "key": ["day", "store"]},
        "target": {"column": "units"}, "features": {"numeric": ["x"]}, "metric": "mae",
        "training_window": {"lookback": "60d"}, "gates": {"baselines": ["median", "last-value", "seasonal 7d"]},
    })


def test_naive_forecasters_score_the_same_matured_rows_from_labels_known_before_each_row() -> None:
    """Two stores with a weekly pattern: the same day last week is exact, the last value and the median are not."""
    config = daily_config()
    days = pd.date_range("2024-01-01", periods=28, freq="D")
    pattern = np.tile([10.0, 10, 10, 10, 10, 30, 30], 4)
    history = pd.concat([pd.DataFrame({"day": days, "store": store, "units": pattern * scale})
                         for store, scale in (("a", 1), ("b", 2))], ignore_index=True)
    window = Window(datetime(2024, 1, 22), datetime(2024, 1, 29))
    inside = history[history["day"] >= window.start].reset_index(drop=True)
    matured = pd.DataFrame({
        "event_at": inside["day"], "units": inside["units"],
        "key": [prediction_key([day, store]) for day, store in zip(inside["day"], inside["store"], strict=True)],
    })
    before = history[history["day"] < window.start]
    scores = live_naive_scores(matured, before, config, [parse_forecaster(s) for s in config.gates.baselines], window)
    assert scores["seasonal-7d"] == 0.0
    assert scores["median"] > scores["last-value"] > 0
    assert best_naive(scores, lower_is_better=True) == 0.0 and best_naive({}, True) is None


def test_entity_columns_come_from_the_predictions_key() -> None:
    config = daily_config()
    rows = pd.DataFrame({"event_at": [datetime(2024, 1, 2)], "key": [prediction_key([datetime(2024, 1, 2), 7])]})
    frame = entity_rows(rows, config)
    assert frame.columns.tolist() == ["day", "store"] and frame["store"].tolist() == [7]


def test_the_reference_is_the_holdout_with_its_out_of_sample_predictions(config: ModelConfig) -> None:
    evidence = rows(config).assign(label=[1.0, 2.0, 3.0], prediction=[1.5, 2.5, 3.5])
    reference = holdout_reference(evidence, config)
    assert reference is not None and reference["prediction"].tolist() == [1.5, 2.5, 3.5]
    assert reference[config.target.column].tolist() == [1.0, 2.0, 3.0]
    assert holdout_reference(evidence.drop(columns=["temp"]), config) is None  # an older run: the fallback
