"""Warehouse reads, writes, keys and locks on SQLite and, where it answers, the PostgreSQL on 127.0.0.1:5432."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

from retrain.errors import Busy, DataError
from retrain.warehouse import (
    BATCH_LEDGER,
    Warehouse,
    append_rows,
    batch_ledger,
    clean_table,
    count_rows_after,
    hold_lock,
    ledger_table,
    live_lock_holder,
    open_warehouse,
    quarantine_table,
    read_lock_holder,
    read_source_rows,
    read_table,
    read_watermark,
    read_window,
    record_batch,
    write_frame,
)
from tasks.ingest import select_batch
from tests.conftest import REPO


@pytest.fixture(params=["sqlite", "postgres"])
def warehouse(request: pytest.FixtureRequest, tmp_path: Path) -> Warehouse:
    if request.param == "sqlite":
        return open_warehouse(f"sqlite:///{tmp_path / 'w.db'}")
    url, schema = request.getfixturevalue("postgres_schema")
    return open_warehouse(url, schema)


@pytest.fixture(params=["sqlite", "postgres"])
def own_warehouse(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str | None]]:
    """URL and schema of a warehouse no other test uses: locks and the batch ledger are per warehouse."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'w.db'}", None
        return
    from tests.conftest import POSTGRES_URL, fresh_postgres_schema

    with fresh_postgres_schema("retrain_lock") as schema:
        yield POSTGRES_URL, schema


def rows() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "ts": pd.to_datetime(["2013-01-01 10:00", "2013-01-01 11:00", "2013-01-02 00:00", "2013-01-03 00:00"]),
            "value": [1.0, 2.0, 3.0, 4.0],
            "name": ["a", "b", "c", "d"],
        }
    )


def test_read_window_is_half_open_ordered_and_typed(warehouse: Warehouse) -> None:
    table = f"t_{uuid.uuid4().hex[:6]}"
    write_frame(warehouse, rows().iloc[::-1], table, if_exists="replace")
    frame = read_window(warehouse, table, "ts", datetime(2013, 1, 1, 11), datetime(2013, 1, 3))
    assert frame["value"].tolist() == [2.0, 3.0]
    assert pd.api.types.is_datetime64_any_dtype(frame["ts"])
    everything = read_window(warehouse, table, "ts", None, None, columns=["name"])
    assert everything["name"].tolist() == list("abcd")


def test_values_are_bound_not_spliced(warehouse: Warehouse) -> None:
    table = f"t_{uuid.uuid4().hex[:6]}"
    write_frame(warehouse, rows(), table, if_exists="replace")
    hostile = "2013-01-01'; DROP TABLE " + table + "; --"
    try:  # SQLite compares the text as text; PostgreSQL refuses it as a timestamp: either way it is a value
        read_window(warehouse, table, "ts", hostile, None)  # type: ignore[arg-type]
    except sa.exc.DBAPIError:
        pass
    assert len(read_table(warehouse, table)) == 4


@pytest.mark.parametrize(
    ("table", "columns", "message"),
    [
        ("nowhere", None, "table '.*nowhere' does not exist"),
        ("EXISTING", ["ghost"], r"has no column\(s\) \['ghost'\]"),
    ],
)
def test_missing_table_or_column_is_named(warehouse: Warehouse, table: str, columns, message: str) -> None:
    existing = f"t_{uuid.uuid4().hex[:6]}"
    write_frame(warehouse, rows(), existing, if_exists="replace")
    with pytest.raises(DataError, match=message):
        name = existing if table == "EXISTING" else table
        read_window(warehouse, name, "ts", None, None, columns=columns)


def test_declared_tables_keep_their_types_even_when_the_first_value_is_null(own_warehouse) -> None:
    warehouse = open_warehouse(*own_warehouse)
    ledger = batch_ledger(warehouse.schema)
    first = {column.name: None for column in ledger.columns}
    first.update(batch_id="b1", source_table="s", clean_table="c", model="m", end_requested=False, rows_read=0,
                 rows_clean=0, rows_coerced=0, rows_quarantined=0, rows_waiting=0, status="passed", reasons="{}",
                 unknown_columns="[]", as_of=datetime(2013, 1, 1), started_at=datetime(2013, 1, 1),
                 finished_at=datetime(2013, 1, 1))
    append_rows(warehouse, ledger, [first])
    append_rows(warehouse, ledger, [{**first, "batch_id": "b2", "range_end": datetime(2013, 1, 2, 5)}])
    assert read_watermark(warehouse, "s", "c") == datetime(2013, 1, 2, 5)


def test_a_ledger_from_an_older_retrain_is_a_clear_error(own_warehouse) -> None:
    warehouse = open_warehouse(*own_warehouse)
    old = sa.Table(BATCH_LEDGER, sa.MetaData(schema=warehouse.schema), sa.Column("batch_id", sa.String(120)),
                   sa.Column("model", sa.String(200)), sa.Column("range_end", sa.DateTime))
    append_rows(warehouse, old, [{"batch_id": "b1", "model": "flights-delay", "range_end": datetime(2013, 1, 2)}])

    with pytest.raises(DataError, match=r"written by an older version of Retrain: it has no column\(s\) \['source_t"):
        read_watermark(warehouse, "flights", "flights_clean")


# ---------------------------------------------------------------------------------------- unique keys


def write_clean_batch(warehouse: Warehouse, batch_id: str, frame: pd.DataFrame) -> None:
    ledger = batch_ledger(warehouse.schema)
    record = {column.name: None for column in ledger.columns}
    record.update(batch_id=batch_id, source_table="events", clean_table="events_clean", model="m",
                  end_requested=False, rows_read=len(frame), rows_clean=len(frame), rows_coerced=0,
                  rows_quarantined=0, rows_waiting=0, status="passed", reasons="{}", unknown_columns="[]",
                  as_of=datetime(2013, 2, 1), started_at=datetime(2013, 2, 1), finished_at=datetime(2013, 2, 1))
    record_batch(
        warehouse, record=record, clean=frame,
        clean_table=clean_table("events_clean", {"ts": "datetime", "id": "integer", "value": "float"},
                                key=["ts", "id"], schema=warehouse.schema),
        quarantine=pd.DataFrame(columns=["batch_id", "source_row", "reasons", "raw", "fingerprint"]),
        quarantine_table=quarantine_table("events_quarantine", warehouse.schema),
    )


def test_the_clean_tables_unique_key_refuses_a_second_copy_without_any_lock(own_warehouse) -> None:
    """Two writers that both validated the same rows (no lock, no duplicate check): one copy lands, never two."""
    warehouse = open_warehouse(*own_warehouse)
    frame = pd.DataFrame({"ts": pd.to_datetime(["2013-01-01 05:00", "2013-01-01 06:00"]), "id": [1, 2],
                          "value": [0.5, 1.5]})
    write_clean_batch(warehouse, "first", frame)

    with pytest.raises(Busy, match="another ingest wrote rows with the same keys"):
        write_clean_batch(warehouse, "second", frame.iloc[::-1])

    landed = read_table(warehouse, "events_clean")
    assert len(landed) == 2 and set(landed["_batch_id"]) == {"first"}
    assert read_table(warehouse, BATCH_LEDGER)["batch_id"].tolist() == ["first"]  # the whole batch rolled back


# ------------------------------------------------------------------------------------------ source reads


def odd_source() -> pd.DataFrame:
    """Timestamps as a warehouse full of hand-loaded data holds them, in a column without a declared type."""
    return pd.DataFrame({
        "ts": [
            "2013-01-01 00:30:00",  # plain
            "2013-01-01T20:00:00-05:00",  # 2013-01-02 01:00 UTC: sorts a day early as text
            "2013-01-02T03:00:00",  # "T" sorts after " "
            "2013-01-02 04:00:00+05:00",  # 2013-01-01 23:00 UTC: sorts after its instant as text
            "  2013-01-02 05:00:00  ",  # spaces around it
            "yesterday",  # unparseable, sorts after every date
            "01/02/2013",  # not ISO 8601, sorts before every date
            None,
            "2099-01-01 00:00:00",  # far future
            "1970-01-01 00:00:00",  # far past
        ],
        "id": range(10),
    })


def write_untyped(warehouse: Warehouse, frame: pd.DataFrame, table: str) -> None:
    """SQLite: a column with no declared type keeps text as text (STACK.md: numeric affinity would not)."""
    columns = (sa.Column("ts", sa.Text), sa.Column("id", sa.Integer))
    target = sa.Table(table, sa.MetaData(schema=warehouse.schema), *columns)
    with warehouse.engine.begin() as connection:
        if warehouse.dialect == "sqlite":
            connection.execute(sa.text(f'CREATE TABLE "{table}" (ts, id INTEGER)'))
        else:
            target.create(connection)
        connection.execute(sa.insert(target), frame.to_dict("records"))


def test_a_range_read_of_text_timestamps_misses_no_row_that_belongs(warehouse: Warehouse) -> None:
    table = f"odd_{uuid.uuid4().hex[:6]}"
    write_untyped(warehouse, odd_source(), table)
    start, end = datetime(2013, 1, 1, 23), datetime(2013, 1, 2, 4, 30)

    candidates = read_source_rows(warehouse, table, "ts", start, end)
    chosen = select_batch(candidates, "ts", start, end, end_requested=True)

    # the instants in range, whatever their text: 01-02 01:00 (offset), 01-02 03:00 ("T"), 01-01 23:00 (offset)
    # and the three rows without a usable timestamp, which no range can place
    assert sorted(chosen.frame["id"]) == [1, 2, 3, 5, 6, 7]
    assert sorted(chosen.fingerprints) == sorted(
        position for position, value in enumerate(chosen.frame["ts"]) if value in ("yesterday", "01/02/2013", None)
    )
    assert count_rows_after(warehouse, table, "ts", end) == 1  # 2099 (text dates two days past `end` and later)


# ------------------------------------------------------------------------------------------------ locks


def test_a_lock_is_exclusive_reentrant_and_names_its_holder(own_warehouse) -> None:
    warehouse = open_warehouse(*own_warehouse)
    with hold_lock(warehouse, "source:flights", wait_seconds=0, holder="ingest A") as held:
        with hold_lock(warehouse, "source:flights", wait_seconds=0) as again:  # the same block: re-entrant
            assert again == held
        assert read_lock_holder(warehouse, "source:flights").holder == "ingest A"
        errors: list[BaseException] = []

        def other_thread() -> None:  # a thread of its own is another holder, not a re-entry
            try:
                with hold_lock(warehouse, "source:flights", wait_seconds=0.5, holder="ingest B"):
                    pass
            except Busy as error:
                errors.append(error)

        thread = threading.Thread(target=other_thread)
        thread.start()
        thread.join()
        assert len(errors) == 1 and "'source:flights' is held by ingest A (pid" in str(errors[0])
        assert errors[0].exit_code == 4
        with hold_lock(warehouse, "model:flights-delay", wait_seconds=0):  # another name is another lock
            pass
    with hold_lock(warehouse, "source:flights", wait_seconds=0, holder="ingest B"):  # released
        assert read_lock_holder(warehouse, "source:flights").holder == "ingest B"


HOLDER_SCRIPT = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {repo!r})
    from retrain.warehouse import hold_lock, open_warehouse
    with hold_lock(open_warehouse({url!r}, {schema!r}), "source:flights", wait_seconds=30, holder="killed run"):
        print("held", flush=True)
        time.sleep(600)
    """
)


def test_a_holder_killed_mid_run_does_not_block_the_next_one(own_warehouse) -> None:
    url, schema = own_warehouse
    script = HOLDER_SCRIPT.format(repo=str(REPO), url=url, schema=schema)
    holder = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        warehouse = open_warehouse(url, schema)
        with pytest.raises(Busy, match="held by killed run"):
            with hold_lock(warehouse, "source:flights", wait_seconds=0.5):
                pass
        assert live_lock_holder(warehouse, "source:flights").holder == "killed run"
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=30)
        # Dead: its row may stay behind, but it holds nothing, and the next taker removes it.
        assert live_lock_holder(warehouse, "source:flights") is None

        with hold_lock(warehouse, "source:flights", wait_seconds=30, holder="next run") as held:
            assert read_lock_holder(warehouse, "source:flights") == held
            assert live_lock_holder(warehouse, "source:flights") is not None
        assert read_lock_holder(warehouse, "source:flights") is None
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()


def test_a_postgresql_timestamptz_source_is_read_as_instants(postgres_schema: tuple[str, str]) -> None:
    url, schema = postgres_schema
    # sessions in another time zone than UTC must not move the range
    engine = sa.create_engine(url, connect_args={"options": "-c timezone=Asia/Tokyo"})
    warehouse = Warehouse(engine, schema)
    table = f"tz_{uuid.uuid4().hex[:6]}"
    instants = pd.Series(pd.to_datetime(["2013-01-01 22:00", "2013-01-02 01:00", "2013-01-02 03:00"]))
    frame = pd.DataFrame({"ts": instants.dt.tz_localize("UTC").dt.tz_convert("America/New_York"), "id": [1, 2, 3]})
    try:
        write_frame(warehouse, frame, table)  # TIMESTAMP WITH TIME ZONE
        candidates = read_source_rows(warehouse, table, "ts", datetime(2013, 1, 2), datetime(2013, 1, 2, 2))
        chosen = select_batch(candidates, "ts", datetime(2013, 1, 2), datetime(2013, 1, 2, 2), end_requested=True)
        after = count_rows_after(warehouse, table, "ts", datetime(2013, 1, 2, 2))
    finally:
        engine.dispose()

    assert candidates["id"].tolist() == [2] and chosen.frame["id"].tolist() == [2]
    assert after == 1


def test_the_ledger_is_append_only_and_read_newest_first(warehouse: Warehouse) -> None:
    from retrain.warehouse import LedgerEntry, append_ledger_entry, read_ledger

    assert read_ledger(warehouse, "m") == []
    for minute, action in enumerate(["registered", "promoted", "rolled-back"]):
        append_ledger_entry(warehouse, LedgerEntry(
            model="m", action=action, reason=f"why {action}", actor="person:ada",
            at=datetime(2013, 3, 1, 0, minute), from_version=None, to_version=str(minute + 1),
            metrics={"mae": 20.5 + minute},
        ))
    append_ledger_entry(warehouse, LedgerEntry(model="other", action="promoted", reason="x", actor="a",
                                               at=datetime(2013, 3, 2)))
    entries = read_ledger(warehouse, "m")
    assert [entry.action for entry in entries] == ["rolled-back", "promoted", "registered"]
    assert entries[0].metrics == {"mae": 22.5} and entries[0].to_version == "3"
    assert len(read_ledger(warehouse, "m", limit=1)) == 1
    # Ordered by the Retrain clock (`at`), not by when rows were written (`recorded_at`, the wall clock).
    from retrain.clock import frozen_clock, wall_clock

    before = wall_clock()
    with frozen_clock("2013-02-28"):  # a replay holds now(): recorded_at is still the machine's clock
        append_ledger_entry(warehouse, LedgerEntry(model="m", action="approved", reason="late row", actor="person:ada",
                                                   at=datetime(2013, 2, 28)))
    entries = read_ledger(warehouse, "m")
    assert [entry.action for entry in entries] == ["rolled-back", "promoted", "registered", "approved"]
    assert before <= entries[-1].recorded_at <= wall_clock() and entries[0].recorded_at > entries[0].at


def test_a_transition_is_in_the_ledger_once_whoever_writes_it(own_warehouse) -> None:
    from retrain.warehouse import LedgerEntry, append_ledger_entry, read_ledger

    warehouse = open_warehouse(*own_warehouse)
    entry = LedgerEntry(model="m", action="promoted", reason="r", actor="a", at=datetime(2013, 3, 1),
                        to_version="2", transition_id="t-1")
    assert append_ledger_entry(warehouse, entry) is True
    assert append_ledger_entry(warehouse, entry) is False  # a second finisher of t-1 adds nothing
    with pytest.raises(sa.exc.IntegrityError):  # nor does a writer that bypasses the check: the index refuses it
        with warehouse.engine.begin() as connection:
            connection.execute(sa.insert(ledger_table(warehouse.schema)).values(
                at=datetime(2013, 3, 1), model="m", action="promoted", reason="r", actor="a", transition_id="t-1"))
    decision = LedgerEntry(model="m", action="skipped", reason="r", actor="a", at=datetime(2013, 3, 2))
    assert append_ledger_entry(warehouse, decision) and append_ledger_entry(warehouse, decision)  # not transitions
    assert [e.transition_id for e in read_ledger(warehouse, "m")] == [None, None, "t-1"]


def test_a_ledger_written_before_transition_ids_gets_the_column_and_its_index(tmp_path: Path) -> None:
    from retrain.warehouse import LedgerEntry, append_ledger_entry, read_ledger

    warehouse = open_warehouse(f"sqlite:///{tmp_path / 'old.db'}")
    old = ledger_table()
    old = sa.Table(old.name, sa.MetaData(), *[sa.Column(c.name, c.type, primary_key=c.primary_key)
                                              for c in old.columns if c.name != "transition_id"])
    old.create(warehouse.engine)
    with warehouse.engine.begin() as connection:
        connection.execute(sa.insert(old).values(at=datetime(2013, 3, 1), model="m", action="promoted", reason="r",
                                                 actor="a", metrics="{}", details='{"transition": "t-0"}'))
    entry = LedgerEntry(model="m", action="promoted", reason="r", actor="a", at=datetime(2013, 3, 2),
                        transition_id="t-1")
    assert append_ledger_entry(warehouse, entry) and not append_ledger_entry(warehouse, entry)
    assert [(e.transition_id, e.details) for e in read_ledger(warehouse, "m")] == [("t-1", {}),
                                                                                   (None, {"transition": "t-0"})]


def test_predictions_join_labels_by_request_id_or_key_and_only_matured_ones(warehouse: Warehouse) -> None:
    """Selected by event time (the Retrain clock), not by request time (the wall clock of a replay); matured by
    the label's event time, not its arrival; filtered by arm and by version."""
    from retrain.warehouse import (
        append_rows,
        create_declared_table,
        label_table,
        prediction_table,
        read_labelled_predictions,
    )

    predictions = create_declared_table(warehouse, prediction_table(warehouse.schema))
    wall = datetime(2026, 11, 5, 12)  # when a replay answered: far from the replayed events
    base = {"model": "m", "version": "1", "arm": "champion", "features": "{}", "latency_ms": 1.0, "predicted_at": wall}
    append_rows(warehouse, predictions, [
        {**base, "request_id": "a", "event_at": datetime(2013, 3, 1, 1), "prediction": 10.0, "key": '["k1"]'},
        {**base, "request_id": "b", "event_at": datetime(2013, 3, 1, 2), "prediction": 20.0, "key": '["k2"]',
         "arm": "canary", "version": "2"},
        {**base, "request_id": "c", "event_at": datetime(2013, 3, 1, 3), "prediction": 30.0, "key": None},
        {**base, "request_id": "d", "event_at": datetime(2013, 3, 5), "prediction": 40.0, "key": None},
        {**base, "request_id": "e", "event_at": datetime(2013, 3, 1, 4), "prediction": 50.0, "key": None,
         "version": "0"},
    ])
    with pytest.raises(sa.exc.IntegrityError):  # the same request is never logged twice
        append_rows(warehouse, predictions, [{**base, "request_id": "a", "event_at": datetime(2013, 3, 1),
                                              "prediction": 1.0}])
    labels = create_declared_table(warehouse, label_table(warehouse.schema))
    append_rows(warehouse, labels, [
        {"model": "m", "request_id": "a", "key": None, "actual": 11.0, "labelled_at": wall,
         "event_at": datetime(2013, 3, 2), "source": "feedback"},
        {"model": "m", "request_id": None, "key": '["k2"]', "actual": 19.0, "labelled_at": wall,
         "event_at": datetime(2013, 3, 4), "source": "feedback"},
    ])
    frame = read_labelled_predictions(warehouse, "m", datetime(2013, 3, 1), datetime(2013, 3, 2))
    assert frame["request_id"].tolist() == ["a", "b", "c", "e"]
    assert frame["actual"].tolist()[:2] == [11.0, 19.0] and pd.isna(frame["actual"].iloc[2])
    assert (frame["predicted_at"] == wall).all() and frame["event_at"].iloc[0] == datetime(2013, 3, 1, 1)
    matured = read_labelled_predictions(warehouse, "m", datetime(2013, 3, 1), datetime(2013, 3, 2),
                                        matured_by=datetime(2013, 3, 3))
    assert matured["actual"].notna().tolist() == [True, False, False, False]
    canary = read_labelled_predictions(warehouse, "m", datetime(2013, 3, 1), datetime(2013, 3, 2), arms=["canary"])
    assert canary["version"].tolist() == ["2"]
    mine = read_labelled_predictions(warehouse, "m", datetime(2013, 3, 1), datetime(2013, 3, 2), versions=["1", "2"])
    assert mine["request_id"].tolist() == ["a", "b", "c"]
    assert read_labelled_predictions(warehouse, "m", wall, wall + timedelta(days=1)).empty


def test_tables_of_an_earlier_retrain_get_the_new_time_columns_filled(own_warehouse: tuple[str, str | None]) -> None:
    """A prediction log, label table and ledger written before event time existed keep their rows: the new
    columns are added and filled from the old ones (a prediction's event time is its request time)."""
    warehouse = open_warehouse(*own_warehouse)
    from retrain.warehouse import (
        append_rows,
        create_declared_table,
        label_table,
        ledger_table,
        prediction_table,
        read_labelled_predictions,
        read_ledger,
    )

    old = {"predictions": ("event_at", prediction_table), "labels": ("event_at", label_table),
           "ledger": ("recorded_at", ledger_table)}
    for added, declare in old.values():
        table = declare(warehouse.schema)
        earlier = sa.Table(table.name, sa.MetaData(schema=warehouse.schema),
                           *[column.copy() for column in table.columns if column.name != added])
        with warehouse.engine.begin() as connection:
            earlier.create(connection)
            columns = {column.name for column in earlier.columns}
            rows = {"retrain_predictions": {"request_id": "a", "model": "m", "version": "1", "arm": "champion",
                                            "predicted_at": datetime(2013, 3, 1), "prediction": 1.0,
                                            "features": "{}"},
                    "retrain_labels": {"model": "m", "request_id": "a", "actual": 2.0,
                                       "labelled_at": datetime(2013, 3, 2), "source": "feedback"},
                    "retrain_ledger": {"at": datetime(2013, 3, 1), "model": "m", "action": "promoted", "reason": "r",
                                       "actor": "person:ann", "metrics": "{}", "details": "{}"}}[table.name]
            connection.execute(sa.insert(earlier), [{k: v for k, v in rows.items() if k in columns}])
    frame = read_labelled_predictions(warehouse, "m", datetime(2013, 3, 1), datetime(2013, 3, 3),
                                      matured_by=datetime(2013, 3, 2))
    assert frame["request_id"].tolist() == ["a"] and frame["actual"].tolist() == [2.0]
    assert frame["event_at"].tolist() == [pd.Timestamp(2013, 3, 1)]
    assert read_ledger(warehouse, "m")[0].recorded_at == datetime(2013, 3, 1)
    # New rows go in with the new columns, beside the old ones.
    append_rows(warehouse, create_declared_table(warehouse, prediction_table(warehouse.schema)), [
        {"request_id": "b", "model": "m", "version": "1", "arm": "champion", "predicted_at": datetime(2026, 1, 1),
         "event_at": datetime(2013, 3, 2), "prediction": 3.0, "features": "{}"}])
    assert read_labelled_predictions(warehouse, "m", datetime(2013, 3, 1), datetime(2013, 3, 3))[
        "request_id"].tolist() == ["a", "b"]


def test_a_key_is_the_same_text_whoever_writes_it() -> None:
    import numpy as np

    from retrain.warehouse import prediction_key

    from_table = prediction_key([np.int64(1545), pd.Timestamp("2013-01-01 05:00:00"), "UA"])
    from_client = prediction_key([1545.0, datetime.fromisoformat("2013-01-01T00:00:00-05:00"), "UA"])
    assert from_table == from_client == '[1545,"2013-01-01T05:00:00","UA"]'
    assert prediction_key([None, float("nan")]) == "[null,null]"
