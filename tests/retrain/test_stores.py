"""Stores are checked against real servers: an outage is StoreUnavailable (exit 3), a set-up mistake a
ConfigError (exit 2), each naming the store with its password masked and no chained exception."""

from __future__ import annotations

import base64
import json
import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import mlflow
import pytest
import sqlalchemy as sa
from mlflow.exceptions import MlflowException
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
from prefect.logging.handlers import APILogWorker

from retrain.errors import ConfigError, ExitCode, StoreUnavailable
from retrain.settings import get_settings
from retrain.stores import (
    MLFLOW_REQUEST_DEFAULTS,
    WAREHOUSE,
    check_database,
    check_mlflow,
    check_stores,
    connect_mlflow,
    store_errors,
)
from tasks.stores import verify_stores
from tests.conftest import POSTGRES_URL, fresh_postgres_schema

PASSWORD = "S3cretPW42"
UNREACHABLE_MLFLOW = f"http://user:{PASSWORD}@127.0.0.1:9"  # port 9 (discard): nothing listens
UNREACHABLE_POSTGRES = f"postgresql+psycopg://postgres:{PASSWORD}@127.0.0.1:9/test"


def assert_masked(error: BaseException) -> None:
    """The message is masked and carries no original exception that could still hold the secret."""
    assert PASSWORD not in str(error) and "***" in str(error)
    assert error.__cause__ is None and error.__suppress_context__


def test_unreachable_postgres_is_an_outage_naming_the_store() -> None:
    with pytest.raises(StoreUnavailable, match="warehouse at postgresql.*did not answer") as raised:
        check_database("warehouse", UNREACHABLE_POSTGRES, timeout=5)
    assert raised.value.exit_code == ExitCode.FAILURE
    assert_masked(raised.value)


@pytest.mark.postgres
def test_missing_schema_and_missing_database_are_user_errors() -> None:
    with fresh_postgres_schema("retrain_stores") as schema:
        status = check_database("warehouse", POSTGRES_URL, timeout=5, schema=schema)
        assert status.store == "warehouse" and status.location == POSTGRES_URL
    with pytest.raises(ConfigError, match=f"schema '{schema}' does not exist in the warehouse") as raised:
        check_database("warehouse", POSTGRES_URL, timeout=5, schema=schema)
    assert raised.value.exit_code == ExitCode.USAGE
    with pytest.raises(ConfigError, match='database "no_such_database_here" does not exist'):
        check_database("warehouse", POSTGRES_URL.replace("/test", "/no_such_database_here"), timeout=5)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("postgresx://bob:pw12@db/x", "cannot be used: Can't load plugin"),
        ("not a url", "cannot be used"),
        ("sqlite:////no/such/folder/warehouse.db", "folder /no/such/folder does not exist"),
    ],
)
def test_unusable_urls_are_user_errors(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        check_database("warehouse", url, timeout=5)


def test_unreachable_mlflow_server_is_an_outage_with_the_password_masked() -> None:
    with pytest.raises(StoreUnavailable, match=r"MLflow tracking server http://user:\*\*\*@127.0.0.1:9 is unreachable"
                       ) as raised:
        check_mlflow(UNREACHABLE_MLFLOW, timeout=5)
    assert "Connection refused" in str(raised.value)
    assert_masked(raised.value)


class RecordingTrackingServer(BaseHTTPRequestHandler):
    """Answers MLflow's experiment search like a tracking server, recording the Authorization header;
    answers 401 when asked to, like a server behind basic auth with the wrong password."""

    seen: list[str | None] = []  # class-level: the test reads what the server thread recorded
    status = 200

    def do_GET(self) -> None:
        self.answer()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.answer()

    def answer(self) -> None:
        type(self).seen.append(self.headers.get("Authorization"))
        body = json.dumps({"experiments": []}).encode()
        self.send_response(type(self).status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        return None


@pytest.fixture
def tracking_server() -> Iterator[tuple[str, type[RecordingTrackingServer]]]:
    handler = type("Handler", (RecordingTrackingServer,), {"seen": [], "status": 200})
    server = HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def mlflow_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """connect_mlflow writes MLflow's variables into os.environ: registered here so they are restored."""
    names = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_URI", *MLFLOW_REQUEST_DEFAULTS)
    for name in names:
        monkeypatch.delenv(name, raising=False)
    yield
    mlflow.set_tracking_uri(None)


def test_mlflow_gets_the_credentials_by_its_variables_and_never_in_the_uri(
    retrain_home: Path,
    monkeypatch: pytest.MonkeyPatch,
    mlflow_environment: None,
    tracking_server: tuple[str, type[RecordingTrackingServer]],
) -> None:
    address, handler = tracking_server
    monkeypatch.setenv("RETRAIN_MLFLOW_TRACKING_URI", f"http://alice:{PASSWORD}@{address}")
    get_settings.cache_clear()
    uri = connect_mlflow(get_settings())
    assert uri == f"http://{address}" and mlflow.get_tracking_uri() == uri
    assert mlflow.search_experiments() == []
    assert check_mlflow(f"http://alice:{PASSWORD}@{address}", timeout=5).location == f"http://alice:***@{address}"
    expected = "Basic " + base64.b64encode(f"alice:{PASSWORD}".encode()).decode()
    assert handler.seen == [expected, expected]  # every request authenticated, by MLflow itself and by our check

    handler.status = 401
    with pytest.raises(ConfigError, match="refused our credentials"):
        check_mlflow(f"http://alice:wrong-password@{address}", timeout=5)


def test_an_mlflow_outage_after_the_check_cannot_quote_the_password(
    retrain_home: Path, monkeypatch: pytest.MonkeyPatch, mlflow_environment: None
) -> None:
    monkeypatch.setenv("RETRAIN_MLFLOW_TRACKING_URI", UNREACHABLE_MLFLOW)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    get_settings.cache_clear()
    uri = connect_mlflow(get_settings())
    with pytest.raises(MlflowException) as raw:
        mlflow.get_experiment_by_name("anything")
    assert PASSWORD not in str(raw.value)  # MLflow itself never saw it in the URI
    with pytest.raises(StoreUnavailable, match="MLflow tracking store at http://127.0.0.1:9 did not answer") as raised:
        with store_errors("MLflow tracking store", uri):
            mlflow.get_experiment_by_name("anything")
    assert raised.value.__cause__ is None and raised.value.__suppress_context__


def test_bounded_mlflow_retries_leave_the_users_own_values_alone(
    retrain_home: Path, monkeypatch: pytest.MonkeyPatch, mlflow_environment: None
) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "7")
    connect_mlflow(get_settings())
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "7"
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == MLFLOW_REQUEST_DEFAULTS["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]


def test_embedded_stores_answer(retrain_home: Path) -> None:
    statuses = check_stores(get_settings())
    assert [status.store for status in statuses] == ["warehouse", "mlflow", "optuna"]
    assert all(str(retrain_home) in status.location for status in statuses)


def test_unknown_store_names_are_a_programming_error(retrain_home: Path) -> None:
    with pytest.raises(ValueError, match="unknown stores"):
        check_stores(get_settings(), ("warehouse", "s3"))


@pytest.mark.usefixtures("prefect_harness")
def test_a_run_fails_on_the_check_and_prefect_keeps_no_password(
    retrain_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RETRAIN_WAREHOUSE_URL", UNREACHABLE_POSTGRES)
    get_settings.cache_clear()

    @flow(name="store-probe")
    def probe() -> object:
        return verify_stores((WAREHOUSE,))

    state = probe(return_state=True)
    assert state.is_failed() and "StoreUnavailable" in state.message and "warehouse at postgresql" in state.message
    assert PASSWORD not in state.message
    APILogWorker.drain_all()
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(state.state_details.flow_run_id)
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])))
    assert any("did not answer" in log.message for log in logs)
    assert not any(PASSWORD in log.message or "Traceback" in log.message for log in logs)
    assert PASSWORD not in (run.state.message or "")


def test_an_answer_from_the_database_is_not_taken_for_an_outage(tmp_path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'store.db'}")
    with engine.begin() as connection:
        connection.execute(sa.text("create table t (step integer)"))
    with pytest.raises(sa.exc.OperationalError, match="duplicate column name"):
        with store_errors("MLflow tracking store", str(engine.url)), engine.begin() as connection:
            connection.execute(sa.text("alter table t add column step integer"))
    engine.dispose()
    unreachable = sa.create_engine(UNREACHABLE_POSTGRES)
    with pytest.raises(StoreUnavailable, match="did not answer") as raised:
        with store_errors("warehouse", UNREACHABLE_POSTGRES), unreachable.connect():
            pass
    assert_masked(raised.value)
