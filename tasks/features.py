"""From a training snapshot to model inputs: checks, target, time-ordered split, fingerprint, encoding.

Categorical columns become integer codes with a vocabulary stored in the model's MLflow metadata:
MLflow's pyfunc schema has no categorical type, and LightGBM refuses string columns, so codes are
the one representation that loads and predicts the same way in training, the registry and serving.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from retrain.config import FeaturesConfig, ModelConfig, TargetConfig, TaskType
from retrain.errors import DataError
from tasks.contract import Contract
from tasks.validation import check_snapshot

UNKNOWN_CODE = -1  # LightGBM treats negative categorical values as missing


@dataclass(frozen=True)
class Split:
    """Three time-ordered parts: train < validation < holdout, never sharing a timestamp."""

    train: pd.DataFrame
    validation: pd.DataFrame
    holdout: pd.DataFrame


@dataclass(frozen=True)
class PreparedData:
    """What tuning, fitting and scoring need, computed once from one snapshot."""

    fingerprint: str
    rows: int
    split: Split
    vocabulary: Mapping[str, tuple[str, ...]]
    feature_names: tuple[str, ...]


def check_training_frame(frame: pd.DataFrame, config: ModelConfig, where: str) -> None:
    """Refuse a snapshot that cannot be trained on, before any training starts.

    Raises:
        DataError: naming the table, the column and the window that were wrong.
    """
    window = config.training_window
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


def build_vocabulary(frame: pd.DataFrame, categorical: list[str]) -> dict[str, tuple[str, ...]]:
    """Sorted distinct values per categorical column: the code of a value is its position."""
    return {
        column: tuple(sorted(str(value) for value in frame[column].dropna().unique())) for column in categorical
    }


def encode_features(
    frame: pd.DataFrame, features: FeaturesConfig, vocabulary: Mapping[str, tuple[str, ...]]
) -> pd.DataFrame:
    """Model inputs, all float64: numeric columns as they are, categorical columns as codes (unknown → -1).

    Codes are whole numbers stored as float64 so the MLflow signature has no integer column (which
    could not hold a missing value a serving client sends).
    """
    encoded = {column: pd.to_numeric(frame[column], errors="coerce").astype("float64") for column in features.numeric}
    for column in features.categorical:
        codes = {value: code for code, value in enumerate(vocabulary[column])}
        encoded[column] = frame[column].astype("string").map(codes).fillna(UNKNOWN_CODE).astype("float64")
    return pd.DataFrame(encoded, index=frame.index)


def prepare_data(frame: pd.DataFrame, config: ModelConfig, where: str) -> PreparedData:
    """Check, fingerprint and split a snapshot, and fix the vocabulary from its training part only."""
    check_training_frame(frame, config, where)
    labelled = frame[frame[config.target.column].notna()]
    split = split_by_time(
        labelled,
        config.source.timestamp,
        config.split.validation_fraction,
        config.split.holdout_fraction,
        config.split.min_rows,
        where=f"table '{where}' in window {config.training_window}",
    )
    return PreparedData(
        fingerprint=fingerprint_frame(frame),
        rows=len(frame),
        split=split,
        vocabulary=build_vocabulary(split.train, config.features.categorical),
        feature_names=tuple(config.features.all),
    )


# --- Prefect tasks -------------------------------------------------------------------------------


@task(name="load-training-snapshot", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def load_training_snapshot(config: ModelConfig) -> pd.DataFrame:
    """The training window of the clean (validated) table; retried because a warehouse can blink."""
    from tasks.warehouse import get_warehouse, read_window

    columns = list(dict.fromkeys([config.source.timestamp, *config.source.key, config.target.column,
                                  *config.features.all]))
    window = config.training_window
    frame = read_window(
        get_warehouse(),
        config.source.clean,
        config.source.timestamp,
        window.start,
        window.end,
        columns=columns,
        tie_breakers=config.source.key,
    )
    get_run_logger().info("read %d rows of '%s' in window %s", len(frame), config.source.clean, window)
    return frame


@task(name="prepare-training-data", cache_policy=NO_CACHE)
def prepare_training_data(snapshot: pd.DataFrame, config: ModelConfig) -> PreparedData:
    data = prepare_data(snapshot, config, where=config.source.clean)
    get_run_logger().info(
        "snapshot %s: %d rows → train %d, validation %d, holdout %d",
        data.fingerprint,
        data.rows,
        len(data.split.train),
        len(data.split.validation),
        len(data.split.holdout),
    )
    return data




@task(name="check-snapshot-contract", cache_policy=NO_CACHE)
def check_training_snapshot(snapshot: pd.DataFrame, contract: Contract, config: ModelConfig) -> None:
    """Refuse to train on a snapshot that breaks the contract (e.g. rows landed before it was tightened)."""
    check_snapshot(snapshot, contract, columns=list(snapshot.columns))
    get_run_logger().info("snapshot of %d rows keeps the data contract of '%s'", len(snapshot), config.name)
