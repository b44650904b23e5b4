"""The stores a run depends on (warehouse, MLflow, Optuna storage, Prefect API): reachable, or say which not.

A run checks its stores before any work, so an outage fails it in seconds with `StoreUnavailable`
(exit 3) naming the store, instead of a rejection-looking failure after all the tuning; a store that
answers but is set up wrong (bad credentials, missing schema or database, unusable URL) is a
`ConfigError` (exit 2). Messages carry URLs with their passwords masked and no chained exception, since
Prefect stores a failed run's message and exception in its database.

MLflow and Prefect are imported only by the checks that need them, so the CLI can check the warehouse
(and the config against its table) in well under a second, before paying for either import; the
flows' `@task` around `check_stores` lives in `tasks/stores.py`.

This module is also where MLflow is pointed at the tracking store (`connect_mlflow`): credentials go
through MLflow's own `MLFLOW_TRACKING_USERNAME`/`PASSWORD` variables, never in the URI that MLflow quotes
in each of its error messages, and MLflow's HTTP retries are bounded so a dead server is noticed in
seconds, not after about 4 minutes of backoff.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from collections.abc import Iterable, Iterator, MutableMapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from retrain.errors import ConfigError, RetrainError, StoreUnavailable
from retrain.redaction import redact_text, redact_url, split_credentials
from retrain.settings import Settings

if TYPE_CHECKING:
    from mlflow.utils.rest_utils import MlflowHostCreds

WAREHOUSE, MLFLOW, OPTUNA, PREFECT = "warehouse", "mlflow", "optuna", "prefect"
STORES = (WAREHOUSE, MLFLOW, OPTUNA)

# MLflow's own defaults retry a failed request 7 times with exponential backoff (about 4 minutes, meant
# for rate limits) and wait 120 s for each answer. Ours, applied only where the user set none: a
# restarting server is still ridden out (3 attempts, 0 + 4 s backoff), a dead one is reported in seconds.
MLFLOW_REQUEST_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "2",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
}
HTTP_SCHEMES = ("http://", "https://")
DATABASE_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql", "oracle")
# The server answered and said no: credentials (SQLSTATE class 28) or no such database (3D). PostgreSQL
# refuses before a session exists, so its driver often carries no SQLSTATE: its FATAL texts are matched too.
REFUSED_SQLSTATES = ("28", "3D")
REFUSED_MESSAGES = ("password authentication failed", "does not exist", "pg_hba.conf", "access denied")


@dataclass(frozen=True)
class StoreStatus:
    """One store that answered: which, where (password masked) and how long it took."""

    store: str
    location: str
    seconds: float


def is_http(uri: str) -> bool:
    """A tracking server (REST over HTTP), as opposed to a database or folder MLflow opens itself."""
    return uri.lower().startswith(HTTP_SCHEMES)


def apply_mlflow_request_defaults(environ: MutableMapping[str, str] = os.environ) -> None:
    """Bound MLflow's HTTP retries and timeouts, leaving any value the user set alone."""
    for name, value in MLFLOW_REQUEST_DEFAULTS.items():
        environ.setdefault(name, value)


def connect_mlflow(settings: Settings) -> str:
    """Point MLflow at the settings' tracking store; returns the URI MLflow was given (no credentials).

    A `http(s)://user:password@host` URI is split: MLflow gets the bare URI and reads the credentials from
    `MLFLOW_TRACKING_USERNAME`/`MLFLOW_TRACKING_PASSWORD` (its documented way, used for every request,
    artifact uploads and downloads included), so no MLflow message can quote the password. A database URI
    keeps its credentials: SQLAlchemy needs them and does not quote them in its errors.
    """
    import mlflow

    apply_mlflow_request_defaults()
    uri = settings.resolved_tracking_uri()
    if is_http(uri):
        uri, username, password = split_credentials(uri)
        if username is not None:
            os.environ["MLFLOW_TRACKING_USERNAME"] = username
        if password is not None:
            os.environ["MLFLOW_TRACKING_PASSWORD"] = password
    elif uri.startswith("sqlite:///"):
        write_ahead_log(uri.removeprefix("sqlite:///"))
    mlflow.set_tracking_uri(uri)
    return uri


@functools.cache
def write_ahead_log(path: str) -> None:
    """Put an SQLite MLflow store in WAL mode (once per file and process; the mode is kept in the file).

    MLflow commits every param batch, tag, metric and alias on its own; in SQLite's default rollback-journal
    mode each commit creates, syncs and deletes a journal file, in WAL mode it appends to one log, and readers
    (the prediction server polling aliases, `retrain status`) no longer wait for a writer. The warehouse runs
    in WAL mode already. A path that cannot be opened is left to MLflow, which reports it.
    """
    import sqlite3

    if path in ("", ":memory:"):
        return
    with contextlib.suppress(sqlite3.Error, OSError):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(path, timeout=30)
        try:
            connection.execute("PRAGMA journal_mode=WAL")
        finally:
            connection.close()


@contextlib.contextmanager
def store_errors(store: str, location: str) -> Iterator[None]:
    """Turn a failure to reach a store into `StoreUnavailable`, masked and without the original chained.

    Only connection-level failures are translated (a refused or timed-out connection, a dropped database
    session); an answer the store gave (a missing experiment, a constraint) stays what it was.
    """
    import requests
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as error:
        if not isinstance(error.__context__, requests.exceptions.RequestException):
            raise
        raise StoreUnavailable(
            f"{store} at {redact_url(location)} did not answer ({_connection_failure(error)}). "
            "Check that the server runs and the URI is right."
        ) from None
    except (sa.exc.OperationalError, sa.exc.InterfaceError) as error:
        # Raised while connecting (no statement) or on a dropped connection: the store is gone. An error
        # from a statement (a lock, a schema race) is the database answering, and stays what it was.
        if error.statement is not None and not error.connection_invalidated:
            raise
        raise _database_error(store, location, error) from None


def check_database(store: str, url: str, timeout: float, schema: str | None = None) -> StoreStatus:
    """Connect once (and see that `schema` exists); the errors say which store and what to do.

    Raises:
        ConfigError: the URL cannot be used (syntax, missing driver, SQLite folder missing), the server
            refused the credentials, the database or the schema does not exist.
        StoreUnavailable: the server did not answer within `timeout`.
    """
    started = time.perf_counter()
    location = redact_url(url)
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        folder = Path(url.removeprefix("sqlite:///").split("?")[0]).parent
        if not folder.is_dir():
            raise ConfigError(f"{store} {location}: folder {folder} does not exist; create it or fix the URL")
    try:
        engine = sa.create_engine(url, poolclass=NullPool, connect_args=_connect_timeout(url, timeout))
    except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError, ImportError) as error:
        raise ConfigError(
            f"{store} URL {location} cannot be used: {redact_text(_first_line(error))}"
            + (" (install the driver: pip install 'retrain[postgres]')" if isinstance(error, ImportError) else "")
        ) from None
    try:
        with engine.connect() as connection:
            if schema and not sa.inspect(connection).has_schema(schema):
                raise ConfigError(
                    f"schema '{schema}' does not exist in the {store} {location}: create it "
                    f'(CREATE SCHEMA "{schema}") or fix RETRAIN_WAREHOUSE_SCHEMA'
                )
    except sa.exc.DBAPIError as error:
        raise _database_error(store, url, error) from None
    finally:
        engine.dispose()
    return StoreStatus(store, location, time.perf_counter() - started)


def check_mlflow(uri: str, timeout: float) -> StoreStatus:
    """Ask the tracking store for one experiment: a server over HTTP, a database, or a local folder.

    Raises:
        ConfigError: the server refused our credentials or is not an MLflow tracking server.
        StoreUnavailable: it did not answer within `timeout` or answered with a server error.
    """
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.utils.rest_utils import http_request

    started = time.perf_counter()
    location = redact_url(uri)
    if not is_http(uri):
        if uri.startswith(DATABASE_SCHEMES):
            return check_database("MLflow tracking store", uri, timeout)
        with store_errors("MLflow tracking store", uri):
            mlflow.MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
        return StoreStatus(MLFLOW, location, time.perf_counter() - started)
    bare, username, password = split_credentials(uri)
    credentials = _host_credentials(bare, username, password)
    try:
        response = http_request(
            credentials,
            "/api/2.0/mlflow/experiments/search",
            "GET",
            max_retries=0,
            timeout=timeout,
            raise_on_status=False,
            params={"max_results": 1},
        )
    except MlflowException as error:
        raise StoreUnavailable(
            f"MLflow tracking server {location} is unreachable ({_connection_failure(error)}; waited up to "
            f"{timeout:g} s). Start it, or fix RETRAIN_MLFLOW_TRACKING_URI."
        ) from None
    if response.status_code in (401, 403):
        raise ConfigError(
            f"MLflow tracking server {location} refused our credentials (HTTP {response.status_code}): "
            "put them in RETRAIN_MLFLOW_TRACKING_URI (http://user:password@host) or in "
            "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
        )
    if response.status_code == 404:
        raise ConfigError(
            f"{location} answered HTTP 404 to MLflow's REST API: it is not an MLflow tracking server, or the "
            "URI lacks the server's path prefix"
        )
    if response.status_code != 200:
        raise StoreUnavailable(f"MLflow tracking server {location} answered HTTP {response.status_code}")
    return StoreStatus(MLFLOW, location, time.perf_counter() - started)


def check_prefect_api(timeout: float) -> StoreStatus | None:
    """The Prefect API named by `PREFECT_API_URL` answers its health check; None when none is set.

    Without `PREFECT_API_URL` Prefect starts a temporary server of its own, so there is nothing to check.
    """
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        return None
    started = time.perf_counter()
    with get_client(httpx_settings={"timeout": timeout}, sync_client=True) as client:
        problem = client.api_healthcheck()
    if problem is not None:
        raise StoreUnavailable(
            f"Prefect API {redact_url(url)} did not answer: {redact_text(_first_line(problem))}. Start the "
            "server (prefect server start) or unset PREFECT_API_URL to let Prefect start a temporary one."
        )
    return StoreStatus(PREFECT, redact_url(url), time.perf_counter() - started)


def check_stores(settings: Settings, stores: Iterable[str] = STORES) -> tuple[StoreStatus, ...]:
    """Check each named store in turn (warehouse, mlflow, optuna, prefect); the first failure raises.

    Raises:
        ConfigError: a store answered but is set up wrong (exit 2).
        StoreUnavailable: a store did not answer (exit 3).
    """
    timeout = settings.store_timeout_seconds
    checks = {
        WAREHOUSE: lambda: check_database(
            "warehouse", settings.resolved_warehouse_url(), timeout, settings.warehouse_schema
        ),
        MLFLOW: lambda: check_mlflow(settings.resolved_tracking_uri(), timeout),
        OPTUNA: lambda: check_database("Optuna storage", settings.resolved_optuna_storage(), timeout),
        PREFECT: lambda: check_prefect_api(timeout),
    }
    unknown = set(stores) - set(checks)
    if unknown:
        raise ValueError(f"unknown stores {sorted(unknown)}: choose from {sorted(checks)}")
    statuses = ((store, checks[store]()) for store in stores)
    return tuple(replace(status, store=store) for store, status in statuses if status is not None)


def _host_credentials(bare: str, username: str | None, password: str | None) -> MlflowHostCreds:
    """MLflow's own credentials for `bare` (environment, ~/.mlflow/credentials), with the URI's on top."""
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import MlflowHostCreds

    default = get_default_host_creds(bare)
    return MlflowHostCreds(
        host=bare,
        username=username if username is not None else default.username,
        password=password if password is not None else default.password,
        token=default.token,
        aws_sigv4=default.aws_sigv4,
        auth=default.auth,
        ignore_tls_verification=default.ignore_tls_verification,
        client_cert_path=default.client_cert_path,
        server_cert_path=default.server_cert_path,
    )


def _connect_timeout(url: str, timeout: float) -> dict[str, int]:
    """The driver's connect timeout, for the dialects that take one under that name."""
    if url.startswith(("postgresql", "mysql")):
        return {"connect_timeout": max(int(timeout), 2)}
    return {}


def _database_error(store: str, url: str, error: sa.exc.DBAPIError) -> RetrainError:
    """Refused credentials or a missing database are the user's to fix; anything else is an outage."""
    location = redact_url(url)
    original = error.orig
    sqlstate = str(getattr(original, "sqlstate", None) or getattr(original, "pgcode", None) or "")
    detail = redact_text(_first_line(original if original is not None else error))
    if sqlstate.startswith(REFUSED_SQLSTATES) or any(text in detail.lower() for text in REFUSED_MESSAGES):
        return ConfigError(f"the {store} server at {location} refused the connection: {detail}; fix the URL")
    return StoreUnavailable(
        f"{store} at {location} did not answer: {detail}. Check that the server runs and the URL is right."
    )


def _connection_failure(error: BaseException) -> str:
    """Why an HTTP request failed, in a few words ("[Errno 111] Connection refused", "read timed out").

    MLflow wraps requests' error, which wraps urllib3's retry error, which wraps the socket's: the last
    one says what happened, the others repeat the URL.
    """
    cause: object = error.__context__ if error.__context__ is not None else error
    while True:
        inner = getattr(cause, "reason", None) or (
            cause.args[0] if isinstance(cause, BaseException) and cause.args and isinstance(
                cause.args[0], BaseException) else None
        )
        if inner is None or inner is cause:
            break
        cause = inner
    text = _first_line(cause)
    return redact_text(text.rsplit("): ", 1)[-1].strip("()'\" ") or type(cause).__name__)


def _first_line(error: object) -> str:
    """An error's message on one line: drivers add hints and SQL on the following ones."""
    text = str(error).strip()
    return text.splitlines()[0].strip() if text else type(error).__name__
