"""The model config: one YAML file per model naming its data, target, features, metric, budget and gates.

These are the model's knobs; infrastructure (URLs, folders, secrets) lives in `retrain.settings`.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_serializer, field_validator, model_validator

from retrain.clock import Window, format_duration, parse_duration, parse_instant
from retrain.errors import ConfigError


class TaskType(StrEnum):
    REGRESSION = "regression"
    BINARY = "binary"


# Metric name → whether lower values are better. The registry, gates and tuning all read this.
LOWER_IS_BETTER: dict[str, bool] = {
    "mae": True,
    "rmse": True,
    "r2": False,
    "auc": False,
    "log_loss": True,
    "f1": False,
}
METRICS_BY_TASK: dict[TaskType, tuple[str, ...]] = {
    TaskType.REGRESSION: ("mae", "rmse", "r2"),
    TaskType.BINARY: ("auc", "log_loss", "f1"),
}


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SourceConfig(_Frozen):
    table: str = Field(description="Raw table that new rows land in.")
    timestamp: str = Field(description="Column that orders rows in time (naive UTC).")
    key: list[str] = Field(default_factory=list, description="Columns that identify a row.")
    clean_table: str | None = Field(default=None, description="Validated rows; default `<table>_clean`.")
    quarantine_table: str | None = Field(default=None, description="Rejected rows; default `<table>_quarantine`.")

    @field_validator("key", mode="before")
    @classmethod
    def _one_column_key(cls, value: Any) -> Any:
        # `key: ride_id` means the one-column key [ride_id]; refusing it taught nobody anything.
        return [value] if isinstance(value, str) else value

    @property
    def clean(self) -> str:
        return self.clean_table or f"{self.table}_clean"

    @property
    def quarantine(self) -> str:
        return self.quarantine_table or f"{self.table}_quarantine"


class TargetConfig(_Frozen):
    column: str
    task: TaskType = TaskType.REGRESSION
    positive_above: float | None = Field(
        default=None, description="Binary task: the label is `column > positive_above`."
    )
    residual_of: str | None = Field(
        default=None,
        description="A naive forecaster (`last-value`, `seasonal 7d`) the model predicts the change from: it learns "
        "target - naive and adds the naive value back, so a trend the trees cannot extrapolate is carried by the "
        "naive value. The model carries its window's values per series (gates.baseline_group) to look it up.",
    )

    @field_validator("residual_of", mode="before")
    @classmethod
    def _forecaster(cls, value: Any) -> str | None:
        if value is None:
            return None
        from retrain.baselines import parse_forecaster  # pandas and numpy: not for `retrain --help`

        forecaster = parse_forecaster(value)
        if forecaster.is_constant:
            raise ValueError(f"residual_of needs a forecaster that follows the series (last-value, seasonal 7d), "
                             f"not the constant '{forecaster.kind}'")
        return forecaster.spec

    @model_validator(mode="after")
    def _binary_needs_cut(self) -> TargetConfig:
        if self.task is TaskType.BINARY and self.positive_above is None:
            raise ValueError("target.positive_above is required when target.task is 'binary'")
        if self.task is TaskType.BINARY and self.residual_of is not None:
            raise ValueError("target.residual_of applies to a regression target, not a binary one")
        return self


class CalendarFeature(StrEnum):
    HOUR = "hour"
    DAYOFWEEK = "dayofweek"
    DAYOFMONTH = "dayofmonth"
    MONTH = "month"
    DAYOFYEAR = "dayofyear"
    IS_WEEKEND = "is_weekend"
    HOLIDAY = "holiday"


class FeaturesConfig(_Frozen):
    numeric: list[str] = Field(default_factory=list)
    categorical: list[str] = Field(default_factory=list)
    calendar: list[CalendarFeature] = Field(
        default_factory=list,
        description="Features derived from the timestamp inside the model package (hour, dayofweek, dayofmonth, "
        "month, dayofyear, is_weekend, holiday), so serving and monitoring get them from the timestamp column.",
    )
    holidays: str | None = Field(
        default=None, description="Country (ISO code, e.g. US) whose public holidays the `holiday` feature marks."
    )

    @model_validator(mode="after")
    def _holidays_named(self) -> FeaturesConfig:
        if CalendarFeature.HOLIDAY in self.calendar and not self.holidays:
            raise ValueError("features.calendar has 'holiday': name the country in features.holidays (e.g. US)")
        if len(set(self.calendar)) != len(self.calendar):
            raise ValueError(f"features.calendar lists a feature twice: {[str(c) for c in self.calendar]}")
        return self

    @property
    def all(self) -> list[str]:
        return [*self.numeric, *self.categorical]


class WindowConfig(_Frozen):
    """Which rows a training reads: a lookback that ends at `as_of` (it moves with the data), or fixed dates.

    `{lookback: 60d}` is what a continuous trainer wants: every training reads the 60 days before its
    `as_of`, so new rows change the snapshot. `{start, end}` pins one snapshot (a reproduction, a study).
    """

    lookback: timedelta | None = Field(default=None, description="Duration before as_of: 60d, 36h, 90m.")
    start: datetime | None = None
    end: datetime | None = None

    @field_validator("lookback", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> timedelta | None:
        return None if value is None else parse_duration(value)

    @field_validator("start", "end", mode="before")
    @classmethod
    def _instant(cls, value: Any) -> datetime | None:
        # Naive UTC like every timestamp in Retrain; an offset is converted, never dropped.
        return None if value is None else parse_instant(value)

    @field_serializer("lookback")
    def _duration_text(self, value: timedelta | None) -> str | None:
        return None if value is None else format_duration(value)

    @model_validator(mode="after")
    def _one_form(self) -> WindowConfig:
        absolute = self.start is not None or self.end is not None
        if self.lookback is not None and absolute:
            raise ValueError("give either lookback (e.g. 60d) or start and end, not both")
        if self.lookback is None:
            if self.start is None or self.end is None:
                raise ValueError("give lookback (e.g. {lookback: 60d}) or both start and end")
            if self.end <= self.start:
                raise ValueError(f"window end {self.end} must be after its start {self.start}")
        return self

    def ending_at(self, as_of: datetime) -> Window:
        """The window a training as of `as_of` reads; a fixed window ignores `as_of`."""
        if self.lookback is not None:
            return Window.ending_at(as_of, self.lookback)
        assert self.start is not None and self.end is not None  # the validator guarantees both
        return Window(self.start, self.end)

    def __str__(self) -> str:
        if self.lookback is not None:
            return f"the {format_duration(self.lookback)} before as_of"
        return f"[{self.start.isoformat()}, {self.end.isoformat()})"  # type: ignore[union-attr]


class SplitConfig(_Frozen):
    validation_fraction: float = Field(default=0.15, gt=0, lt=0.5)
    holdout_fraction: float = Field(default=0.15, gt=0, lt=0.5)
    min_rows: int = Field(default=200, ge=3, description="Each part must hold at least this many rows.")


class TuningConfig(_Frozen):
    trials: int = Field(default=20, ge=1)
    timeout_seconds: float | None = Field(default=None, gt=0)
    seed: int = 42
    max_rounds: int = Field(default=500, ge=1)
    early_stopping_rounds: int = Field(default=30, ge=1)
    pruning_interval: int = Field(
        default=25,
        ge=1,
        description="Report to the pruner every N rounds: each report is a round trip to the study's database.",
    )
    threads: int = Field(default=2, ge=1)
    workers: int = Field(
        default=1,
        ge=1,
        le=256,
        description="Trial workers (processes) on the snapshot's one study; more than 1 needs a shared RDB storage "
        "(PostgreSQL), and each worker's LightGBM gets threads // workers threads (at least 1).",
    )


class GatesConfig(_Frozen):
    threshold: float | None = Field(
        default=None,
        description="Absolute gate: below it for lower-is-better metrics, above it otherwise.",
    )
    margin: float = Field(default=0.0, ge=0, description="How much the challenger must beat the champion by.")
    baseline_margin: float | None = Field(
        default=0.0,
        ge=0,
        description="How much the model must beat the naive baseline (median, mean or base rate) by on the "
        "holdout; null turns this gate off.",
    )
    bootstrap_resamples: int = Field(default=1000, ge=100)
    significance: float = Field(default=0.05, gt=0, lt=1)
    baselines: list[str] | None = Field(
        default=None,
        description="Naive forecasters the model must beat on the same holdout rows (the best of them, by "
        "baseline_margin): median, mean, base-rate, last-value, seasonal <period> (e.g. seasonal 7d). Empty (null): "
        "the metric's constant and last-value, plus seasonal 1d for sub-daily rows and seasonal 7d for a window of "
        "three weeks or more (retrain.baselines.default_forecasters).",
    )
    baseline_group: list[str] | None = Field(
        default=None,
        description="Columns naming a series for last-value and seasonal forecasters (a store, a flight); "
        "default the source key without the timestamp.",
    )

    @field_validator("baselines", mode="before")
    @classmethod
    def _forecasters(cls, value: Any) -> list[str] | None:
        from retrain.baselines import parse_forecaster  # pandas and numpy: not for `retrain --help`

        if value is None:
            return None
        if isinstance(value, str | dict):
            value = [value]
        specs = [parse_forecaster(item).spec for item in value]
        if not specs:
            raise ValueError("gates.baselines lists no forecaster: leave it out for the defaults, or name some")
        return list(dict.fromkeys(specs))


class MonitoringConfig(_Frozen):
    """How monitoring watches a model and when it asks for a retrain (the policy in `monitoring/triggers.py`).

    The defaults favour fresh labels, from `benchmarks/policy_backtest.py` on the replayed flights year: fresh
    labels every 6 days (drift reported, not retraining) came within 0.2% of daily retraining's MAE with under a
    fifth of its trainings, while letting drift retrain (the weather drifts against a 60-day window most weeks)
    cost ~30% of daily's trainings for no better MAE.
    """

    window: timedelta = Field(
        default=timedelta(days=7), description="The current window: this long before as_of (7d, 36h)."
    )
    history: timedelta = Field(
        default=timedelta(days=60), description="How far back the performance report charts MAE by day."
    )
    sample_rows: int = Field(
        default=30_000,
        ge=1000,
        description="Rows of reference and of current the drift report compares at most (a seeded sample): "
        "Evidently's time grows faster than rows, and its per-column decisions are stable at this size.",
    )
    min_new_rows: int = Field(default=2000, ge=0, description="New labelled rows a retrain needs.")
    retrain_every: timedelta = Field(
        default=timedelta(days=6), description="Fresh labels retrain at most this often."
    )
    max_age: timedelta | None = Field(
        default=timedelta(days=14), description="Retrain when the champion's data is this old (null: never)."
    )
    cooldown: timedelta = Field(
        default=timedelta(days=1), description="No retrain (except a manual one) this soon after the last."
    )
    drift_share: float = Field(default=0.5, gt=0, le=1, description="Share of drifted columns that is a signal.")
    key_features: list[str] = Field(
        default_factory=list, description="Features whose drift alone is a signal."
    )
    degradation: float = Field(
        default=0.2, ge=0, description="Live metric worse than the champion's holdout metric by this fraction."
    )
    consecutive_windows: int = Field(
        default=3, ge=1, description="Degraded windows in a row before the metric is a signal."
    )
    drift_retrains: bool = Field(
        default=False, description="Drift may bring a retrain forward (else it is reported and emitted only)."
    )
    degradation_retrains: bool = Field(default=True, description="A degraded metric may bring a retrain forward.")

    @field_validator("window", "history", "retrain_every", "cooldown", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> timedelta:
        return parse_duration(value)

    @field_validator("max_age", mode="before")
    @classmethod
    def _optional_duration(cls, value: Any) -> timedelta | None:
        return None if value is None else parse_duration(value)

    @field_serializer("window", "history", "retrain_every", "cooldown", "max_age")
    def _duration_text(self, value: timedelta | None) -> str | None:
        return None if value is None else format_duration(value)


class ReleaseMode(StrEnum):
    AUTO = "auto"  # a challenger goes to canary (the first model straight to champion) with no one asked
    MANUAL = "manual"  # the release flow waits for a person's approval in the Prefect UI; no answer rejects


class CanaryTimeout(StrEnum):
    NO_HARM = "no-harm"  # promote if the offline gates passed and the live evidence shows no harm beyond the margin
    REJECT = "reject"  # an undecided canary is rejected


class CanaryConfig(_Frozen):
    """How a canary is judged: the canary and the champion on the same matured rows (each row served by one and
    scored by the other in shadow), and how long it may run undecided."""

    share: float = Field(default=0.1, gt=0, lt=1, description="Share of requests the canary answers.")
    min_predictions: int = Field(
        default=200, ge=1, description="Matured (labelled) served predictions, scored by both versions, needed "
        "before any verdict."
    )
    margin: float = Field(
        default=0.05,
        ge=0,
        description="How much worse than the champion the canary may be, as a share of the champion's mean loss.",
    )
    significance: float = Field(default=0.05, gt=0, lt=1, description="Level of the one-sided paired tests.")
    max_error_rate: float = Field(
        default=0.01, ge=0, le=1, description="Largest share of the canary's predictions that may be non-finite."
    )
    max_duration: timedelta = Field(
        default=timedelta(days=14),
        description="On the Retrain clock: a canary undecided this long after it started is settled by `on_timeout`.",
    )
    on_timeout: CanaryTimeout = Field(
        default=CanaryTimeout.NO_HARM,
        description="How a canary that reached max_duration undecided is settled: `no-harm` promotes it if it "
        "passed the offline gates and its mean loss on the paired rows is within the margin of the champion's "
        "(else rejects it); `reject` rejects it.",
    )
    superseded_by_newer: bool = Field(
        default=False,
        description="A newer challenger that passed the gates replaces a running (undecided) canary, which is "
        "rejected; otherwise it waits as challenger until the canary ends.",
    )

    @field_validator("max_duration", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> timedelta:
        return parse_duration(value)

    @field_serializer("max_duration")
    def _duration_text(self, value: timedelta) -> str:
        return format_duration(value)


class RollbackConfig(_Frozen):
    """When the canary check rolls a new champion back on its own."""

    bake: timedelta = Field(
        default=timedelta(days=7),
        description="A champion promoted less than this long ago is watched and rolled back on a breach.",
    )
    max_degradation: float = Field(
        default=0.05,
        ge=0,
        description="Breach: on the same matured rows, the champion's mean loss is worse than the previous "
        "champion's (scored in shadow) by more than this share of it, with significance.",
    )
    min_predictions: int = Field(default=200, ge=1, description="Matured predictions needed to judge a breach.")
    significance: float = Field(default=0.05, gt=0, lt=1, description="Level of the one-sided paired test.")

    @field_validator("bake", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> timedelta:
        return parse_duration(value)

    @field_serializer("bake")
    def _duration_text(self, value: timedelta) -> str:
        return format_duration(value)


class ReleaseConfig(_Frozen):
    """How a registered challenger becomes champion: approval, canary, automatic rollback."""

    mode: ReleaseMode = ReleaseMode.AUTO
    approval_timeout: timedelta = Field(
        default=timedelta(hours=24), description="Manual mode: no answer within this long rejects the challenger."
    )
    approval_poll_seconds: int = Field(
        default=10, ge=1, description="How often a paused release checks whether a person answered."
    )
    canary: CanaryConfig = CanaryConfig()
    rollback: RollbackConfig = RollbackConfig()

    @field_validator("approval_timeout", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> timedelta:
        try:
            return parse_duration(value)
        except ValueError as error:
            raise ValueError(
                f"approval_timeout must be a positive duration such as 24h or 90m (got {value!r}): a zero timeout "
                f"would reject every release before anyone could answer ({error})"
            ) from None

    @field_serializer("approval_timeout")
    def _duration_text(self, value: timedelta) -> str:
        return format_duration(value)


class TrainingEngine(StrEnum):
    MEMORY = "memory"  # the snapshot in the flow's process, LightGBM in memory
    DASK = "dask"  # partitions read by Dask workers, the final fit by lightgbm.dask (tasks/dask_training.py)


class DaskConfig(_Frozen):
    """Where and how the Dask engine runs (`training.engine: dask`)."""

    scheduler: str | None = Field(
        default=None, description="Dask scheduler address (tcp://host:8786); none: a LocalCluster on this machine."
    )
    workers: int = Field(default=2, ge=1, description="LocalCluster: worker processes.")
    threads_per_worker: int = Field(default=1, ge=1, description="LocalCluster and LightGBM: threads per worker.")
    memory_limit: str = Field(default="2GB", description="LocalCluster: memory limit per worker (Dask's notation).")
    partition: timedelta = Field(
        default=timedelta(days=7), description="Time range of one partition of the snapshot (7d, 36h)."
    )
    tuning_rows: int = Field(
        default=200_000, ge=1, description="The Optuna search runs in the flow's process on the newest this many "
        "training rows (with the whole validation part); the final fit runs on Dask over all of them."
    )

    @field_validator("partition", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> timedelta:
        return parse_duration(value)

    @field_serializer("partition")
    def _duration_text(self, value: timedelta) -> str:
        return format_duration(value)


class TrainingConfig(_Frozen):
    """How the model is fitted: where (`engine`), and on what once its gates passed (`refit`)."""

    refit: bool = Field(
        default=True,
        description="Refit the model that passed the gates on the whole window (train + validation + holdout) with "
        "the tuned parameters and rounds scaled to the rows, and release that: the newest rows reach the model. "
        "false releases the gated model itself (fitted without the holdout).",
    )
    engine: TrainingEngine = Field(default=TrainingEngine.MEMORY, description="memory or dask.")
    dask: DaskConfig = DaskConfig()


class ScheduleConfig(_Frozen):
    """Cron schedules of a model's deployments (`retrain deploy`); null leaves that deployment unscheduled."""

    train: str | None = Field(default="0 4 * * 1", description="Training: weekly, Monday 04:00.")
    ingest: str | None = Field(default="15 * * * *", description="Ingest: hourly.")
    monitor: str | None = Field(default="30 5 * * *", description="Monitoring: daily, after the hourly ingest.")
    canary_check: str | None = Field(default="30 * * * *", description="Canary check: hourly.")
    timezone: str = "UTC"


class DeploymentConfig(_Frozen):
    """How `retrain deploy` deploys the model: its work pool, schedules and event triggers."""

    work_pool: str = Field(default="retrain", description="Prefect work pool the model's runs go to.")
    schedules: ScheduleConfig = ScheduleConfig()
    retrain_when_requested: bool = Field(
        default=True, description="Training starts on the monitoring policy's `retrain.retrain.requested` event."
    )
    release_on_events: bool = Field(
        default=True, description="Release starts on every registration, promotion, rejection and rollback."
    )


class ModelConfig(_Frozen):
    """Everything that defines one model; validated when loaded so a typo fails before any work."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    source: SourceConfig
    target: TargetConfig
    features: FeaturesConfig
    metric: str
    training_window: WindowConfig
    split: SplitConfig = SplitConfig()
    tuning: TuningConfig = TuningConfig()
    training: TrainingConfig = TrainingConfig()
    gates: GatesConfig = GatesConfig()
    monitoring: MonitoringConfig = MonitoringConfig()
    release: ReleaseConfig = ReleaseConfig()
    deployment: DeploymentConfig = DeploymentConfig()
    contract: str | None = Field(default=None, description="Data contract YAML, relative to this file.")
    config_path: Path | None = Field(default=None, exclude=True)

    @model_validator(mode="after")
    def _consistent(self) -> ModelConfig:
        allowed = METRICS_BY_TASK[self.target.task]
        if self.metric not in allowed:
            raise ValueError(f"metric '{self.metric}' does not fit task '{self.target.task}': use one of {allowed}")
        if not self.features.all:
            raise ValueError("features: name at least one numeric or categorical column")
        if self.target.residual_of is not None and self.training.engine is TrainingEngine.DASK:
            raise ValueError("target.residual_of is not supported with training.engine: dask (the Dask fit learns "
                             "the level): use engine: memory, or drop residual_of")
        unknown = sorted(set(self.monitoring.key_features) - set(self.features.all))
        if unknown:
            raise ValueError(f"monitoring.key_features {unknown} are not features: use some of {self.features.all}")
        overlap = {self.target.column, self.source.timestamp} & set(self.features.all)
        if overlap:
            raise ValueError(f"features must not include the target or timestamp: {sorted(overlap)}")
        return self

    @property
    def lower_is_better(self) -> bool:
        return LOWER_IS_BETTER[self.metric]

    @property
    def contract_path(self) -> Path:
        """Where the data contract lives: beside the model config unless the config says otherwise."""
        base = self.config_path.parent if self.config_path else Path.cwd()
        name = self.contract or f"{self.config_path.stem if self.config_path else self.name}.contract.yaml"
        return (base / name).resolve()

    def settings_digest(self) -> str:
        """8 hex digits naming every knob that changes the model or its verdict (not the data, not the name).

        Two trainings with the same snapshot fingerprint and the same digest fit the same model and reach
        the same verdict, so the second is skipped. Resource limits (timeout) are left out: they bound the
        work, they do not define it.
        """
        knobs = {
            "metric": self.metric,
            "target": self.target.model_dump(mode="json"),
            "features": self.features.model_dump(mode="json"),
            "split": self.split.model_dump(mode="json"),
            "tuning": self.tuning.model_dump(mode="json", exclude={"timeout_seconds", "workers"}),
            "gates": self.gates.model_dump(mode="json"),
            # the in-memory engine keeps the digests it had before there was an engine to choose
            "training": self.training.model_dump(mode="json", include={"refit"}),
        }
        if self.training.engine is not TrainingEngine.MEMORY:
            knobs["training"] = self.training.model_dump(mode="json", exclude={"dask": {"scheduler", "workers",
                                                                                       "memory_limit"}})
        return hashlib.blake2b(json.dumps(knobs, sort_keys=True).encode(), digest_size=4).hexdigest()

    def with_overrides(
        self,
        trials: int | None = None,
        timeout_seconds: float | None = None,
        threshold: float | None = None,
        workers: int | None = None,
    ) -> ModelConfig:
        """A copy with the CLI's or a deployment's overrides applied; None keeps the file's value."""
        overrides = {"trials": trials, "timeout_seconds": timeout_seconds, "workers": workers}
        tuning = self.tuning.model_copy(update={k: v for k, v in overrides.items() if v is not None})
        gates = self.gates if threshold is None else self.gates.model_copy(update={"threshold": threshold})
        return self.model_copy(update={"tuning": tuning, "gates": gates})


def load_model_config(path: str | Path) -> ModelConfig:
    """Read and validate a model config; every problem is reported with the file and the field."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"model config {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ConfigError(f"model config {path} is not valid YAML: {error}") from error
    if not isinstance(raw, dict):
        raise ConfigError(f"model config {path} must be a mapping of fields, got {type(raw).__name__}")
    try:
        config = ModelConfig.model_validate(raw)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']}" for e in error.errors()
        )
        raise ConfigError(f"model config {path} is invalid: {problems}") from error
    return config.model_copy(update={"config_path": path.resolve()})

