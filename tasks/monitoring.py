"""Monitoring's steps: batch scoring by the champion, the reference and current windows, reports and their
numbers, the policy's signals, and what a decision leaves behind (ledger row, Prefect events, artifacts).

Reference = the champion's holdout rows with its out-of-sample predictions, as its training run kept them
(`holdout_predictions.parquet`: features, label, the gated model's prediction): the performance the live metric is
compared with, and the drift reference, are what the model did on rows it had not seen, not its training fit. A
champion trained before the run kept its features falls back to its training snapshot scored by the champion.
Current = the window of
`monitoring.window` before `as_of`, read from the prediction table by event time (the Retrain clock): the
predictions the champion's version served when the server logged any in the window, else the clean rows that
the champion batch-scored (arm `batch`; a flight's actual arrives with its row, so its label is matured when
the row lands). Pure functions
first, thin @task wrappers last.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from monitoring.metrics import DriftSummary, read_drift, read_performance
from monitoring.reports import (
    PREDICTION,
    ReportColumns,
    ReportLabel,
    build_drift_report,
    build_performance_report,
    drift_columns_table,
    performance_page,
    report_paths,
    sample_rows,
    save_report,
)
from monitoring.triggers import (
    RETRAIN_REQUESTED,
    Signals,
    TriggerDecision,
    TriggerPolicy,
    decide_retrain,
)
from monitoring.workspace import DRIFT_SHARE, LIVE, NAIVE, QUARANTINED_SHARE, ROWS_SCORED, record_monitoring_run
from retrain import mlflow_keys as keys
from retrain.baselines import NaiveForecaster, entity_columns, forecast_all
from retrain.clock import Window, as_naive_utc, format_duration, model_as_of, now, shown
from retrain.config import ModelConfig, TaskType
from retrain.errors import DataError
from retrain.jsonable import to_jsonable
from retrain.settings import get_settings
from retrain.warehouse import (
    LedgerEntry,
    Warehouse,
    append_ledger_entry,
    append_new_predictions,
    append_rows,
    count_predictions,
    count_rows_between,
    create_declared_table,
    get_warehouse,
    monitoring_metric_table,
    prediction_key,
    read_batches,
    read_labelled_predictions,
    read_ledger,
    read_monitoring_metric,
    read_newest_timestamp,
    read_prediction_features,
    read_window,
)
from tasks.features import make_target
from tasks.retries import retry_when_transient
from tasks.runs import run_label
from tasks.training import METRIC_FUNCTIONS, configured_forecasters, score_predictions

logger = logging.getLogger(__name__)

SERVED_ARMS = ("champion", "canary")
BATCH_ARM = "batch"
LEDGER_HISTORY = 500  # ledger rows read for dedupe keys and the last request
STORE_RETRIES = {"retries": 2, "retry_delay_seconds": [2, 10], "retry_condition_fn": retry_when_transient}


@dataclass(frozen=True)
class Champion:
    """The model being watched: its version, MLflow run, training window and holdout metric."""

    version: str
    run_id: str
    window: Window
    holdout_metric: float | None


@dataclass(frozen=True)
class CurrentWindow:
    """The rows of the current window (features, prediction, target where matured) and where they came from."""

    window: Window
    rows: pd.DataFrame
    source: str  # "served" or "batch"
    labelled: int


@dataclass(frozen=True)
class ReportResult:
    """What the reports said: drift, performance numbers, metric by day, the HTML files."""

    drift: DriftSummary
    metrics: dict[str, float | None]
    daily: pd.DataFrame
    paths: tuple[Path, ...]
    evidently_numbers: dict[str, float] = field(default_factory=dict)
    naive: dict[str, float | None] = field(default_factory=dict)  # each naive forecaster's metric, same rows


@dataclass(frozen=True)
class MonitoringOutcome:
    """One monitoring run's answer (the CLI's `monitor --json`)."""

    model: str
    as_of: datetime
    window: Window | None
    champion_version: str | None
    source: str | None
    rows: int
    labelled: int
    scored: int
    drift_share: float | None
    drifted_columns: tuple[str, ...]
    metrics: Mapping[str, float | None]
    decision: TriggerDecision
    reports: tuple[Path, ...] = ()
    mlflow_run_id: str | None = None
    naive_metrics: Mapping[str, float | None] = field(default_factory=dict)  # by forecaster, on the same rows


# ------------------------------------------------------------------------------------------ pure functions


def trigger_policy(config: ModelConfig) -> TriggerPolicy:
    """The policy's knobs from the model config's `monitoring:` section."""
    knobs = config.monitoring
    return TriggerPolicy(
        min_new_rows=knobs.min_new_rows, retrain_every=knobs.retrain_every, max_age=knobs.max_age,
        cooldown=knobs.cooldown, drift_share=knobs.drift_share, key_features=tuple(knobs.key_features),
        degradation=knobs.degradation, consecutive_windows=knobs.consecutive_windows,
        drift_retrains=knobs.drift_retrains, degradation_retrains=knobs.degradation_retrains,
        lower_is_better=config.lower_is_better,
    )


def report_columns(config: ModelConfig, with_target: bool) -> ReportColumns:
    return ReportColumns(
        numeric=tuple(config.features.numeric), categorical=tuple(config.features.categorical),
        target=config.target.column if with_target else None, binary=config.target.task is TaskType.BINARY,
    )


def current_window(config: ModelConfig, as_of: datetime) -> Window:
    return Window.ending_at(as_of, config.monitoring.window)


def batch_request_ids(frame: pd.DataFrame, key: Sequence[str], timestamp: str) -> list[str]:
    """Stable request ids of batch-scored rows: `batch:` and the row's key (or its timestamp and position
    when the model has no key), so scoring the same rows twice writes nothing twice."""
    columns = list(key) or [timestamp]
    values = frame[columns].itertuples(index=False, name=None)
    ids = [f"batch:{prediction_key(list(row))}" for row in values]
    if not key:
        ids = [f"{request}#{position}" for position, request in enumerate(ids)]
    return ids


def batch_prediction_rows(
    frame: pd.DataFrame, predictions: np.ndarray, config: ModelConfig, version: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Prediction-table rows (arm `batch`, predicted at the row's time, which is both its event and its request
    time) and label-table rows (the actual came with the row, so it is matured at the row's time)."""
    timestamp = config.source.timestamp
    ids = batch_request_ids(frame, config.source.key, timestamp)
    features = frame[config.features.all]
    records = features.astype(object).where(features.notna(), None).to_dict("records")
    keys = [prediction_key(list(row)) for row in frame[config.source.key].itertuples(index=False, name=None)] \
        if config.source.key else [None] * len(frame)
    times = [as_naive_utc(moment.to_pydatetime()) for moment in pd.to_datetime(frame[timestamp])]
    actual = make_target(frame, config.target).to_numpy(dtype="float64")
    predictions_rows, label_rows = [], []
    for position, request in enumerate(ids):
        record = {name: _plain(value) for name, value in records[position].items()}
        predictions_rows.append({
            "request_id": request, "model": config.name, "version": version, "arm": BATCH_ARM,
            "predicted_at": times[position], "event_at": times[position], "prediction": float(predictions[position]),
            "features": _json(record), "key": keys[position], "latency_ms": None,
        })
        if not np.isnan(actual[position]):
            label_rows.append({"model": config.name, "request_id": request, "key": None,
                               "actual": float(actual[position]), "labelled_at": times[position],
                               "event_at": times[position], "source": BATCH_ARM})
    return predictions_rows, label_rows


def _plain(value: Any) -> Any:
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    if hasattr(value, "item"):
        return value.item()
    return value


def _json(record: Mapping[str, Any]) -> str:
    import json

    return json.dumps(record, separators=(",", ":"), default=str)


def daily_metric(labelled: pd.DataFrame, metric: str, task: TaskType) -> pd.DataFrame:
    """The metric per day (of the predictions' event time) per model version on matured labels: columns day,
    version, rows, value."""
    matured = labelled.dropna(subset=["actual"])
    if matured.empty:
        return pd.DataFrame(columns=["day", "version", "rows", "value"])
    days = pd.to_datetime(matured["event_at"]).dt.date
    rows = []
    for (day, version), group in matured.groupby([days, matured["version"]], sort=True):
        actual = group["actual"].to_numpy(dtype="float64")
        value = METRIC_FUNCTIONS[metric](actual, group["prediction"].to_numpy(dtype="float64"))
        rows.append({"day": day, "version": str(version), "rows": len(group), "value": value})
    return pd.DataFrame(rows)


def window_metrics(current: pd.DataFrame, config: ModelConfig) -> dict[str, float | None]:
    """Every metric of the task on the current window's matured labels; null where none matured."""
    matured = current.dropna(subset=[config.target.column])
    names = {"mae": None, "rmse": None, "r2": None} if config.target.task is TaskType.REGRESSION else \
        {"auc": None, "log_loss": None, "f1": None}
    if matured.empty:
        return dict(names)
    return dict(score_predictions(matured[config.target.column].to_numpy(), matured[PREDICTION].to_numpy(),
                                  config.target.task))


def naive_metric_name(forecaster: str) -> str:
    """The monitoring metric table's name of a naive forecaster's live metric: `live_naive_seasonal-7d`."""
    return f"live_naive_{forecaster}"


def monitoring_forecasters(config: ModelConfig, champion: Champion, times: pd.Series) -> list[NaiveForecaster]:
    """The naive forecasters the gates used: the configured ones, or the defaults for the champion's training window
    (its span) at the table's cadence (`times`, the rows read around the current window)."""
    span = pd.Series(pd.to_datetime([champion.window.start, champion.window.end]))
    return configured_forecasters(config, pd.concat([pd.Series(pd.to_datetime(times)), span], ignore_index=True))


def naive_lookback(config: ModelConfig, forecasters: Sequence[NaiveForecaster]) -> timedelta:
    """How far before the current window the history must reach: the longest season, at least a week and at least
    one monitoring window (a last value or a default seasonal forecaster finds its value there)."""
    periods = [forecaster.period for forecaster in forecasters if forecaster.period is not None]
    return max([timedelta(days=7), config.monitoring.window, *periods])


def entity_rows(rows: pd.DataFrame, config: ModelConfig) -> pd.DataFrame:
    """Matured predictions as rows a naive forecaster reads: the event time as the timestamp, each entity column
    from the prediction's key (the key's JSON lists the source key's values in order), else from its features."""
    entity = entity_columns(config.source.key, config.source.timestamp, config.gates.baseline_group)
    frame = pd.DataFrame({config.source.timestamp: pd.to_datetime(rows["event_at"]).to_numpy()}, index=rows.index)
    parsed = rows["key"].map(_key_values) if "key" in rows else pd.Series([None] * len(rows), index=rows.index)
    for column in entity:
        if column in config.source.key:
            position = config.source.key.index(column)
            frame[column] = parsed.map(lambda values, at=position: values[at] if values else None)
        else:
            frame[column] = rows[column] if column in rows else None
    return frame


def _key_values(text: Any) -> list[Any] | None:
    import json

    if not isinstance(text, str):
        return None
    try:
        values = json.loads(text)
    except ValueError:
        return None
    return values if isinstance(values, list) else None


def live_naive_scores(
    matured: pd.DataFrame, history: pd.DataFrame, config: ModelConfig, forecasters: Sequence[NaiveForecaster],
    window: Window,
) -> dict[str, float | None]:
    """Each naive forecaster's metric on the matured rows the champion's live metric is computed on.

    `history` holds labelled rows (timestamp, entity columns, the 0/1 label or the target). A constant is learned
    from the history before the window; a last value or a season earlier may come from inside the window (a row's
    label matures before a later row's), never from the row itself or after it (`retrain.baselines`).

    Args:
        matured: Rows with `event_at`, `key` and the target column (matured labels only).
    """
    target = config.target.column
    if matured.empty or not forecasters:
        return {forecaster.name: None for forecaster in forecasters}
    rows = entity_rows(matured, config)
    entity = [column for column in rows.columns if column != config.source.timestamp]
    known = pd.concat([history, rows.assign(**{target: matured[target].to_numpy()})], ignore_index=True)
    y_true = matured[target].to_numpy(dtype="float64")
    scores: dict[str, float | None] = {}
    for forecaster in forecasters:
        predictions = forecast_all(
            [forecaster], known, rows, timestamp=config.source.timestamp, target=target, entity=entity,
            known_until=window.start if forecaster.is_constant else None,
        )[forecaster.name]
        scores[forecaster.name] = float(METRIC_FUNCTIONS[config.metric](y_true, predictions))
    return scores


def best_naive(naive: Mapping[str, float | None], lower_is_better: bool) -> float | None:
    """The best naive forecaster's value (the bar the champion is held to), None when none was measured."""
    values = [value for value in naive.values() if value is not None and np.isfinite(value)]
    if not values:
        return None
    return min(values) if lower_is_better else max(values)


def metric_rows(
    config: ModelConfig, version: str, window: Window, drift: DriftSummary | None,
    metrics: Mapping[str, float | None], recorded_at: datetime, flow_run_id: str | None,
) -> list[dict[str, Any]]:
    """The rows of the monitoring metric table for one run: whole-window numbers and per-column drift scores."""
    base = {"model": config.name, "version": version, "window_start": window.start, "window_end": window.end,
            "recorded_at": recorded_at, "flow_run_id": flow_run_id}
    rows = [{**base, "metric": name, "column": "", "value": value} for name, value in metrics.items()]
    if drift is not None:
        rows.append({**base, "metric": "drift_share", "column": "", "value": drift.drift_share})
        for column in drift.columns:
            rows.append({**base, "metric": "drift_score", "column": column.column, "value": column.score})
            rows.append({**base, "metric": "drifted", "column": column.column, "value": float(column.drifted)})
    return rows


def ledger_history(entries: Sequence[LedgerEntry]) -> tuple[frozenset[str], datetime | None]:
    """Signal keys already fired and the time of the last retrain request, from a model's ledger."""
    fired: set[str] = set()
    last_request = None
    for entry in entries:
        fired.update(entry.details.get("fired", []) if isinstance(entry.details, Mapping) else [])
        if entry.action == RETRAIN_REQUESTED and (last_request is None or entry.at > last_request):
            last_request = entry.at
    return frozenset(fired), last_request


def decision_entry(
    config: ModelConfig, decision: TriggerDecision, outcome: MonitoringOutcome, actor: str,
    flow_run_id: str | None,
) -> LedgerEntry:
    """The ledger row of a monitoring decision (its action is the decision's)."""
    metrics = {name: value for name, value in outcome.metrics.items() if value is not None}
    if outcome.drift_share is not None:
        metrics["drift_share"] = outcome.drift_share
    return LedgerEntry(
        model=config.name, action=decision.action, reason=decision.reason, actor=actor, at=outcome.as_of,
        from_version=outcome.champion_version, metrics=metrics,
        details={"fired": [signal.key for signal in decision.fired], "signals": to_jsonable(decision.signals),
                 "window": to_jsonable(outcome.window), "drifted_columns": list(outcome.drifted_columns),
                 "reports": [str(path) for path in outcome.reports], "source": outcome.source},
        flow_run_id=flow_run_id, mlflow_run_id=outcome.mlflow_run_id,
    )


# ------------------------------------------------------------------------------------------ I/O functions


def find_champion(config: ModelConfig) -> Champion | None:
    """The champion's version, its MLflow run, the window it trained on and its holdout metric; None when the
    model has no champion yet."""
    from mlflow.tracking import MlflowClient

    from tasks.registry import get_alias_version
    from tasks.tracking import configure_mlflow

    configure_mlflow(get_settings(), config.name)
    client = MlflowClient()
    version = get_alias_version(client, config.name, "champion")
    if version is None:
        return None
    run_id = client.get_model_version(config.name, version).run_id
    run = client.get_run(run_id)
    # The exact window is in the run's tags (its params show it to the second); runs of older trainings have it
    # in their params only.
    recorded = {**run.data.params, **run.data.tags}
    try:
        window = Window(datetime.fromisoformat(recorded[keys.WINDOW_START]),
                        datetime.fromisoformat(recorded[keys.WINDOW_END]))
    except KeyError as missing:
        raise DataError(f"the champion's MLflow run {run_id} records no training window ({missing}): was it "
                        "trained by Retrain?") from None
    return Champion(version, run_id, window, run.data.metrics.get(f"holdout_{config.metric}"))


def load_model(config: ModelConfig, version: str) -> Any:
    import mlflow

    return mlflow.pyfunc.load_model(f"models:/{config.name}/{version}")


def predict_rows(model: Any, frame: pd.DataFrame, features: Sequence[str]) -> np.ndarray:
    return np.asarray(model.predict(frame[list(features)]), dtype="float64").ravel()


def score_batch(warehouse: Warehouse, config: ModelConfig, champion: Champion, as_of: datetime) -> int:
    """Score the clean rows after the champion's window (at most `monitoring.history` back) with the champion
    and log them with their labels; rows scored before are left alone. Returns how many were new."""
    start = max(champion.window.end, as_of - config.monitoring.history)
    if start >= as_of:
        return 0
    columns = list(dict.fromkeys([config.source.timestamp, *config.source.key, *config.features.all,
                                  config.target.column]))
    frame = read_window(warehouse, config.source.clean, config.source.timestamp, start, as_of, columns=columns,
                        tie_breakers=config.source.key)
    if frame.empty:
        return 0
    model = load_model(config, champion.version)
    predictions = predict_rows(model, frame, config.features.all)
    rows, labels = batch_prediction_rows(frame, predictions, config, champion.version)
    return append_new_predictions(warehouse, rows, labels)


def read_current(
    warehouse: Warehouse, config: ModelConfig, window: Window, as_of: datetime, version: str | None = None
) -> CurrentWindow:
    """The current window from the prediction table, by event time: the predictions `version` served when it
    served any in the window, else the batch-scored rows (whichever champion scored them: a row is scored once).
    """
    versions = None if version is None else [version]
    served = count_predictions(warehouse, config.name, window.start, window.end, SERVED_ARMS, versions)
    arms, source = (SERVED_ARMS, "served") if served else ((BATCH_ARM,), "batch")
    selected = versions if served else None
    labelled = read_labelled_predictions(warehouse, config.name, window.start, window.end, matured_by=as_of,
                                         arms=arms, versions=selected)
    features = read_prediction_features(warehouse, config.name, window.start, window.end, arms, selected)
    rows = labelled.merge(features, on="request_id", how="left")
    rows = rows.rename(columns={"actual": config.target.column})
    for name in config.features.all:
        if name not in rows:
            rows[name] = np.nan
    for name in config.features.numeric:
        rows[name] = pd.to_numeric(rows[name], errors="coerce")
    return CurrentWindow(window, rows, source, int(rows[config.target.column].notna().sum()))


def holdout_reference(evidence: pd.DataFrame, config: ModelConfig) -> pd.DataFrame | None:
    """The champion's holdout rows with its out-of-sample predictions as monitoring's reference, or None when the
    run's evidence lacks a feature column (a run logged before it kept them)."""
    if not {*config.features.all, "label", "prediction"} <= set(evidence.columns):
        return None
    frame = evidence[list(dict.fromkeys([config.source.timestamp, *config.features.all]))].copy()
    frame[config.target.column] = evidence["label"].to_numpy(dtype="float64")
    frame[PREDICTION] = evidence["prediction"].to_numpy(dtype="float64")
    return frame


def read_holdout_evidence(champion: Champion) -> pd.DataFrame | None:
    """The champion's training run's holdout evidence (`holdout_predictions.parquet`), None when absent."""
    import mlflow

    from tasks.tracking import PREDICTIONS_FILE

    try:
        path = mlflow.artifacts.download_artifacts(run_id=champion.run_id, artifact_path=PREDICTIONS_FILE)
    except Exception:  # noqa: BLE001 - an older run without it: the training snapshot is the fallback
        return None
    return pd.read_parquet(path)


def read_reference(warehouse: Warehouse, config: ModelConfig, champion: Champion) -> pd.DataFrame:
    """A seeded sample of the champion's holdout rows with its out-of-sample predictions (see the module's
    docstring); for a champion whose run kept no features, its training snapshot scored by the champion."""
    evidence = read_holdout_evidence(champion)
    reference = None if evidence is None else holdout_reference(evidence, config)
    if reference is not None and not reference.empty:
        return sample_rows(reference, config.monitoring.sample_rows).reset_index(drop=True)
    columns = list(dict.fromkeys([config.source.timestamp, *config.features.all, config.target.column]))
    frame = read_window(warehouse, config.source.clean, config.source.timestamp, champion.window.start,
                        champion.window.end, columns=columns, tie_breakers=config.source.key)
    if frame.empty:
        raise DataError(f"the champion's training window {champion.window} holds no clean row in "
                        f"'{config.source.clean}' any more: the reference cannot be rebuilt")
    frame = sample_rows(frame, config.monitoring.sample_rows).reset_index(drop=True)
    frame[PREDICTION] = predict_rows(load_model(config, champion.version), frame, config.features.all)
    frame[config.target.column] = make_target(frame, config.target)
    return frame


def write_reports(
    config: ModelConfig, champion: Champion, reference: pd.DataFrame, current: CurrentWindow, as_of: datetime,
    history: pd.DataFrame,
) -> ReportResult:
    """Drift report, performance page (metric by day per version) and Evidently's performance report."""
    settings = get_settings()
    paths = report_paths(settings.reports_dir, config.name, as_of.strftime("%Y-%m-%d"))
    sample = sample_rows(current.rows, config.monitoring.sample_rows)
    with_target = current.labelled > 0
    columns = report_columns(config, with_target)
    label = ReportLabel(config.name, champion.version, as_of, str(current.window), str(champion.window))
    drift_rows = sample.dropna(subset=[config.target.column]) if with_target else sample
    snapshot = build_drift_report(reference, drift_rows, columns, config.monitoring.drift_share, label)
    save_report(snapshot, paths["drift"], label.header("drift"))
    drift = read_drift(snapshot.dict(), config.features.all)

    metrics = window_metrics(current.rows, config)
    naive = score_naive_live(get_warehouse(), config, champion, current, as_of)
    numbers: dict[str, float] = {}
    written = [paths["drift"], paths["performance"]]
    evidently_page = None
    if with_target:
        matured = sample.dropna(subset=[config.target.column])
        performance = build_performance_report(reference, matured, columns, label)
        save_report(performance, paths["evidently-performance"], label.header("performance"))
        numbers = read_performance(performance.dict())
        evidently_page = paths["evidently-performance"].name
        written.append(paths["evidently-performance"])
    daily = daily_metric(history, config.metric, config.target.task)
    title = (f"{config.name}: version {champion.version} as of {as_of:%Y-%m-%d %H:%M}, current window "
             f"{current.window} ({current.source} predictions)")
    covers = f"the {format_duration(config.monitoring.history)} before as_of"
    paths["performance"].write_text(performance_page(config.name, config.metric, daily, metrics, evidently_page,
                                                      title, covers, numbers), encoding="utf-8")
    quarantined = quarantined_share(read_batches(get_warehouse(), config.source.table), current.window)
    record_monitoring_run(
        settings.evidently_workspace_dir, label, config.metric,
        {LIVE: metrics.get(config.metric), NAIVE: best_naive(naive, config.lower_is_better),
         DRIFT_SHARE: drift.drift_share, ROWS_SCORED: float(len(current.rows)), QUARANTINED_SHARE: quarantined},
        versions=[str(version) for version in daily["version"].unique()], snapshots=[snapshot],
    )
    return ReportResult(drift, metrics, daily, tuple(written), numbers, naive)


def score_naive_live(
    warehouse: Warehouse, config: ModelConfig, champion: Champion, current: CurrentWindow, as_of: datetime
) -> dict[str, float | None]:
    """The naive forecasters on the current window's matured rows, from the clean table's labelled rows (and the
    window's own matured labels) up to `as_of`."""
    matured = current.rows.dropna(subset=[config.target.column])
    entity = entity_columns(config.source.key, config.source.timestamp, config.gates.baseline_group)
    lookback = naive_lookback(config, configured_forecasters(config, pd.Series(pd.to_datetime(
        [champion.window.start, champion.window.end]))))
    start, end = current.window.start - lookback, min(as_of, current.window.end)
    columns = list(dict.fromkeys([config.source.timestamp, *entity, config.target.column]))
    history = read_window(warehouse, config.source.clean, config.source.timestamp, start, end, columns=columns,
                          tie_breakers=config.source.key)
    if not history.empty:
        history[config.target.column] = make_target(history, config.target).to_numpy()
    forecasters = monitoring_forecasters(config, champion, history[config.source.timestamp] if not history.empty
                                         else pd.Series(pd.to_datetime(matured["event_at"])))
    return live_naive_scores(matured, history, config, forecasters, current.window)


def quarantined_share(batches: pd.DataFrame, window: Window) -> float | None:
    """Of the rows that arrived in batches recorded within the window (by their as_of), the share quarantined
    (refused batches included: their rows are quarantined too); None when no batch was recorded in it."""
    if batches.empty:
        return None
    moments = pd.to_datetime(batches["as_of"])
    inside = batches[(moments >= window.start) & (moments < window.end)]
    read = int(inside["rows_read"].sum())
    return None if read == 0 else float(inside["rows_quarantined"].sum()) / read


# ------------------------------------------------------------------------------------------------- tasks


@task(name="find-champion", cache_policy=NO_CACHE, **STORE_RETRIES)
def find_champion_task(config: ModelConfig) -> Champion | None:
    return find_champion(config)


@task(name="resolve-as-of", cache_policy=NO_CACHE, **STORE_RETRIES)
def resolve_as_of_task(config: ModelConfig, as_of: datetime | None) -> datetime:
    newest = None if as_of is not None else read_newest_timestamp(get_warehouse(), config.source.clean,
                                                                  config.source.timestamp)
    return model_as_of(as_of, newest, config.source.clean)


@task(name="score-new-rows", cache_policy=NO_CACHE, **STORE_RETRIES)
def score_new_rows(config: ModelConfig, champion: Champion, as_of: datetime) -> int:
    """Batch scoring: new clean rows scored by the champion into the prediction table (arm `batch`)."""
    scored = score_batch(get_warehouse(), config, champion, as_of)
    get_run_logger().info("batch-scored %d new row(s) with %s v%s", scored, config.name, champion.version)
    return scored


@task(name="read-monitoring-windows", cache_policy=NO_CACHE, **STORE_RETRIES)
def read_windows(config: ModelConfig, champion: Champion, as_of: datetime) -> tuple[pd.DataFrame, CurrentWindow,
                                                                                     pd.DataFrame]:
    """Reference sample, current window, and the labelled history the daily chart draws."""
    warehouse = get_warehouse()
    reference = read_reference(warehouse, config, champion)
    current = read_current(warehouse, config, current_window(config, as_of), as_of, champion.version)
    history = read_labelled_predictions(warehouse, config.name, as_of - config.monitoring.history, as_of,
                                        matured_by=as_of)
    return reference, current, history


@task(name="build-monitoring-reports", cache_policy=NO_CACHE)
def build_reports(config: ModelConfig, champion: Champion, reference: pd.DataFrame, current: CurrentWindow,
                  as_of: datetime, history: pd.DataFrame) -> ReportResult | None:
    """The reports, or None when the current window holds no row (nothing to compare yet)."""
    if current.rows.empty:
        get_run_logger().info("no prediction in the current window %s: no report", current.window)
        return None
    result = write_reports(config, champion, reference, current, as_of, history)
    get_run_logger().info("drift share %.2f (%s); reports in %s", result.drift.drift_share,
                          ", ".join(result.drift.drifted_columns) or "no column drifted", result.paths[0].parent)
    return result


@task(name="store-monitoring-metrics", cache_policy=NO_CACHE, **STORE_RETRIES)
def store_metrics(config: ModelConfig, champion: Champion, current: CurrentWindow, result: ReportResult) -> int:
    """Numbers of this run into the warehouse's monitoring metric table."""
    warehouse = get_warehouse()
    table = create_declared_table(warehouse, monitoring_metric_table(warehouse.schema))
    evidently = {f"evidently_{name}": value for name, value in result.evidently_numbers.items()}
    naive = {naive_metric_name(name): value for name, value in result.naive.items()}
    rows = metric_rows(config, champion.version, current.window, result.drift,
                       {**result.metrics, **evidently, **naive}, now(), _flow_run_id())
    return append_rows(warehouse, table, rows)


@task(name="gather-signals", cache_policy=NO_CACHE, **STORE_RETRIES)
def gather_signals(config: ModelConfig, champion: Champion | None, current: CurrentWindow | None,
                   result: ReportResult | None, as_of: datetime, manual_reason: str) -> Signals:
    """The policy's inputs: this run's numbers and the history in the warehouse (ledger, metric table)."""
    warehouse = get_warehouse()
    fired, last_request = ledger_history(read_ledger(warehouse, config.name, limit=LEDGER_HISTORY))
    manual = manual_reason or None
    if champion is None or current is None or result is None:
        return Signals(as_of=as_of, fired=fired, last_request_at=last_request, manual=manual)
    since = champion.window.end
    new_rows = count_rows_between(warehouse, config.source.clean, config.source.timestamp, since, as_of) \
        if since < as_of else 0
    served = count_predictions(warehouse, config.name, since, as_of, SERVED_ARMS) if since < as_of else 0
    if served:  # labels of served predictions arrive later: count the matured ones
        labelled = read_labelled_predictions(warehouse, config.name, since, as_of, matured_by=as_of,
                                             arms=SERVED_ARMS)
        new_rows = int(labelled["actual"].notna().sum())
    previous = read_monitoring_metric(warehouse, config.name, config.metric, champion.version,
                                      current.window.end, config.monitoring.consecutive_windows)
    live = (*(value for _, value in previous), result.metrics.get(config.metric))
    earlier_naive = {name: dict(read_monitoring_metric(warehouse, config.name, naive_metric_name(name),
                                                       champion.version, current.window.end,
                                                       config.monitoring.consecutive_windows))
                     for name in result.naive}
    naive = (*({name: values.get(end) for name, values in earlier_naive.items()} for end, _ in previous),
             dict(result.naive))
    times = pd.to_datetime(current.rows.loc[current.rows[config.target.column].notna(), "event_at"])
    data_end = times.max().to_pydatetime() if len(times) else None
    return Signals(
        as_of=as_of, data_end=data_end, drift_share=result.drift.drift_share,
        drifted_columns=result.drift.drifted_columns, live_metrics=live, holdout_metric=champion.holdout_metric,
        naive_metrics=naive,
        new_labelled_rows=new_rows, last_training_at=champion.window.end, last_request_at=last_request,
        fired=fired, manual=manual,
    )


@task(name="decide-retrain", cache_policy=NO_CACHE)
def decide(config: ModelConfig, signals: Signals) -> TriggerDecision:
    decision = decide_retrain(signals, trigger_policy(config))
    get_run_logger().info("decision: %s (%s)", "retrain" if decision.retrain else "no retrain", decision.reason)
    return decision


@task(name="record-monitoring-decision", cache_policy=NO_CACHE, **STORE_RETRIES)
def record_decision(config: ModelConfig, outcome: MonitoringOutcome, actor: str) -> None:
    """The decision into the ledger, then out as Prefect events with the reason in the payload."""
    from prefect.events import emit_event

    decision = outcome.decision
    append_ledger_entry(get_warehouse(), decision_entry(config, decision, outcome, actor, _flow_run_id()))
    payload = {"model": config.name, "reason": decision.reason, "as_of": outcome.as_of.isoformat(),
               "champion_version": outcome.champion_version, "drift_share": outcome.drift_share,
               "drifted_columns": list(outcome.drifted_columns), "metrics": dict(outcome.metrics),
               "signals": to_jsonable(decision.fired)}
    for event in decision.events:
        emit_event(event=event, resource={"prefect.resource.id": f"retrain.model.{config.name}"}, payload=payload)
    if decision.events:
        get_run_logger().info("emitted %s", ", ".join(decision.events))


@task(name="publish-monitoring-report", cache_policy=NO_CACHE, **STORE_RETRIES)
def publish_report(config: ModelConfig, outcome: MonitoringOutcome, result: ReportResult | None) -> str | None:
    """Log the HTML and numbers to a monitoring run in MLflow, and link them from Prefect artifacts."""
    from mlflow.tracking import MlflowClient
    from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

    from tasks.tracking import configure_mlflow, run_page

    run_id = experiment_id = None
    if result is not None:
        experiment_id = configure_mlflow(get_settings(), config.name)
        client = MlflowClient()
        run = client.create_run(experiment_id, run_name=run_label(config.name, "monitor", outcome.as_of),
                                tags={keys.MODEL: config.name, keys.KIND: "monitoring",
                                      keys.CHAMPION_VERSION: str(outcome.champion_version),
                                      keys.DECISION: outcome.decision.action,
                                      keys.REASON: outcome.decision.reason[:5000],
                                      keys.FLOW_RUN_ID: str(_flow_run_id())})
        run_id = run.info.run_id
        numbers = {k: v for k, v in outcome.metrics.items() if v is not None}
        numbers |= {f"naive_{name}": v for name, v in result.naive.items() if v is not None}  # live_naive_<name>
        numbers["drift_share"] = result.drift.drift_share
        numbers = {name: value for name, value in numbers.items() if np.isfinite(value)}
        for name, value in numbers.items():
            client.log_metric(run_id, f"live_{name}" if name != "drift_share" else name, float(value))
        client.log_param(run_id, keys.WINDOW_START, shown(outcome.window.start) if outcome.window else "")
        client.log_param(run_id, keys.WINDOW_END, shown(outcome.window.end) if outcome.window else "")
        for path in result.paths:
            client.log_artifact(run_id, str(path), artifact_path="reports")
        client.set_terminated(run_id, status="FINISHED")
        key = "".join(c if c.isalnum() else "-" for c in config.name.lower()).strip("-")
        for path in result.paths:
            create_link_artifact(key=f"{key}-{path.stem.split('-', 3)[-1]}",
                                 link=run_page(get_settings(), experiment_id, run_id, f"reports/{path.name}"),
                                 link_text=path.name, description=f"{config.name}: {path.name} (in the MLflow UI)")
        create_table_artifact(key=f"{key}-drift", table=drift_columns_table(result.drift.columns),
                              description=f"{config.name}: per-column drift as of {outcome.as_of.isoformat()}")
    create_markdown_artifact(
        key="".join(c if c.isalnum() else "-" for c in config.name.lower()).strip("-") + "-monitoring",
        markdown=monitoring_markdown(outcome, None if run_id is None else run_page(
            get_settings(), experiment_id, run_id)),
        description=f"monitoring of {config.name}: {outcome.decision.action}",
    )
    return run_id


def monitoring_markdown(outcome: MonitoringOutcome, run: str | None) -> str:
    """The Prefect artifact of a monitoring run: the decision, its numbers as a table, where the reports are."""
    decision = outcome.decision
    lines = [
        f"# Monitoring {outcome.model} as of {shown(outcome.as_of)}", "",
        f"**{'Retrain' if decision.retrain else 'No retrain'}** ({decision.action}): {decision.reason}", "",
        f"Champion version {outcome.champion_version or '-'}; window {outcome.window or '-'} ({outcome.source or '-'}"
        f" predictions): {outcome.rows:,} rows, {outcome.labelled:,} labelled.", "",
        "| number | value |", "|---|---:|",
        *[f"| {name} | {'–' if value is None else f'{value:.4f}'} |" for name, value in outcome.metrics.items()],
        f"| drift share | {'–' if outcome.drift_share is None else f'{outcome.drift_share:.2f}'} |", "",
        f"Drifted columns: {', '.join(outcome.drifted_columns) or 'none'}.",
    ]
    if run is not None:
        lines += ["", f"Reports and numbers: [the monitoring run in MLflow]({run}) (its `reports/` artifacts)."]
    return "\n".join(lines)


def _flow_run_id() -> str | None:
    run_id = flow_run.get_id()
    return None if run_id is None else str(run_id)


def monitoring_actor(manual_reason: str) -> str:
    """Who decided: a person when the run is a manual request, else the flow."""
    if manual_reason:
        return f"person:{get_settings().actor}"
    return "flow:monitor-model"


def assemble_outcome(
    config: ModelConfig, as_of: datetime, champion: Champion | None, current: CurrentWindow | None,
    result: ReportResult | None, scored: int, decision: TriggerDecision, mlflow_run_id: str | None = None,
) -> MonitoringOutcome:
    """The run's answer from its parts (no champion: no window, no numbers, the decision says why)."""
    return MonitoringOutcome(
        model=config.name, as_of=as_of, window=None if current is None else current.window,
        champion_version=None if champion is None else champion.version,
        source=None if current is None else current.source, rows=0 if current is None else len(current.rows),
        labelled=0 if current is None else current.labelled, scored=scored,
        drift_share=None if result is None else result.drift.drift_share,
        drifted_columns=() if result is None else result.drift.drifted_columns,
        metrics={} if result is None else result.metrics, decision=decision,
        reports=() if result is None else result.paths, mlflow_run_id=mlflow_run_id,
        naive_metrics={} if result is None else dict(result.naive),
    )

