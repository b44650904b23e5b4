"""Shared fixtures: a private Prefect test server, a private data folder per test, real flights rows.

Prefect reads its settings at import, so its home and telemetry switches are set here first.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import pytest
import sqlalchemy as sa
import yaml

if TYPE_CHECKING:
    from retrain.outcomes import TrainingWindow

os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="retrain-prefect-"))
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["DO_NOT_TRACK"] = "1"
os.environ["GIT_PYTHON_REFRESH"] = "quiet"

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_CONFIG = REPO / "examples" / "flights.yaml"
EXAMPLE_CONTRACT = REPO / "examples" / "flights.contract.yaml"
POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def postgres_available() -> str | None:
    """None when the PostgreSQL answers; otherwise why not, for the skip message."""
    try:
        engine = sa.create_engine(POSTGRES_URL, connect_args={"connect_timeout": 3})
        with engine.connect() as connection:
            connection.execute(sa.text("select 1"))
        engine.dispose()
    except Exception as error:  # noqa: BLE001 - any failure to connect means: skip with the reason
        return f"no PostgreSQL at 127.0.0.1:5432 (database 'test'): {type(error).__name__}: {error}"
    return None


@contextlib.contextmanager
def fresh_postgres_schema(prefix: str) -> Iterator[str]:
    """A schema of our own in the shared `test` database, dropped afterwards; skips where none answers."""
    reason = postgres_available()
    if reason:
        pytest.skip(reason)
    schema = f"{prefix}_{uuid.uuid4().hex[:8]}"
    engine = sa.create_engine(POSTGRES_URL)
    with engine.begin() as connection:
        connection.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield schema
    finally:
        with engine.begin() as connection:
            connection.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        engine.dispose()


@pytest.fixture(scope="session")
def postgres_schema() -> Iterator[tuple[str, str]]:
    """One schema for the session's warehouse unit tests (each uses tables of random names)."""
    with fresh_postgres_schema("retrain_test") as schema:
        yield POSTGRES_URL, schema


@pytest.fixture
def postgres_warehouse(retrain_home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The settings point the warehouse at a fresh PostgreSQL schema, so no other test's tables are seen."""
    from retrain.settings import get_settings
    from retrain.warehouse import create_warehouse_engine

    with fresh_postgres_schema("retrain_flow") as schema:
        monkeypatch.setenv("RETRAIN_WAREHOUSE_URL", POSTGRES_URL)
        monkeypatch.setenv("RETRAIN_WAREHOUSE_SCHEMA", schema)
        get_settings.cache_clear()
        try:
            yield schema
        finally:
            get_settings.cache_clear()
            create_warehouse_engine.cache_clear()


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """One Prefect test server for the session (~10 s to start); flow tests request it."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60), temporary_settings(
        {PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}
    ):
        yield


@pytest.fixture
def retrain_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh data folder (warehouse, MLflow, Optuna) for one test, with the settings cache reset."""
    from retrain.settings import get_settings
    from retrain.warehouse import create_warehouse_engine

    home = tmp_path / "home"
    monkeypatch.setenv("RETRAIN_HOME", str(home))
    for name in ("RETRAIN_WAREHOUSE_URL", "RETRAIN_WAREHOUSE_SCHEMA", "RETRAIN_MLFLOW_TRACKING_URI",
                 "RETRAIN_OPTUNA_STORAGE"):
        monkeypatch.delenv(name, raising=False)
    get_settings.cache_clear()
    yield home
    get_settings.cache_clear()
    create_warehouse_engine.cache_clear()


@pytest.fixture(scope="session")
def flights_all() -> pd.DataFrame:
    """The real example data (327k rows), read once per session."""
    from tasks.example_data import read_flights_example

    return read_flights_example()


@pytest.fixture(scope="session")
def flights_small(flights_all: pd.DataFrame) -> pd.DataFrame:
    """January 2013 minus its last days: ~20k real rows, enough to tune and gate in seconds."""
    return flights_all[flights_all["time_hour"] < pd.Timestamp("2013-01-25")].reset_index(drop=True)


def window_around(frame: pd.DataFrame, timestamp: str = "time_hour") -> TrainingWindow:
    """The fixed window holding every row of `frame`: what a unit test of a pure step passes."""
    from retrain.outcomes import TrainingWindow

    end = frame[timestamp].max().to_pydatetime() + timedelta(microseconds=1)
    return TrainingWindow(frame[timestamp].min().to_pydatetime(), end, end, False, None)


def cli_environment() -> dict[str, str]:
    """What a `retrain` process started by a test needs: this test's settings and the session's Prefect server
    (so it starts no temporary server of its own)."""
    from prefect.settings import PREFECT_API_URL

    return {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value()), "RETRAIN_LOCK_WAIT_SECONDS": "120"}


def write_model_config(folder: Path, **overrides: object) -> Path:
    """The example config with a small window and budget, written into `folder`; overrides are merged
    (a `training_window` override replaces the window: a lookback and fixed dates do not mix)."""
    raw = yaml.safe_load(EXAMPLE_CONFIG.read_text())
    raw["training_window"] = {"start": "2013-01-01", "end": "2013-01-25"}
    raw["tuning"] = {"trials": 4, "seed": 7, "max_rounds": 120, "early_stopping_rounds": 15}
    raw["contract"] = "flights.contract.yaml"
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict) and key != "training_window":
            raw[key] = {**raw[key], **value}
        else:
            raw[key] = value
    path = folder / "model.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    if EXAMPLE_CONTRACT.exists() and not (folder / "flights.contract.yaml").exists():
        (folder / "flights.contract.yaml").write_text(EXAMPLE_CONTRACT.read_text())
    return path
