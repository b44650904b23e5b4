"""Commands that run no flow import only what they use (issue 19): no Prefect, Optuna or pandera for `status`,
`failures`, `contract infer`, and nothing heavy at all for `--help`.

A correctness test, not a timing one: each command runs in a fresh process on a real warehouse of flights rows
and prints which libraries ended up in `sys.modules`; `benchmarks/commands.py` prints how long they take.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import REPO, write_model_config

PROBE = """
import json, sys
from retrain.cli import app
try:
    code = app(sys.argv[1:], standalone_mode=False)
except SystemExit as done:
    code = done.code
heavy = ("prefect", "optuna", "pandera", "lightgbm", "evidently", "mlflow", "pandas", "sklearn", "httpx", "uvicorn")
sys.stderr.write("LOADED=" + json.dumps([name for name in heavy if name in sys.modules]) + "\\n")
sys.exit(code or 0)
"""
TRAINING_STACK = {"prefect", "optuna", "pandera", "lightgbm", "evidently", "sklearn"}


@pytest.fixture
def config_path(retrain_home: Path, tmp_path: Path, flights_small: pd.DataFrame) -> Path:
    from retrain.warehouse import get_warehouse, write_frame

    write_frame(get_warehouse(), flights_small.head(2000), "flights", if_exists="replace")
    return write_model_config(tmp_path)


def loaded_by(*arguments: str) -> tuple[int, set[str], str]:
    """Run `retrain ARGUMENTS` in a fresh interpreter; its exit code, the heavy libraries it imported, stdout."""
    result = subprocess.run([sys.executable, "-c", PROBE, *arguments], capture_output=True, text=True, timeout=300,
                            cwd=REPO, env=dict(os.environ), check=False)
    lines = [line for line in result.stderr.splitlines() if line.startswith("LOADED=")]
    assert lines, result.stderr[-2000:]
    return result.returncode, set(json.loads(lines[-1].removeprefix("LOADED="))), result.stdout


def test_help_imports_nothing_heavy() -> None:
    code, loaded, stdout = loaded_by("--help")

    assert code == 0 and "status" in stdout
    assert loaded == set(), loaded  # not even pandas: the command list needs typer and our config models


@pytest.mark.parametrize(
    ("command", "needs"),
    [
        (["status"], {"mlflow"}),  # the registry's aliases: the MLflow client, and what MLflow itself imports
        (["failures"], set()),
        (["contract", "infer", "--force"], {"pandas"}),  # reads the table into a frame
    ],
)
def test_a_command_without_a_flow_imports_no_training_stack(config_path: Path, command: list[str],
                                                            needs: set[str]) -> None:
    arguments = [*command, "--json"] if command == ["failures"] else [*command, "--config", str(config_path),
                                                                      "--json"]
    code, loaded, stdout = loaded_by(*arguments)

    assert code == 0, stdout
    json.loads(stdout)  # the command did its work: one JSON object
    assert not loaded & TRAINING_STACK, loaded
    assert needs <= loaded
