"""One real-browser check: headless Chromium (the Debian package) opens a drift report written from real
flights rows; the page shows the drift table, and the test keeps a screenshot."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from monitoring.reports import ReportColumns, build_drift_report, save_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (Debian: apt-get install -y chromium)")
def test_chromium_renders_the_drift_table(flights_all: pd.DataFrame, tmp_path: Path) -> None:
    columns = ReportColumns(("temp", "dewp", "distance"), ("carrier",), target=None, prediction=None)
    months = flights_all["time_hour"].dt.month
    january = flights_all[months == 1].sample(2000, random_state=1)
    july = flights_all[months == 7].sample(2000, random_state=1)
    report = save_report(build_drift_report(january, july, columns, 0.5), tmp_path / "drift.html")
    command = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=15000",
               "--window-size=1400,1800"]
    dom = subprocess.run([*command, "--dump-dom", report.as_uri()], capture_output=True, text=True, timeout=120,
                         check=False)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "Drifted Columns" in dom.stdout or "Dataset Drift" in dom.stdout or "drift" in dom.stdout.lower()
    assert "temp" in dom.stdout and "dewp" in dom.stdout  # the per-column table is rendered with its rows
    screenshot = tmp_path / "drift.png"
    subprocess.run([*command, f"--screenshot={screenshot}", report.as_uri()], capture_output=True, timeout=120,
                   check=False)
    assert screenshot.is_file() and screenshot.stat().st_size > 10_000
