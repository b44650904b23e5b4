"""The models a server answers with, loaded by alias and swapped atomically.

The registry's aliases are the release state (tasks/registry.py moves them, `retrain.release_state` reads
them for everyone); the server only follows them. A watcher reads the aliases and the canary share every
`alias_poll_seconds` (and on /reload), loads
and warms any version it does not hold yet off the request path, and then replaces the whole `Served`
set with one reference assignment. A request reads that reference once and predicts with what it got,
so a request in flight finishes on the model it started with. A version that fails to load or to
predict its own input example is never swapped in: the old set keeps serving and the failure is logged
and counted.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from retrain import mlflow_keys as keys
from retrain.clock import now
from retrain.model_package import encode_columns
from retrain.release_state import ReleaseState, read_release_state
from serving.records import kind_of_signature_type
from serving.routing import CANARY, CHAMPION, effective_canary_share

logger = logging.getLogger(__name__)

# A request of up to this many rows is predicted on one thread. LightGBM's default (an OpenMP team of every core)
# costs more to start and join than 1,000 rows take to predict, and on a busy machine its threads wait for each
# other: measured here (2 cores, load ~11), 100 rows 1.27 ms with the team and 0.50 ms on one thread, 1,000 rows
# 11.0 ms and 2.2 ms. A server's parallelism is its concurrent requests. The predictions are the same either way
# (each row is scored on its own).
SINGLE_THREAD_ROWS = 10_000
RecordsPredictor = Callable[[Sequence[Mapping[str, Any]]], np.ndarray]
# The same prediction from the features column by column (as `serving.records.check_records` hands them over).
ColumnsPredictor = Callable[[Mapping[str, Sequence[Any]], int], np.ndarray]


class ModelLoadError(RuntimeError):
    """A version could not be loaded or did not predict its input example; it is not served."""


@dataclass(frozen=True)
class LoadedModel:
    """One registered version, loaded and warmed: what a request predicts with."""

    name: str
    version: str
    predict: RecordsPredictor  # checked JSON records → one float per record
    features: tuple[str, ...]
    kinds: Mapping[str, str]
    loaded_at: datetime
    run_id: str | None = None
    predict_columns: ColumnsPredictor | None = None  # set where proven equal to `predict` (the direct path)

    def predict_checked(self, records: Sequence[Mapping[str, Any]], columns: Mapping[str, Sequence[Any]]) -> np.ndarray:
        """Predict checked records, from their columns where the model can (no record-by-record regrouping)."""
        if self.predict_columns is not None and all(name in columns for name in self.features):
            return self.predict_columns(columns, len(records))
        return self.predict(records)


@dataclass(frozen=True)
class Served:
    """The set of models a request sees, replaced as a whole on every swap."""

    champion: LoadedModel
    canary: LoadedModel | None = None
    canary_share: float = 0.0

    def model_for(self, arm: str) -> LoadedModel:
        return self.canary if arm == CANARY and self.canary is not None else self.champion

    def describe(self) -> dict[str, Any]:
        aliases = {CHAMPION: self.champion.version}
        if self.canary is not None:
            aliases[CANARY] = self.canary.version
        return {"model": self.champion.name, "aliases": aliases, "canary_share": self.canary_share}


@dataclass
class ServedModels:
    """Holds the current `Served`; reading `current` is one attribute read, atomic under the GIL."""

    current: Served | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def swap(self, served: Served) -> Served | None:
        with self._lock:
            previous, self.current = self.current, served
        return previous


def feature_kinds(pyfunc_model: Any) -> tuple[tuple[str, ...], dict[str, str]]:
    """The model's input columns and their kinds: from Retrain's metadata if the model has it, else from
    its signature.

    Raises:
        ModelLoadError: the model declares neither (the server cannot check a request against it).
    """
    metadata = getattr(pyfunc_model.metadata, "metadata", None) or {}
    ours = metadata.get(keys.METADATA_KEY, {}).get("features") if isinstance(metadata, dict) else None
    if isinstance(ours, dict) and ours:
        return tuple(ours), {name: str(kind) for name, kind in ours.items()}
    schema = pyfunc_model.metadata.get_input_schema()
    if schema is None or not schema.has_input_names():
        raise ModelLoadError("the model has no input signature naming its columns")
    kinds = {}
    for spec in schema.inputs:
        type_name = getattr(spec.type, "name", None) or str(spec.type)
        kinds[spec.name] = kind_of_signature_type(str(type_name).lower())
    return tuple(kinds), kinds


def frame_predictor(pyfunc_model: Any) -> Callable[[pd.DataFrame], np.ndarray]:
    """The model's own predict on a frame of raw rows: our RawRowModel directly (MLflow's per-call schema
    enforcement is replaced by `serving.records`, which checks the same columns with better errors), else
    the pyfunc."""
    try:
        python_model = pyfunc_model.unwrap_python_model()
    except Exception:  # noqa: BLE001 - not a python-function model: the pyfunc wrapper predicts
        python_model = None
    if python_model is not None and hasattr(python_model, "encoding"):
        return lambda frame: np.asarray(python_model.predict(None, frame), dtype="float64").ravel()
    return lambda frame: np.asarray(pyfunc_model.predict(frame), dtype="float64").ravel()


def direct_predictor(python_model: Any) -> RecordsPredictor | None:
    """JSON records straight to the booster, column by column through the model package's own encoding
    (`retrain.model_package.encode_columns`), without building a DataFrame: tens of microseconds for a record
    where a one-row frame costs about 3 ms. None for a model that is not Retrain's raw-row package."""
    by_columns = direct_columns_predictor(python_model)
    if by_columns is None:
        return None
    encoding = python_model.encoding
    features = tuple(getattr(encoding, "inputs", encoding.features))  # raw columns: calendar features need the time

    def predict(records: Sequence[Mapping[str, Any]]) -> np.ndarray:
        return by_columns({name: [record[name] for record in records] for name in features}, len(records))

    return predict


def direct_columns_predictor(python_model: Any) -> ColumnsPredictor | None:
    """The direct path from columns: the model package's encoding, then the booster (None when not ours)."""
    encoding = getattr(python_model, "encoding", None)
    booster = getattr(python_model, "booster", None)
    if encoding is None or booster is None or not hasattr(encoding, "vocabulary"):
        return None
    if getattr(encoding, "residual", None) is not None:  # adds a looked-up naive value: the model's own predict
        return None

    def predict(columns: Mapping[str, Sequence[Any]], rows: int) -> np.ndarray:
        threads = {"num_threads": 1} if rows <= SINGLE_THREAD_ROWS else {}
        matrix = encode_columns(columns, encoding, rows)
        return np.asarray(booster.predict(matrix, **threads), dtype="float64").ravel()

    return predict


def records_predictor(
    pyfunc_model: Any, features: Sequence[str], example: pd.DataFrame
) -> tuple[RecordsPredictor, ColumnsPredictor | None]:
    """Predict checked JSON records: directly when that is proven equal to the model's own predict on the
    input example (plus an unknown and a missing value in every column), through a frame otherwise (a model
    logged by an older Retrain whose encoding differs, or not Retrain's package at all). The second is the
    direct path from columns (None where the frame path is taken): the same encoding, minus regrouping records.
    """
    by_frame = frame_predictor(pyfunc_model)
    columns = list(features)

    def through_frame(records: Sequence[Mapping[str, Any]]) -> np.ndarray:
        return by_frame(pd.DataFrame({name: [record[name] for record in records] for name in columns},
                                     columns=columns))

    try:
        python_model = pyfunc_model.unwrap_python_model()
        direct, by_columns = direct_predictor(python_model), direct_columns_predictor(python_model)
    except Exception:  # noqa: BLE001 - not our package: the frame path only
        direct, by_columns = None, None
    if direct is None or by_columns is None:
        return through_frame, None
    probes = example.astype(object).where(example.notna(), None).to_dict(orient="records")
    first = probes[0]
    probes.append({name: ("__unknown__" if isinstance(value, str) else value) for name, value in first.items()})
    probes.append(dict.fromkeys(first))
    if not np.array_equal(direct(probes), through_frame(probes)):
        logger.warning("direct encoding differs from the model's own on its input example; using the model's")
        return through_frame, None
    return direct, by_columns


def load_version(name: str, version: str) -> LoadedModel:
    """Load `models:/name/version` and warm it on its own input example.

    Raises:
        ModelLoadError: any failure to load, read its inputs or predict the example, with the reason.
    """
    import mlflow

    uri = f"models:/{name}/{version}"
    try:
        pyfunc_model = mlflow.pyfunc.load_model(uri)
        features, kinds = feature_kinds(pyfunc_model)
        example = pyfunc_model.input_example
        if example is None:
            raise ModelLoadError("the model has no input example to warm it with")
        example = pd.DataFrame(example)
        predict, predict_columns = records_predictor(pyfunc_model, features, example)
        probes = example.astype(object).where(example.notna(), None).to_dict(orient="records")
        predictions = predict(probes)
        if len(predictions) != len(example) or not np.isfinite(predictions).all():
            raise ModelLoadError(f"it predicted {predictions[:3]} for its {len(example)}-row input example")

    except ModelLoadError as error:
        raise ModelLoadError(f"version {version} of '{name}' is not served: {error}") from None
    except Exception as error:  # noqa: BLE001 - any failure means: keep serving what we have
        raise ModelLoadError(f"version {version} of '{name}' is not served: {type(error).__name__}: {error}") from None
    return LoadedModel(name, version, predict, features, kinds, now(), getattr(pyfunc_model.metadata, "run_id", None),
                       predict_columns)


@dataclass(frozen=True)
class Refresh:
    """What one look at the registry did: swapped or not, and why not."""

    swapped: bool
    served: dict[str, Any] | None
    failures: tuple[str, ...] = ()
    reason: str = ""


class ModelWatcher:
    """Follows the aliases of one registered model: at start, every `poll_seconds`, and on request."""

    def __init__(
        self,
        name: str,
        holder: ServedModels,
        poll_seconds: float,
        share_override: float | None = None,
        client: Any = None,
        loader: Callable[[str, str], LoadedModel] = load_version,
        on_swap: Callable[[Served], None] | None = None,
        on_failure: Callable[[str, str], None] | None = None,
    ) -> None:
        self.name = name
        self.holder = holder
        self.poll_seconds = poll_seconds
        self.share_override = share_override
        self._client = client
        self._loader = loader
        self._on_swap = on_swap
        self._on_failure = on_failure
        self._refresh_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def client(self) -> Any:
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient()
        return self._client

    def refresh(self) -> Refresh:
        """Read the release state; load, warm and swap in what changed. Never raises: a registry outage or a
        broken version leaves the current set serving."""
        with self._refresh_lock:
            try:
                state = read_release_state(self.client, self.name)
            except Exception as error:  # noqa: BLE001 - registry unreachable or model missing: keep serving
                reason = f"cannot read the aliases of '{self.name}': {type(error).__name__}: {error}"
                logger.warning("%s", reason)
                return Refresh(False, self._described(), (), reason)
            return self._apply(state)

    def _described(self) -> dict[str, Any] | None:
        current = self.holder.current
        return None if current is None else current.describe()

    def _apply(self, state: ReleaseState) -> Refresh:
        current = self.holder.current
        if state.champion is None:
            reason = f"registered model '{self.name}' has no champion alias"
            if current is None:
                logger.warning("%s yet; not ready", reason)
            return Refresh(False, self._described(), (), reason)
        held = {} if current is None else {m.version: m for m in (current.champion, current.canary) if m is not None}
        failures: list[str] = []
        champion = self._obtain(state.champion, CHAMPION, held, failures)
        if champion is None:
            return Refresh(False, self._described(), tuple(failures), failures[0])
        canary = None
        if state.canary is not None and state.canary != state.champion:
            canary = self._obtain(state.canary, CANARY, held, failures)
        share = effective_canary_share(canary is not None, state.canary_share, self.share_override)
        served = Served(champion, canary, share)
        if current is not None and _same(current, served):
            return Refresh(False, current.describe(), tuple(failures), "nothing changed")
        self.holder.swap(served)
        logger.info("serving %s", served.describe())
        if self._on_swap is not None:
            self._on_swap(served)
        return Refresh(True, served.describe(), tuple(failures))

    def _obtain(
        self, version: str, alias: str, held: dict[str, LoadedModel], failures: list[str]
    ) -> LoadedModel | None:
        if version in held:
            return held[version]
        try:
            model = self._loader(self.name, version)
        except ModelLoadError as error:
            logger.error("%s (alias %s); still serving %s", error, alias, self._described())
            failures.append(str(error))
            if self._on_failure is not None:
                self._on_failure(alias, version)
            return None
        held[version] = model
        return model

    def start(self) -> None:
        """Poll in a daemon thread until `stop`."""
        self._thread = threading.Thread(target=self._run, name="retrain-model-watcher", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.poll_seconds)
            self._wake.clear()
            if not self._stop.is_set():
                self.refresh()


def _same(left: Served, right: Served) -> bool:
    versions = (left.champion.version, left.canary.version if left.canary else None, left.canary_share)
    return versions == (right.champion.version, right.canary.version if right.canary else None, right.canary_share)
