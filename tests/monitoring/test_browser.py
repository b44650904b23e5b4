"""One real-browser check: headless Chromium (the Debian package) opens a drift report written from real flights
rows; the per-column drift table is DRAWN (its cells, outside the page's script data, name each column and its
verdict), and the screenshot kept beside the test's files is not blank.

Evidently's page carries its data as JSON inside a script; column names are there whether or not the table renders,
so the test reads only text that is inside table cells after the page's scripts ran (`--dump-dom`).
"""

from __future__ import annotations

import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from monitoring.reports import ReportColumns, build_drift_report, save_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# The flags this machine needs (no network, no sandbox as root): see the machine notes in STACK.md.
HEADLESS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--no-first-run", "--virtual-time-budget=15000", "--window-size=1400,1800"]


class TableCells(HTMLParser):
    """The text of every table cell (`td`, `th`) of a rendered page, in order, leaving script and style out."""

    def __init__(self) -> None:
        super().__init__()
        self.open: list[str] = []
        self.hidden = 0
        self.cells: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.open.append(tag)
        self.hidden += tag in ("script", "style")

    def handle_endtag(self, tag: str) -> None:
        self.hidden -= tag in ("script", "style") and self.hidden > 0
        if tag in self.open:
            del self.open[len(self.open) - 1 - self.open[::-1].index(tag):]

    def handle_data(self, data: str) -> None:
        if not self.hidden and data.strip() and ({"td", "th"} & set(self.open)):
            self.cells.append(data.strip())


def drawn_cells(page: str) -> list[str]:
    parser = TableCells()
    parser.feed(page)
    return parser.cells


def test_drawn_cells_leave_script_data_out() -> None:
    page = ('<script>var data = {"column": "temp"};</script><table><tr><th>Column</th></tr>'
            "<tr><td>dewp</td><td><span>Detected</span></td></tr></table><p>temp</p>")
    assert drawn_cells(page) == ["Column", "dewp", "Detected"]


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (Debian: apt-get install -y chromium)")
def test_chromium_draws_the_drift_table(flights_all: pd.DataFrame, tmp_path: Path) -> None:
    columns = ReportColumns(("temp", "dewp", "distance"), ("carrier",), target=None, prediction=None)
    months = flights_all["time_hour"].dt.month
    january = flights_all[months == 1].sample(2000, random_state=1)
    july = flights_all[months == 7].sample(2000, random_state=1)
    report = save_report(build_drift_report(january, july, columns, 0.5), tmp_path / "drift.html")
    dom = subprocess.run([str(CHROMIUM), *HEADLESS, "--dump-dom", report.as_uri()], capture_output=True, text=True,
                         timeout=120, check=False)
    assert dom.returncode == 0, dom.stderr[-2000:]
    cells = drawn_cells(dom.stdout)
    assert "Data Drift" in cells and "Drift Score" in cells  # the per-column table's header is drawn
    # Each column's row is drawn with its verdict: winter and summer temperatures differ, flight distances do not.
    verdict = {cells[i]: cells[i + 2] for i in range(len(cells) - 2) if cells[i] in {"temp", "dewp", "distance"}}
    assert verdict == {"temp": "Detected", "dewp": "Detected", "distance": "Not Detected"}
    screenshot = tmp_path / "drift.png"
    subprocess.run([str(CHROMIUM), *HEADLESS, f"--screenshot={screenshot}", report.as_uri()], capture_output=True,
                   timeout=120, check=False)
    with Image.open(screenshot) as image:
        colours = image.convert("RGB").resize((140, 180)).getcolors(maxcolors=140 * 180)
    assert colours is not None and len(colours) > 50  # a drawn page, not a blank or single-colour one
