"""LightGBM on Dask (`training.engine: dask`): a snapshot read from the warehouse in partitions by time, never
whole into one process, split in time as the in-memory path splits it, the final model fitted by `lightgbm.dask`.

What stays in the flow's process: the per-timestamp row counts (to place the split's two cuts exactly where
`tasks.features.split_by_time` would), the category labels of the training part (SQL `DISTINCT`), the validation
and holdout parts (tuning's yardstick, the gates and the champion comparison need them on hand, as today), and
the newest `training.dask.tuning_rows` rows of the training part for the Optuna search. What stays on the Dask
workers: the training part itself, each partition a time range (`training.dask.partition`) read by the worker
from the warehouse, checked against the data contract there, encoded by the model package there.

Tuning on Dask: the Optuna search runs as today (`tasks.tuning`), on the newest `tuning_rows` training rows with
the full validation part, and only the final fit runs on Dask over all of train + validation. Chosen because a
trial on Dask pays the cluster's set-up per fit (seconds) and pruning needs a per-round report Dask's fit does
not give; the newest rows are what the holdout is closest to, and the rounds found there are kept for the final
fit (more rows usually want more rounds: `tuning_rows` is the knob).

The booster a Dask fit returns is a plain `lightgbm.Booster`, so the model logged is the same raw-row pyfunc
(booster + encoding) and serving and monitoring do not change.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from retrain.config import ModelConfig, TaskType
from retrain.contract import Contract
from retrain.errors import DataError
from retrain.model_package import Encoding, encode_rows
from retrain.outcomes import TrainingWindow
from tasks.features import PreparedData, Split, input_types, make_target, model_encoding, snapshot_columns
from tasks.training import (
    FittedModel,
    ReleasedModel,
    scored_model,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TimeRange:
    """`[start, end)` of the clean table: one partition."""

    start: datetime
    end: datetime


@dataclass(frozen=True)
class SnapshotSource:
    """Where a worker reads its partitions: the warehouse (URL with its secret: never logged) and the table."""

    url: str
    schema: str | None
    table: str
    timestamp: str
    columns: tuple[str, ...]
    key: tuple[str, ...]


@dataclass(frozen=True)
class PartitionedSnapshot:
    """The snapshot as the Dask path holds it: partitions of train + validation (read by the workers) and the
    in-process parts (`data`: validation, holdout, the tuning rows as `split.train`)."""

    data: PreparedData
    source: SnapshotSource
    fit_ranges: tuple[TimeRange, ...]
    train_rows: int
    fit_rows: int


def cut_positions(counts: pd.Series, validation_fraction: float, holdout_fraction: float) -> tuple[int, int]:
    """Rows before the validation cut and before the holdout cut, at timestamp boundaries, from per-timestamp
    counts in time order: the same rule as `split_by_time` (round the fraction's position, move it forward to the
    next change of timestamp), computed without the rows."""
    cumulative = counts.cumsum().to_numpy()
    rows = int(cumulative[-1]) if len(cumulative) else 0

    def boundary(position: int) -> int:
        position = min(max(position, 0), rows)
        if position in (0, rows):
            return position
        # the row at position-1 belongs to the first timestamp whose cumulative count reaches `position`
        return int(cumulative[np.searchsorted(cumulative, position, side="left")])

    holdout = boundary(int(round(rows * (1 - holdout_fraction))))
    validation = boundary(int(round(rows * (1 - holdout_fraction - validation_fraction))))
    return validation, holdout


def time_at(counts: pd.Series, position: int) -> datetime:
    """The first timestamp of the row at `position` (a cut from `cut_positions`)."""
    cumulative = counts.cumsum().to_numpy()
    return counts.index[int(np.searchsorted(cumulative, position, side="right"))].to_pydatetime()


def partition_ranges(start: datetime, end: datetime, every: timedelta) -> tuple[TimeRange, ...]:
    """`[start, end)` cut into consecutive ranges of `every` (the last one shorter)."""
    ranges = []
    moment = start
    while moment < end:
        ranges.append(TimeRange(moment, min(moment + every, end)))
        moment += every
    return tuple(ranges)


def read_partition(source: SnapshotSource, part: TimeRange, contract: Contract | None = None) -> pd.DataFrame:
    """One partition, read by whichever process runs it (a Dask worker), checked against the contract there."""
    from retrain.warehouse import open_warehouse, read_window
    from tasks.validation import check_snapshot

    frame = read_window(open_warehouse(source.url, source.schema), source.table, source.timestamp, part.start,
                        part.end, columns=list(source.columns), tie_breakers=list(source.key))
    if contract is not None and len(frame):
        check_snapshot(frame, contract, columns=list(frame.columns))
    return frame


def labelled_counts(warehouse: Any, config: ModelConfig, window: TrainingWindow) -> tuple[pd.Series, int]:
    """Labelled rows per timestamp in the window (what the split counts), and all rows of the window."""
    from retrain.warehouse import reflect_table

    table = reflect_table(warehouse, config.source.clean)
    timestamp, target = table.c[config.source.timestamp], table.c[config.target.column]
    inside = sa.and_(timestamp >= window.start, timestamp < window.end)
    query = (sa.select(timestamp, sa.func.count().label("rows")).where(inside, target.is_not(None))
             .group_by(timestamp).order_by(timestamp))
    with warehouse.engine.connect() as connection:
        frame = pd.read_sql(query, connection, parse_dates=[config.source.timestamp])
        total = connection.execute(sa.select(sa.func.count()).select_from(table).where(inside)).scalar_one()
    return frame.set_index(config.source.timestamp)["rows"], int(total)


def training_vocabulary(warehouse: Any, config: ModelConfig, start: datetime, end: datetime) -> dict[str, tuple]:
    """Each categorical feature's sorted distinct labels in the training part, counted by the database."""
    from retrain.warehouse import reflect_table

    table = reflect_table(warehouse, config.source.clean)
    timestamp = table.c[config.source.timestamp]
    vocabulary = {}
    with warehouse.engine.connect() as connection:
        for column in config.features.categorical:
            query = sa.select(table.c[column]).where(timestamp >= start, timestamp < end,
                                                      table.c[column].is_not(None)).distinct()
            vocabulary[column] = tuple(sorted(str(value) for (value,) in connection.execute(query)))
    return vocabulary


def prepare_partitioned(
    config: ModelConfig, window: TrainingWindow, contract: Contract | None, warehouse: Any
) -> PartitionedSnapshot:
    """Place the split's cuts from counts, read the in-process parts, describe the partitions for the workers.

    Raises:
        DataError: the window holds no labelled row, or a part would hold fewer than `split.min_rows` rows.
    """
    from retrain.warehouse import read_window

    counts, total = labelled_counts(warehouse, config, window)
    where = f"table '{config.source.clean}' in window {window}"
    if counts.empty:
        raise DataError(f"{where} has no labelled row to train on")
    validation_at, holdout_at = cut_positions(counts, config.split.validation_fraction,
                                              config.split.holdout_fraction)
    rows = int(counts.sum())
    sizes = {"train": validation_at, "validation": holdout_at - validation_at, "holdout": rows - holdout_at}
    small = {name: size for name, size in sizes.items() if size < config.split.min_rows}
    if small:
        raise DataError(f"{where} has {rows} rows, too few to split in time: {small} "
                        f"(each part needs at least {config.split.min_rows}); widen the training window")
    validation_start, holdout_start = time_at(counts, validation_at), time_at(counts, holdout_at)
    tuning_from = max(validation_at - config.training.dask.tuning_rows, 0)
    tuning_start = time_at(counts, tuning_from) if tuning_from else window.start
    columns = snapshot_columns(config)

    def read(start: datetime, end: datetime) -> pd.DataFrame:
        frame = read_window(warehouse, config.source.clean, config.source.timestamp, start, end, columns=columns,
                            tie_breakers=config.source.key)
        return frame[frame[config.target.column].notna()].reset_index(drop=True)

    split = Split(train=read(tuning_start, validation_start), validation=read(validation_start, holdout_start),
                  holdout=read(holdout_start, window.end))
    # the model package's encoding (calendar features included), its vocabularies counted by the database
    encoding = dataclasses.replace(model_encoding(split.validation.head(0), config),
                                   vocabulary=training_vocabulary(warehouse, config, window.start, validation_start))
    source = SnapshotSource(warehouse.engine.url.render_as_string(hide_password=False), warehouse.schema,
                            config.source.clean, config.source.timestamp, tuple(columns), tuple(config.source.key))
    ranges = partition_ranges(window.start, holdout_start, config.training.dask.partition)
    data = PreparedData(
        fingerprint=partitions_fingerprint(counts, total, encoding),
        rows=total,
        window=window,
        split=split,
        encoding=encoding,
        input_types=input_types(split.validation, config.features.all, contract),
    )
    return PartitionedSnapshot(data, source, ranges, train_rows=validation_at, fit_rows=holdout_at)


def partitions_fingerprint(counts: pd.Series, total: int, encoding: Encoding) -> str:
    """A digest of the snapshot without reading it whole: rows per timestamp, all rows, the training labels.

    Weaker than the in-memory content hash (a changed value with unchanged counts and labels keeps it): rows
    land in the clean table through the contract and are never edited in place, which is what makes it enough
    to tell "nothing new" here.
    """
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"dask;{total};".encode())
    digest.update(pd.util.hash_pandas_object(counts.reset_index(), index=False).to_numpy().tobytes())
    digest.update(repr(sorted(encoding.vocabulary.items())).encode())
    return digest.hexdigest()


@contextlib.contextmanager
def dask_client(config: ModelConfig) -> Iterator[Any]:
    """A client of the configured scheduler, or of a LocalCluster on this machine (closed after)."""
    from distributed import Client, LocalCluster

    settings = config.training.dask
    if settings.scheduler:
        with Client(settings.scheduler) as client:
            yield client
        return
    with LocalCluster(n_workers=settings.workers, threads_per_worker=settings.threads_per_worker,
                      memory_limit=settings.memory_limit, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        yield client


def encoded_partition(frame: pd.DataFrame, encoding: Encoding, config: ModelConfig) -> pd.DataFrame:
    """Model inputs and the label of one partition (labelled rows only), on the worker."""
    labelled = frame[frame[config.target.column].notna()]
    inputs = encode_rows(labelled, encoding)
    inputs["__label__"] = make_target(labelled, config.target).to_numpy()
    return inputs


def fit_on_dask(
    snapshot: PartitionedSnapshot, config: ModelConfig, params: Mapping[str, Any], rounds: int,
    contract: Contract | None = None, client: Any = None,
) -> FittedModel:
    """Fit on train + validation with `lightgbm.dask` (each worker reads, checks and encodes its partitions),
    then score the holdout in this process exactly as `fit_and_score` does."""
    import dask.dataframe as dd
    import lightgbm.dask as lgb_dask

    data = snapshot.data
    meta = encoded_partition(data.split.validation.head(0), data.encoding, config)

    def load(part: TimeRange) -> pd.DataFrame:
        return encoded_partition(read_partition(snapshot.source, part, contract), data.encoding, config)

    with contextlib.ExitStack() as stack:
        if client is None:
            client = stack.enter_context(dask_client(config))
        frame = dd.from_map(load, list(snapshot.fit_ranges), meta=meta, enforce_metadata=False)
        frame = frame.persist()
        features, label = frame[list(data.encoding.features)], frame["__label__"]
        estimator_class = (lgb_dask.DaskLGBMClassifier if config.target.task is TaskType.BINARY
                           else lgb_dask.DaskLGBMRegressor)
        settings = {key: value for key, value in params.items() if key not in {"num_threads", "verbosity"}}
        estimator = estimator_class(client=client, n_estimators=max(rounds, 1), verbosity=-1,
                                    num_threads=config.training.dask.threads_per_worker, **settings)
        estimator.fit(features, label, categorical_feature=list(data.encoding.categorical) or "auto")
        booster = estimator.booster_
    return scored(booster, rounds, data, config)


def scored(booster: Any, rounds: int, data: PreparedData, config: ModelConfig) -> FittedModel:
    """The booster scored on the holdout as `tasks.training.fit_and_score` scores it, the naive forecasters fed
    the rows this process holds before the holdout (the newest training rows and the validation part)."""
    known = pd.concat([data.split.train, data.split.validation], ignore_index=True)
    predictions = np.asarray(booster.predict(encode_rows(data.split.holdout, data.encoding)), dtype="float64")
    return scored_model(booster, rounds, predictions, known, data, config)


# --- Prefect tasks -------------------------------------------------------------------------------


@task(name="prepare-partitioned-snapshot", cache_policy=NO_CACHE)
def prepare_partitioned_snapshot(
    config: ModelConfig, window: TrainingWindow, contract: Contract
) -> PartitionedSnapshot:
    from retrain.warehouse import get_warehouse

    snapshot = prepare_partitioned(config, window, contract, get_warehouse())
    data = snapshot.data
    get_run_logger().info(
        "snapshot %s (Dask, %d partitions of %s): %d rows → train %d (tuning on the newest %d), validation %d, "
        "holdout %d", data.fingerprint, len(snapshot.fit_ranges), config.training.dask.partition, data.rows,
        snapshot.train_rows, len(data.split.train), len(data.split.validation), len(data.split.holdout),
    )
    return snapshot


@task(name="fit-final-model-on-dask", cache_policy=NO_CACHE)
def fit_final_model_on_dask(
    snapshot: PartitionedSnapshot, config: ModelConfig, params: Mapping[str, Any], rounds: int, contract: Contract
) -> FittedModel:
    fitted = fit_on_dask(snapshot, config, params, rounds, contract)
    get_run_logger().info("final model on Dask: %d rounds on %d rows, holdout %s %.4f (baseline %.4f)", rounds,
                          snapshot.fit_rows, config.metric, fitted.metrics.value, fitted.metrics.baseline)
    return fitted


@task(name="release-gated-model", cache_policy=NO_CACHE)
def release_gated_model(snapshot: PartitionedSnapshot, fitted: FittedModel) -> ReleasedModel:
    """On Dask the gated model is what is released: `training.refit` (a refit on the whole window, holdout
    included) is an in-memory step, and a refit on Dask is not built yet."""
    get_run_logger().info("Dask engine: the gated model (%d rows, %d rounds) is released as it is, no refit",
                              snapshot.fit_rows, fitted.rounds)
    return ReleasedModel(booster=fitted.booster, encoding=snapshot.data.encoding, rounds=fitted.rounds,
                         rows=snapshot.fit_rows, refit=False, holdout_predictions=fitted.holdout_predictions)
