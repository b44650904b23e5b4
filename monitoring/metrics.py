"""Numbers out of an Evidently snapshot, read by metric type and column name, never by position.

A preset's metric list changes between Evidently releases (and with the columns given), so the position of
a metric says nothing; its `config.type` and `config.column` do. Whether a column drifted is the verdict of
its own drift test (FAIL = drifted), which is right whatever the method: a p-value drifts below its
threshold, a distance above it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

METRIC_TYPE_PREFIX = "evidently:metric_v2:"
# Evidently's metric type → our name, and which field of its value holds the number.
PERFORMANCE_METRICS: dict[str, tuple[str, str | None]] = {
    "MAE": ("mae", "mean"),
    "RMSE": ("rmse", None),
    "R2Score": ("r2", None),
    "MeanError": ("mean_error", "mean"),
    "AbsMaxError": ("max_abs_error", None),
    "RocAuc": ("auc", None),
    "LogLoss": ("log_loss", None),
    "F1Score": ("f1", None),
    "Accuracy": ("accuracy", None),
    "Precision": ("precision", None),
    "Recall": ("recall", None),
}


@dataclass(frozen=True)
class ColumnDrift:
    """One column's drift: the method Evidently chose, its score and threshold, and the verdict."""

    column: str
    method: str
    score: float
    threshold: float
    drifted: bool


@dataclass(frozen=True)
class DriftSummary:
    """The drift of a report: the share of drifted feature columns and every column's verdict."""

    drift_share: float
    drifted_count: int
    columns: tuple[ColumnDrift, ...]

    @property
    def drifted_columns(self) -> tuple[str, ...]:
        return tuple(column.column for column in self.columns if column.drifted)

    def column(self, name: str) -> ColumnDrift | None:
        return next((column for column in self.columns if column.column == name), None)


def metric_type(metric: Mapping[str, Any]) -> str:
    """`evidently:metric_v2:ValueDrift` → `ValueDrift`."""
    return str(metric.get("config", {}).get("type", "")).removeprefix(METRIC_TYPE_PREFIX)


def test_status(test: Mapping[str, Any]) -> str:
    """`FAIL`, `SUCCESS`, ...: `snapshot.dict()` gives the enum (`TestStatus.FAIL`), `json()` its value."""
    status = test.get("status", "")
    return str(getattr(status, "value", status)).rsplit(".", 1)[-1].upper()


def drift_test_verdicts(tests: Sequence[Mapping[str, Any]]) -> dict[str, bool]:
    """Metric id → drifted, from the per-column drift tests (status FAIL means the column drifted)."""
    verdicts = {}
    for test in tests:
        config = test.get("metric_config", {})
        params = config.get("params", {})
        if str(params.get("type", "")).removeprefix(METRIC_TYPE_PREFIX) == "ValueDrift":
            verdicts[config.get("metric_id")] = test_status(test) == "FAIL"
    return verdicts


def drifted_by_score(method: str, score: float, threshold: float) -> bool:
    """Evidently's rule when no test verdict is at hand: p-values drift below, distances at or above."""
    return score < threshold if "p_value" in method.lower() else score >= threshold


def read_drift(report: Mapping[str, Any], features: Sequence[str]) -> DriftSummary:
    """Per-column drift of every column in the report; the share counts only `features` (the prediction and
    target columns are reported, not counted).

    Raises:
        ValueError: a feature has no ValueDrift metric in the report (the report was built on other columns).
    """
    verdicts = drift_test_verdicts(report.get("tests", []))
    columns = []
    for metric in report.get("metrics", []):
        if metric_type(metric) != "ValueDrift":
            continue
        config = metric["config"]
        method, score, threshold = str(config.get("method")), float(metric["value"]), float(config["threshold"])
        drifted = verdicts.get(metric.get("id"), drifted_by_score(method, score, threshold))
        columns.append(ColumnDrift(str(config["column"]), method, score, threshold, bool(drifted)))
    found = {column.column for column in columns}
    missing = [name for name in features if name not in found]
    if missing:
        raise ValueError(f"the drift report has no ValueDrift metric for feature(s) {missing}")
    counted = [column for column in columns if column.column in set(features)]
    drifted = sum(column.drifted for column in counted)
    return DriftSummary(drifted / len(counted) if counted else 0.0, drifted, tuple(columns))


def read_performance(report: Mapping[str, Any]) -> dict[str, float]:
    """Performance numbers by our metric names (mae, rmse, r2, auc, log_loss, f1, ...)."""
    values: dict[str, float] = {}
    for metric in report.get("metrics", []):
        known = PERFORMANCE_METRICS.get(metric_type(metric))
        if known is None:
            continue
        name, field = known
        value = metric.get("value")
        if field is not None and isinstance(value, Mapping):
            value = value.get(field)
        if isinstance(value, int | float):
            values[name] = float(value)
    return values
