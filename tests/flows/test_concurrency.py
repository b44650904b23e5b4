"""Runs at once, as a user starts them: `retrain` processes side by side on one warehouse and one MLflow
store, against the session's Prefect server. One writer per model and per source; never two champions,
never a row twice."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import sqlalchemy as sa
from mlflow.tracking import MlflowClient

from flows.training import train_model
from retrain.settings import get_settings
from retrain.warehouse import get_warehouse, has_table, read_ledger, read_table, write_frame
from tests.conftest import REPO, cli_environment, write_model_config

pytestmark = pytest.mark.usefixtures("prefect_harness")

QUICK = {"trials": 2, "seed": 7, "max_rounds": 60, "early_stopping_rounds": 10}
KEY = ["time_hour", "carrier", "flight", "origin"]


def start(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "retrain.cli", *args, "--json"], cwd=REPO, env=cli_environment(),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def finish(process: subprocess.Popen[str]) -> tuple[int, dict]:
    stdout, stderr = process.communicate(timeout=600)
    lines = stdout.strip().splitlines()
    assert len(lines) == 1, f"stdout must be one JSON object: {stdout!r}; stderr: {stderr[-2000:]}"
    return process.returncode, json.loads(lines[0])


def clean_rows_and_keys() -> tuple[int, int]:
    warehouse = get_warehouse()
    with warehouse.engine.connect() as connection:
        clean = sa.Table("flights_clean", sa.MetaData(schema=warehouse.schema), autoload_with=connection)
        keys = sa.select(*[clean.c[name] for name in KEY]).distinct().subquery()
        rows = connection.execute(sa.select(sa.func.count()).select_from(clean)).scalar_one()
        distinct = connection.execute(sa.select(sa.func.count()).select_from(keys)).scalar_one()
    return rows, distinct


def champion_moves(model: str) -> list[str]:
    return [entry.to_version for entry in read_ledger(get_warehouse(), model) if entry.action == "promoted"]


@pytest.fixture
def small_source(retrain_home: Path, flights_small: pd.DataFrame) -> pd.DataFrame:
    rows = flights_small[flights_small["time_hour"] < pd.Timestamp("2013-01-15")]
    write_frame(get_warehouse(), rows, "flights", if_exists="replace")
    return rows


def test_two_trainings_of_a_model_with_no_champion_make_one_champion(
    retrain_home: Path, small_source: pd.DataFrame
) -> None:
    config = str(write_model_config(retrain_home.parent, tuning=QUICK))

    first, second = start("train", "--config", config), start("train", "--config", config)
    outcomes = sorted([finish(first), finish(second)], key=lambda result: result[1].get("decision", ""))

    # one trains and becomes champion; the other waits for the model, then finds the same snapshot trained
    assert [(code, outcome.get("decision")) for code, outcome in outcomes] == [(0, "champion"), (0, "skipped")]
    assert champion_moves("flights-delay") == ["1"]
    mlflow.set_tracking_uri(get_settings().resolved_tracking_uri())
    assert [str(v.version) for v in MlflowClient().search_model_versions("name='flights-delay'")] == ["1"]
    assert clean_rows_and_keys() == (len(small_source), len(small_source))
@pytest.mark.slow  # a long scenario (the suite stays under 8 minutes): `make test-all`


def test_an_ingest_and_a_training_started_together_both_succeed(
    retrain_home: Path, small_source: pd.DataFrame
) -> None:
    config = str(write_model_config(retrain_home.parent, tuning=QUICK))

    ingest, training = start("ingest", "--config", config), start("train", "--config", config)
    (ingest_code, ingested), (training_code, trained) = finish(ingest), finish(training)

    # whoever ingests first lands the rows once; the other finds them there ("nothing new" for the training)
    assert ingest_code in (0, 1) and training_code == 0, (ingested, trained)
    assert ingested.get("status") == "passed" or ingested.get("read") == 0
    assert trained["decision"] == "champion" and trained["rows"] == len(small_source)
    assert clean_rows_and_keys() == (len(small_source), len(small_source))
@pytest.mark.slow  # a long scenario (the suite stays under 8 minutes): `make test-all`


def test_both_shipped_examples_train_on_one_warehouse(retrain_home: Path, small_source: pd.DataFrame) -> None:
    regression = write_model_config(retrain_home.parent, tuning=QUICK)
    (retrain_home.parent / "binary").mkdir()
    binary = write_model_config(
        retrain_home.parent / "binary", name="flights-delayed", metric="auc", tuning=QUICK,
        target={"column": "arr_delay", "task": "binary", "positive_above": 15},
        gates={"threshold": None, "baseline_margin": 0.02},
    )

    delay = train_model(config_path=str(regression))
    delayed = train_model(config_path=str(binary))

    assert (delay.decision, delayed.decision) == ("champion", "champion")
    assert delay.fingerprint == delayed.fingerprint  # one clean table, read by both models
    assert clean_rows_and_keys() == (len(small_source), len(small_source))
    assert not has_table(get_warehouse(), "flights_quarantine") or read_table(
        get_warehouse(), "flights_quarantine").empty
