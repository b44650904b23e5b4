"""Evidently reports (drift, performance) and the page of the live metric by day per model version.

Evidently 0.7's current API only: `Report([...]).run(current, reference)` gives a snapshot, saved as
self-contained HTML. Evidently's time grows faster than its rows (1M x 20 columns took 113 s and 1.6 GB
here), so both sides are cut to a seeded sample first: at tens of thousands of rows per side the per-column
decisions no longer move (benchmarks/monitoring.py measures the agreement with all rows).
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
from evidently import BinaryClassification, DataDefinition, Dataset, Regression, Report
from evidently.metrics import MAE, MAPE, RMSE, AbsMaxError, MeanError, R2Score, ValueDrift
from evidently.presets import ClassificationPreset, DataDriftPreset

PREDICTION = "prediction"
SAMPLE_SEED = 20130101
CHART_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf")


@dataclass(frozen=True)
class ReportLabel:
    """What a report is about: the model, the version watched, the Retrain-clock instant and both windows.

    Shown as the header of every HTML report (Evidently's page names none of it) and kept on the Evidently snapshot
    (its name, tags and metadata, timestamped on the Retrain clock) for the workspace and its dashboard.
    """

    model: str
    version: str
    as_of: datetime
    current: str
    reference: str

    def name(self, kind: str) -> str:
        return f"{self.model} v{self.version} {kind} as of {self.as_of:%Y-%m-%d %H:%M}"

    @property
    def tags(self) -> list[str]:
        return [self.model, f"version:{self.version}"]

    @property
    def metadata(self) -> dict[str, str]:
        return {"model": self.model, "version": self.version, "as_of": f"{self.as_of:%Y-%m-%d %H:%M:%S}",
                "current window": self.current, "reference window": self.reference}

    def header(self, kind: str) -> str:
        """The HTML header of a report page (escaped)."""
        return (f'<header style="font-family:sans-serif;margin:1em 2em;padding:0.5em 1em;border-left:4px solid '
                f'#1f77b4"><h1 style="margin:0 0 0.3em 0;font-size:1.4em">{html.escape(self.name(kind))}</h1>'
                f"<div>current window {html.escape(self.current)} &middot; reference {html.escape(self.reference)}"
                "</div></header>")


def run_report(report: Report, current: Any, reference: Any, label: ReportLabel | None, kind: str) -> Any:
    """`Report.run`, timestamped on the Retrain clock and named after what it is about when a label is given."""
    if label is None:
        return report.run(current, reference)
    return report.run(current, reference, timestamp=label.as_of, name=label.name(kind), tags=label.tags,
                      metadata=label.metadata)


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
    reference: pd.DataFrame, current: pd.DataFrame, columns: ReportColumns, drift_share: float,
    label: ReportLabel | None = None,
) -> Any:
    """Drift of the features (DataDriftPreset, its share test at `drift_share`), of the prediction and, where
    labels exist, of the target, current against reference."""
    metrics: list[Any] = [DataDriftPreset(columns=list(columns.features), drift_share=drift_share)]
    metrics += [ValueDrift(column=name) for name in (columns.prediction, columns.target) if name]
    definition = data_definition(columns, with_task=False)
    return run_report(
        Report(metrics, include_tests=True),
        Dataset.from_pandas(report_frame(current, columns), data_definition=definition),
        Dataset.from_pandas(report_frame(reference, columns), data_definition=definition),
        label, "drift",
    )


def regression_metrics(target_has_zeros: bool) -> list[Any]:
    """What RegressionPreset reports, metric by metric, without MAPE where the target can be zero: there MAPE is
    astronomically large (1e19 on flights' delays) and overflows its tile, telling a reader nothing."""
    metrics: list[Any] = [MeanError(), MAE(), RMSE(), R2Score(), AbsMaxError()]
    return metrics if target_has_zeros else [*metrics[:2], MAPE(), *metrics[2:]]


def build_performance_report(
    reference: pd.DataFrame, current: pd.DataFrame, columns: ReportColumns, label: ReportLabel | None = None
) -> Any:
    """Regression (or binary classification) quality on the current window's matured labels, against the
    champion's reference rows."""
    if columns.target is None:
        raise ValueError("a performance report needs the target column")
    if columns.binary:
        metrics: list[Any] = [ClassificationPreset()]
    else:
        zeros = bool((current[columns.target] == 0).any() or (reference[columns.target] == 0).any())
        metrics = regression_metrics(zeros)
    definition = data_definition(columns, with_task=True)
    return run_report(
        Report(metrics),
        Dataset.from_pandas(report_frame(current, columns), data_definition=definition),
        Dataset.from_pandas(report_frame(reference, columns), data_definition=definition),
        label, "performance",
    )


def save_report(snapshot: Any, path: Path, header: str | None = None) -> Path:
    """Evidently's self-contained HTML, with `header` (e.g. `ReportLabel.header`) at the top of its page."""
    path.parent.mkdir(parents=True, exist_ok=True)
    snapshot.save_html(str(path))
    if header:
        page = path.read_text(encoding="utf-8")
        path.write_text(page.replace("<body>", f"<body>{header}", 1), encoding="utf-8")
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
    window_metrics: Mapping[str, float | None],
    evidently_report: str | None,
    title: str,
    history: str = "",
    evidently_numbers: Mapping[str, float] | None = None,
) -> str:
    """The performance page: the metric by day per model version over the history (chart and table), the current
    window's numbers (ours and Evidently's), and a link to Evidently's own performance report.

    A link, not an embedded frame: MLflow's artifact viewer shows a page inside a frame of its own, where a frame
    pointing at a sibling artifact stays blank.
    """
    table_rows = "".join(
        f"<tr><td>{row.day}</td><td>{html.escape(str(row.version))}</td><td>{row.rows:,}</td>"
        f"<td>{row.value:.3f}</td></tr>"
        for row in daily.sort_values(["day", "version"]).itertuples()
    )
    numbers = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{'null' if value is None else f'{value:.4f}'}</td>"
        f"<td>{_shown((evidently_numbers or {}).get(name))}</td></tr>"
        for name, value in window_metrics.items()
    )
    linked = (
        f'<p>Evidently\'s performance report of the current window: <a href="{html.escape(evidently_report)}">'
        f"{html.escape(evidently_report)}</a> (beside this page).</p>"
        if evidently_report else "<p>No matured labels in the current window: no Evidently performance report.</p>"
    )
    covers = f" over {html.escape(history)}" if history else ""
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>"
        f"<h2>{html.escape(metric.upper())} by day per model version{covers} (matured labels only)</h2>"
        f"{daily_metric_chart(daily, metric)}"
        "<h2>Current window</h2><table><tr><th>metric</th><th>value</th><th>Evidently</th></tr>"
        f"{numbers}</table>{linked}"
        f"<h2>By day{covers}</h2><table id='daily'><tr><th>day</th><th>version</th><th>rows</th>"
        f"<th>{html.escape(metric)}</th></tr>{table_rows}</table></body></html>"
    )


def _shown(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def drift_columns_table(columns: Sequence[Any]) -> list[dict[str, Any]]:
    """Per-column drift rows for a Prefect table artifact."""
    return [
        {"column": c.column, "method": c.method, "score": round(c.score, 4), "threshold": c.threshold,
         "drifted": c.drifted}
        for c in columns
    ]
