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

import numpy as np
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
from retrain.errors import ConfigError, DataContractError
from retrain.settings import get_settings
from retrain.warehouse import (
    BATCH_COLUMN,
    BATCH_LEDGER,
    get_warehouse,
    has_table,
    hold_lock,
    read_batches,
    read_quarantine,
    read_table,
    write_frame,
)
from tasks.ingest import BatchRefused, count_new_rows
from tests.conftest import REPO, cli_environment, write_model_config

pytestmark = [pytest.mark.usefixtures("prefect_harness"), pytest.mark.data]

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


def test_an_overlapping_range_lands_only_what_it_did_not_hold(config_path: str, source: pd.DataFrame) -> None:
    early = int((source["time_hour"] < SPLIT).sum())
    ingest_new_rows(config_path=config_path, end=SPLIT)

    overlap = ingest_new_rows(config_path=config_path, start=datetime(2013, 1, 1))

    assert (overlap.status, overlap.already_clean, overlap.clean, overlap.quarantined) == (
        "passed", early, len(source) - early, 0)
    assert len(clean_rows()) == len(source)
    # A row of the range changed at the source since it landed: the same key with other content is a duplicate.
    changed = source.copy()
    changed.loc[changed.index[:3], "distance"] += 1
    load_source(changed)
    replay = ingest_new_rows(config_path=config_path, start=datetime(2013, 1, 1), end=SPLIT)
    assert (replay.status, replay.reasons, replay.already_clean, replay.clean) == (
        "passed", {"duplicate_key:across_batches": 3}, early - 3, 0)
    assert clean_rows()["distance"].tolist()[:3] == source["distance"].tolist()[:3]


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


def test_garbage_in_a_timestamp_typed_column_is_quarantined_not_a_crash(
    retrain_home: Path, source: pd.DataFrame
) -> None:
    """A TIMESTAMP column on SQLite holds whatever text is appended to it: every read takes values as stored."""
    early, late = source[source["time_hour"] < SPLIT], source[source["time_hour"] >= SPLIT]
    load_source(early)  # time_hour is declared TIMESTAMP
    config_path = str(write_model_config(retrain_home.parent))
    first = ingest_new_rows(config_path=config_path)
    odd = late.tail(2).assign(time_hour=["garbage", "2013-01-09T20:00:00-05:00"], flight=[9991, 9992])
    load_source(pd.concat([with_text_times(late), odd]), if_exists="append")  # text beside the stored timestamps

    second = ingest_new_rows(config_path=config_path)

    assert (second.range_start, second.read, second.clean, second.reasons) == (
        first.range_end, len(late) + 2, len(late) + 1, {"unparseable:time_hour": 1})
    assert clean_rows()["time_hour"].max() == pd.Timestamp("2013-01-10 01:00")


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
def test_ingest_on_postgresql_lands_once_and_refuses_a_changed_overlap(
    postgres_warehouse: str, retrain_home: Path, source: pd.DataFrame
) -> None:
    load_source(source)
    config_path = str(write_model_config(retrain_home.parent))
    early = int((source["time_hour"] < SPLIT).sum())

    first = ingest_new_rows(config_path=config_path, end=SPLIT)
    assert ingest_new_rows(config_path=config_path, end=SPLIT) == first
    rest = ingest_new_rows(config_path=config_path)
    overlap = ingest_new_rows(config_path=config_path, start=datetime(2013, 1, 1))  # rows already there
    load_source(source.assign(distance=source["distance"] + 1))  # every row changed at the source since
    with pytest.raises(BatchRefused) as raised:
        ingest_new_rows(config_path=config_path, start=datetime(2013, 1, 1), end=SPLIT)

    assert (first.read, rest.read, rest.range_start) == (early, len(source) - early, SPLIT)
    assert (overlap.already_clean, overlap.clean, overlap.quarantined) == (len(source), 0, 0)
    assert raised.value.outcome.reasons["duplicate_key:across_batches"] == early
    warehouse = get_warehouse()
    assert warehouse.schema == postgres_warehouse
    with warehouse.engine.connect() as connection:
        landed = connection.execute(sa.text(f'SELECT count(*) FROM "{warehouse.schema}".flights_clean')).scalar_one()
    assert landed == len(source)
    assert read_batches(warehouse, SOURCE)["status"].tolist() == ["passed", "passed", "passed", "refused"]


def test_scheduled_poll_ingests_only_when_rows_arrived(config_path: str, source: pd.DataFrame) -> None:
    first = ingest_when_new_rows(config_path=config_path)
    assert first is not None and first.read == len(source) and first.status == "passed"
    assert ingest_when_new_rows(config_path=config_path) is None  # nothing new: no batch, no failure
    assert len(read_batches(get_warehouse(), SOURCE)) == 1
    with pytest.raises(BatchRefused):  # an explicit ingest of nothing is still refused
        ingest_new_rows(config_path=config_path)


# ------------------------------------------------------------------ timestamps a source should not have


@pytest.fixture(params=["sqlite", "postgres"])
def any_warehouse(request: pytest.FixtureRequest, retrain_home: Path) -> str:
    """The test's warehouse: SQLite under its home, or a fresh PostgreSQL schema."""
    if request.param == "postgres":
        request.getfixturevalue("postgres_warehouse")
    return str(request.param)


def with_text_times(frame: pd.DataFrame, column: str = "time_hour") -> pd.DataFrame:
    """Timestamps as text, the way a hand-loaded table holds them (a TEXT column on both databases)."""
    copy = frame.copy()
    copy[column] = copy[column].dt.strftime("%Y-%m-%d %H:%M:%S")
    return copy.reset_index(drop=True)


def keys_and_times(frame: pd.DataFrame) -> set[tuple]:
    return set(zip(pd.to_datetime(frame["time_hour"]), frame["carrier"], frame["flight"], frame["origin"], strict=True))


def test_odd_timestamps_never_move_the_watermark_and_no_row_lands_twice(
    any_warehouse: str, retrain_home: Path, source: pd.DataFrame
) -> None:
    early, late = source[source["time_hour"] < SPLIT], source[source["time_hour"] >= SPLIT]
    odd = early.iloc[:4].copy()
    odd["flight"] = [9991, 9992, 9993, 9994]  # keys of their own
    odd_times = [
        "2099-01-01 00:00:00",  # far future: has not arrived yet
        "not a time",  # sorts after every date as text
        "2012-12-31T23:00:00-05:00",  # 2013-01-01 04:00 UTC, read before every naive row
        "1970-01-01 00:00:00",  # far past
    ]
    first_load = pd.concat([with_text_times(early), with_text_times(odd).assign(time_hour=odd_times)])
    load_source(first_load)
    config_path = str(write_model_config(retrain_home.parent))

    first = ingest_new_rows(config_path=config_path)

    assert (first.read, first.clean, first.quarantined, first.waiting) == (len(early) + 3, len(early) + 2, 1, 1)
    assert first.reasons == {"unparseable:time_hour": 1}
    expected = keys_and_times(early) | {
        (pd.Timestamp("2013-01-01 04:00"), odd["carrier"].iloc[2], 9993, odd["origin"].iloc[2]),
        (pd.Timestamp("1970-01-01"), odd["carrier"].iloc[3], 9994, odd["origin"].iloc[3]),
    }
    assert keys_and_times(clean_rows()) == expected  # the offset converted its own value and shifted no other

    lone = with_text_times(late.tail(1)).assign(time_hour="31/12/2013", flight=9995)  # a bad row arrives alone
    load_source(lone, if_exists="append")
    assert ingest_when_new_rows(config_path=config_path) is None  # no batch of nothing but a bad row
    load_source(with_text_times(late), if_exists="append")
    second = ingest_new_rows(config_path=config_path)

    assert (second.range_start, second.read, second.clean) == (first.range_end, len(late) + 1, len(late))
    assert second.reasons == {"unparseable:time_hour": 1}  # the lone row rode along with the dated ones
    assert ingest_when_new_rows(config_path=config_path) is None  # unparseable rows are not read again
    landed = clean_rows()
    assert len(landed) == len(source) + 2 and not landed.duplicated(KEY).any()
    assert keys_and_times(landed) == expected | keys_and_times(late)
    assert len(quarantine_rows()) == 2

    arrived = ingest_when_new_rows(config_path=config_path, as_of=datetime(2099, 1, 1, 0, 30))
    assert arrived is not None and (arrived.read, arrived.clean, arrived.waiting) == (1, 1, 0)  # its time came
    assert len(clean_rows()) == len(source) + 3 and len(quarantine_rows()) == 2


def test_a_replay_reads_the_same_batches_as_living_through_it(
    retrain_home: Path, flights_small: pd.DataFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    moments = [datetime(2013, 1, 8), datetime(2013, 1, 15, 12, 30), datetime(2013, 1, 22)]
    config_path = str(write_model_config(retrain_home.parent))

    load_source(flights_small)  # the whole period is in the table already
    replayed = [ingest_when_new_rows(config_path=config_path, as_of=moment) for moment in moments]

    monkeypatch.setenv("RETRAIN_HOME", str(retrain_home.parent / "living"))
    get_settings.cache_clear()
    lived = []
    for moment in moments:  # the table as it stood at each moment: rows up to the future tolerance (1 h)
        load_source(flights_small[flights_small["time_hour"] < moment + timedelta(hours=1)])
        lived.append(ingest_when_new_rows(config_path=config_path, as_of=moment))

    def batches(outcomes: list) -> list[tuple]:
        return [(o.range_start, o.range_end, o.read, o.clean, o.quarantined, dict(o.reasons)) for o in outcomes]

    assert batches(replayed) == batches(lived)
    # A replay's batch ids name the replayed instant (its as_of), never the wall time of the replay.
    assert [outcome.batch_id.split("-")[1] for outcome in replayed] == ["20130108T000000", "20130115T123000",
                                                                         "20130122T000000"]
    assert all(outcome.quarantined == 0 for outcome in replayed)  # rows after as_of are not "future": not arrived
    assert replayed[0].waiting == int((flights_small["time_hour"] >= moments[0] + timedelta(hours=1)).sum())
    assert sum(outcome.clean for outcome in replayed) == int((flights_small["time_hour"] < moments[-1]
                                                              + timedelta(hours=1)).sum())


# ------------------------------------------------------------------------- a table that is not flights


RIDES_CONFIG = {
    "name": "rides-fare",
    "source": {"table": "rides", "timestamp": "pickup_at", "key": ["ride_id"]},
    "target": {"column": "fare", "task": "regression"},
    "features": {"numeric": ["passengers", "distance_km"], "categorical": ["zone"]},
    "metric": "mae",
    "training_window": {"start": "2024-03-01", "end": "2024-04-01"},
}


def rides(first_id: int, count: int) -> pd.DataFrame:
    """Taxi rides: an id that grows, a meter that only goes up, nulls, and pickup times in mixed ISO forms."""
    rng = np.random.default_rng(first_id)
    ids = np.arange(first_id, first_id + count)
    instants = pd.Timestamp("2024-03-01") + pd.to_timedelta(ids * 7, unit="min")
    pickup = instants.strftime("%Y-%m-%d %H:%M:%S").to_numpy(dtype=object)
    offset = ids % 9 == 0  # some written in local time with their offset, some with "T" and "Z"
    pickup[offset] = (instants[offset] + pd.Timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%S+02:00")
    zulu = ids % 11 == 0
    pickup[zulu] = instants[zulu].strftime("%Y-%m-%dT%H:%M:%SZ")
    distance = rng.gamma(2.0, 2.5, count).round(2)
    passengers = rng.integers(1, 5, count).astype("float64")
    passengers[ids % 13 == 0] = np.nan
    zone = rng.choice(np.array(["north", "south", "east", "west"], dtype=object), count)
    zone[ids % 17 == 0] = None
    return pd.DataFrame({
        "ride_id": ids,
        "pickup_at": pickup,
        "zone": zone,
        "passengers": passengers,
        "distance_km": distance,
        "fare": (3.0 + 1.6 * distance + rng.normal(0, 0.5, count)).round(2),
        "meter_km": (10_000 + np.cumsum(distance) + first_id * 5).round(2),
    })


def test_a_growing_id_keeps_landing_over_several_batches(retrain_home: Path) -> None:
    from typer.testing import CliRunner

    from retrain.cli import app

    config_path = retrain_home.parent / "rides.yaml"
    config_path.write_text(yaml.safe_dump(RIDES_CONFIG))
    load_source(rides(0, 400), table="rides")
    inferred = CliRunner().invoke(app, ["contract", "infer", "--config", str(config_path), "--json"])
    assert inferred.exit_code == 0, inferred.output
    contract_text = (retrain_home.parent / "rides.contract.yaml").read_text()
    assert "  ride_id: {type: integer, nullable: false}  # key: no range" in contract_text
    assert "  meter_km: {type: float, nullable: false, growing: true}  # grows with time" in contract_text
    assert "  fare: {type: float, nullable: false, min: " in contract_text  # other ranges stay

    outcomes = [ingest_new_rows(config_path=str(config_path))]
    for first_id in (400, 800, 1200):
        load_source(rides(first_id, 400), if_exists="append", table="rides")
        outcomes.append(ingest_new_rows(config_path=str(config_path)))

    assert [(o.status, o.read, o.clean, o.quarantined) for o in outcomes] == [("passed", 400, 400, 0)] * 4
    landed = clean_rows("rides_clean", "pickup_at")
    assert sorted(landed["ride_id"]) == list(range(1600))
    expected = pd.Timestamp("2024-03-01") + pd.to_timedelta(landed["ride_id"] * 7, unit="min")
    assert (landed["pickup_at"] == expected).all()  # every form of pickup time read as its instant


# ------------------------------------------------------------------- several models, one source


def test_both_shipped_examples_share_one_warehouse(retrain_home: Path, source: pd.DataFrame) -> None:
    folder = retrain_home.parent / "examples"
    folder.mkdir()
    for name in ("flights.yaml", "flights_delayed.yaml", "flights.contract.yaml"):
        shutil.copy(REPO / "examples" / name, folder / name)
    load_source(source)

    first = ingest_new_rows(config_path=str(folder / "flights.yaml"))

    delayed = str(folder / "flights_delayed.yaml")
    assert count_new_rows.fn(load_model_config(delayed)) == 0
    assert ingest_when_new_rows(config_path=delayed) is None  # nothing new: the source's watermark is shared
    assert first.clean == len(clean_rows()) == len(source)
    assert quarantine_rows().empty
    assert read_batches(get_warehouse(), SOURCE)["model"].tolist() == ["flights-delay"]

    load_source(source, table="flights_copy")  # the same model pointed at a new table starts from its beginning
    moved = write_model_config(retrain_home.parent, source={"table": "flights_copy"})
    assert ingest_new_rows(config_path=str(moved)).clean == len(source)


# ----------------------------------------------------------------------------------- the command line


def run_cli(*args: str) -> tuple[int, dict]:
    from typer.testing import CliRunner

    from retrain.cli import app

    result = CliRunner().invoke(app, [*args, "--json"])
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1, result.output
    return result.exit_code, json.loads(lines[0])


def test_cli_refuses_a_start_not_before_the_end_and_writes_nothing(config_path: str) -> None:
    code, error = run_cli("ingest", "--config", config_path, "--start", "2013-01-05", "--end", "2013-01-02")

    assert code == 2 and error["error"] == "BadParameter" and "--start" in error["message"]
    assert not has_table(get_warehouse(), BATCH_LEDGER) and clean_rows().empty
    with pytest.raises(Exception, match="is not before its end"):  # the flow refuses it too, before any read
        ingest_new_rows(config_path=config_path, start=datetime(2013, 1, 5), end=datetime(2013, 1, 5))
    assert not has_table(get_warehouse(), BATCH_LEDGER)


CHECK_SCRIPT = """
import json, sys
from retrain.cli import app
code = app(sys.argv[1:], standalone_mode=False)
sys.stderr.write("PREFECT_IMPORTED=" + json.dumps("prefect" in sys.modules) + "\\n")
sys.exit(code)
"""


@pytest.mark.parametrize(
    ("edit", "field", "wrong", "hint"),
    [
        ({"features": {"numeric": ["sched_dep_time", "sched_arr_time", "distanse"], "categorical": ["carrier"]}},
         "features.numeric[2]", "distanse", "did you mean 'distance'"),
        ({"target": {"column": "arr_dealy", "task": "regression"}}, "target.column", "arr_dealy",
         "did you mean 'arr_delay'"),
    ],
)
@pytest.mark.parametrize("command", [["ingest"], ["contract", "infer"]])
def test_a_misspelled_column_fails_before_any_flow_naming_the_field(
    config_path: str, command: list[str], edit: dict, field: str, wrong: str, hint: str
) -> None:
    broken = write_model_config(Path(config_path).parent, **edit)
    result = subprocess.run(
        [sys.executable, "-c", CHECK_SCRIPT, *command, "--config", str(broken), "--json"],
        check=False, capture_output=True, text=True, timeout=120, cwd=REPO, env=dict(os.environ),
    )

    error = json.loads(result.stdout)
    assert result.returncode == 2 and error["error"] == "ConfigError"
    assert str(broken) in error["message"] and f"{field} '{wrong}' is not a column of table 'flights'" in error[
        "message"] and hint in error["message"]
    assert "PREFECT_IMPORTED=false" in result.stderr  # decided without starting any flow or server
    assert "Traceback" not in result.stderr


def test_cli_ingest_is_busy_while_another_run_holds_the_source(
    config_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RETRAIN_LOCK_WAIT_SECONDS", "0.5")
    get_settings.cache_clear()
    holding, done = threading.Event(), threading.Event()

    def other_run() -> None:
        with hold_lock(get_warehouse(), f"source:{SOURCE}", wait_seconds=0, holder="a backfill"):
            holding.set()
            done.wait(60)

    thread = threading.Thread(target=other_run)
    thread.start()
    try:
        assert holding.wait(30)
        code, error = run_cli("ingest", "--config", config_path)
    finally:
        done.set()
        thread.join()

    assert code == 4 and error["error"] == "Busy" and "held by a backfill" in error["message"]
    assert clean_rows().empty and read_batches(get_warehouse(), SOURCE).empty


# ------------------------------------------------------------------------------------------ concurrency


def test_a_poll_counts_new_rows_inside_the_lock_so_it_finds_nothing_after_another_ingest(
    config_path: str, source: pd.DataFrame
) -> None:
    """A training's ingest that starts while another ingest of the source runs waits, then finds nothing new."""
    holding, outcomes = threading.Event(), []

    def other_ingest() -> None:
        with hold_lock(get_warehouse(), f"source:{SOURCE}", wait_seconds=0, holder="the other ingest"):
            holding.set()
            time.sleep(1)  # the poll below is waiting on the lock by now
            outcomes.append(ingest_new_rows(config_path=config_path))

    thread = threading.Thread(target=other_ingest)
    thread.start()
    assert holding.wait(30)
    polled = ingest_when_new_rows(config_path=config_path)
    thread.join()

    assert polled is None and outcomes[0].clean == len(source)
    assert len(clean_rows()) == len(source) and len(read_batches(get_warehouse(), SOURCE)) == 1
@pytest.mark.slow  # a long scenario (the suite stays under 8 minutes): `make test-all`


def test_two_ingests_of_one_source_started_together_land_one_copy(
    any_warehouse: str, retrain_home: Path, flights_all: pd.DataFrame
) -> None:
    rows = flights_all[flights_all["time_hour"] < datetime(2013, 2, 1)]
    load_source(rows)
    config_path = str(write_model_config(retrain_home.parent))
    command = [sys.executable, "-m", "retrain.cli", "ingest", "--config", config_path, "--json"]

    processes = [
        subprocess.Popen(command, cwd=REPO, env=cli_environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
        for _ in range(2)
    ]
    results = [process.communicate(timeout=300) for process in processes]

    codes = sorted(process.returncode for process in processes)
    outputs = sorted((json.loads(stdout) for stdout, _ in results), key=lambda r: r.get("clean") or 0)
    assert codes in ([0, 1], [0, 4]), [stderr[-2000:] for _, stderr in results]
    assert outputs[1]["status"] == "passed" and outputs[1]["clean"] == len(rows)
    assert outputs[0].get("read") == 0 or outputs[0].get("error") == "Busy"  # it waited, then found nothing new
    warehouse = get_warehouse()
    with warehouse.engine.connect() as connection:
        clean = sa.Table("flights_clean", sa.MetaData(schema=warehouse.schema), autoload_with=connection)
        keys = sa.select(*[clean.c[name] for name in KEY]).distinct().subquery()
        landed = connection.execute(sa.select(sa.func.count()).select_from(clean)).scalar_one()
        distinct = connection.execute(sa.select(sa.func.count()).select_from(keys)).scalar_one()
    assert landed == distinct == len(rows)
    assert read_batches(warehouse, SOURCE)["rows_clean"].sum() == len(rows)


def test_a_bad_config_fails_the_flow_once_without_retries(config_path: str) -> None:
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterFlowRunId

    broken = write_model_config(Path(config_path).parent, target={"column": "arr_dealy", "task": "regression"})

    state = ingest_new_rows(config_path=str(broken), return_state=True)

    assert state.is_failed()
    with pytest.raises(ConfigError, match="target.column 'arr_dealy'"):
        state.result()
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            task_run_filter=TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=[state.state_details.flow_run_id]))
        )
    assert {run.name.rsplit("-", 1)[0]: run.run_count for run in runs} == {"check-stores": 1, "check_source_config": 1}
    assert not has_table(get_warehouse(), BATCH_LEDGER)


# ------------------------------------------------------------------ late rows, copies, refusals tried again

HOUR = datetime(2013, 1, 2, 14)  # 9:00 in New York


def late_rows_of(source: pd.DataFrame, count: int = 5) -> pd.DataFrame:
    """`count` rows of one hour well before the end of `source`: they arrive after their hour was read."""
    rows = source[(source["time_hour"] >= HOUR) & (source["time_hour"] < HOUR + timedelta(hours=1))].iloc[:count]
    assert len(rows) == count
    return rows


def test_late_rows_are_reported_and_a_replay_of_their_hour_lands_exactly_them(
    any_warehouse: str, retrain_home: Path, source: pd.DataFrame
) -> None:
    late = late_rows_of(source)
    early = source[source["time_hour"] < SPLIT].drop(late.index)
    load_source(early)
    config_path = str(write_model_config(retrain_home.parent))
    first = ingest_new_rows(config_path=config_path)
    landed_before = clean_rows()
    load_source(pd.concat([late, source[source["time_hour"] >= SPLIT]]), if_exists="append")

    second = ingest_new_rows(config_path=config_path)  # new rows land; the late ones are seen, not read
    assert (second.late, second.clean, second.range_start) == (5, int((source["time_hour"] >= SPLIT).sum()),
                                                              first.range_end)
    assert read_batches(get_warehouse(), SOURCE)["rows_late"].tolist() == [0, 5]
    in_hour = int(((source["time_hour"] >= HOUR) & (source["time_hour"] < HOUR + timedelta(hours=1))).sum())

    replay = ingest_new_rows(config_path=config_path, start=HOUR, end=HOUR + timedelta(hours=1))

    assert (replay.status, replay.clean, replay.already_clean, replay.quarantined) == ("passed", 5, in_hour - 5, 0)
    landed = clean_rows()
    assert len(landed) == len(source) and not landed.duplicated(KEY).any()
    mine = landed[landed[BATCH_COLUMN] == replay.batch_id]
    assert sorted(mine["flight"]) == sorted(late["flight"])
    before = landed[landed[BATCH_COLUMN] == first.batch_id]  # nothing else changed
    pd.testing.assert_frame_equal(before.reset_index(drop=True), landed_before.reset_index(drop=True))
    assert quarantine_rows().empty
    with pytest.raises(BatchRefused) as nothing_new:  # the next ingest finds no late row any more
        ingest_new_rows(config_path=config_path)
    assert nothing_new.value.outcome.late == 0


def test_a_contract_may_land_late_rows_as_a_batch_of_their_own(
    retrain_home: Path, source: pd.DataFrame
) -> None:
    late = late_rows_of(source)
    load_source(source[source["time_hour"] < SPLIT].drop(late.index))
    config_path = str(write_model_config(retrain_home.parent))
    contract = Path(config_path).parent / "flights.contract.yaml"
    contract.write_text(contract.read_text().replace("late_rows: report", "late_rows: ingest"))
    first = ingest_new_rows(config_path=config_path)
    load_source(pd.concat([late, source[source["time_hour"] >= SPLIT]]), if_exists="append")

    outcome = ingest_new_rows(config_path=config_path)

    assert outcome.late == 5 and outcome.late_batch is not None and outcome.range_start == first.range_end
    batches = read_batches(get_warehouse(), SOURCE).set_index("batch_id")
    taken = batches.loc[outcome.late_batch]
    assert (taken["kind"], taken["status"], taken["rows_clean"]) == ("late", "passed", 5)
    assert taken["range_end"] <= pd.Timestamp(first.range_end)  # it never moves the watermark
    landed = clean_rows()
    assert len(landed) == len(source) and not landed.duplicated(KEY).any()
    assert ingest_when_new_rows(config_path=config_path) is None  # nothing new, nothing late


def test_byte_identical_copies_of_a_row_land_once(config_path: str, source: pd.DataFrame) -> None:
    load_source(pd.concat([source, source.iloc[[10, 10, 20]]]))

    outcome = ingest_new_rows(config_path=config_path)

    assert (outcome.status, outcome.clean, outcome.copies, outcome.quarantined) == ("passed", len(source), 3, 0)
    assert len(clean_rows()) == len(source)


def conflicting_day(history: pd.DataFrame) -> pd.DataFrame:
    """A new day after `history` with 60 of its keys sent twice with other content: 120 bad rows in about a
    thousand, far above the 5% the contract allows (and under the 1% of sampled keys that would make the key
    no key at all, since the history comes first)."""
    day = history[history["time_hour"] >= history["time_hour"].max() - timedelta(hours=23)]
    day = day.assign(time_hour=day["time_hour"] + timedelta(days=1))
    twins = day.iloc[:60].assign(dep_delay=day["dep_delay"].iloc[:60] + 7)
    return pd.concat([day, twins], ignore_index=True)


def history_then_conflicting_day(flights_small: pd.DataFrame, config_path: str) -> pd.DataFrame:
    """The source holds ~24 clean days (ingested) and then a new day that breaks the batch rules."""
    load_source(flights_small)
    ingest_new_rows(config_path=config_path)
    arrived = conflicting_day(flights_small)
    load_source(arrived, if_exists="append")
    return arrived


def test_a_refused_batch_is_quarantined_once_however_often_it_is_tried(
    config_path: str, flights_small: pd.DataFrame
) -> None:
    arrived = history_then_conflicting_day(flights_small, config_path)
    with pytest.raises(BatchRefused) as first:
        ingest_new_rows(config_path=config_path)
    stored = len(quarantine_rows())
    assert stored == len(arrived) == first.value.outcome.quarantined  # every row of the refused batch, once

    with pytest.raises(BatchRefused) as again:  # tried again on the same rows
        ingest_new_rows(config_path=config_path)
    load_source(arrived, if_exists="append")  # the day is sent again: every row twice at the source now
    with pytest.raises(BatchRefused) as resent:
        ingest_new_rows(config_path=config_path)

    assert again.value.outcome.repeats == resent.value.outcome.repeats == first.value.outcome.batch_id
    assert again.value.outcome.already_quarantined == len(arrived)
    assert resent.value.outcome.copies == len(arrived)
    assert len(quarantine_rows()) == stored  # quarantine rows = distinct rows of the refused batch
    assert read_batches(get_warehouse(), SOURCE)["status"].tolist() == ["passed", "refused"]
    assert len(clean_rows()) == len(flights_small)


def test_two_ingests_of_a_refused_batch_at_once_store_it_once_and_the_second_says_so(
    any_warehouse: str, retrain_home: Path, flights_small: pd.DataFrame
) -> None:
    config_path = str(write_model_config(retrain_home.parent))
    arrived = history_then_conflicting_day(flights_small, config_path)
    command = [sys.executable, "-m", "retrain.cli", "ingest", "--config", config_path, "--json"]

    processes = [subprocess.Popen(command, cwd=REPO, env=cli_environment(), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [process.communicate(timeout=300) for process in processes]

    assert [process.returncode for process in processes] == [1, 1], [stderr[-2000:] for _, stderr in results]
    outputs = sorted((json.loads(stdout) for stdout, _ in results), key=lambda result: result["already_quarantined"])
    assert outputs[0]["repeats"] is None and outputs[0]["already_quarantined"] == 0
    assert outputs[1]["repeats"] == outputs[0]["batch_id"] and outputs[1]["already_quarantined"] == len(arrived)
    waited = next(stderr for stdout, stderr in results if json.loads(stdout)["repeats"])
    assert f"the same rows as batch {outputs[0]['batch_id']}" in waited
    assert len(quarantine_rows()) == len(arrived)
    assert read_batches(get_warehouse(), SOURCE)["status"].tolist() == ["passed", "refused"]
