"""The prediction log and its labels: the one join the canary check and monitoring read, and the key text.

Every writer (the server's log, feedback by key, batch scoring) builds key text through `prediction_key`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import pandas as pd
import sqlalchemy as sa

from retrain.warehouse.engine import Warehouse
from retrain.warehouse.tables import (
    MONITORING_METRIC_TABLE,
    PREDICTION_TABLE,
    create_declared_table,
    has_table,
    insert_new_rows,
    label_table,
    monitoring_metric_table,
    prediction_table,
)


def read_labelled_predictions(
    warehouse: Warehouse,
    model: str,
    start: datetime,
    end: datetime,
    *,
    matured_by: datetime | None = None,
    arms: Sequence[str] | None = None,
    versions: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Predictions whose event time is in [start, end), joined with their labels, by request id or else by key.

    Columns: request_id, version, arm, event_at, predicted_at, prediction, latency_ms, key, actual, labelled_at.
    Selected by event time (the Retrain clock: a replay and a live system read the same rows), optionally by
    arm and by version. `actual` is null where no label had matured (its `event_at`) by `matured_by` (default:
    every label), so callers see both the traffic and the matured share of it. The canary check, the rollback
    rule and monitoring read this one join.
    """
    columns = [
        "request_id", "version", "arm", "event_at", "predicted_at", "prediction", "latency_ms", "key", "actual",
        "labelled_at",
    ]
    if not has_table(warehouse, PREDICTION_TABLE):
        return pd.DataFrame(columns=columns)
    predictions = create_declared_table(warehouse, prediction_table(warehouse.schema))
    labels = create_declared_table(warehouse, label_table(warehouse.schema))
    by_request = labels.alias("by_request")
    by_key = labels.alias("by_key")
    request_match = sa.and_(by_request.c.model == predictions.c.model,
                            by_request.c.request_id == predictions.c.request_id)
    key_match = sa.and_(by_key.c.model == predictions.c.model, by_key.c.request_id.is_(None),
                        predictions.c.key.is_not(None), by_key.c.key == predictions.c.key)
    if matured_by is not None:
        request_match = sa.and_(request_match, by_request.c.event_at <= matured_by)
        key_match = sa.and_(key_match, by_key.c.event_at <= matured_by)
    query = (
        sa.select(
            predictions.c.request_id, predictions.c.version, predictions.c.arm, predictions.c.event_at,
            predictions.c.predicted_at, predictions.c.prediction, predictions.c.latency_ms, predictions.c.key,
            sa.func.coalesce(by_request.c.actual, by_key.c.actual).label("actual"),
            sa.func.coalesce(by_request.c.labelled_at, by_key.c.labelled_at).label("labelled_at"),
        )
        .select_from(
            predictions.outerjoin(by_request, request_match).outerjoin(by_key, key_match)
        )
        .where(*_selected(predictions, model, start, end, arms, versions))
        .order_by(predictions.c.event_at, predictions.c.id)
    )
    with warehouse.engine.connect() as connection:
        frame = pd.read_sql(query, connection, parse_dates=["event_at", "predicted_at", "labelled_at"])
    return frame[columns]


def _selected(
    predictions: sa.Table, model: str, start: datetime, end: datetime, arms: Sequence[str] | None,
    versions: Sequence[str] | None,
) -> list[sa.ColumnElement[bool]]:
    """The one selection of the prediction log: a model's predictions by event time, arm and version."""
    conditions = [predictions.c.model == model, predictions.c.event_at >= start, predictions.c.event_at < end]
    if arms is not None:
        conditions.append(predictions.c.arm.in_(list(arms)))
    if versions is not None:
        conditions.append(predictions.c.version.in_([str(version) for version in versions]))
    return conditions


def prediction_key(values: Sequence[Any]) -> str:
    """The model's key values as the JSON text that the prediction and label tables join on.

    Every writer (the server's log, feedback by key, batch scoring) goes through this one function, so
    the same row gives the same text: instants as naive-UTC ISO text, numpy scalars as Python numbers,
    whole floats as integers (a JSON client may send 1.0 for an ID the table holds as 1).
    """
    return json.dumps([_key_value(value) for value in values], separators=(",", ":"))


def _key_value(value: Any) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, pd.Timestamp):
        value = value.to_pydatetime()
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
        return value.isoformat()
    if hasattr(value, "item"):  # numpy scalar
        value = value.item()
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def read_prediction_features(
    warehouse: Warehouse, model: str, start: datetime, end: datetime, arms: Sequence[str],
    versions: Sequence[str] | None = None,
) -> pd.DataFrame:
    """The raw records the model saw for predictions with event time in [start, end) of the given arms (and
    versions): request_id plus one column per field (parsed from the `features` JSON)."""
    if not has_table(warehouse, PREDICTION_TABLE):
        return pd.DataFrame(columns=["request_id"])
    predictions = create_declared_table(warehouse, prediction_table(warehouse.schema))
    query = (
        sa.select(predictions.c.request_id, predictions.c.features)
        .where(*_selected(predictions, model, start, end, arms, versions))
        .order_by(predictions.c.event_at, predictions.c.id)
    )
    with warehouse.engine.connect() as connection:
        rows = connection.execute(query).all()
    records = pd.DataFrame.from_records([json.loads(row.features) for row in rows])
    records.insert(0, "request_id", [row.request_id for row in rows])
    return records


def count_predictions(
    warehouse: Warehouse, model: str, start: datetime, end: datetime, arms: Sequence[str],
    versions: Sequence[str] | None = None,
) -> int:
    """Predictions of the given arms (and versions) with event time in [start, end)."""
    if not has_table(warehouse, PREDICTION_TABLE):
        return 0
    predictions = create_declared_table(warehouse, prediction_table(warehouse.schema))
    query = sa.select(sa.func.count()).where(*_selected(predictions, model, start, end, arms, versions))
    with warehouse.engine.connect() as connection:
        return int(connection.execute(query).scalar() or 0)


def append_new_predictions(
    warehouse: Warehouse, predictions: Sequence[dict[str, Any]], labels: Sequence[dict[str, Any]]
) -> int:
    """Insert the predictions (and their labels) whose request id the model has not logged yet, in one
    transaction; returns how many were new. A re-run over the same rows writes nothing twice."""
    if not predictions:
        return 0
    model = predictions[0]["model"]
    table = create_declared_table(warehouse, prediction_table(warehouse.schema))
    label = create_declared_table(warehouse, label_table(warehouse.schema))
    wanted = [row["request_id"] for row in predictions]
    with warehouse.engine.begin() as connection:
        known: set[str] = set()
        for chunk in range(0, len(wanted), 5000):  # bounded IN lists
            known.update(connection.execute(
                sa.select(table.c.request_id).where(table.c.model == model,
                                                    table.c.request_id.in_(wanted[chunk:chunk + 5000]))
            ).scalars())
        new_predictions = [row for row in predictions if row["request_id"] not in known]
        new_labels = [row for row in labels if row["request_id"] not in known]
        # The same insert as the server's log: a row another writer added since the read is skipped, not an error.
        if new_predictions:
            insert_new_rows(connection, table, new_predictions)
        if new_labels:
            insert_new_rows(connection, label, new_labels)
    return len(new_predictions)



def read_monitoring_metric(
    warehouse: Warehouse, model: str, metric: str, version: str, before: datetime, limit: int
) -> list[tuple[datetime, float | None]]:
    """The whole-window value of one metric in the last `limit` monitoring windows of one model version that
    ended before `before`, oldest first: the history the degradation signal counts."""
    if not has_table(warehouse, MONITORING_METRIC_TABLE):
        return []
    table = monitoring_metric_table(warehouse.schema)
    query = (
        sa.select(table.c.window_end, table.c.value)
        .where(table.c.model == model, table.c.metric == metric, table.c.version == version,
               table.c.column == "", table.c.window_end < before)
        .order_by(table.c.window_end.desc(), table.c.id.desc())
        .limit(limit)
    )
    with warehouse.engine.connect() as connection:
        rows = connection.execute(query).all()
    return [(row.window_end, row.value) for row in reversed(rows)]
