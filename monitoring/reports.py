"""Evidently reports (drift, performance) and the page of the live metric by day per model version.

Evidently 0.7's current API only: `Report([...]).run(current, reference)` gives a snapshot, saved as
self-contained HTML. Evidently's time grows faster than its rows (1M x 20 columns took 113 s and 1.6 GB
here), so both sides are cut to a seeded sample first: at tens of thousands of rows per side the per-column
decisions no longer move (benchmarks/monitoring.py measures the agreement with all rows).
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from evidently import BinaryClassification, DataDefinition, Dataset, Regression, Report
from evidently.metrics import ValueDrift
from evidently.presets import ClassificationPreset, DataDriftPreset, RegressionPreset

PREDICTION = "prediction"
SAMPLE_SEED = 20130101
CHART_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf")


@dataclass(frozen=True)
class ReportColumns:
    """Which columns a report reads: features by kind, the target (if labels exist) and the prediction."""

    numeric: tuple[str, ...]
    categorical: tuple[str, ...]
    target: str | None
    prediction: str | None = PREDICTION
    binary: bool = False

    @property
    def features(self) -> tuple[str, ...]:
        return (*self.numeric, *self.categorical)


def sample_rows(frame: pd.DataFrame, rows: int, seed: int = SAMPLE_SEED) -> pd.DataFrame:
    """At most `rows` rows, drawn with a fixed seed so a re-run compares the same rows; small frames pass."""
    return frame if len(frame) <= rows else frame.sample(n=rows, random_state=seed).sort_index()


def data_definition(columns: ReportColumns, with_task: bool) -> DataDefinition:
    """Evidently's column roles; the task (regression or binary classification) only where labels exist."""
    numeric = list(columns.numeric)
    categorical = list(columns.categorical)
    extra: dict[str, Any] = {}
    if columns.prediction:
        numeric.append(columns.prediction)
    if columns.target:
        (categorical if columns.binary else numeric).append(columns.target)
    if with_task and columns.target and columns.prediction:
        if columns.binary:
            extra["classification"] = [
                BinaryClassification(target=columns.target, prediction_probas=columns.prediction)
            ]
        else:
            extra["regression"] = [Regression(target=columns.target, prediction=columns.prediction)]
    return DataDefinition(numerical_columns=numeric, categorical_columns=categorical, **extra)


def report_frame(frame: pd.DataFrame, columns: ReportColumns) -> pd.DataFrame:
    """Only the report's columns; categoricals as text so Evidently compares labels, not codes."""
    wanted = [*columns.features, *(c for c in (columns.prediction, columns.target) if c)]
    out = frame[wanted].copy()
    for name in columns.categorical:
        out[name] = out[name].astype("string").astype(object)
    if columns.binary and columns.target:
        out[columns.target] = out[columns.target].astype(int)
    return out


def build_drift_report(
    reference: pd.DataFrame, current: pd.DataFrame, columns: ReportColumns, drift_share: float
) -> Any:
    """Drift of the features (DataDriftPreset, its share test at `drift_share`), of the prediction and, where
    labels exist, of the target, current against reference."""
    metrics: list[Any] = [DataDriftPreset(columns=list(columns.features), drift_share=drift_share)]
    metrics += [ValueDrift(column=name) for name in (columns.prediction, columns.target) if name]
    definition = data_definition(columns, with_task=False)
    return Report(metrics, include_tests=True).run(
        Dataset.from_pandas(report_frame(current, columns), data_definition=definition),
        Dataset.from_pandas(report_frame(reference, columns), data_definition=definition),
    )


def build_performance_report(reference: pd.DataFrame, current: pd.DataFrame, columns: ReportColumns) -> Any:
    """The regression (or binary classification) preset on the current window's matured labels, with the
    champion on its own training window as the reference."""
    if columns.target is None:
        raise ValueError("a performance report needs the target column")
    preset = ClassificationPreset() if columns.binary else RegressionPreset()
    definition = data_definition(columns, with_task=True)
    return Report([preset]).run(
        Dataset.from_pandas(report_frame(current, columns), data_definition=definition),
        Dataset.from_pandas(report_frame(reference, columns), data_definition=definition),
    )


def save_report(snapshot: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    snapshot.save_html(str(path))
    return path


def report_paths(folder: Path, model: str, day: str) -> dict[str, Path]:
    """`<reports>/<model>/<date>-drift.html`, `-performance.html` (our page) and `-regression.html` (Evidently's)."""
    base = folder / model
    return {kind: base / f"{day}-{kind}.html" for kind in ("drift", "performance", "evidently-performance")}


def daily_metric_chart(daily: pd.DataFrame, metric: str, width: int = 900, height: int = 320) -> str:
    """An inline SVG line chart of `value` by `day`, one line per `version` (no script, no network).

    Args:
        daily: Columns day (date), version, rows, value.
    """
    if daily.empty:
        return "<p>No matured labels in the history yet: nothing to chart.</p>"
    days = sorted(daily["day"].unique())
    top = float(daily["value"].max()) * 1.1 or 1.0
    left, bottom, right, upper = 60, height - 40, width - 20, 20

    def x(day: Any) -> float:
        position = days.index(day)
        return left + (right - left) * (position / max(len(days) - 1, 1))

    def y(value: float) -> float:
        return bottom - (bottom - upper) * (value / top)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
             f'aria-label="{html.escape(metric)} by day per model version">',
             f'<line x1="{left}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="#444"/>',
             f'<line x1="{left}" y1="{upper}" x2="{left}" y2="{bottom}" stroke="#444"/>']
    for step in range(5):
        value = top * step / 4
        parts.append(f'<text x="{left - 6}" y="{y(value) + 4:.1f}" font-size="11" text-anchor="end">{value:.1f}</text>')
    for index in sorted({0, len(days) // 2, len(days) - 1}):
        parts.append(f'<text x="{x(days[index]):.1f}" y="{bottom + 16}" font-size="11" text-anchor="middle">'
                     f'{days[index]}</text>')
    for number, (version, group) in enumerate(daily.groupby("version", sort=True)):
        colour = CHART_COLOURS[number % len(CHART_COLOURS)]
        rows = group.sort_values("day")
        points = " ".join(f"{x(day):.1f},{y(value):.1f}" for day, value in zip(rows["day"], rows["value"], strict=True))
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{points}"/>')
        parts.append(f'<text x="{right - 110}" y="{upper + 14 * (number + 1)}" font-size="12" fill="{colour}">'
                     f'version {html.escape(str(version))}</text>')
    parts.append(f'<text x="14" y="{upper + (bottom - upper) / 2:.0f}" font-size="12" '
                 f'transform="rotate(-90 14 {upper + (bottom - upper) / 2:.0f})">{html.escape(metric)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def performance_page(
    model: str,
    metric: str,
    daily: pd.DataFrame,
    window_metrics: dict[str, float | None],
    evidently_report: str | None,
    title: str,
) -> str:
    """The performance page: the metric by day per model version (chart and table), the window's numbers, and
    Evidently's performance report embedded below."""
    table_rows = "".join(
        f"<tr><td>{row.day}</td><td>{html.escape(str(row.version))}</td><td>{row.rows:,}</td>"
        f"<td>{row.value:.3f}</td></tr>"
        for row in daily.sort_values(["day", "version"]).itertuples()
    )
    numbers = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{'null' if value is None else f'{value:.4f}'}</td></tr>"
        for name, value in window_metrics.items()
    )
    embedded = (
        f'<h2>Evidently performance report</h2><iframe src="{html.escape(evidently_report)}" '
        'style="width:100%;height:1400px;border:0"></iframe>'
        if evidently_report else "<p>No matured labels in the current window: no Evidently performance report.</p>"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>"
        f"<h2>{html.escape(metric.upper())} by day per model version (matured labels only)</h2>"
        f"{daily_metric_chart(daily, metric)}"
        f"<h2>Current window</h2><table><tr><th>metric</th><th>value</th></tr>{numbers}</table>"
        f"<h2>By day</h2><table id='daily'><tr><th>day</th><th>version</th><th>rows</th>"
        f"<th>{html.escape(metric)}</th></tr>{table_rows}</table>{embedded}</body></html>"
    )


def drift_columns_table(columns: Sequence[Any]) -> list[dict[str, Any]]:
    """Per-column drift rows for a Prefect table artifact."""
    return [
        {"column": c.column, "method": c.method, "score": round(c.score, 4), "threshold": c.threshold,
         "drifted": c.drifted}
        for c in columns
    ]
