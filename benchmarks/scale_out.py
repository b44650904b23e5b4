"""Scale-out figures: parallel tuning workers, LightGBM on Dask vs in memory, ingest into PostgreSQL vs COPY.

    .venv/bin/python benchmarks/scale_out.py [--part tuning,dask,ingest] [--trials 16] [--ingest-rows 327346]

1. **Tuning**: one Optuna study on PostgreSQL (a database of its own, dropped after), the flights rows of the 60
   days before 2013-03-01 (train/validation split as the flow makes it), the same trial budget with 1 and with 2
   worker processes (`tasks.tuning.tune`, the processes the flow's task runs drive), one worker both with 2 and
   with 1 LightGBM thread (two workers get 1 thread each: `threads // workers`). Prints wall time, best value,
   finished trials, the mean time of one trial, and the projection to 8 workers from that per-trial cost:
   ceil(budget / 8) x per-trial time + the measured start-up of the worker processes (assumes 8 free cores).
2. **Dask vs in memory**: the whole flights year (327k rows, the largest snapshot both fit here) written as the
   clean table of a SQLite warehouse; the in-memory path (read, split, `fit_and_score`) against the Dask path
   (`prepare_partitioned` + `fit_on_dask`, LocalCluster of 2 workers x 1 thread), same fixed parameters and
   rounds. Prints time and holdout MAE of each.
3. **Ingest**: N flights rows (default all 327k) into PostgreSQL through Retrain's ingest (contract validation,
   clean table, batch ledger: `flows.ingest.ingest_new_rows`) against a bare `COPY ... FROM STDIN` of the same
   rows into a table of the same columns. 10M rows would take far longer than this shared 2-core machine
   allows for one figure; the rate per row is what to compare.

Prints `uptime` first and last: the machine is shared.
"""

from __future__ import annotations

import argparse
import io
import math
import os
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path

HOME = Path(tempfile.mkdtemp(prefix="retrain-scale-bench-"))
os.environ["RETRAIN_HOME"] = str(HOME)
os.environ.setdefault("PREFECT_HOME", str(HOME / "prefect"))
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["DO_NOT_TRACK"] = "1"
os.environ["PREFECT_LOGGING_LEVEL"] = "WARNING"
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import sqlalchemy as sa  # noqa: E402

POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
FIXED = {"objective": "l1", "learning_rate": 0.1, "num_leaves": 63, "min_data_in_leaf": 100, "seed": 7,
         "deterministic": True, "metric": "l1", "verbosity": -1, "feature_pre_filter": False}
ROUNDS = 200


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


class Database:
    """A PostgreSQL database of our own for one part, dropped after."""

    def __init__(self, prefix: str) -> None:
        self.name = f"{prefix}_{uuid.uuid4().hex[:6]}"
        self.admin = sa.create_engine(POSTGRES, isolation_level="AUTOCOMMIT")
        self.url = POSTGRES.rsplit("/", 1)[0] + f"/{self.name}"

    def __enter__(self) -> str:
        with self.admin.connect() as connection:
            connection.exec_driver_sql(f'CREATE DATABASE "{self.name}"')
        return self.url

    def __exit__(self, *_: object) -> None:
        with self.admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        self.admin.dispose()


def tuning_part(trials: int) -> None:
    from retrain.config import load_model_config
    from retrain.model_package import encode_rows
    from tasks.example_data import read_flights_example
    from tasks.features import make_target, prepare_data, training_window
    from tasks.tuning import run_workers_in_processes, tune

    example = load_model_config(REPO / "examples" / "flights.yaml").with_overrides(trials=trials)
    # no time budget: both runs must reach the same number of finished trials
    config = example.model_copy(update={"tuning": example.tuning.model_copy(update={"timeout_seconds": None})})
    window = training_window(config, datetime(2013, 3, 1), as_of_given=True)
    frame = read_flights_example()
    frame = frame[(frame["time_hour"] >= window.start) & (frame["time_hour"] < window.end)].reset_index(drop=True)
    data = prepare_data(frame, config, where="flights", window=window)
    arrays = (encode_rows(data.split.train, data.encoding), make_target(data.split.train, config.target),
              encode_rows(data.split.validation, data.encoding), make_target(data.split.validation, config.target))
    print(f"\n## Tuning: {len(frame):,} rows (train {len(data.split.train):,}), budget {trials} finished trials, "
          f"PostgreSQL study")
    per_trial = None
    # (workers, LightGBM threads per trial): one worker with the config's 2 threads, one with 1 thread (the same
    # per-trial threads as each of 2 workers), two workers with 1 thread each (what tuning.workers: 2 gives).
    for workers, threads in ((1, 2), (1, 1), (2, 2)):
        spawn: list[float] = []

        def timed_workers(jobs: list, spawn: list[float] = spawn) -> list[int]:
            started = time.perf_counter()
            counts = run_workers_in_processes(jobs)
            spawn.append(time.perf_counter() - started)
            return counts

        workers_config = config.model_copy(update={"tuning": config.tuning.model_copy(
            update={"workers": workers, "threads": threads})})
        with Database("retrain_bench_optuna") as storage:
            started = time.perf_counter()
            result = tune(workers_config, *arrays, storage=storage, study_name="bench", run_workers=timed_workers)
            wall = time.perf_counter() - started
        durations = result.trials["duration"].dropna()
        mean = float(durations.mean())
        if (workers, threads) == (1, 1):
            per_trial = mean
        print(f"workers={workers} (LightGBM threads per trial {max(threads // workers, 1)}): wall {wall:6.1f} s, "
              f"best validation MAE {result.best_value:.4f}, "
              f"{result.in_study} finished ({result.complete} complete, {result.pruned} pruned), "
              f"mean trial {mean:.2f} s")
    assert per_trial is not None
    projected = math.ceil(trials / 8) * per_trial
    print(f"projection to 8 workers (8 free cores): ceil({trials}/8) x {per_trial:.2f} s = {projected:.1f} s "
          "+ worker start-up (~2-5 s measured per pool here)")


def dask_part(memory_limit: str) -> None:
    from retrain.config import load_model_config
    from retrain.warehouse import get_warehouse, read_window, write_frame
    from tasks.dask_training import fit_on_dask, prepare_partitioned
    from tasks.example_data import read_flights_example
    from tasks.features import prepare_data, snapshot_columns, training_window
    from tasks.training import fit_and_score

    raw = load_model_config(REPO / "examples" / "flights.yaml")
    config = raw.model_copy(update={"training": raw.training.model_copy(update={"dask": raw.training.dask.model_copy(
        update={"workers": 2, "threads_per_worker": 1, "memory_limit": memory_limit, "tuning_rows": 50_000})})})
    frame = read_flights_example()
    warehouse = get_warehouse()
    write_frame(warehouse, frame, config.source.clean, if_exists="replace")
    window = training_window(config, datetime(2014, 1, 1), as_of_given=True)
    window = type(window)(frame["time_hour"].min().to_pydatetime(), window.end, window.as_of, True, None)
    print(f"\n## Dask vs in memory: {len(frame):,} rows x {frame.shape[1]} (the flights year), SQLite warehouse, "
          f"{ROUNDS} rounds, fixed parameters")
    started = time.perf_counter()
    snapshot = read_window(warehouse, config.source.clean, "time_hour", window.start, window.end,
                           columns=snapshot_columns(config), tie_breakers=config.source.key)
    data = prepare_data(snapshot, config, where=config.source.clean, window=window)
    in_memory = fit_and_score(data, config, FIXED, ROUNDS)
    memory_seconds = time.perf_counter() - started
    size_mb = snapshot.memory_usage(deep=True).sum() / 1e6
    print(f"in memory: {memory_seconds:6.1f} s, holdout MAE {in_memory.metrics.value:.4f} "
          f"(snapshot {size_mb:.0f} MB in pandas)")
    started = time.perf_counter()
    partitioned = prepare_partitioned(config, window, None, warehouse)
    on_dask = fit_on_dask(partitioned, config, FIXED, ROUNDS)
    dask_seconds = time.perf_counter() - started
    print(f"dask (LocalCluster 2x1 thread, {memory_limit} each, {len(partitioned.fit_ranges)} partitions of 7d): "
          f"{dask_seconds:6.1f} s "
          f"(cluster start included), holdout MAE {on_dask.metrics.value:.4f}")


def ingest_part(rows: int) -> None:
    import psycopg

    from flows.ingest import ingest_new_rows
    from retrain.settings import get_settings
    from retrain.warehouse import create_warehouse_engine, get_warehouse, write_frame
    from tasks.example_data import read_flights_example

    frame = read_flights_example().head(rows)
    print(f"\n## Ingest into PostgreSQL: {len(frame):,} rows x {frame.shape[1]}")
    with Database("retrain_bench_ingest") as url:
        os.environ["RETRAIN_WAREHOUSE_URL"] = url
        get_settings.cache_clear()
        create_warehouse_engine.cache_clear()
        write_frame(get_warehouse(), frame, "flights", if_exists="replace")  # the source table (not timed)
        config_path = REPO / "examples" / "flights.yaml"
        from prefect.testing.utilities import prefect_test_harness

        with prefect_test_harness(server_startup_timeout=120):
            started = time.perf_counter()
            ingest_new_rows(config_path=str(config_path))
            ingest_seconds = time.perf_counter() - started
        with psycopg.connect(url.replace("postgresql+psycopg", "postgresql")) as connection:
            columns = ", ".join(f'"{c}"' for c in frame.columns)
            connection.execute("CREATE TABLE copy_target AS SELECT * FROM flights LIMIT 0")  # the same columns
            buffer = io.StringIO()
            frame.to_csv(buffer, index=False, header=False)
            started = time.perf_counter()
            with connection.cursor() as cursor, cursor.copy(
                f"COPY copy_target ({columns}) FROM STDIN WITH (FORMAT csv)"
            ) as copy:
                copy.write(buffer.getvalue())
            connection.commit()
            copy_seconds = time.perf_counter() - started
        os.environ.pop("RETRAIN_WAREHOUSE_URL")
        get_settings.cache_clear()
        create_warehouse_engine.cache_clear()
    print(f"retrain ingest (validate + clean table + ledger): {ingest_seconds:6.1f} s, "
          f"{len(frame) / ingest_seconds:,.0f} rows/s")
    print(f"bare COPY of the same rows (CSV already in memory): {copy_seconds:6.1f} s, "
          f"{len(frame) / copy_seconds:,.0f} rows/s; ratio {ingest_seconds / copy_seconds:.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", default="tuning,dask,ingest")
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--ingest-rows", type=int, default=327_346)
    # 1.5GB measured too little: each worker imports the training stack (~1 GiB unmanaged) and paused at 80%
    parser.add_argument("--dask-memory", default="3GB", help="LocalCluster memory limit per worker.")
    arguments = parser.parse_args()
    print(f"before: {uptime()}")
    parts = arguments.part.split(",")
    if "tuning" in parts:
        tuning_part(arguments.trials)
    if "dask" in parts:
        dask_part(arguments.dask_memory)
    if "ingest" in parts:
        ingest_part(arguments.ingest_rows)
    print(f"\nafter: {uptime()}")


if __name__ == "__main__":
    main()
