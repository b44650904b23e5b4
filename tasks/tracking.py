"""MLflow runs and the packaged model: one run per training, from the first trial to the decision.

A run tells its story in the runs list: its name is the model and the window end
(`flights-delay 2013-04-01`), its description says what was trained on what and what was decided, the
decision is a tag (`retrain.decision`) and a metric column (`passed_gates`, 1 or 0). It is opened before
tuning and closed after the release step, so its duration is the training's. A flow that fails closes
its run FAILED (the flow's failure hook); a run left RUNNING by a process that died (a kill, a lost
machine) is closed KILLED by the next training of the same model.

A model is logged only when it passed the gates: a rejected model can never be released, and it can be
rebuilt from its run (parameters, seed, snapshot window and fingerprint), so keeping it would only grow
the artifact store with every rejection. The rejected run keeps its parameters, metrics, dataset input,
trials, feature importance and holdout predictions.
"""

from __future__ import annotations

import html
import json
import logging
import subprocess
import tempfile
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import lightgbm as lgb
import mlflow
import numpy as np
import pandas as pd
from mlflow.data.dataset_source import DatasetSource
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.models import Model, ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types import ColSpec, Schema
from mlflow.types.schema import AnyType
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT, MLFLOW_RUN_NOTE
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

import retrain.model_package
from retrain import mlflow_keys as keys
from retrain.clock import now, shown
from retrain.config import ModelConfig
from retrain.jsonable import to_jsonable
from retrain.model_package import BOOSTER_ARTIFACT, ENCODING_ARTIFACT
from retrain.outcomes import TrainingOutcome, TrainingWindow, Verdict
from retrain.settings import Settings, get_settings, redact_url
from retrain.stores import connect_mlflow, store_errors
from retrain.warehouse import open_warehouse, read_window
from tasks.comparison import Decision
from tasks.features import PreparedData, make_target
from tasks.runs import instant_label
from tasks.training import LIGHTGBM_METRIC, FittedModel, ReleasedModel, feature_importance, gated_as_released
from tasks.tuning import TuningResult

logger = logging.getLogger(__name__)

SCHEMA_SAMPLE_ROWS = 10_000
INPUT_EXAMPLE_ROWS = 5
INFRA_CHECK_ROWS = 5_000  # rows the infra gate predicts: enough to prove the raw path, bounded on big tables
MODEL_NAME = "model"
PREDICTIONS_FILE = "holdout_predictions.parquet"
RUNNING_DECISION = "running"
RELEASED_FIT = "released_fit"  # param: "refit" (registered model refitted on the whole window) or "gated"
RELEASED_FIT_TAG = "retrain.released_fit"


class WarehouseDatasetSource(DatasetSource):
    """Where a training snapshot came from: a warehouse table and window (URL without password)."""

    def __init__(self, url: str, table: str, timestamp: str, start: str, end: str, schema: str | None = None) -> None:
        self.url, self.table, self.timestamp, self.start, self.end = url, table, timestamp, start, end
        self.schema = schema

    @staticmethod
    def _get_source_type() -> str:
        return "warehouse"

    def load(self, **_: Any) -> pd.DataFrame:
        """Read the snapshot again (the fingerprint tells whether it still has the same content)."""
        return read_window(
            open_warehouse(self.url, self.schema),
            self.table,
            self.timestamp,
            datetime.fromisoformat(self.start),
            datetime.fromisoformat(self.end),
        )

    @staticmethod
    def _can_resolve(raw_source: Any) -> bool:
        return False

    @classmethod
    def _resolve(cls, raw_source: Any) -> WarehouseDatasetSource:
        raise MlflowException(f"a warehouse source is built from its fields, not parsed from {raw_source!r}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "schema": self.schema,
            "table": self.table,
            "timestamp": self.timestamp,
            "start": self.start,
            "end": self.end,
        }

    @classmethod
    def from_dict(cls, source_dict: dict[Any, Any]) -> WarehouseDatasetSource:
        return cls(**source_dict)


@dataclass(frozen=True)
class TrackingRun:
    """The MLflow run of one training, open from before tuning until the decision is recorded."""

    run_id: str
    experiment_id: str
    name: str


@dataclass(frozen=True)
class LoggedRun:
    """What was logged to a training's run: the model's URI only when the gates passed."""

    run_id: str
    model_uri: str | None


# ------------------------------------------------------------------------------------------ pure helpers


def run_name(model: str, window: TrainingWindow) -> str:
    """`flights-delay 2013-04-01`: the model and its window end (minutes shown when not midnight)."""
    return f"{model} {instant_label(window.end)}"


def run_description(
    config: ModelConfig,
    data: PreparedData,
    tuning: TuningResult | None = None,
    decision: str | None = None,
    reason: str | None = None,
    version: str | None = None,
) -> str:
    """The run's description (MLflow's note): what was trained on what, and what was decided."""
    window = data.window
    lines = [
        f"Training of **{config.name}** as of {shown(window.as_of)} ({window.as_of_source}) "
        f"on `{config.source.clean}` {window}: {data.rows:,} rows, snapshot `{data.fingerprint}`.",
    ]
    if tuning is not None:
        lines.append(
            f"Optuna study `{tuning.study_name}`: {tuning.run_now} trial(s) run now, {tuning.in_study} finished "
            f"in the study (budget {tuning.budget})."
        )
    if decision is None:
        lines.append("Decision: pending (the training is running).")
    else:
        lines.append(f"**Decision: {decision}**" + (f" → version {version}" if version else "") + f". {reason}")
    return "\n\n".join(lines)


def input_column(name: str, kind: str) -> ColSpec:
    """The signature column of one raw input: the table's type, missing values allowed.

    Integer columns are declared `Any`: MLflow's `long` refuses a missing value (pandas turns the column
    into floats) and its `double` refuses an integer column as read from a table (int64 to float64 is
    not a "safe" cast for MLflow). Float columns are `double` and text columns `string`, both of which
    already take NaN or None. The model reads every numeric input as a number itself.
    """
    types: dict[str, Any] = {"float": "double", "string": "string"}
    return ColSpec(types.get(kind, AnyType()), name, required=True)


def model_signature(data: PreparedData) -> ModelSignature:
    """Raw feature columns in, one number per row out (a probability for a binary task)."""
    inputs = Schema([input_column(name, data.input_types[name]) for name in data.encoding.inputs])
    return ModelSignature(inputs=inputs, outputs=Schema([ColSpec("double")]))


def model_metadata(config: ModelConfig, data: PreparedData, released: ReleasedModel | None = None) -> dict[str, Any]:
    """What a person or a server reads about a model's inputs (the vocabulary lives in the model's artifacts)."""
    return {
        keys.METADATA_KEY: {
            "model": config.name,
            "features": {name: data.input_types[name] for name in data.encoding.inputs},
            "categorical": list(data.encoding.categorical),
            "calendar": list(data.encoding.calendar),
            "task": str(config.target.task),
            "target": config.target.model_dump(mode="json"),
            "metric": config.metric,
            "window": to_jsonable(data.window),
            "fingerprint": data.fingerprint,
            # "refit": fitted on the whole window after the gates passed; "gated": the model the gates scored
            "fit": "refit" if released is not None and released.refit else "gated",
        }
    }


def holdout_predictions_frame(config: ModelConfig, data: PreparedData, fitted: FittedModel) -> pd.DataFrame:
    """The holdout rows' time, key, inputs, label, the gated model's (out-of-sample) prediction and each naive
    forecaster's (`naive_<name>`): the evidence behind the metrics and the gates, and monitoring's reference."""
    # the inputs too: monitoring's reference is these rows with these (out-of-sample) predictions
    identity = list(dict.fromkeys([config.source.timestamp, *config.source.key, *data.encoding.inputs]))
    frame = data.split.holdout[identity].copy()
    frame["label"] = make_target(data.split.holdout, config.target).to_numpy()
    frame["prediction"] = fitted.holdout_predictions
    for name, values in fitted.naive_predictions.items():
        frame[f"naive_{name}"] = values
    return frame


def importance_chart(importance: Mapping[str, float], width: int = 640, bar: int = 22) -> str:
    """Feature importance (total gain) as a horizontal bar chart in SVG, largest first: MLflow's artifact viewer
    shows it as a picture (the JSON beside it keeps the numbers). Drawn by hand, not with matplotlib, so a training
    pays nothing to import a plotting stack."""
    shown_features = list(importance.items())[:30]
    top = max((gain for _, gain in shown_features), default=0.0) or 1.0
    left, height = 160, bar * len(shown_features) + 40
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
             f'font-size="12"><text x="{left}" y="16" font-size="13">feature importance (total gain)</text>']
    for row, (name, gain) in enumerate(shown_features):
        y = 28 + row * bar
        length = (width - left - 90) * gain / top
        parts.append(f'<text x="{left - 6}" y="{y + 14}" text-anchor="end">{html.escape(name)}</text>'
                     f'<rect x="{left}" y="{y}" width="{length:.1f}" height="{bar - 6}" fill="#1f77b4"/>'
                     f'<text x="{left + length + 4:.1f}" y="{y + 14}">{gain:,.0f}</text>')
    parts.append("</svg>")
    return "".join(parts)


def run_page(settings: Settings, experiment_id: str, run_id: str, artifact: str | None = None) -> str:
    """The run's page in the MLflow UI (the tracking server, or what `retrain ui` serves for a local store), opened
    on one of its artifacts when given: a link every browser can follow, never a file on the machine that ran it."""
    page = f"{settings.resolved_mlflow_ui_url()}/#/experiments/{experiment_id}/runs/{run_id}"
    return f"{page}/artifacts/{artifact}" if artifact else page


def run_link(settings: Settings, run: TrackingRun) -> str:
    """A link to the run in the MLflow UI (for a local store: start it with `retrain ui`)."""
    return run_page(settings, run.experiment_id, run.run_id)


def snapshot_dataset_input(
    snapshot: pd.DataFrame, source: DatasetSource, name: str, targets: str, digest: str
) -> DatasetInput:
    """The training snapshot as an MLflow dataset input: our fingerprint as digest, the full row count.

    MLflow infers a dataset's schema by walking every value of every object column (1.3 s on 100k
    flights rows, 10x that on 1M); column types are the same in a sample, so the schema comes from one
    and the profile from the whole snapshot.
    """
    sample = snapshot.head(SCHEMA_SAMPLE_ROWS)
    with warnings.catch_warnings():
        # The dataset schema describes the raw snapshot, whose integer columns are real; MLflow's hint
        # about integers and missing values is for model signatures.
        warnings.filterwarnings("ignore", message=".*Integer columns in Python cannot represent missing")
        described = mlflow.data.from_pandas(sample, source=source, name=name, targets=targets, digest=digest).to_dict()
    profile = json.dumps({"num_rows": len(snapshot), "num_elements": int(snapshot.size)})
    dataset = Dataset(
        name=described["name"],
        digest=digest,
        source_type=described["source_type"],
        source=described["source"],
        schema=described["schema"],
        profile=profile,
    )
    return DatasetInput(dataset=dataset, tags=[InputTag(key=MLFLOW_DATASET_CONTEXT, value="training")])


def git_commit() -> str | None:
    """The commit of the code that trained the model, when it runs from a git checkout."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None


# ------------------------------------------------------------------------------------- MLflow operations


def configure_mlflow(settings: Settings, experiment: str) -> str:
    """Point MLflow at our store and make `experiment` current; returns its id, creating it if needed.

    Current, because a logged model goes to the current experiment: without it, a model logged into a
    run by id would land in MLflow's default experiment. With a tracking server the server picks the
    artifact root (unless the settings name one), so every machine loads models through it; only a local
    store gets a folder under our home. An outage while looking the experiment up is a
    `StoreUnavailable`, with the password masked.
    """
    uri = connect_mlflow(settings)
    with store_errors("MLflow tracking store", uri):
        existing = mlflow.get_experiment_by_name(experiment)
        if existing is not None:
            experiment_id = existing.experiment_id
            if settings.resolved_artifact_location() is None and existing.artifact_location.startswith("file:"):
                logger.warning(
                    "experiment '%s' keeps its artifacts in %s, on the machine that created it: other machines "
                    "cannot load its models through the tracking server. MLflow cannot move an experiment's "
                    "artifact root; rename or delete the experiment so Retrain creates it on the server's.",
                    experiment, existing.artifact_location,
                )
        else:
            try:
                experiment_id = mlflow.create_experiment(
                    experiment, artifact_location=settings.resolved_artifact_location()
                )
            except MlflowException:
                # Another process created it between our look-up and our create.
                experiment_id = mlflow.get_experiment_by_name(experiment).experiment_id
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def find_experiment(settings: Settings, experiment: str) -> str | None:
    """The experiment's id, or None when it does not exist yet (nothing is created)."""
    uri = connect_mlflow(settings)
    with store_errors("MLflow tracking store", uri):
        existing = mlflow.get_experiment_by_name(experiment)
    return None if existing is None else existing.experiment_id


def open_runs(client: MlflowClient, experiment_id: str, model: str) -> list[Any]:
    """The model's runs still marked RUNNING."""
    return client.search_runs(
        [experiment_id],
        filter_string=f"attributes.status = 'RUNNING' and tags.`{keys.MODEL}` = '{model}'",
        max_results=1000,
    )


def close_abandoned_runs(
    client: MlflowClient, experiment_id: str, model: str, current_flow_run: str | None
) -> list[str]:
    """Close KILLED the model's runs left RUNNING by trainings whose process ended; returns their ids.

    Correct while one training of a model runs at a time (the per-model lock): a RUNNING run of
    another flow run found at the start of a training cannot be alive.
    """
    closed = []
    for run in open_runs(client, experiment_id, model):
        if current_flow_run is not None and run.data.tags.get(keys.FLOW_RUN_ID) == current_flow_run:
            continue
        client.set_tag(run.info.run_id, keys.DECISION, "abandoned")
        client.set_tag(run.info.run_id, keys.REASON, "its process ended before the training finished; "
                       f"closed by the next training of '{model}' at {now().isoformat()}")
        client.set_terminated(run.info.run_id, status="KILLED")
        closed.append(run.info.run_id)
    return closed


def fail_runs_of_flow_run(settings: Settings, model: str, flow_run_id: str, message: str) -> list[str]:
    """Close FAILED the runs a failed training flow run left open; returns their ids."""
    experiment_id = find_experiment(settings, model)
    if experiment_id is None:
        return []
    client = MlflowClient()
    failed = []
    for run in open_runs(client, experiment_id, model):
        if run.data.tags.get(keys.FLOW_RUN_ID) != flow_run_id:
            continue
        client.set_tag(run.info.run_id, keys.DECISION, "failed")
        client.set_tag(run.info.run_id, keys.REASON, message[:5000])
        client.set_terminated(run.info.run_id, status="FAILED")
        failed.append(run.info.run_id)
    return failed


def log_packaged_model(run: TrackingRun, config: ModelConfig, data: PreparedData, released: ReleasedModel) -> str:
    """Log the raw-row pyfunc into the run: the native booster, the encoding, the code that joins them.

    Returns:
        The logged model's URI (`models:/m-...`).
    """
    with tempfile.TemporaryDirectory(prefix="retrain-model-") as folder:
        booster_path = Path(folder) / "booster.txt"
        encoding_path = Path(folder) / "encoding.json"
        released.booster.save_model(str(booster_path))
        encoding_path.write_text(released.encoding.to_json(), encoding="utf-8")
        info = Model.log(
            artifact_path=None,  # deprecated in favour of name=, but still a required positional argument
            name=MODEL_NAME,
            flavor=mlflow.pyfunc,
            run_id=run.run_id,
            python_model=retrain.model_package.__file__,
            artifacts={BOOSTER_ARTIFACT: str(booster_path), ENCODING_ARTIFACT: str(encoding_path)},
            signature=model_signature(data),
            input_example=data.split.holdout[list(released.encoding.inputs)].head(INPUT_EXAMPLE_ROWS),
            metadata=model_metadata(config, data, released),
            # Stated, not inferred: inference starts a subprocess that re-imports the model (3 s a run) to
            # find what we already know.
            pip_requirements=[
                f"lightgbm=={lgb.__version__}",
                f"pandas=={pd.__version__}",
                f"numpy=={np.__version__}",
                *holiday_requirements(released),
            ],
        )
    return info.model_uri


def holiday_requirements(released: ReleasedModel) -> list[str]:
    """`holidays==<version>` when the model marks public holidays (the package imports it then), else nothing."""
    if not released.encoding.holidays:
        return []
    from importlib.metadata import version

    return [f"holidays=={version('holidays')}"]


def check_model_loads(model_uri: str, rows: pd.DataFrame, expected: np.ndarray) -> str | None:
    """The infra gate: the logged model loads through pyfunc and predicts the raw rows exactly as the
    flow did; None when it does, otherwise what went wrong."""
    try:
        predictions = np.asarray(mlflow.pyfunc.load_model(model_uri).predict(rows), dtype="float64").ravel()
    except Exception as error:  # noqa: BLE001 - the gate reports any failure to load or predict
        return f"the logged model {model_uri} does not load and predict raw rows through mlflow.pyfunc: {error}"
    if predictions.shape != expected.shape or not np.array_equal(predictions, expected):
        return f"the logged model {model_uri} predicts {predictions[:3]} where the trained one gave {expected[:3]}"
    return None


def training_report_markdown(summary: Mapping[str, Any], link: str | None) -> str:
    """The Prefect artifact of one training: metric vs baseline vs champion, decision, version, run."""
    def shown(value: Any) -> str:
        return "–" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)

    window = summary["window"]
    metric = summary["metric"]
    lines = [
        f"# {summary['model']}: {summary['decision']}",
        "",
        f"As of `{window['as_of']}` ({window['as_of_source']}), window `[{window['start']}, {window['end']})`"
        + (f" (lookback {window['lookback']})" if window["lookback"] else "")
        + f", {summary['rows']:,} rows, snapshot `{summary['fingerprint']}`.",
        "",
        f"**Reason**: {summary['reason']}",
        "",
    ]
    if summary["decision"] != "skipped":
        lines += [
            "| metric | challenger | naive baseline | champion | threshold |",
            "|---|---|---|---|---|",
            f"| **{metric['name']}** | {shown(metric['value'])} | {shown(summary['baseline_metric'])} "
            f"| {shown(summary['champion_metric'])} | {shown(summary['threshold'])} |",
        ]
        for name, value in summary["metrics"].items():
            if name != metric["name"]:
                lines.append(f"| {name} | {shown(value)} | {shown(summary['baseline'].get(name))} | – | – |")
        lines += [
            "",
            f"- paired bootstrap p-value: {shown(summary['p_value'])}",
            f"- gate: {summary['gate']}",
            f"- version: {shown(summary['version'])}",
            f"- Optuna: {summary['trials'].get('run_now', 0)} trial(s) run now, "
            f"{summary['trials'].get('in_study', 0)} in study `{summary['study']}`",
        ]
    else:
        same = summary["same_as"] or {}
        lines.append(
            f"- already trained: {same.get('decision')}, version {same.get('version')}, run {same.get('run_id')}"
        )
    if link:
        lines.append(f"- MLflow: {link}")
    return "\n".join(lines)


# --- Prefect tasks -------------------------------------------------------------------------------


@task(name="close-abandoned-runs", cache_policy=NO_CACHE)
def close_abandoned_training_runs(config: ModelConfig) -> list[str]:
    """Close the model's MLflow runs that a killed or lost training left RUNNING."""
    experiment_id = find_experiment(get_settings(), config.name)
    if experiment_id is None:
        return []
    closed = close_abandoned_runs(MlflowClient(), experiment_id, config.name, flow_run.get_id())
    if closed:
        get_run_logger().warning("closed %d MLflow run(s) of '%s' left RUNNING by an ended process: %s",
                                 len(closed), config.name, closed)
    return closed


@task(name="start-training-run", cache_policy=NO_CACHE)
def start_training_run(config: ModelConfig, snapshot: pd.DataFrame, data: PreparedData) -> TrackingRun:
    """Open the training's MLflow run: name, description, tags, the window as params and dataset input."""
    settings = get_settings()
    experiment_id = configure_mlflow(settings, config.name)
    client = MlflowClient()
    window = data.window
    name = run_name(config.name, window)
    tags = {
        keys.MODEL: config.name,
        keys.FINGERPRINT: data.fingerprint,
        keys.SETTINGS: config.settings_digest(),
        keys.WINDOW_START: window.start.isoformat(),  # exact, for machines; the params show them to the second
        keys.WINDOW_END: window.end.isoformat(),
        keys.AS_OF: window.as_of.isoformat(),
        keys.DECISION: RUNNING_DECISION,
        keys.FLOW_RUN_ID: str(flow_run.get_id()),
        keys.FLOW_RUN_NAME: name,  # the flow run was renamed so (label_training_run)
        MLFLOW_RUN_NOTE: run_description(config, data),
    }
    commit = git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
    run = client.create_run(experiment_id, run_name=name, tags=tags)
    params = {
        keys.WINDOW_START: shown(window.start),
        keys.WINDOW_END: shown(window.end),
        keys.AS_OF: shown(window.as_of),
        keys.LOOKBACK: to_jsonable(window.lookback),
        keys.METRIC: config.metric,
        keys.TASK: str(config.target.task),
        keys.TARGET: config.target.column,
        keys.TRIALS_BUDGET: config.tuning.trials,
        keys.THRESHOLD: config.gates.threshold,
        keys.MARGIN: config.gates.margin,
        keys.BASELINE_MARGIN: config.gates.baseline_margin,
        keys.SETTINGS: config.settings_digest(),
        keys.ROWS: data.rows,
        keys.ROWS_TRAIN: len(data.split.train),
        keys.ROWS_VALIDATION: len(data.split.validation),
        keys.ROWS_HOLDOUT: len(data.split.holdout),
    }
    client.log_batch(run.info.run_id, params=[Param(key, str(value)) for key, value in params.items()])
    source = WarehouseDatasetSource(
        url=redact_url(settings.resolved_warehouse_url()),
        table=config.source.clean,
        schema=settings.warehouse_schema,
        timestamp=config.source.timestamp,
        start=window.start.isoformat(),
        end=window.end.isoformat(),
    )
    dataset = snapshot_dataset_input(
        snapshot, source, f"{config.source.clean}{window}", config.target.column, data.fingerprint
    )
    client.log_inputs(run.info.run_id, datasets=[dataset])
    get_run_logger().info("MLflow run '%s' (%s) started", name, run.info.run_id)
    return TrackingRun(run_id=run.info.run_id, experiment_id=experiment_id, name=name)


@task(name="log-training-results", cache_policy=NO_CACHE)
def log_training_results(
    run: TrackingRun,
    config: ModelConfig,
    data: PreparedData,
    tuning: TuningResult,
    fitted: FittedModel,
    decision: Decision,
    released: ReleasedModel | None = None,
) -> LoggedRun:
    """Params, metrics and artifacts of the training; the packaged model only when the gates passed.

    The holdout metrics are the gated model's; `released` (the refit on the whole window, or the gated model) is
    what is logged as the model, and the run says which (param `released_fit`, tag `retrain.released_fit`).
    """
    client = MlflowClient()
    timestamp = int(now().timestamp() * 1000)
    released = released or gated_as_released(data, fitted)
    params = {**dict(tuning.best_params), "num_boost_round": fitted.rounds, keys.STUDY: tuning.study_name,
              RELEASED_FIT: "refit" if released.refit else "gated", "released_rounds": released.rounds,
              "released_rows": released.rows}
    metrics = {
        **fitted.metrics.as_mlflow(),
        f"validation_{LIGHTGBM_METRIC[config.metric]}": tuning.best_value,
        "trials_run_now": tuning.run_now,
        "trials_in_study": tuning.in_study,
        "trials_complete": tuning.complete,
        "trials_pruned": tuning.pruned,
    }
    if decision.champion_value is not None:
        metrics[f"champion_holdout_{config.metric}"] = decision.champion_value
    if decision.p_value is not None:
        metrics["bootstrap_p_value"] = decision.p_value
    client.log_batch(
        run.run_id,
        metrics=[Metric(key, float(value), timestamp, 0) for key, value in metrics.items()],
        params=[Param(key, str(value)) for key, value in params.items()],
        tags=[RunTag(keys.STUDY, tuning.study_name), RunTag(RELEASED_FIT_TAG, "refit" if released.refit else "gated")],
    )
    importance = feature_importance(fitted.booster)
    client.log_dict(run.run_id, importance, "feature_importance.json")
    client.log_text(run.run_id, importance_chart(importance), "feature_importance.svg")
    client.log_table(run.run_id, tuning.trials, "optuna_trials.json")
    with tempfile.TemporaryDirectory(prefix="retrain-run-") as folder:
        path = Path(folder) / PREDICTIONS_FILE
        holdout_predictions_frame(config, data, fitted).to_parquet(path, index=False)
        client.log_artifact(run.run_id, str(path))
    model_uri = log_packaged_model(run, config, data, released) if decision.passed else None
    get_run_logger().info("MLflow run %s logged%s", run.run_id, f" with model {model_uri}" if model_uri else
                          " without a model (rejected models are not kept)")
    return LoggedRun(run_id=run.run_id, model_uri=model_uri)


@task(name="check-model-loads", cache_policy=NO_CACHE)
def verify_logged_model(
    logged: LoggedRun, data: PreparedData, fitted: FittedModel, decision: Decision,
    released: ReleasedModel | None = None,
) -> Decision:
    """The infra gate on a model that passed the others: the logged model (the refit when there is one) loads
    and predicts raw holdout rows exactly as the booster that was fitted."""
    if not decision.passed or logged.model_uri is None:
        return decision
    released = released or gated_as_released(data, fitted)
    # Rows spread over the whole holdout, so every part of its time range is in the check.
    positions = np.unique(np.linspace(0, len(data.split.holdout) - 1, INFRA_CHECK_ROWS).astype(int))
    rows = data.split.holdout.iloc[positions][list(released.encoding.inputs)]
    problem = check_model_loads(logged.model_uri, rows, released.holdout_predictions[positions])
    if problem is None:
        get_run_logger().info("the logged model predicts %d raw holdout rows exactly as trained", len(rows))
        return decision
    return replace(decision, verdict=Verdict.REJECTED, gate="infra", reason=problem)


@task(name="finish-training-run", cache_policy=NO_CACHE)
def finish_training_run(
    run: TrackingRun, config: ModelConfig, data: PreparedData, tuning: TuningResult, outcome: TrainingOutcome
) -> None:
    """Record the decision on the run (tag, metric, description) and close it FINISHED."""
    client = MlflowClient()
    passed = outcome.decision in (Verdict.CHAMPION, Verdict.CHALLENGER)
    tags = [
        RunTag(keys.DECISION, outcome.decision),
        RunTag(keys.CHAMPION_VERSION, outcome.champion_version or "none"),
        RunTag(keys.SETTLED, "true" if outcome.settled else "false"),
        RunTag(keys.GATE, str(outcome.gate)),
        RunTag(keys.REASON, outcome.reason[:5000]),
        RunTag(MLFLOW_RUN_NOTE, run_description(config, data, tuning, outcome.decision, outcome.reason,
                                                outcome.version)),
    ]
    if outcome.version is not None:
        tags.append(RunTag(keys.VERSION, outcome.version))
    client.log_batch(
        run.run_id,
        metrics=[Metric("passed_gates", 1.0 if passed else 0.0, int(now().timestamp() * 1000), 0)],
        tags=tags,
    )
    client.set_terminated(run.run_id, status="FINISHED")


@task(name="publish-training-report", cache_policy=NO_CACHE)
def publish_training_report(config: ModelConfig, outcome: TrainingOutcome, run: TrackingRun | None = None) -> None:
    """A markdown artifact on the Prefect flow run: the numbers behind the decision and a link to MLflow."""
    from prefect.artifacts import create_markdown_artifact

    link = run_link(get_settings(), run) if run is not None else None
    key = "".join(c if c.isalnum() else "-" for c in config.name.lower()).strip("-") + "-training"
    create_markdown_artifact(
        markdown=training_report_markdown(to_jsonable(outcome), link),
        key=key,
        description=f"training of {config.name} as of {shown(outcome.window.as_of)}: {outcome.decision}",
    )


@task(name="label-training-run", cache_policy=NO_CACHE)
def label_training_run(config: ModelConfig, window: TrainingWindow) -> str:
    """Name the Prefect flow run like the MLflow run (model and window end) and tag it `model:<name>`.

    The window end is known only once `as_of` is resolved, after the run started, hence a rename.
    """
    from tasks.runs import rename_flow_run

    return rename_flow_run(run_name(config.name, window), config.name)


def close_runs_of_failed_training(flow: Any, failed_run: Any, state: Any) -> None:
    """Prefect failure and crash hook of the training flow: its MLflow run ends FAILED, never RUNNING.

    A process killed outright runs no hook; the next training of the model closes that run instead
    (`close_abandoned_training_runs`).
    """
    from retrain.config import load_model_config

    try:
        model = load_model_config(failed_run.parameters["config_path"]).name
        closed = fail_runs_of_flow_run(get_settings(), model, str(failed_run.id), state.message or str(state.name))
    except Exception as error:  # noqa: BLE001 - a hook must not hide the failure it reports
        logger.warning("could not close the MLflow run of failed flow run %s: %s", failed_run.id, error)
        return
    if closed:
        logger.info("closed MLflow run(s) %s of failed flow run %s as FAILED", closed, failed_run.id)
