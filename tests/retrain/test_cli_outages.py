"""Outages and set-up mistakes through the real `retrain` command: the right exit code, one JSON object,
one line on stderr with no traceback, and never a password, on stdout, stderr or in Prefect's database."""

from __future__ import annotations

import base64
import binascii
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from retrain.warehouse import open_warehouse, write_frame
from tests.conftest import POSTGRES_URL, REPO, fresh_postgres_schema, write_model_config

PASSWORD = "S3cretPW42"
RETRAIN = str(Path(sys.executable).parent / "retrain")


def command_environment(home: Path, **overrides: str) -> dict[str, str]:
    """A clean environment for a child process: its own RETRAIN_HOME and PREFECT_HOME, no test settings."""
    environment = {
        key: value for key, value in os.environ.items() if not key.startswith(("RETRAIN_", "PREFECT_", "MLFLOW_"))
    }
    environment.update(
        RETRAIN_HOME=str(home),
        PREFECT_HOME=str(home / "prefect"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
        **overrides,
    )
    return environment


def run_command(args: list[str], environment: dict[str, str], cwd: Path) -> tuple[int, str, str]:
    result = subprocess.run(
        args, env=environment, cwd=cwd, capture_output=True, text=True, timeout=600, check=False
    )
    return result.returncode, result.stdout, result.stderr


def one_json_object(stdout: str) -> dict:
    lines = stdout.strip().splitlines()
    assert len(lines) == 1, f"stdout must hold exactly one JSON line, got: {stdout!r}"
    return json.loads(lines[0])


def password_hits_under(folder: Path) -> list[str]:
    """Every place under `folder` holding the password: each SQLite table and column, and any other file
    as bytes or as base64 (Prefect stores pickled results that way)."""
    hits: list[str] = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = path.read_bytes()
        if PASSWORD.encode() in data:
            hits.append(str(path))
        try:
            if PASSWORD.encode() in base64.b64decode(b"".join(data.split()), validate=False):
                hits.append(f"{path} (base64)")
        except (binascii.Error, ValueError):
            pass
        if path.suffix == ".db":
            with sqlite3.connect(path) as connection:
                tables = [row[0] for row in connection.execute("select name from sqlite_master where type='table'")]
                for table in tables:
                    columns = [row[1] for row in connection.execute(f'pragma table_info("{table}")')]
                    for column in columns:
                        found = connection.execute(
                            f'select count(*) from "{table}" where cast("{column}" as text) like ?',
                            (f"%{PASSWORD}%",),
                        ).fetchone()[0]
                        if found:
                            hits.append(f"{path}:{table}.{column} ({found} rows)")
    return hits


@pytest.fixture
def model_config(tmp_path: Path) -> Path:
    return write_model_config(tmp_path)


def test_training_against_an_unreachable_mlflow_exits_3_naming_it_without_the_password(
    tmp_path: Path, model_config: Path, flights_small: pd.DataFrame
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    # the source table is there, so the config check passes and the MLflow check is what fails
    write_frame(open_warehouse(f"sqlite:///{home / 'warehouse.db'}"), flights_small.head(500), "flights")
    environment = command_environment(home, RETRAIN_MLFLOW_TRACKING_URI=f"http://user:{PASSWORD}@127.0.0.1:9")
    code, stdout, stderr = run_command(
        [RETRAIN, "train", "--config", str(model_config), "--trials", "1", "--json"], environment, tmp_path
    )
    error = one_json_object(stdout)
    assert code == 3 and error == {"error": "StoreUnavailable", "message": error["message"], "exit_code": 3}
    assert "MLflow tracking server http://user:***@127.0.0.1:9 is unreachable" in error["message"]
    assert PASSWORD not in stdout + stderr and "Traceback" not in stderr
    assert stderr.strip().splitlines() == [f"error: {error['message']}"]
    assert not (home / "prefect" / "prefect.db").exists()  # failed before any Prefect server or flow run


def test_unreachable_warehouse_exits_3_and_a_bad_settings_file_exits_2(tmp_path: Path, model_config: Path) -> None:
    home = tmp_path / "home"
    unreachable = command_environment(
        home, RETRAIN_WAREHOUSE_URL=f"postgresql+psycopg://postgres:{PASSWORD}@127.0.0.1:9/test"
    )
    code, stdout, stderr = run_command([RETRAIN, "ingest", "--config", str(model_config), "--json"], unreachable,
                                       tmp_path)
    error = one_json_object(stdout)
    assert code == 3 and error["error"] == "StoreUnavailable" and "warehouse at postgresql" in error["message"]
    assert PASSWORD not in stdout + stderr and "Traceback" not in stderr

    (tmp_path / "retrain.yaml").write_text("warehouse_ur: postgresql://x@db/wh\n")
    code, stdout, stderr = run_command([RETRAIN, "ingest", "--config", str(model_config), "--json"],
                                       command_environment(home), tmp_path)
    error = one_json_object(stdout)
    assert code == 2 and error["error"] == "ConfigError"
    assert "unknown key 'warehouse_ur'" in error["message"] and str(tmp_path / "retrain.yaml") in error["message"]
    assert "did you mean 'warehouse_url'" in error["message"] and "Traceback" not in stderr

    (tmp_path / "retrain.yaml").write_text("home: [unclosed\n")
    code, stdout, _ = run_command([RETRAIN, "train", "--config", str(model_config), "--json"],
                                  command_environment(home), tmp_path)
    error = one_json_object(stdout)
    assert code == 2 and error["error"] == "ConfigError" and "is not valid YAML" in error["message"]


@pytest.mark.postgres
def test_a_missing_warehouse_schema_exits_2_naming_it(tmp_path: Path, model_config: Path) -> None:
    with fresh_postgres_schema("retrain_gone") as schema:
        pass  # created and dropped: a schema name that certainly does not exist now
    environment = command_environment(tmp_path / "home", RETRAIN_WAREHOUSE_URL=POSTGRES_URL,
                                      RETRAIN_WAREHOUSE_SCHEMA=schema)
    code, stdout, stderr = run_command([RETRAIN, "load-example", "--config", str(model_config), "--json"],
                                       environment, tmp_path)
    error = one_json_object(stdout)
    assert code == 2 and error["error"] == "ConfigError"
    assert f"schema '{schema}' does not exist" in error["message"] and "Traceback" not in stderr


@pytest.mark.slow
def test_a_worker_run_against_an_unreachable_mlflow_leaves_no_password_in_prefect(tmp_path: Path,
                                                                                   model_config: Path) -> None:
    """The flow as a worker runs it (no CLI in front): it fails on its store check, and neither its output
    nor anything under PREFECT_HOME (every table of Prefect's database, result files) holds the password."""
    home = tmp_path / "home"
    environment = command_environment(home, RETRAIN_MLFLOW_TRACKING_URI=f"http://user:{PASSWORD}@127.0.0.1:9")
    code, _, _ = run_command([RETRAIN, "load-example", "--config", str(model_config), "--until", "2013-01-25"],
                             command_environment(home), tmp_path)
    assert code == 0
    script = f"from flows.training import train_model\ntrain_model(config_path={str(model_config)!r}, trials=1)\n"
    code, stdout, stderr = run_command([sys.executable, "-c", script], environment, REPO)
    assert code != 0 and "StoreUnavailable" in stderr and "is unreachable" in stderr
    assert PASSWORD not in stdout + stderr
    database = home / "prefect" / "prefect.db"
    with sqlite3.connect(database) as connection:
        states = connection.execute("select state_type, state_name from flow_run").fetchall()
        messages = [row[0] for row in connection.execute("select message from flow_run_state where message != ''")]
    assert states == [("FAILED", "Failed")] and any("http://user:***@127.0.0.1:9" in m for m in messages)
    assert password_hits_under(home / "prefect") == []
