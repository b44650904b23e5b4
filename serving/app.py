"""The prediction server: FastAPI over the models the registry's aliases name.

`create_app(model_config, settings)` builds the app; its lifespan points MLflow at the settings' tracking
store, starts the prediction log's writer and the alias watcher (which loads the champion, and the canary
if there is one, in the background: /ready says when), and on shutdown stops the watcher and flushes the
log. Endpoints:

- `POST /predict`: raw records in; each prediction with its request id, version and arm.
- `POST /invocations`, `GET /ping`, `GET /version`: MLflow's scoring protocol to the letter (`serving.scoring`),
  so a client of `mlflow models serve` (or a SageMaker-style health check) only changes the URL.
- `POST /feedback`: actuals by request id or key, into the label table.
- `GET /health`, `GET /ready`, `GET /models`, `GET /metrics` (Prometheus text).
- `POST /reload`: look at the aliases now (bearer token; off when no token is configured).

This module imports no Prefect, Optuna or pandera: a serving process carries only what it serves with.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import os
import re
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from fastapi import Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import BaseModel, ConfigDict, Field

from retrain.clock import now
from retrain.config import ModelConfig
from retrain.settings import Settings
from retrain.warehouse import Warehouse, open_warehouse
from serving.feedback import MAX_REQUEST_ID, label_rows, request_id_problem
from serving.journal import JournalUnavailable, PredictionJournal
from serving.models import LoadedModel, ModelWatcher, Refresh, Served, ServedModels
from serving.prediction_log import OUTAGE_ERRORS, PredictionLog, insert_labels
from serving.records import (
    MISSING_FEATURE,
    InputSpec,
    InvalidRecords,
    Problem,
    build_input_spec,
    check_records,
    event_time,
    record_key,
    text_problem,
)
from serving.routing import CANARY, CHAMPION, choose_arm
from serving.scoring import CONTENT_TYPES, UnsupportedMediaType, keep_model_columns, scoring_records

logger = logging.getLogger(__name__)
# A record as the prediction log stores it (compact JSON, anything else as text): one encoder for every record.
_FEATURES_JSON = json.JSONEncoder(separators=(",", ":"), default=str)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
# Where inference runs. A small request is answered on the event loop: it costs well under a millisecond, less than
# the hop to a worker thread and back. A larger one goes to the thread pool, so it never holds up the requests behind
# it (a /health check, a one-record prediction); LightGBM releases the GIL while it predicts, so the loop keeps
# answering. `benchmarks/serving.py` measures both sides of this line.
INLINE_RECORDS = 64


# ------------------------------------------------------------------------------------ request/response


class PredictRequest(BaseModel):
    """Raw rows of the source table, as JSON objects of column: value."""

    model_config = ConfigDict(extra="forbid")
    records: list[Any] = Field(description="Raw rows: every feature of the model, optionally its key columns.")
    request_id: str | None = Field(
        default=None, max_length=MAX_REQUEST_ID - 8,
        description="Your id for the request; with several records, record i gets `<request_id>/<i>`. "
        "The same id always lands on the same arm.",
    )
    request_ids: list[str] | None = Field(default=None, description="One id per record, instead of request_id.")


class Prediction(BaseModel):
    request_id: str
    prediction: float
    model: str
    version: str
    arm: str


class PredictResponse(BaseModel):
    predictions: list[Prediction]


class InvocationResponse(BaseModel):
    predictions: list[float]


class Label(BaseModel):
    model_config = ConfigDict(extra="forbid")
    actual: Any = Field(description="The outcome, a number (for a binary model: 0 or 1, or the raw target).")
    request_id: Any = Field(default=None, description="The request id of the prediction.")
    key: Any = Field(default=None, description="Or the model's key columns, as an object of column: value.")
    at: Any = Field(default=None, description="When the outcome was known, ISO 8601 on the Retrain clock (a replay "
                    "sends its replayed instant); default: the request's `at`, else the label's arrival.")


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    labels: list[Label]
    source: str = Field(default="feedback", max_length=50)
    at: Any = Field(default=None, description="When these outcomes were known, ISO 8601 on the Retrain clock, for "
                    "every label without its own `at`; default: their arrival.")


class FeedbackResponse(BaseModel):
    received: int
    new: int = Field(description="Labels stored now; the others were already there (the first label wins).")


class ErrorResponse(BaseModel):
    error: str
    message: str
    problems: list[dict[str, Any]] = Field(default_factory=list)


# ------------------------------------------------------------------------------------------- the server


@dataclass(frozen=True)
class ServerConfig:
    """What the server needs from the model config and its contract."""

    model: str
    key: tuple[str, ...] = ()
    contract_kinds: Mapping[str, str] | None = None
    not_nullable: frozenset[str] = frozenset()
    timestamp: str | None = None  # the source's timestamp column: a record carrying it is logged at that time


def read_server_config(config: ModelConfig) -> ServerConfig:
    """The model's name and key, and column types from its data contract when the file exists."""
    from retrain.contract import read_contract

    contract_kinds: dict[str, str] | None = None
    not_nullable: frozenset[str] = frozenset()
    if config.contract_path.is_file():
        contract = read_contract(config.contract_path)
        contract_kinds = {name: str(rule.type) for name, rule in contract.columns.items()}
        not_nullable = frozenset(name for name, rule in contract.columns.items() if not rule.nullable)
    return ServerConfig(config.name, tuple(config.source.key), contract_kinds, not_nullable, config.source.timestamp)


class ServingMetrics:
    """Prometheus metrics of one app (its own registry, so several apps in a process do not collide)."""

    def __init__(self, log_depth: Any) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("retrain_requests", "HTTP requests by endpoint and status code.",
                                ["endpoint", "status"], registry=r)
        self.errors = Counter("retrain_request_errors", "Requests answered with an error, by endpoint and kind.",
                              ["endpoint", "kind"], registry=r)
        self.predictions = Counter("retrain_predictions", "Predictions served, by arm and version.",
                                   ["arm", "version"], registry=r)
        self.latency = Histogram("retrain_prediction_latency_seconds", "Time to answer a prediction request.",
                                 ["arm", "version"], buckets=LATENCY_BUCKETS, registry=r)
        self.log_depth = Gauge("retrain_prediction_log_queue_depth",
                               "Answered predictions waiting in the journal for the warehouse.", registry=r)
        self.log_depth.set_function(log_depth)
        self.log_dropped = Counter("retrain_prediction_log_dropped_rows",
                                   "Journaled predictions the warehouse refused (a value it cannot store).", registry=r)
        self.log_written = Counter("retrain_prediction_log_written_rows", "Predictions written to the log.",
                                   registry=r)
        self.swaps = Counter("retrain_model_swaps", "Times a new set of models was swapped in.", registry=r)
        self.load_failures = Counter("retrain_model_load_failures", "Versions that failed to load or warm.",
                                     ["alias", "version"], registry=r)
        self.served = Gauge("retrain_model_served", "1 for each alias and version being served.",
                            ["alias", "version"], registry=r)

    def record_swap(self, served: Served) -> None:
        self.swaps.inc()
        self.served.clear()
        self.served.labels(CHAMPION, served.champion.version).set(1)
        if served.canary is not None:
            self.served.labels(CANARY, served.canary.version).set(1)


class Server:
    """Everything a request touches: the served models, the log, the metrics, the warehouse."""

    def __init__(self, config: ServerConfig, settings: Settings, warehouse: Warehouse) -> None:
        self.config = config
        self.settings = settings
        self.warehouse = warehouse
        self.models = ServedModels()
        journal = PredictionJournal(settings.journal_dir / journal_name(config.model), settings.journal_fsync,
                                    settings.journal_fsync_seconds)
        self.log = PredictionLog(
            warehouse, journal, settings.log_batch_rows, settings.log_flush_seconds,
            on_dropped=self._count_dropped, on_written=self._count_written,
        )
        self.metrics = ServingMetrics(lambda: self.log.depth)
        self.watcher = ModelWatcher(
            config.model, self.models, settings.alias_poll_seconds, settings.canary_share,
            on_swap=self.metrics.record_swap,
            on_failure=lambda alias, version: self.metrics.load_failures.labels(alias, version).inc(),
        )
        self._specs: dict[str, InputSpec] = {}
        self._key_spec = build_input_spec((), {}, config.contract_kinds, config.key)
        self._ignored_seen: set[tuple[str, ...]] = set()

    def note_ignored(self, columns: tuple[str, ...]) -> None:
        """Log columns a scoring request sent that the model does not take, once per set (the response says so
        every time, in its `x-retrain-ignored-columns` header)."""
        if columns not in self._ignored_seen:
            self._ignored_seen.add(columns)
            logger.info("/invocations: columns %s are not the model's: left out, as mlflow models serve does "
                        "(said in the x-retrain-ignored-columns header)", list(columns))

    def _count_dropped(self, count: int) -> None:
        self.metrics.log_dropped.inc(count)

    def _count_written(self, count: int) -> None:
        self.metrics.log_written.inc(count)

    def spec_for(self, model: LoadedModel) -> InputSpec:
        spec = self._specs.get(model.version)
        if spec is None:
            spec = build_input_spec(model.features, model.kinds, self.config.contract_kinds, self.config.key,
                                    self.config.not_nullable, self.config.timestamp)
            self._specs[model.version] = spec
        return spec

    def served(self) -> Served:
        served = self.models.current
        if served is None:
            raise NotReady(f"no model of '{self.config.model}' is loaded yet (is a version aliased champion?)")
        return served

    def predict(self, records: Sequence[Any], ids: Sequence[str | None], endpoint: str) -> list[dict[str, Any]]:
        """Route, check, predict and log `records`; returns one answer per record in order.

        Column by column wherever it can be: the records are checked and encoded a column at a time
        (`serving.records.check_records`, `LoadedModel.predict_checked`); what stays per record is what is
        per record by nature: its request id, its arm (only with a canary), its answer and its journal line.

        Raises:
            NotReady: no champion is loaded.
            InvalidRecords: a record does not fit its model (indices are the request's).
        """
        started = time.perf_counter()
        served = self.served()  # read once: the whole request uses this set, whatever swaps meanwhile
        if not records:
            raise InvalidRecords([Problem(None, "records", "no records: send at least one")])
        request_ids = fill_request_ids(ids)
        if served.canary is None:  # one arm: no routing ids to compute or hash
            groups: dict[str, list[int]] = {CHAMPION: list(range(len(records)))}
        else:
            routing = [request_id or self._routing_key(record) for request_id, record in zip(ids, records,
                                                                                              strict=True)]
            groups = {}
            for index, (routing_id, request_id) in enumerate(zip(routing, request_ids, strict=True)):
                groups.setdefault(choose_arm(routing_id or request_id, served.canary_share), []).append(index)
        answers: list[dict[str, Any]] = [{} for _ in records]
        rows: list[dict[str, Any]] = []
        at = now()  # the request time; each row's event time is its record's timestamp when it carries one
        at_text = at.isoformat()  # as the journal writes an instant: formatted once, not once per row
        for arm, indices in groups.items():
            model = served.model_for(arm)
            subset = records if len(indices) == len(records) else [records[i] for i in indices]
            spec = self.spec_for(model)
            try:
                checked = check_records(subset, spec)
            except InvalidRecords as error:
                raise InvalidRecords([Problem(None if p.record is None else indices[p.record], p.field, p.problem)
                                      for p in error.problems]) from None
            values = model.predict_checked(checked.records, checked.columns).tolist()
            elapsed = time.perf_counter() - started
            self.metrics.latency.labels(arm, model.version).observe(elapsed)
            self.metrics.predictions.labels(arm, model.version).inc(len(indices))
            latency_ms = elapsed * 1000
            timestamp = spec.timestamp
            for position, index in enumerate(indices):
                record = subset[position]
                request_id = request_ids[index]
                answers[index] = {"request_id": request_id, "prediction": values[position], "model": model.name,
                                  "version": model.version, "arm": arm}
                rows.append({"request_id": request_id, "model": model.name, "version": model.version,
                             "arm": arm, "predicted_at": at_text,
                             "event_at": at_text if timestamp is None or record.get(timestamp) is None else
                             event_time(record, spec, at).isoformat(),
                             "prediction": values[position], "features": _FEATURES_JSON.encode(record),
                             "key": checked.keys[position], "latency_ms": latency_ms})
        self.log.submit(rows)  # journaled before any answer leaves (serving.journal)
        return answers

    def fields(self) -> tuple[frozenset[str], dict[str, str]]:
        """What the served models take (features and key, of the champion and the canary) and each field's kind."""
        served = self.served()
        specs = [self.spec_for(model) for model in (served.champion, served.canary) if model is not None]
        kinds: dict[str, str] = {}
        for spec in specs:
            kinds.update(spec.kinds)
        return frozenset(kinds), kinds

    def _routing_key(self, record: Any) -> str | None:
        """A record without a request id is routed by its key, so the same row lands on the same arm."""
        if not self.config.key or not isinstance(record, dict):
            return None
        try:
            return record_key(record, self._key_spec)
        except (TypeError, ValueError):
            return None  # the record's check names the bad key value


class NotReady(RuntimeError):
    """No champion is loaded: 503, try again."""


def fill_request_ids(ids: Sequence[str | None]) -> list[str]:
    """The given ids, and a fresh random one (32 hex digits, like `uuid.uuid4().hex`) where none was given: the
    random bytes of a whole request from one `os.urandom` call, not one per record."""
    missing = sum(1 for request_id in ids if not request_id)
    if not missing:
        return list(ids)  # type: ignore[arg-type]
    fresh = iter(bytes.hex(os.urandom(16 * missing), " ", 16).split())
    return [request_id or next(fresh) for request_id in ids]


def journal_name(model: str) -> str:
    """The model's folder in the journal: its name, with anything a file name should not hold replaced."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", model).strip(".-") or "model"


def request_ids_of(body: PredictRequest) -> list[str | None]:
    """Each record's request id: the explicit list, `<request_id>/<i>` (or the id itself for one record),
    or None (the server makes one).

    Raises:
        InvalidRecords: a list of the wrong length or an id that is too long or empty.
    """
    count = len(body.records)
    if body.request_ids is not None:
        if len(body.request_ids) != count:
            raise InvalidRecords([Problem(None, "request_ids", f"expected {count} ids, one per record, "
                                                               f"got {len(body.request_ids)}")])
        for index, request_id in enumerate(body.request_ids):
            problem = request_id_problem(request_id)
            if problem:
                raise InvalidRecords([Problem(index, "request_ids", problem)])
        return list(body.request_ids)
    if body.request_id:
        problem = text_problem(body.request_id)
        if problem:
            raise InvalidRecords([Problem(None, "request_id", problem)])
        return [body.request_id] if count == 1 else [f"{body.request_id}/{i}" for i in range(count)]
    return [None] * count


def problems_of_validation(error: RequestValidationError) -> list[dict[str, Any]]:
    """FastAPI's validation errors in our shape: record index (for a record's error) and field."""
    problems = []
    for item in error.errors():
        if item.get("type") == "json_invalid":  # its location is a character position, not a field
            position = item.get("ctx", {}).get("error") or f"at character {item.get('loc', ('', '?'))[-1]}"
            problems.append(Problem(None, "(body)", f"not valid JSON: {position}").as_json())
            continue
        location = [part for part in item.get("loc", ()) if part != "body"]
        record = None
        if len(location) >= 2 and location[0] in ("records", "labels") and isinstance(location[1], int):
            record = location[1]
            location = [location[0], *location[2:]]
        field = ".".join(str(part) for part in location) or "(body)"
        problems.append(Problem(record, field, str(item.get("msg", "invalid"))).as_json())
    return problems[:20]


SCORING_OPENAPI = {"requestBody": {"required": True, "content": {
    kind: {"schema": {"type": "object" if kind == "application/json" else "string"}} for kind in CONTENT_TYPES}}}


def mlflow_error(message: str, code: str = "BAD_REQUEST") -> Response:
    """400 with MLflow's error body (`error_code`, `message`), as its scoring server writes it."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos import databricks_pb2

    error = MlflowException(message, error_code=databricks_pb2.ErrorCode.Value(code))
    return Response(error.serialize_as_json(), status_code=error.get_http_status_code(), media_type="application/json")


def error_response(status: int, error: str, message: str, problems: Sequence[dict[str, Any]] = ()) -> JSONResponse:
    return JSONResponse({"error": error, "message": message, "problems": list(problems)}, status_code=status)


# ------------------------------------------------------------------------------------------ body limit


class BodyTooLarge(Exception):
    """The body is over the limit; the middleware answers 413."""


class BodyLimit:
    """Refuse a body over `max_bytes` with 413 before it is parsed: by its Content-Length, or, for a body
    without one, as soon as the bytes read pass the limit."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                await self._refuse(send)
                return
        state = {"read": 0, "over": False}

        async def limited_receive() -> dict[str, Any]:
            message = await receive()
            if message.get("type") == "http.request":
                state["read"] += len(message.get("body", b""))
                if state["read"] > self.max_bytes:
                    state["over"] = True
                    raise BodyTooLarge
            return message

        async def guarded_send(message: dict[str, Any]) -> None:
            if not state["over"]:
                await send(message)
            elif message["type"] == "http.response.start":
                await self._refuse(send)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except BodyTooLarge:
            await self._refuse(send)

    async def _refuse(self, send: Any) -> None:
        body = json.dumps({"error": "body_too_large", "message": f"the request body is over {self.max_bytes} "
                           "bytes (setting max_body_bytes); send fewer records per request", "problems": []}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


# --------------------------------------------------------------------------------------------- the app


def create_app(model_config: ModelConfig, settings: Settings, warehouse: Warehouse | None = None) -> FastAPI:
    """The server of one model: loads it by alias, answers, logs, takes labels."""
    if warehouse is None:
        warehouse = open_warehouse(settings.resolved_warehouse_url(), settings.warehouse_schema)
    server = Server(read_server_config(model_config), settings, warehouse)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        from retrain.stores import connect_mlflow

        connect_mlflow(settings)
        server.log.start()
        server.watcher.start()  # its first look at the registry happens at once, off the event loop
        server.watcher.wake()
        try:
            yield
        finally:
            server.watcher.stop()
            server.log.close()

    app = FastAPI(
        title=f"Retrain prediction server: {model_config.name}",
        description="Predictions from the registered model's champion (and canary), logged for monitoring.",
        lifespan=lifespan,
    )
    app.state.server = server
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    add_error_handlers(app, server)
    add_routes(app, server)
    add_scoring_routes(app, server)
    return app


def add_error_handlers(app: FastAPI, server: Server) -> None:
    """Every client mistake becomes a 4xx JSON error naming the record and field; never a 500."""

    @app.exception_handler(InvalidRecords)
    async def invalid_records(request: Request, error: InvalidRecords) -> JSONResponse:
        server.metrics.errors.labels(request.url.path, "invalid_records").inc()
        return error_response(422, "invalid_records", str(error), [p.as_json() for p in error.problems])

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        server.metrics.errors.labels(request.url.path, "invalid_request").inc()
        problems = problems_of_validation(error)
        first = problems[0] if problems else {"field": "(body)", "problem": "invalid"}
        where = f"record {first['record']}, " if first.get("record") is not None else ""
        return error_response(422, "invalid_request", f"{where}field '{first['field']}': {first['problem']}",
                              problems)

    @app.exception_handler(NotReady)
    async def not_ready(request: Request, error: NotReady) -> JSONResponse:
        server.metrics.errors.labels(request.url.path, "not_ready").inc()
        return error_response(503, "not_ready", str(error))

    @app.exception_handler(JournalUnavailable)
    async def not_journaled(request: Request, error: JournalUnavailable) -> JSONResponse:
        server.metrics.errors.labels(request.url.path, "journal").inc()
        logger.error("%s", error)
        return error_response(503, "journal_unavailable", "the predictions could not be recorded, so they were not "
                              "answered; try again later")

    @app.exception_handler(AdminRefused)
    async def admin_refused(request: Request, error: AdminRefused) -> JSONResponse:
        server.metrics.errors.labels(request.url.path, "unauthorized").inc()
        response = error_response(error.status, "unauthorized" if error.status == 401 else "not_found", str(error))
        if error.status == 401:
            response.headers["www-authenticate"] = "Bearer"
        return response


async def predict_off_the_loop_when_large(
    server: Server, records: Sequence[Any], ids: Sequence[str | None], endpoint: str
) -> list[dict[str, Any]]:
    """`server.predict`, inline for a small request and in the thread pool for a large one (`INLINE_RECORDS`)."""
    if len(records) <= INLINE_RECORDS:
        return server.predict(records, ids, endpoint)
    return await run_in_threadpool(server.predict, records, ids, endpoint)


def add_routes(app: FastAPI, server: Server) -> None:
    """The endpoints (see the module's docstring)."""
    settings = server.settings

    def require_admin(request: Request) -> None:
        token = settings.admin_token
        if token is None:
            raise AdminRefused(404, "admin endpoints are off: set RETRAIN_ADMIN_TOKEN to turn them on")
        given = request.headers.get("authorization", "")
        scheme, _, value = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.encode(), token.get_secret_value().encode()):
            raise AdminRefused(401, "this endpoint needs 'Authorization: Bearer <RETRAIN_ADMIN_TOKEN>'")

    @app.get("/health")
    async def health() -> dict[str, str]:
        """The process answers (it may still be loading its model: see /ready)."""
        return {"status": "ok"}

    @app.get("/ready", responses={503: {"model": ErrorResponse}})
    async def ready() -> dict[str, Any]:
        """200 once a champion is loaded, 503 before."""
        return {"ready": True, **server.served().describe()}

    @app.get("/models", responses={503: {"model": ErrorResponse}})
    async def models() -> dict[str, Any]:
        """Alias → version being served, the canary share, and when each version was loaded."""
        served = server.served()
        loaded = [m for m in (served.champion, served.canary) if m is not None]
        return {**served.describe(), "loaded": {m.version: {"loaded_at": m.loaded_at.isoformat(), "run_id": m.run_id,
                                                            "features": list(m.features)} for m in loaded},
                "key": list(server.config.key), "share_override": settings.canary_share}

    @app.get("/metrics")
    async def metrics() -> Response:
        """Prometheus text."""
        return Response(generate_latest(server.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/predict", response_model=PredictResponse,
              responses={422: {"model": ErrorResponse}, 413: {"model": ErrorResponse}, 503: {"model": ErrorResponse}})
    async def predict(body: PredictRequest) -> dict[str, Any]:
        """Predict raw records; each answer names its request id, the version that produced it and its arm."""
        answers = await predict_off_the_loop_when_large(server, body.records, request_ids_of(body), "/predict")
        server.metrics.requests.labels("/predict", "200").inc()
        return {"predictions": answers}

    @app.post("/feedback", response_model=FeedbackResponse,
              responses={422: {"model": ErrorResponse}, 503: {"model": ErrorResponse}})
    async def feedback(body: FeedbackRequest) -> Any:
        """Actual outcomes by request id or by key; stored with their arrival time, and matured at the instant
        each label (or the request) gives in `at`, else at arrival."""
        spec = server._key_spec
        problem = text_problem(body.source)
        if problem:
            raise InvalidRecords([Problem(None, "source", problem)])
        rows = label_rows([label.model_dump() for label in body.labels], spec, server.config.model, now(),
                          body.source, body.at)
        try:
            new = await run_in_threadpool(insert_labels, server.warehouse, rows)
        except OUTAGE_ERRORS as error:  # the warehouse is down: the client should retry later
            logger.warning("feedback not stored: %s", str(error).splitlines()[0][:300])
            server.metrics.errors.labels("/feedback", "warehouse").inc()
            return error_response(503, "warehouse_unavailable", "the labels were not stored (the warehouse did "
                                  "not answer); send them again later")
        except (sa.exc.SQLAlchemyError, ValueError) as error:  # a value it cannot store: retrying will not help
            logger.warning("feedback refused by the warehouse: %s", str(error).splitlines()[0][:300])
            server.metrics.errors.labels("/feedback", "invalid_records").inc()
            return error_response(422, "invalid_records", "the warehouse refused a value of these labels (nothing "
                                  f"was stored): {str(error).splitlines()[0][:200]}")
        return {"received": len(rows), "new": new}

    @app.post("/reload", dependencies=[Depends(require_admin)],
              responses={401: {"model": ErrorResponse}, 404: {"model": ErrorResponse}})
    async def reload() -> dict[str, Any]:
        """Look at the aliases now (admin): load, warm and swap what changed; the answer says what happened."""
        outcome: Refresh = await run_in_threadpool(server.watcher.refresh)
        return {"swapped": outcome.swapped, "served": outcome.served, "failures": list(outcome.failures),
                "reason": outcome.reason}


def add_scoring_routes(app: FastAPI, server: Server) -> None:
    """MLflow's scoring server endpoints: `POST /invocations`, `GET /ping`, `GET /version`."""

    @app.post("/invocations", response_model=InvocationResponse, openapi_extra=SCORING_OPENAPI,
              responses={400: {"description": "MLflow's error body: error_code BAD_REQUEST and a message"},
                         415: {"description": "A content type, charset or parameter MLflow's server refuses"},
                         413: {"model": ErrorResponse}, 503: {"model": ErrorResponse}})
    async def invocations(request: Request) -> Response:
        """MLflow's scoring protocol, as `mlflow models serve` speaks it (`serving.scoring`): JSON (one of
        dataframe_split, dataframe_records, instances, inputs), CSV or Parquet in; `{"predictions": [...]}` out,
        logged like /predict. Columns the model does not take are left out and named in the
        `x-retrain-ignored-columns` header."""
        allowed, kinds = server.fields()
        try:
            scored = keep_model_columns(scoring_records(await request.body(), request.headers.get("content-type"),
                                                        kinds), allowed)
            answers = await predict_off_the_loop_when_large(server, scored.records, [None] * len(scored.records),
                                                            "/invocations")
        except UnsupportedMediaType as error:
            server.metrics.errors.labels("/invocations", "unsupported_media_type").inc()
            return Response(str(error), status_code=415, media_type="text/plain")
        except InvalidRecords as error:
            server.metrics.errors.labels("/invocations", "invalid_records").inc()
            # MLflow's schema check calls a missing input an invalid parameter value; anything else a bad request.
            missing = all(problem.problem == MISSING_FEATURE for problem in error.problems)
            return mlflow_error(str(error), "INVALID_PARAMETER_VALUE" if missing else "BAD_REQUEST")
        server.metrics.requests.labels("/invocations", "200").inc()
        versions = sorted({answer["version"] for answer in answers})
        payload = json.dumps({"predictions": [answer["prediction"] for answer in answers]}).encode()
        headers = {"x-model-version": ",".join(versions)}
        if scored.ignored:
            headers["x-retrain-ignored-columns"] = ",".join(scored.ignored)
            server.note_ignored(scored.ignored)
        return Response(payload, media_type="application/json", headers=headers)

    @app.get("/ping")
    @app.get("/version")
    async def mlflow_probes(request: Request) -> Response:
        """As `mlflow models serve` answers them: `/ping` 200 once the process answers (a load balancer's or
        SageMaker's health check), `/version` the MLflow version. `/ready` says whether a model is loaded."""
        from mlflow.version import VERSION

        if request.url.path == "/version":
            return Response(VERSION, media_type="application/json")
        return Response("\n", media_type="application/json")


class AdminRefused(Exception):
    """An admin endpoint without the right token (401), or with admin endpoints off (404)."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(message)


__all__ = ["create_app", "read_server_config"]
