"""`retrain demo` (what `make demo` runs): months of NYC flights lived day by day, by the flows, on embedded stores.

Everything is written under `RETRAIN_HOME` (default `.retrain/`): the demo's model config (the example's, with a
demo-sized budget) beside its contract in `demo/`, the warehouse, MLflow, Optuna, Prefect's home, the reports and the
Evidently workspace, so `retrain ui` (`make ui`) shows what happened afterwards.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from retrain.cli.app import (
    JsonOption,
    app,
    check_stores_first,
    finish,
    prefect_api,
    prepare_environment,
    stdout_to_stderr,
)
from retrain.jsonable import to_jsonable
from retrain.settings import get_settings

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
START = datetime(2013, 3, 1)  # the first champion learns January and February; the replay begins in March


def demo_config(fast: bool) -> dict[str, Any]:
    """The example model's config with the demo's knobs: a small tuning budget (the replay trains several times),
    monitoring every few days, a canary that decides within days on a day's traffic."""
    raw = yaml.safe_load((EXAMPLES / "flights.yaml").read_text(encoding="utf-8"))
    raw["contract"] = "flights.contract.yaml"
    raw["tuning"] = {**raw.get("tuning", {}), "trials": 2 if fast else 6, "timeout_seconds": 120,
                     "max_rounds": 200 if fast else 300}
    raw["monitoring"] = {**raw.get("monitoring", {}), "window": "7d", "min_new_rows": 1500,
                         "retrain_every": "3d" if fast else "6d", "cooldown": "1d", "max_age": "14d",
                         "sample_rows": 5000}  # a week of flights is ~18k rows: drift on a sample, reports in seconds
    raw["release"] = {**raw.get("release", {}), "canary": {"share": 0.2, "min_predictions": 150},
                      "rollback": {"bake": "3d", "min_predictions": 300}}
    return raw


def write_demo_config(home: Path, fast: bool) -> Path:
    """The demo's config and the example's contract, written under the home's `demo/` folder."""
    folder = home / "demo"
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(EXAMPLES / "flights.contract.yaml", folder / "flights.contract.yaml")
    path = folder / "flights.yaml"
    header = "# The example model with the demo's budget and release knobs, written by `retrain demo`.\n"
    path.write_text(header + yaml.safe_dump(demo_config(fast), sort_keys=False), encoding="utf-8")
    return path


def replay_days(months: int, fast: bool) -> int:
    """Days from `START` to the same day `months` later (25 days for `--fast`: long enough for a canary started in
    the third week to be decided)."""
    if fast:
        return 25
    month = START.month - 1 + months
    return (datetime(START.year + month // 12, month % 12 + 1, 1) - START).days


@app.command()
def demo(
    months: Annotated[int, typer.Option(help="Months to replay, day by day, from March 2013.", min=1, max=9)] = 2,
    fast: Annotated[bool, typer.Option("--fast", help="25 days with a tiny budget (for tests).")] = False,
    as_json: JsonOption = False,
) -> None:
    """Replay months of NYC flights on the Retrain clock: a first champion, then every day's flights served by the
    prediction server, their delays fed back, batches validated, monitoring, retraining, canaries, rollbacks."""
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")  # progress and the summary are what a person reads
    prepare_environment()
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # "Created version 5 of model ...": the table says it
    settings = get_settings()
    config_path = write_demo_config(settings.resolved_home, fast)
    days = replay_days(months, fast)
    from rich.console import Console

    console = Console(file=sys.stderr)
    with stdout_to_stderr():
        check_stores_first("warehouse", "mlflow", "optuna", "prefect")
        with prefect_api():
            from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

            from flows.demo import listen, replay_months

            # No heartbeats: each flow run pays ~1 s joining its heartbeat thread (STACK.md), and the replay runs a
            # hundred flows in this one process. They tell a server that a run's process died; if the demo is
            # killed its `replay-months` run stays Running in the demo's own Prefect home, which nothing else uses.
            with _progress(console, days) as progress, temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
                stop = listen(progress)
                try:
                    outcome = replay_months(config_path=str(config_path), start=START, days=days,
                                            monitor_every=3 if fast else 7)
                finally:
                    stop()
    result = {**to_jsonable(outcome), "config": str(config_path), "reports": str(settings.reports_dir),
              "ui": "run `make ui` (or `retrain ui`): Prefect http://127.0.0.1:4200/, MLflow "
                    "http://127.0.0.1:5000/#/experiments?workflowType=machine_learning, Evidently "
                    "http://127.0.0.1:8001/"}
    finish(result, as_json, render_demo)


def render_demo(result: dict[str, Any]) -> str:
    """The month table, the story and where to look next, as text."""
    from io import StringIO

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"the replay, {result['start'][:10]} to {result['end'][:10]} (Retrain clock)")
    for column in ("month", "rows in", "quarantined", "refused", "retrains", "rejected", "promoted", "rolled back",
                   "champion", "served", "labelled", "MAE", "naive MAE", "naive"):
        table.add_column(column, justify="right")
    for month in result["months"]:
        table.add_row(month["month"], f"{month['rows_in']:,}", f"{month['quarantined']:,}",
                      str(month["refused_batches"]), str(month["retrains"]), str(month["rejections"]),
                      str(month["promotions"]), str(month["rollbacks"]), month["champion"] or "-",
                      f"{month['served']:,}", f"{month['labelled']:,}", _number(month["mae"]),
                      _number(month["naive_mae"]), month.get("naive") or "-")
    buffer = StringIO()
    console = Console(file=buffer, width=160)
    console.print(table)
    story = ", ".join(f"{name.replace('_', ' ')} {count:,}" for name, count in result["story"].items())
    by = "by the rule" if result["rollback_by"] == "rule" else "asked by a person"
    console.print(f"story: {story}; the rollback was {by}")
    for note in result["notes"]:
        console.print(f"note: {note}")
    for month in result["months"]:
        for reason in month["retrain_reasons"]:
            console.print(f"retrain asked in {month['month']}: {reason}")
    console.print(f"config {result['config']}; reports in {result['reports']}")
    console.print(result["ui"])
    return buffer.getvalue().rstrip()


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


class _progress:  # noqa: N801 - a context manager read like a function
    """A rich progress bar of the replayed days on stderr; yields the `(day, days, what)` callback."""

    def __init__(self, console: Any, days: int) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.bar = Progress(TextColumn("replaying {task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), console=console, transient=False)
        self.task = self.bar.add_task("first champion", total=days)

    def __enter__(self) -> Any:
        self.bar.start()

        def advance(day: int, days: int, what: str) -> None:
            self.bar.update(self.task, completed=day - 1, description=what)

        return advance

    def __exit__(self, *exc: object) -> None:
        self.bar.update(self.task, completed=self.bar.tasks[0].total)
        self.bar.stop()
