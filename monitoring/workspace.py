"""The Evidently workspace that monitoring writes and `evidently ui` shows: one project per model, the snapshots of
every monitoring run, and a dashboard of the model's life over time.

Evidently's own dashboards plot the values of metrics across a project's snapshots, by the snapshots' timestamps
(the Retrain clock here, so a replayed year draws the same dashboard as a lived one). Each monitoring run adds:

- a summary snapshot: one row of the run's numbers (live metric, the naive forecaster's on the same matured rows,
  drift share, rows scored, quarantined share of the rows that arrived), each read by Evidently's `MeanValue`, so
  the dashboard panels are ordinary Evidently panels over ordinary metrics;
- the drift report's snapshot, so each run's full report opens from the project in the UI.

Panels are rebuilt from the versions the history holds, so a new champion gets its own line.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from evidently import DataDefinition, Dataset, Report
from evidently.metrics import MeanValue
from evidently.sdk.models import DashboardModel, DashboardTabModel, PanelMetric
from evidently.sdk.panels import bar_plot_panel, line_plot_panel, text_panel
from evidently.ui.workspace import Project, Workspace

from monitoring.reports import ReportLabel

SUMMARY = "summary"
LIVE, NAIVE, DRIFT_SHARE, ROWS_SCORED, QUARANTINED_SHARE = (
    "live_metric", "naive_metric", "drift_share", "rows_scored", "quarantined_share")
SUMMARY_COLUMNS = (LIVE, NAIVE, DRIFT_SHARE, ROWS_SCORED, QUARANTINED_SHARE)
TAB = "Model over time"


def live_column(version: str) -> str:
    """The summary column of one version's live metric.

    One column per version, not one column with a version tag: Evidently's local storage matches a panel's series
    by metric and labels first and checks tags only against the first match, so two series told apart by tags
    alone would draw as one.
    """
    return f"{LIVE}_v{version}"


def summary_snapshot(numbers: Mapping[str, float | None], label: ReportLabel) -> Any:
    """A snapshot holding the run's numbers as `MeanValue` metrics of a one-row dataset (missing ones left out);
    the live metric is written under the version's own column (`live_column`)."""
    named = {live_column(label.version) if name == LIVE else name: value for name, value in numbers.items()
             if name in SUMMARY_COLUMNS}
    present = {name: float(value) for name, value in named.items() if value is not None}
    frame = pd.DataFrame([present]) if present else pd.DataFrame({ROWS_SCORED: [0.0]})
    definition = DataDefinition(numerical_columns=list(frame.columns))
    report = Report([MeanValue(column=name) for name in frame.columns])
    return report.run(Dataset.from_pandas(frame, data_definition=definition), None, timestamp=label.as_of,
                      name=label.name(SUMMARY), tags=[*label.tags, SUMMARY], metadata=label.metadata)


def value_series(column: str, legend: str) -> PanelMetric:
    return PanelMetric(legend=legend, metric="MeanValue", metric_labels={"column": column}, tags=[SUMMARY])


def dashboard_panels(model: str, metric: str, versions: Iterable[str]) -> list[Any]:
    """The dashboard: the live metric by monitoring run per version next to the naive forecaster, drift share,
    rows scored and the quarantined share."""
    lines = [value_series(live_column(version), f"version {version}") for version in versions]
    return [
        text_panel(title=f"{model}: the model in production, one point per monitoring run on the Retrain clock"),
        line_plot_panel(title=f"Live {metric.upper()} per version, next to the naive forecaster on the same rows",
                        values=[*lines, value_series(NAIVE, "naive forecaster")], size="full"),
        line_plot_panel(title="Share of drifted features", values=[value_series(DRIFT_SHARE, "drift share")],
                        size="half"),
        line_plot_panel(title="Share of arriving rows quarantined",
                        values=[value_series(QUARANTINED_SHARE, "quarantined share")], size="half"),
        bar_plot_panel(title="Rows scored in the current window", values=[value_series(ROWS_SCORED, "rows scored")],
                       size="full"),
    ]


def model_project(workspace: Workspace, model: str) -> Project:
    """The model's project, created on first use."""
    found = [project for project in workspace.search_project(model) if project.name == model]
    if found:
        return found[0]
    project = workspace.create_project(model, description=f"Monitoring of the Retrain model '{model}'")
    project.save()
    return project


def record_monitoring_run(
    folder: Path, label: ReportLabel, metric: str, numbers: Mapping[str, float | None], versions: Iterable[str],
    snapshots: Sequence[Any] = (),
) -> Project:
    """Add one monitoring run to the model's project (its summary and `snapshots`) and redraw the dashboard.

    Args:
        folder: The workspace folder (created on first use); `evidently ui --workspace <folder>` shows it.
        label: What the run is about (model, version, instant, windows).
        metric: The model's metric, for the panel titles.
        numbers: The run's numbers by `SUMMARY_COLUMNS` name (None where unknown).
        versions: The versions whose live metric the history holds (one line each).
        snapshots: The run's report snapshots (e.g. the drift report), kept for browsing.
    """
    workspace = Workspace.create(str(folder))
    project = model_project(workspace, label.model)
    workspace.add_run(project.id, summary_snapshot(numbers, label))
    for snapshot in snapshots:
        workspace.add_run(project.id, snapshot)
    shown = sorted({*versions, label.version}, key=lambda version: (len(version), version))
    workspace.save_dashboard(project.id, dashboard(label.model, metric, shown))
    return project


def dashboard(model: str, metric: str, versions: Iterable[str]) -> DashboardModel:
    """The whole dashboard, one tab, written over the previous one (a new version adds a line)."""
    panels = dashboard_panels(model, metric, versions)
    return DashboardModel(tabs=[DashboardTabModel(title=TAB, panels=[panel.id for panel in panels])], panels=panels)
