"""From a training window to model inputs: as_of, window, checks, target, time-ordered split, fingerprint.

The window a training reads ends at its `as_of`: given by the caller (a replay, a backtest, an
operator), or just after the newest clean row, never the wall clock, so the same data gives the same
snapshot whenever it runs. Encoding raw rows into LightGBM inputs is the model package's job
(`retrain.model_package`): training and serving share that one piece of code.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime

import numpy as np
import pandas as pd
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from retrain.baselines import entity_columns, parse_forecaster
from retrain.clock import model_as_of
from retrain.config import ModelConfig, TargetConfig, TaskType
from retrain.contract import Contract
from retrain.errors import ConfigError, DataError
from retrain.model_package import Encoding, build_encoding, build_residual, residual_base
from retrain.outcomes import TrainingWindow
from tasks.retries import retry_when_transient
from tasks.validation import check_snapshot


@dataclass(frozen=True)
class Split:
    """Three time-ordered parts: train < validation < holdout, never sharing a timestamp."""

    train: pd.DataFrame
    validation: pd.DataFrame
    holdout: pd.DataFrame


@dataclass(frozen=True)
class PreparedData:
    """What tuning, fitting, scoring and packaging need, computed once from one snapshot.

    The parts of the split hold raw rows as read from the clean table; `encoding` (fixed from the
    training part) turns them into model inputs, and `input_types` gives each feature's contract type
    (integer, float, string) for the model's signature.
    """

    fingerprint: str
    rows: int
    window: TrainingWindow
    split: Split
    encoding: Encoding
    input_types: Mapping[str, str]

    @property
    def feature_names(self) -> tuple[str, ...]:
        return self.encoding.features


def training_window(config: ModelConfig, as_of: datetime, as_of_given: bool) -> TrainingWindow:
    """The window of a training as of `as_of`: the lookback before it, or the config's fixed dates.

    Raises:
        ConfigError: a fixed window that ends after a given `as_of` would read rows from the future of
            the instant being replayed.
    """
    window = config.training_window.ending_at(as_of)
    if as_of_given and config.training_window.lookback is None and window.end > as_of:
        raise ConfigError(
            f"model '{config.name}' trains on the fixed window {window}, which ends after as_of "
            f"{as_of.isoformat()}: use training_window: {{lookback: 60d}} to train as of a moving instant"
        )
    return TrainingWindow(
        start=window.start,
        end=window.end,
        as_of=as_of,
        as_of_given=as_of_given,
        lookback=config.training_window.lookback,
    )


def check_training_frame(frame: pd.DataFrame, config: ModelConfig, where: str, window: TrainingWindow) -> None:
    """Refuse a snapshot that cannot be trained on, before any training starts.

    Raises:
        DataError: naming the table, the column and the window that were wrong.
    """
    needed = [config.source.timestamp, config.target.column, *config.features.all]
    missing = [column for column in needed if column not in frame.columns]
    if missing:
        raise DataError(f"table '{where}' lacks column(s) {missing} needed by model '{config.name}'")
    if frame.empty:
        raise DataError(f"table '{where}' has no rows in the training window {window}")
    if frame[config.target.column].isna().all():
        raise DataError(
            f"target column '{config.target.column}' of table '{where}' is null in every one of the "
            f"{len(frame)} rows of the window {window}"
        )


def make_target(frame: pd.DataFrame, target: TargetConfig) -> pd.Series:
    """The label the model learns: the column itself, or `column > positive_above` for a binary task."""
    values = pd.to_numeric(frame[target.column], errors="raise").astype("float64")
    if target.task is TaskType.BINARY:
        return (values > target.positive_above).astype("int64")
    return values


def split_by_time(
    frame: pd.DataFrame,
    timestamp: str,
    validation_fraction: float,
    holdout_fraction: float,
    min_rows: int,
    where: str = "snapshot",
) -> Split:
    """Cut the snapshot at two timestamps so the holdout is the most recent data.

    Cuts move forward to the next timestamp boundary, so rows sharing a timestamp never straddle
    two parts (a shuffle across time would leak the future into training).

    Raises:
        DataError: a part would hold fewer than `min_rows` rows.
    """
    ordered = frame.sort_values(timestamp, kind="stable").reset_index(drop=True)
    times = ordered[timestamp].to_numpy()
    rows = len(ordered)
    holdout_start = _boundary(times, int(round(rows * (1 - holdout_fraction))))
    validation_start = _boundary(times, int(round(rows * (1 - holdout_fraction - validation_fraction))))
    parts = Split(
        train=ordered.iloc[:validation_start].reset_index(drop=True),
        validation=ordered.iloc[validation_start:holdout_start].reset_index(drop=True),
        holdout=ordered.iloc[holdout_start:].reset_index(drop=True),
    )
    sizes = {"train": len(parts.train), "validation": len(parts.validation), "holdout": len(parts.holdout)}
    small = {name: size for name, size in sizes.items() if size < min_rows}
    if small:
        raise DataError(
            f"{where} has {rows} rows, too few to split in time: {small} "
            f"(each part needs at least {min_rows}); widen the training window"
        )
    return parts


def _boundary(times: np.ndarray, position: int) -> int:
    """The first index at or after `position` where the timestamp changes (or the end)."""
    position = min(max(position, 0), len(times))
    if position in (0, len(times)):
        return position
    return int(np.searchsorted(times, times[position - 1], side="right"))


def fingerprint_frame(frame: pd.DataFrame) -> str:
    """A stable content hash of a snapshot: same rows, columns and types give the same 32 hex digits.

    Column order is normalised, row order is not (the snapshot is read ordered by time and key).
    32 characters fit MLflow's dataset digest column.
    """
    ordered = frame[sorted(frame.columns)]
    digest = hashlib.blake2b(digest_size=16)
    for name, dtype in ordered.dtypes.items():
        digest.update(f"{name}:{dtype};".encode())
    digest.update(pd.util.hash_pandas_object(ordered, index=False).to_numpy().tobytes())
    return digest.hexdigest()


def input_types(frame: pd.DataFrame, features: list[str], contract: Contract | None) -> dict[str, str]:
    """Each input's type as the contract declares it (integer, float, string, datetime), else as the frame holds it.

    The contract is the better witness: an integer column with a NULL in the window reads back as floats.
    """
    types: dict[str, str] = {}
    for column in features:
        rule = contract.columns.get(column) if contract is not None else None
        if rule is not None:
            types[column] = rule.type.value
        elif pd.api.types.is_datetime64_any_dtype(frame[column]):
            types[column] = "datetime"
        elif pd.api.types.is_integer_dtype(frame[column]):
            types[column] = "integer"
        elif pd.api.types.is_numeric_dtype(frame[column]):
            types[column] = "float"
        else:
            types[column] = "string"
    return types


def prepare_data(
    frame: pd.DataFrame,
    config: ModelConfig,
    where: str,
    window: TrainingWindow,
    contract: Contract | None = None,
) -> PreparedData:
    """Check, fingerprint and split a snapshot, and fix the encoding from its training part only."""
    check_training_frame(frame, config, where, window)
    labelled = frame[frame[config.target.column].notna()]
    split = split_by_time(
        labelled,
        config.source.timestamp,
        config.split.validation_fraction,
        config.split.holdout_fraction,
        config.split.min_rows,
        where=f"table '{where}' in window {window}",
    )
    return PreparedData(
        fingerprint=fingerprint_frame(frame),
        rows=len(frame),
        window=window,
        split=split,
        encoding=with_residual(model_encoding(split.train, config),
                               pd.concat([split.train, split.validation], ignore_index=True), config,
                               pd.Timestamp(split.holdout[config.source.timestamp].min()).to_pydatetime()),
        input_types=input_types(frame, [*config.features.all, *calendar_inputs(config)], contract),
    )


def calendar_inputs(config: ModelConfig) -> list[str]:
    """The timestamp (and the series columns of a residual model), as model inputs, when the model derives
    calendar features from it or looks its naive value up by it."""
    columns = [config.source.timestamp] if config.features.calendar or config.target.residual_of else []
    return [*columns, *(residual_entity(config) if config.target.residual_of else [])]


def residual_entity(config: ModelConfig) -> list[str]:
    """The columns naming a series, for a residual model's naive value (as for the naive forecasters)."""
    return entity_columns(config.source.key, config.source.timestamp, config.gates.baseline_group)


def with_residual(encoding: Encoding, rows: pd.DataFrame, config: ModelConfig, cut: datetime) -> Encoding:
    """The encoding with the residual base of `target.residual_of` learned from `rows` known before `cut`;
    unchanged when the target is the level."""
    if config.target.residual_of is None:
        return encoding
    forecaster = parse_forecaster(config.target.residual_of)
    period = None if forecaster.period is None else forecaster.period.total_seconds()
    residual = build_residual(rows, make_target(rows, config.target).to_numpy(), config.source.timestamp,
                              residual_entity(config), forecaster.kind, period, pd.Timestamp(cut))
    return replace(encoding, residual=residual)


def learning_target(frame: pd.DataFrame, config: ModelConfig, encoding: Encoding) -> pd.Series:
    """What the booster learns: the label, or for a residual model the label minus its naive value."""
    target = make_target(frame, config.target)
    if encoding.residual is None:
        return target
    base = residual_base({column: frame[column] for column in encoding.residual.inputs}, encoding.residual,
                         len(frame))
    return target - base


def model_encoding(rows: pd.DataFrame, config: ModelConfig) -> Encoding:
    """The model package's encoding learned from `rows`: vocabularies, and the configured calendar features."""
    try:
        return build_encoding(
            rows, config.features.numeric, config.features.categorical, timestamp=config.source.timestamp,
            calendar=[str(name) for name in config.features.calendar], holidays=config.features.holidays,
        )
    except ValueError as error:
        raise ConfigError(f"model '{config.name}': {error}") from error


def snapshot_columns(config: ModelConfig) -> list[str]:
    """What a snapshot reads: timestamp, key, target and features, each once."""
    return list(dict.fromkeys([config.source.timestamp, *config.source.key, config.target.column,
                               *config.features.all, *(config.gates.baseline_group or [])]))


# --- Prefect tasks -------------------------------------------------------------------------------


@task(name="resolve-training-window", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5,
      retry_condition_fn=retry_when_transient)
def resolve_training_window(config: ModelConfig, as_of: datetime | None) -> TrainingWindow:
    """The window this training reads: as of the given instant, or just after the newest clean row."""
    from retrain.warehouse import get_warehouse, read_newest_timestamp

    newest = None
    if as_of is None:
        newest = read_newest_timestamp(get_warehouse(), config.source.clean, config.source.timestamp)
    resolved = model_as_of(as_of, newest, config.source.clean)
    window = training_window(config, resolved, as_of_given=as_of is not None)
    get_run_logger().info(
        "training '%s' as of %s (%s): window %s", config.name, window.as_of.isoformat(),
        window.as_of_source, window,
    )
    return window


@task(name="load-training-snapshot", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5,
      retry_condition_fn=retry_when_transient)
def load_training_snapshot(config: ModelConfig, window: TrainingWindow) -> pd.DataFrame:
    """The training window of the clean (validated) table; a lost connection is retried, a wrong column not."""
    from retrain.warehouse import get_warehouse, read_window

    frame = read_window(
        get_warehouse(),
        config.source.clean,
        config.source.timestamp,
        window.start,
        window.end,
        columns=snapshot_columns(config),
        tie_breakers=config.source.key,
    )
    get_run_logger().info("read %d rows of '%s' in window %s", len(frame), config.source.clean, window)
    return frame


@task(name="check-snapshot-contract", cache_policy=NO_CACHE)
def check_training_snapshot(snapshot: pd.DataFrame, contract: Contract, config: ModelConfig) -> None:
    """Refuse to train on a snapshot that breaks the contract (e.g. rows landed before it was tightened)."""
    check_snapshot(snapshot, contract, columns=list(snapshot.columns))
    get_run_logger().info("snapshot of %d rows keeps the data contract of '%s'", len(snapshot), config.name)


@task(name="prepare-training-data", cache_policy=NO_CACHE)
def prepare_training_data(
    snapshot: pd.DataFrame, config: ModelConfig, window: TrainingWindow, contract: Contract
) -> PreparedData:
    data = prepare_data(snapshot, config, where=config.source.clean, window=window, contract=contract)
    get_run_logger().info(
        "snapshot %s: %d rows → train %d, validation %d, holdout %d",
        data.fingerprint,
        data.rows,
        len(data.split.train),
        len(data.split.validation),
        len(data.split.holdout),
    )
    return data
