"""The ingest flow end to end: real flights rows in a temporary SQLite warehouse, Prefect's test server.

Assertions read the returned outcome, the raised error and the warehouse tables, never log text.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path
from uuid import UUID

import pandas as pd
import pytest
import sqlalchemy as sa
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
from prefect.events import Event
from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

from flows.ingest import ingest_new_rows, ingest_when_new_rows
from retrain.config import load_model_config
from retrain.errors import DataContractError
from retrain.settings import get_settings
from tasks.validation import BatchRefused, count_new_rows
from tasks.warehouse import (
    BATCH_COLUMN,
    BATCH_LEDGER,
    create_warehouse_engine,
    get_warehouse,
    has_table,
    hold_lock,
    read_batches,
    read_quarantine,
    read_table,
    write_frame,
)
from tests.conftest import POSTGRES_URL, REPO, write_model_config

pytestmark = pytest.mark.usefixtures("prefect_harness")

MODEL = "flights-delay"
SOURCE = "flights"
KEY = ["time_hour", "carrier", "flight", "origin"]
SPLIT = datetime(2013, 1, 3)  # about half of the 3000 rows on either side


def load_source(frame: pd.DataFrame, if_exists: str = "replace", table: str = SOURCE) -> None:
    write_frame(get_warehouse(), frame, table, if_exists=if_exists)


def clean_rows(table: str = "flights_clean", timestamp: str = "time_hour") -> pd.DataFrame:
    """The clean table in the order rows landed."""
    warehouse = get_warehouse()
    if not has_table(warehouse, table):
        return pd.DataFrame()
    frame = read_table(warehouse, table)
    frame[timestamp] = pd.to_datetime(frame[timestamp])
    return frame


def quarantine_rows(table: str = "flights_quarantine") -> pd.DataFrame:
    return read_quarantine(get_warehouse(), table)


@pytest.fixture
def source(flights_small: pd.DataFrame) -> pd.DataFrame:
    return flights_small.iloc[:3000].copy()


@pytest.fixture
def config_path(retrain_home: Path, source: pd.DataFrame) -> str:
    load_source(source)
    return str(write_model_config(retrain_home.parent))


def test_first_batch_lands_everything_and_is_recorded(config_path: str, source: pd.DataFrame) -> None:
    config = load_model_config(config_path)
    assert count_new_rows.fn(config) == len(source)

    outcome = ingest_new_rows(config_path=config_path)

    assert (outcome.status, outcome.read, outcome.clean, outcome.quarantined) == ("passed", len(source), len(source), 0)
    assert outcome.range_start is None and outcome.range_end > source["time_hour"].max()
    landed = clean_rows()
    assert len(landed) == len(source) and set(landed[BATCH_COLUMN]) == {outcome.batch_id}
    pd.testing.assert_series_equal(landed["distance"], source["distance"].reset_index(drop=True), check_dtype=False)
    ledger = read_batches(get_warehouse(), SOURCE)
    assert ledger[["batch_id", "status", "rows_read", "rows_clean"]].values.tolist() == [
        [outcome.batch_id, "passed", len(source), len(source)]
    ]
    assert ledger["flow_run_id"].iloc[0] == outcome.flow_run_id is not None
    assert count_new_rows.fn(config) == 0

    arrived = wait_for_event("retrain.data.arrived", f"retrain.model.{MODEL}", outcome.batch_id)
    assert arrived.payload == {"model": MODEL, "source": SOURCE, "batch_id": outcome.batch_id, "read": len(source),
                               "clean": len(source), "coerced": 0, "quarantined": 0}
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[UUID(outcome.flow_run_id)]))
        )
    summary = next(a for a in artifacts if a.type == "markdown")
    assert outcome.batch_id in str(summary.data) and "| clean | 3000 |" in str(summary.data)


def wait_for_event(name: str, resource: str, batch_id: str, seconds: float = 30) -> Event:
    """The event as the Prefect server stored it; events are sent in the background, so poll briefly."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        event_filter = EventFilter(event=EventNameFilter(name=[name]), resource=EventResourceFilter(id=[resource]))
        with get_client(sync_client=True) as client:
            events = client.read_events(filter=event_filter, limit=50).events  # the server caps a page at 50
        found = [event for event in events if event.payload.get("batch_id") == batch_id]
        if found:
            return found[0]
        time.sleep(0.5)
    raise AssertionError(f"no event {name} for {resource} with batch {batch_id} within {seconds} s")


def test_new_rows_since_the_watermark_land_once(
    retrain_home: Path, flights_small: pd.DataFrame, source: pd.DataFrame
) -> None:
    early = source[source["time_hour"] < SPLIT]
    load_source(early)
    config_path = str(write_model_config(retrain_home.parent))
    first = ingest_new_rows(config_path=config_path)

    load_source(source[source["time_hour"] >= SPLIT], if_exists="append")
    assert count_new_rows.fn(load_model_config(config_path)) == len(source) - len(early)
    second = ingest_new_rows(config_path=config_path)

    assert (first.read, second.read) == (len(early), len(source) - len(early))
    assert second.range_start == first.range_end
    assert len(clean_rows()) == len(source)
    assert not clean_rows().duplicated(["time_hour", "carrier", "flight", "origin"]).any()


def test_rerunning_the_same_range_adds_nothing(config_path: str, source: pd.DataFrame) -> None:
    start, end = datetime(2013, 1, 1), SPLIT
    first = ingest_new_rows(config_path=config_path, start=start, end=end)
    again = ingest_new_rows(config_path=config_path, start=start, end=end)

    assert again == first
    assert len(clean_rows()) == first.clean == int((source["time_hour"] < end).sum())
    assert len(read_batches(get_warehouse(), SOURCE)) == 1


def test_rerunning_with_nothing_new_is_an_empty_batch_and_adds_nothing(config_path: str) -> None:
    first = ingest_new_rows(config_path=config_path)

    with pytest.raises(DataContractError) as raised:
        ingest_new_rows(config_path=config_path)

    assert (raised.value.rule, raised.value.observed) == ("row_count", 0)
    assert len(clean_rows()) == first.clean
    assert read_batches(get_warehouse(), SOURCE)["status"].tolist() == ["passed", "refused"]


def test_a_contract_may_let_an_empty_batch_pass(config_path: str) -> None:
    contract = Path(config_path).parent / "flights.contract.yaml"
    contract.write_text(contract.read_text().replace("min_rows: 1", "min_rows: 0"))
    first = ingest_new_rows(config_path=config_path)

    empty = ingest_new_rows(config_path=config_path)

    assert (empty.status, empty.read, empty.clean, empty.range_start) == ("passed", 0, 0, first.range_end)
    assert len(clean_rows()) == first.clean
    assert count_new_rows.fn(load_model_config(config_path)) == 0


def test_an_overlapping_range_is_refused_as_duplicates_across_batches(config_path: str, source: pd.DataFrame) -> None:
    ingest_new_rows(config_path=config_path, end=SPLIT)

    with pytest.raises(BatchRefused) as raised:
        ingest_new_rows(config_path=config_path, start=datetime(2013, 1, 1))

    outcome = raised.value.outcome
    assert raised.value.rule == "bad_share"
    assert outcome.reasons["duplicate_key:across_batches"] == int((source["time_hour"] < SPLIT).sum())
    assert outcome.read == outcome.clean + outcome.quarantined and outcome.clean == 0
    assert len(clean_rows()) == int((source["time_hour"] < SPLIT).sum())


def test_refused_batch_is_recorded_then_lands_once_after_the_fix(
    retrain_home: Path, source: pd.DataFrame
) -> None:
    broken = source.copy()
    broken.loc[broken.index[::2], "distance"] = -1  # half the rows: far above the 5% the contract allows
    load_source(broken)
    config_path = str(write_model_config(retrain_home.parent))

    with pytest.raises(DataContractError) as raised:
        ingest_new_rows(config_path=config_path)

    refused = raised.value.outcome  # type: ignore[attr-defined]
    assert (raised.value.rule, raised.value.limit) == ("bad_share", 0.05)
    assert (refused.status, refused.read, refused.clean, refused.quarantined) == ("refused", 3000, 0, 3000)
    assert refused.reasons == {"out_of_range:distance": 1500, "batch_refused:bad_share": 1500}
    assert clean_rows().empty
    quarantine = read_quarantine(get_warehouse(), "flights_quarantine", refused.batch_id)
    assert len(quarantine) == 3000 and quarantine["source_row"].tolist() == list(range(3000))
    assert json.loads(quarantine["raw"].iloc[0])["distance"] == -1
    assert json.loads(quarantine["reasons"].iloc[0]) == ["out_of_range:distance"]

    load_source(source)  # the data is fixed at the source
    fixed = ingest_new_rows(config_path=config_path)
    assert (fixed.status, fixed.clean, fixed.range_start) == ("passed", 3000, None)
    with pytest.raises(DataContractError):
        ingest_new_rows(config_path=config_path)  # nothing new: an empty batch, nothing appended
    assert len(clean_rows()) == 3000
    assert read_batches(get_warehouse(), SOURCE)["status"].tolist() == ["refused", "passed", "refused"]


def test_dirty_text_in_the_warehouse_is_coerced_or_quarantined_with_raw_values(
    retrain_home: Path, source: pd.DataFrame
) -> None:
    dirty = source.copy()
    dirty["dep_time"] = dirty["dep_time"].astype("Int64").astype(str)  # integers saved as text
    dirty.loc[dirty.index[0], "dep_time"] = " 517.0 "
    dirty.loc[dirty.index[1], "dep_time"] = "abc"
    dirty["time_hour"] = dirty["time_hour"].dt.strftime("%Y-%m-%d %H:%M:%S")
    dirty.loc[dirty.index[2], "time_hour"] = "not a time"
    load_source(dirty)
    config_path = str(write_model_config(retrain_home.parent))

    outcome = ingest_new_rows(config_path=config_path)

    assert outcome.status == "passed"
    assert outcome.reasons == {"not_integer:dep_time": 1, "unparseable:time_hour": 1}
    assert outcome.read == len(source) and outcome.coerced == len(source) - 1  # every dep_time but "abc"
    landed = clean_rows()
    assert len(landed) == outcome.clean == len(source) - 2
    assert landed["dep_time"].iloc[0] == 517
    quarantine = read_quarantine(get_warehouse(), "flights_quarantine", outcome.batch_id)
    raw = [json.loads(text) for text in quarantine["raw"]]
    assert [row["dep_time"] for row in raw] == ["abc", dirty["dep_time"].iloc[2]]
    assert raw[1]["time_hour"] == "not a time"


def test_cli_infers_a_contract_once_and_ingests_with_one_json_object(
    retrain_home: Path, source: pd.DataFrame
) -> None:
    from typer.testing import CliRunner

    from retrain.cli import app

    load_source(source)
    config_path = write_model_config(retrain_home.parent)
    contract_path = retrain_home.parent / "flights.contract.yaml"
    contract_path.unlink()  # write_model_config copied the example's; infer a fresh one from the table
    runner = CliRunner()

    inferred = runner.invoke(app, ["contract", "infer", "--config", str(config_path), "--json"])
    assert inferred.exit_code == 0, inferred.output
    assert json.loads(inferred.stdout.strip().splitlines()[-1])["written"] is True
    contract_path.write_text(contract_path.read_text().replace("max_bad_share: 0.05", "max_bad_share: 0.2"))
    kept = runner.invoke(app, ["contract", "infer", "--config", str(config_path)])
    assert kept.exit_code == 0 and "kept the existing contract" in kept.stdout
    assert "max_bad_share: 0.2" in contract_path.read_text()  # the hand edit survived

    ingested = runner.invoke(app, ["ingest", "--config", str(config_path), "--json"])
    assert ingested.exit_code == 0, ingested.output
    lines = ingested.stdout.strip().splitlines()
    result = json.loads(lines[-1])
    assert len(lines) == 1
    assert {"batch_id", "read", "clean", "coerced", "quarantined", "status", "reasons"} <= set(result)
    assert (result["read"], result["clean"], result["status"]) == (len(source), len(source), "passed")

    again = runner.invoke(app, ["ingest", "--config", str(config_path), "--json"])
    refused = json.loads(again.stdout.strip().splitlines()[-1])
    assert again.exit_code == 1
    assert (refused["status"], refused["read"], refused["violation"]["rule"]) == ("refused", 0, "row_count")


@pytest.mark.postgres
def test_ingest_on_postgresql_lands_once_and_refuses_an_overlap(
    postgres_warehouse: str, retrain_home: Path, source: pd.DataFrame
) -> None:
    load_source(source)
    config_path = str(write_model_config(retrain_home.parent))
    early = int((source["time_hour"] < SPLIT).sum())

    first = ingest_new_rows(config_path=config_path, end=SPLIT)
    assert ingest_new_rows(config_path=config_path, end=SPLIT) == first
    rest = ingest_new_rows(config_path=config_path)
    with pytest.raises(BatchRefused) as raised:
        ingest_new_rows(config_path=config_path, start=datetime(2013, 1, 1), end=SPLIT)

    assert (first.read, rest.read, rest.range_start) == (early, len(source) - early, SPLIT)
    assert raised.value.outcome.reasons["duplicate_key:across_batches"] == early
    warehouse = get_warehouse()
    assert warehouse.schema == postgres_warehouse
    with warehouse.engine.connect() as connection:
        landed = connection.execute(sa.text(f'SELECT count(*) FROM "{warehouse.schema}".flights_clean')).scalar_one()
    assert landed == len(source)
    assert read_batches(warehouse, SOURCE)["status"].tolist() == ["passed", "passed", "refused"]


def test_scheduled_poll_ingests_only_when_rows_arrived(config_path: str, source: pd.DataFrame) -> None:
    first = ingest_when_new_rows(config_path=config_path)
    assert first is not None and first.read == len(source) and first.status == "passed"
    assert ingest_when_new_rows(config_path=config_path) is None  # nothing new: no batch, no failure
    assert len(read_batches(get_warehouse(), SOURCE)) == 1
    with pytest.raises(BatchRefused):  # an explicit ingest of nothing is still refused
        ingest_new_rows(config_path=config_path)
