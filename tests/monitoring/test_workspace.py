"""The Evidently workspace monitoring writes: a project per model, a summary snapshot per run timestamped on the
Retrain clock, and a dashboard with one live-metric line per version (read back through Evidently's own API)."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

from evidently.ui.workspace import Workspace

from monitoring.reports import ReportLabel
from monitoring.workspace import (
    DRIFT_SHARE,
    LIVE,
    NAIVE,
    ROWS_SCORED,
    live_column,
    record_monitoring_run,
    summary_snapshot,
)

T0 = datetime(2013, 6, 1)


def label(day: int, version: str) -> ReportLabel:
    return ReportLabel("flights-delay", version, T0 + timedelta(days=day), "[a, b)", "[c, d)")


def test_a_summary_snapshot_holds_the_numbers_under_their_names() -> None:
    snapshot = summary_snapshot({LIVE: 21.5, NAIVE: 25.0, DRIFT_SHARE: None, ROWS_SCORED: 900.0}, label(0, "3"))
    values = {metric["config"]["column"]: metric["value"] for metric in snapshot.dict()["metrics"]}
    assert values == {live_column("3"): 21.5, NAIVE: 25.0, ROWS_SCORED: 900.0}  # the unknown one is left out


def test_runs_land_in_the_models_project_and_each_version_gets_a_line(tmp_path: Path) -> None:
    for day, version in enumerate(["1", "1", "2"]):
        record_monitoring_run(tmp_path, label(day, version), "mae", {LIVE: 20.0 + day, DRIFT_SHARE: 0.1}, ["1"])
    workspace = Workspace(str(tmp_path))
    (project,) = workspace.list_projects()
    assert project.name == "flights-delay" and len(workspace.list_runs(project.id)) == 3
    dashboard = workspace.get_dashboard(project.id)
    assert [tab.title for tab in dashboard.tabs] == ["Model over time"]
    (live,) = [panel for panel in dashboard.panels if panel.title.startswith("Live MAE")]
    assert [value.legend for value in live.values] == ["version 1", "version 2", "naive forecaster"]
    assert [value.metric_labels["column"] for value in live.values][:2] == [live_column("1"), live_column("2")]
    runs = [workspace.get_run(project.id, run) for run in workspace.list_runs(project.id)]
    assert sorted(run.timestamp for run in runs) == [T0, T0 + timedelta(days=1), T0 + timedelta(days=2)]
