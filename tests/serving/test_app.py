"""The prediction server through a real HTTP client, on a real registry and warehouse in a temporary folder."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import httpx
import mlflow
import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient

from retrain import mlflow_keys as keys
from retrain.contract import read_contract
from retrain.warehouse import (
    PREDICTION_TABLE,
    Warehouse,
    open_warehouse,
    prediction_table,
    read_labelled_predictions,
)
from serving.app import INLINE_RECORDS, create_app
from serving.routing import choose_arm
from tests.conftest import POSTGRES_URL, REPO, fresh_postgres_schema
from tests.serving.conftest import MODEL, Registry

TOKEN = "s3cret-admin-token"


def wait_ready(client: Any, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if client.get("/ready").status_code == 200:
            return
        time.sleep(0.05)
    raise AssertionError("server not ready")


@contextlib.contextmanager
def http_client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as client:
        wait_ready(client)
        yield client


@contextlib.contextmanager
def running_server(app: FastAPI) -> Iterator[str]:
    """uvicorn on a free loopback port in a thread, stopped gracefully (the lifespan flushes the log)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/ready").status_code == 200:
                break
        time.sleep(0.05)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(60)


def pyfunc_predictions(version: str, rows: pd.DataFrame) -> np.ndarray:
    return np.asarray(mlflow.pyfunc.load_model(f"models:/{MODEL}/{version}").predict(rows), dtype="float64")


def logged(warehouse: Warehouse) -> pd.DataFrame:
    with warehouse.engine.connect() as connection:
        return pd.read_sql(sa.select(prediction_table(warehouse.schema)), connection)


def sqlite_warehouse(registry: Registry) -> Warehouse:
    return open_warehouse(f"sqlite:///{registry.home / 'warehouse.db'}")


def test_predictions_equal_the_models_own_output_on_raw_rows(registry: Registry) -> None:
    rows = registry.raw_rows(40)
    frame = registry.rows[registry.config.features.all].iloc[:40]
    expected = pyfunc_predictions("1", frame)
    with http_client(create_app(registry.config, registry.settings())) as client:
        answer = client.post("/predict", json={"records": rows, "request_id": "equal"}).json()["predictions"]
        split = {"columns": registry.config.features.all, "data": frame.astype(object).where(frame.notna(), None)
                 .to_numpy().tolist()}
        invocations = [client.post("/invocations", json=body) for body in (
            {"dataframe_records": registry.feature_rows(40)}, {"dataframe_split": split},
            {"inputs": registry.feature_rows(40)})]
    assert [p["prediction"] for p in answer] == expected.tolist()
    assert {(p["version"], p["arm"], p["model"]) for p in answer} == {("1", "champion", MODEL)}
    assert [p["request_id"] for p in answer[:2]] == ["equal/0", "equal/1"]
    for response in invocations:
        assert response.status_code == 200 and response.headers["x-model-version"] == "1"
        assert response.json() == {"predictions": expected.tolist()}


@pytest.mark.parametrize("count", [1, 100, 1000])
def test_the_columnar_path_answers_exactly_what_the_pyfunc_answers(registry: Registry, count: int) -> None:
    """Issue 19: whole requests checked and encoded column by column give the pyfunc's own predictions, bit for
    bit, with nulls and categories the model never saw, in every body form and on /predict (with its key)."""
    numeric, categorical = registry.config.features.numeric, registry.config.features.categorical
    nullable = {name for name, rule in read_contract(registry.config.contract_path).columns.items() if rule.nullable}
    frame = registry.rows[list(dict.fromkeys([*registry.config.features.all, *registry.config.source.key]))]
    frame = frame.iloc[:count].reset_index(drop=True).astype(object)
    for step, column in enumerate(sorted(nullable & {*numeric, *categorical})):  # nulls where the contract allows
        frame.loc[step % count :: 7 + step, column] = None
    for step, column in enumerate(categorical):  # categories the model never saw
        frame.loc[(step + 1) % count :: 5 + step, column] = f"never-seen-{step}"
    assert count == 1 or frame[list(nullable & set(numeric))].isna().any().all()
    features = frame[registry.config.features.all]
    expected = pyfunc_predictions("1", features.astype({name: "float64" for name in numeric})).tolist()
    records = json.loads(frame.to_json(orient="records"))
    feature_records = json.loads(features.to_json(orient="records"))
    split = {"columns": registry.config.features.all, "data": features.where(features.notna(), None).to_numpy()
             .tolist()}
    with http_client(create_app(registry.config, registry.settings())) as client:
        answer = client.post("/predict", json={"records": records})
        invocations = [client.post("/invocations", json=body) for body in (
            {"dataframe_records": feature_records}, {"dataframe_split": split}, {"inputs": feature_records})]
        assert client.get("/ready").status_code == 200

    assert answer.status_code == 200, answer.text
    assert [p["prediction"] for p in answer.json()["predictions"]] == expected
    for response in invocations:
        assert response.status_code == 200, response.text
        assert response.json() == {"predictions": expected}


def test_arms_follow_a_stable_hash_with_the_share_asked_for() -> None:
    ids = [f"request-{i}" for i in range(10_000)]
    for share in (0.05, 0.2, 0.5):
        arms = [choose_arm(request_id, share) for request_id in ids]
        assert abs(arms.count("canary") / len(ids) - share) < 0.015
        assert arms == [choose_arm(request_id, share) for request_id in ids]
    assert {choose_arm(request_id, 0.0) for request_id in ids} == {"champion"}
    # a larger share keeps every id that was on the canary there (raising the share only adds traffic)
    small = {i for i in ids if choose_arm(i, 0.1) == "canary"}
    assert small <= {i for i in ids if choose_arm(i, 0.3) == "canary"}


def test_canary_share_comes_from_the_release_state_and_the_override(registry: Registry) -> None:
    canary = registry.register(35)
    client = registry.client
    registry.set_alias("canary", canary)
    client.set_registered_model_tag(MODEL, keys.CANARY_SHARE, "0.25")
    ids = [f"r{i}" for i in range(2000)]
    body = {"records": registry.feature_rows(1) * len(ids), "request_ids": ids}
    try:
        with http_client(create_app(registry.config, registry.settings())) as http:
            assert http.get("/models").json()["aliases"] == {"champion": "1", "canary": canary}
            first = http.post("/predict", json=body).json()["predictions"]
            again = http.post("/predict", json={"records": registry.feature_rows(1) * 50,
                                                "request_ids": ids[:50]}).json()["predictions"]
        with http_client(create_app(registry.config, registry.settings(canary_share=1.0))) as http:
            overridden = http.post("/predict", json={"records": registry.feature_rows(3)}).json()["predictions"]
        client.delete_registered_model_alias(MODEL, "canary")
        with http_client(create_app(registry.config, registry.settings(canary_share=1.0))) as http:
            no_canary = http.post("/predict", json={"records": registry.feature_rows(3)}).json()["predictions"]
    finally:
        with contextlib.suppress(Exception):
            client.delete_registered_model_alias(MODEL, "canary")
        client.delete_registered_model_tag(MODEL, keys.CANARY_SHARE)
    share = sum(p["arm"] == "canary" for p in first) / len(first)
    assert abs(share - 0.25) < 0.04
    assert {p["version"] for p in first if p["arm"] == "canary"} == {canary}
    assert [p["arm"] for p in again] == [p["arm"] for p in first[:50]]  # a retried id lands where it did
    assert {(p["arm"], p["version"]) for p in overridden} == {("canary", canary)}
    assert {(p["arm"], p["version"]) for p in no_canary} == {("champion", "1")}


def test_feedback_joins_predictions_by_request_id_and_by_key(registry: Registry) -> None:
    warehouse = sqlite_warehouse(registry)
    rows = registry.raw_rows(6, offset=100)
    start = datetime.now() - timedelta(minutes=1)  # noqa: DTZ005 - the server stamps naive UTC; a window around it
    with http_client(create_app(registry.config, registry.settings())) as client:
        predicted = client.post("/predict", json={"records": rows, "request_id": "fb"}).json()["predictions"]
        table_row = registry.rows.iloc[103]
        key = {"time_hour": table_row["time_hour"].isoformat(), "carrier": table_row["carrier"],
               "flight": int(table_row["flight"]), "origin": table_row["origin"]}
        stored = client.post("/feedback", json={"labels": [
            {"request_id": "fb/0", "actual": 12.0, "at": "2013-01-20T10:00"},  # known then, on the Retrain clock
            {"request_id": "fb/1", "actual": -3},
            {"key": key, "actual": 40.5},  # ISO text here; the prediction's record sent epoch milliseconds
        ], "at": "2013-01-21"})
        repeated = client.post("/feedback", json={"labels": [{"request_id": "fb/0", "actual": 99.0}]})
        bad = client.post("/feedback", json={"labels": [{"actual": 1.0}, {"request_id": "x", "actual": "late"},
                                                        {"request_id": "y", "actual": 1.0, "at": "yesterday"}]})
        app_server = client.app.state.server  # type: ignore[attr-defined]
        assert app_server.log.wait_until_written(10)
    assert stored.status_code == 200 and stored.json() == {"received": 3, "new": 3}
    assert repeated.json() == {"received": 1, "new": 0}
    assert bad.status_code == 422 and [(p["record"], p["field"]) for p in bad.json()["problems"]] == [
        (0, "request_id"), (1, "actual"), (2, "at")]
    # Each prediction is logged at its record's time (the Retrain clock) beside the request time (the wall clock).
    events = pd.to_datetime(registry.rows["time_hour"].iloc[100:106]).tolist()
    joined = read_labelled_predictions(warehouse, MODEL, min(events), max(events) + timedelta(microseconds=1))
    assert joined["event_at"].tolist() == events
    assert (joined["predicted_at"] >= start).all()
    by_request_time = read_labelled_predictions(warehouse, MODEL, start, datetime.now() + timedelta(minutes=1))  # noqa: DTZ005
    assert not by_request_time["request_id"].str.startswith("fb/").any()
    actuals = joined.set_index("request_id")["actual"]
    assert actuals["fb/0"] == 12.0 and actuals["fb/1"] == -3.0 and actuals["fb/3"] == 40.5
    assert actuals[["fb/2", "fb/4", "fb/5"]].isna().all()
    assert joined.set_index("request_id").loc["fb/3", "prediction"] == predicted[3]["prediction"]
    # Labels matured at the instant they were sent with (the label's own, else the request's).
    matured = read_labelled_predictions(warehouse, MODEL, min(events), max(events) + timedelta(microseconds=1),
                                        matured_by=datetime(2013, 1, 20, 12)).set_index("request_id")["actual"]
    assert matured["fb/0"] == 12.0 and matured[["fb/1", "fb/3"]].isna().all()


BAD_INPUTS = {
    "missing feature": ({"records": "drop:temp"}, 422, 0, "temp"),
    "wrong type": ({"records": "set:distance=far"}, 422, 0, "distance"),
    "text category as object": ({"records": "set:carrier={}"}, 422, 0, "carrier"),
    "extra field": ({"records": "set:arr_delay=3"}, 422, 0, "arr_delay"),
    "null where the contract forbids": ({"records": "set:origin=null"}, 422, 0, "origin"),
    "empty records": ({"records": []}, 422, None, "records"),
    "records not a list": ({"records": {"a": 1}}, 422, None, "records"),
    "a record not an object": ({"records": [1]}, 422, 0, "(record)"),
    "unknown top-level field": ({"records": "ok", "model": "x"}, 422, None, "model"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS), ids=list(BAD_INPUTS))
def test_each_bad_input_is_a_4xx_naming_the_record_and_field(registry: Registry, case: str) -> None:
    body, status, record, field = BAD_INPUTS[case]
    good = registry.feature_rows(2)
    instruction = body["records"]
    if isinstance(instruction, str):
        rows = [dict(row) for row in good]
        if instruction.startswith("drop:"):
            del rows[0][instruction[5:]]
        elif instruction.startswith("set:"):
            name, _, value = instruction[4:].partition("=")
            rows[0][name] = json.loads(value) if value in ("null", "{}", "3") else value
        body = {**body, "records": rows}
    with http_client(create_app(registry.config, registry.settings())) as client:
        response = client.post("/predict", json=body)
        invocation = client.post("/invocations", json={"dataframe_records": body["records"]})
    assert response.status_code == status, response.text
    problem = response.json()["problems"][0] if field != "temp" else next(
        p for p in response.json()["problems"] if p["field"] == "temp")
    assert (problem["record"], problem["field"]) == (record, field) or field in response.json()["message"]
    if case == "extra field":  # /invocations leaves out a column the model does not take, as MLflow does, and says so
        assert invocation.status_code == 200 and invocation.headers["x-retrain-ignored-columns"] == "arr_delay"
    elif case == "missing feature":  # as MLflow's schema check calls a missing input
        assert invocation.status_code == 400 and invocation.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    elif "records" in case or case == "wrong type":
        assert invocation.status_code == 400 and invocation.json()["error_code"] == "BAD_REQUEST"


def test_oversized_and_malformed_bodies_are_refused_with_4xx(registry: Registry) -> None:
    with http_client(create_app(registry.config, registry.settings(max_body_bytes=2048))) as client:
        big = client.post("/predict", json={"records": registry.feature_rows(40)})
        not_json = client.post("/predict", content=b"{not json", headers={"content-type": "application/json"})
        two_formats = client.post("/invocations", json={"dataframe_records": [], "inputs": []})
        ragged = client.post("/invocations", json={"dataframe_split": {"columns": ["a", "b"], "data": [[1]]}})
    assert big.status_code == 413 and "max_body_bytes" in big.json()["message"]
    assert not_json.status_code == 422 and not_json.json()["error"] == "invalid_request"
    # /invocations answers as mlflow models serve does: 400 with MLflow's error body
    assert two_formats.status_code == 400 and two_formats.json()["error_code"] == "BAD_REQUEST"
    assert "exactly one of the input fields" in two_formats.json()["message"]
    assert ragged.status_code == 400 and "not a valid dataframe representation" in ragged.json()["message"]


def test_admin_endpoints_need_the_token_and_are_off_without_one(
    registry: Registry, caplog: pytest.LogCaptureFixture
) -> None:
    with http_client(create_app(registry.config, registry.settings())) as client:
        off = client.post("/reload", headers={"authorization": f"Bearer {TOKEN}"})
    with http_client(create_app(registry.config, registry.settings(admin_token=TOKEN))) as client:
        missing = client.post("/reload")
        wrong = client.post("/reload", headers={"authorization": "Bearer nope"})
        right = client.post("/reload", headers={"authorization": f"Bearer {TOKEN}"})
        metrics = client.get("/metrics").text
        models = client.get("/models").text
    assert off.status_code == 404 and missing.status_code == 401 and wrong.status_code == 401
    assert right.status_code == 200 and right.json()["served"]["aliases"]["champion"] == "1"
    for text in (missing.text, wrong.text, right.text, metrics, models, caplog.text):
        assert TOKEN not in text
    assert "# HELP retrain_prediction_log_dropped_rows" in metrics


def test_hot_swap_under_load_drops_no_request_and_logs_each_once(registry: Registry) -> None:
    versions = ["1", registry.register(10), registry.register(50)]
    record = registry.feature_rows(1, offset=7)
    frame = registry.rows[registry.config.features.all].iloc[7:8]
    truth = {version: pyfunc_predictions(version, frame)[0] for version in versions}
    assert len(set(truth.values())) == 3
    warehouse = sqlite_warehouse(registry)
    before = len(logged(warehouse)) if sa.inspect(warehouse.engine).has_table(PREDICTION_TABLE) else 0
    app = create_app(registry.config, registry.settings(alias_poll_seconds=0.1, log_batch_rows=50))
    answers: list[dict[str, Any]] = []
    failures: list[str] = []
    stop = threading.Event()

    def hammer(url: str, worker: int) -> None:
        with httpx.Client(base_url=url, timeout=30) as http:
            count = 0
            while not stop.is_set():
                count += 1
                response = http.post("/predict", json={"records": record, "request_id": f"swap-{worker}-{count}"})
                if response.status_code != 200:
                    failures.append(response.text)
                else:
                    answers.extend(response.json()["predictions"])

    try:
        with running_server(app) as url:
            threads = [threading.Thread(target=hammer, args=(url, worker)) for worker in range(4)]
            for thread in threads:
                thread.start()
            served = []
            for version in [versions[1], versions[2], versions[0], versions[2]]:
                registry.set_alias("champion", version)
                deadline = time.monotonic() + 30
                while httpx.get(f"{url}/models").json()["aliases"]["champion"] != version:
                    assert time.monotonic() < deadline, "alias move not picked up"
                    time.sleep(0.05)
                served.append(version)
                time.sleep(0.5)
            stop.set()
            for thread in threads:
                thread.join(30)
            metrics = httpx.get(f"{url}/metrics").text
        # leaving the context stopped the server: its lifespan flushed the log
    finally:
        stop.set()
        registry.set_alias("champion", "1")
    assert failures == [] and len(answers) > 100
    assert {answer["version"] for answer in answers} == set(versions)
    assert all(answer["prediction"] == truth[answer["version"]] for answer in answers)
    log = logged(warehouse).iloc[before:]
    log = log[log["request_id"].str.startswith("swap-")]
    assert len(log) == len(answers) and log["request_id"].is_unique
    by_id = {answer["request_id"]: answer["version"] for answer in answers}
    assert all(by_id[row.request_id] == row.version for row in log.itertuples())
    assert "retrain_model_swaps_total 5.0" in metrics  # the first load, then four moves


def test_a_version_that_does_not_load_is_not_swapped_in(registry: Registry) -> None:
    broken = registry.client.create_model_version(MODEL, source=(registry.home / "no-such-model").as_uri())
    with http_client(create_app(registry.config, registry.settings(admin_token=TOKEN))) as client:
        registry.set_alias("champion", broken.version)
        try:
            reload = client.post("/reload", headers={"authorization": f"Bearer {TOKEN}"}).json()
            answer = client.post("/predict", json={"records": registry.feature_rows(1)}).json()
            metrics = client.get("/metrics").text
        finally:
            registry.set_alias("champion", "1")
    assert reload["swapped"] is False and f"version {broken.version}" in reload["failures"][0]
    assert answer["predictions"][0]["version"] == "1"
    assert f'retrain_model_load_failures_total{{alias="champion",version="{broken.version}"}} 1.0' in metrics


@pytest.mark.postgres
def test_a_warehouse_outage_delays_the_log_but_never_the_predictions(registry: Registry) -> None:
    with fresh_postgres_schema("retrain_serving") as schema:
        warehouse = open_warehouse(POSTGRES_URL, schema)
        away = f"{schema}_away"
        admin = sa.create_engine(POSTGRES_URL)
        app = create_app(registry.config, registry.settings(log_batch_rows=20), warehouse=warehouse)
        record = registry.feature_rows(1)
        statuses = []
        with http_client(app) as client:
            server = client.app.state.server  # type: ignore[attr-defined]
            for i in range(30):
                statuses.append(client.post("/predict", json={"records": record, "request_id": f"o-{i}"}).status_code)
            assert server.log.wait_until_written(10)
            with admin.begin() as connection:
                connection.execute(sa.text(f'ALTER SCHEMA "{schema}" RENAME TO "{away}"'))
            try:
                for i in range(30, 90):
                    statuses.append(client.post("/predict", json={"records": record,
                                                                  "request_id": f"o-{i}"}).status_code)
                # a client retry of a request already answered: the log keeps one row for it
                statuses.append(client.post("/predict", json={"records": record, "request_id": "o-35"}).status_code)
                deadline = time.monotonic() + 10
                while server.log.counters.failed_attempts < 2:
                    assert time.monotonic() < deadline, "the writer never noticed the outage"
                    time.sleep(0.05)
            finally:
                with admin.begin() as connection:
                    connection.execute(sa.text(f'ALTER SCHEMA "{away}" RENAME TO "{schema}"'))
            assert server.log.wait_until_written(30)
            counters = server.log.counters
        admin.dispose()
        log = logged(warehouse)
    assert set(statuses) == {200} and len(statuses) == 91
    assert counters.dropped == 0 and counters.failed_attempts >= 2
    assert sorted(log["request_id"]) == sorted(f"o-{i}" for i in range(90))


def test_the_server_imports_no_training_stack() -> None:
    code = ("import sys, serving.app, retrain.cli; "
            "print([m for m in ('prefect', 'optuna', 'pandera') if m in sys.modules])")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_a_large_request_does_not_hold_up_the_requests_behind_it(registry: Registry) -> None:
    """A request over INLINE_RECORDS predicts in the thread pool: while it is being predicted, /health and a
    one-record prediction are answered (on the event loop they would wait for it)."""
    app = create_app(registry.config, registry.settings())
    released = threading.Event()
    with running_server(app) as url:
        server = app.state.server
        for _ in range(100):
            if server.models.current is not None:
                break
            time.sleep(0.1)
        served = server.models.current
        own = served.champion.predict

        def slow(records: Any) -> Any:
            if len(records) > INLINE_RECORDS:
                assert released.wait(30), "the large request was never let go"
            return own(records)

        server.models.swap(dataclasses.replace(served, champion=dataclasses.replace(served.champion, predict=slow)))
        large: dict[str, Any] = {}

        def send_large() -> None:
            large["response"] = httpx.post(f"{url}/predict", json={"records": registry.raw_rows(INLINE_RECORDS + 1)},
                                           timeout=60)

        sender = threading.Thread(target=send_large)
        sender.start()
        try:
            time.sleep(0.3)  # the large request is inside its predict by now
            assert httpx.get(f"{url}/health", timeout=5).status_code == 200
            single = httpx.post(f"{url}/predict", json={"records": registry.raw_rows(1)}, timeout=5)
            assert single.status_code == 200 and "response" not in large
        finally:
            released.set()
            sender.join(60)
    assert large["response"].status_code == 200 and len(large["response"].json()["predictions"]) == INLINE_RECORDS + 1
