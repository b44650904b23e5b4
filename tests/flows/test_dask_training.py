"""`training.engine: dask`: partitions read by Dask workers, the final fit by lightgbm.dask, the same raw-row model."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from retrain.config import load_model_config
from retrain.settings import get_settings
from retrain.warehouse import get_warehouse, write_frame
from tasks.dask_training import cut_positions, fit_on_dask, partition_ranges, prepare_partitioned
from tasks.features import split_by_time
from tasks.training import fit_and_score
from tests.conftest import write_model_config

DASK = {"engine": "dask", "dask": {"workers": 2, "threads_per_worker": 1, "memory_limit": "1GB", "partition": "3d",
                                   "tuning_rows": 5000}}
PARAMS = {"objective": "l1", "learning_rate": 0.1, "num_leaves": 31, "min_data_in_leaf": 50, "seed": 7,
          "deterministic": True, "metric": "l1", "verbosity": -1, "feature_pre_filter": False}


@pytest.mark.parametrize("times", [[1, 1, 2, 3, 3, 3, 4, 5, 5, 6], [1] * 5 + [2] * 5 + list(range(3, 23))])
def test_cuts_from_counts_are_where_split_by_time_cuts(times: list[int]) -> None:
    frame = pd.DataFrame({"t": pd.to_datetime(times, unit="h"), "x": range(len(times))})
    split = split_by_time(frame, "t", 0.2, 0.2, min_rows=1)
    counts = frame.groupby("t").size()
    assert cut_positions(counts, 0.2, 0.2) == (len(split.train), len(split.train) + len(split.validation))


def test_partitions_cover_the_range_without_overlap() -> None:
    start, end = pd.Timestamp("2013-01-01").to_pydatetime(), pd.Timestamp("2013-01-08 12:00").to_pydatetime()
    ranges = partition_ranges(start, end, pd.Timedelta("3d").to_pytimedelta())
    assert ranges[0].start == start and ranges[-1].end == end and len(ranges) == 3
    assert all(a.end == b.start for a, b in zip(ranges, ranges[1:], strict=False))


@pytest.fixture
def dask_config(retrain_home: Path, flights_small: pd.DataFrame) -> Path:
    write_frame(get_warehouse(), flights_small, "flights", if_exists="replace")
    return write_model_config(retrain_home.parent, training=DASK)


@pytest.mark.slow  # minutes on 2 shared cores: two LocalClusters and a training flow
@pytest.mark.usefixtures("prefect_harness")
def test_dask_fit_matches_the_in_memory_fit_and_the_flow_registers_a_raw_row_model(
    dask_config: Path, flights_small: pd.DataFrame
) -> None:
    from flows.ingest import ingest_new_rows
    from flows.training import train_model
    from retrain.warehouse import read_window
    from tasks.features import prepare_data, snapshot_columns, training_window

    ingest_new_rows(config_path=str(dask_config))
    config = load_model_config(dask_config)
    window = training_window(config, datetime(2013, 1, 25), as_of_given=False)
    frame = read_window(get_warehouse(), config.source.clean, "time_hour", window.start, window.end,
                        columns=snapshot_columns(config), tie_breakers=config.source.key)
    in_memory = prepare_data(frame, config, where=config.source.clean, window=window)
    partitioned = prepare_partitioned(config, in_memory.window, None, get_warehouse())
    assert len(partitioned.data.split.validation) == len(in_memory.split.validation)
    assert len(partitioned.data.split.holdout) == len(in_memory.split.holdout)
    # the newest 5000 training rows, widened to whole timestamps, are all the flow holds of the training part
    assert partitioned.train_rows == len(in_memory.split.train) > len(partitioned.data.split.train) >= 5000
    assert partitioned.data.encoding == in_memory.encoding

    reference = fit_and_score(in_memory, config, PARAMS, rounds=150)
    on_dask = fit_on_dask(partitioned, config, PARAMS, rounds=150)
    # Data-parallel LightGBM bins each worker's rows and merges histograms: close to, not equal to, one fit.
    assert on_dask.metrics.value == pytest.approx(reference.metrics.value, rel=0.02)

    outcome = train_model(config_path=str(dask_config))
    assert outcome.decision == "champion" and outcome.version == "1"
    mlflow.set_tracking_uri(get_settings().resolved_tracking_uri())
    champion = mlflow.pyfunc.load_model(f"models:/{config.name}@champion")
    rows = flights_small.tail(50)
    predictions = np.asarray(champion.predict(rows[list(config.features.all)]), dtype="float64")
    assert np.isfinite(predictions).all() and predictions.std() > 0
