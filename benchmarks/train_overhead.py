"""What Prefect, MLflow, the warehouse and the gates cost on top of the bare Optuna + LightGBM work.

    .venv/bin/python benchmarks/train_overhead.py [--rows 20000,100000] [--seeds 2,3,4] [--trials 20]

For each snapshot size in `--rows` (the first rows of the flights example; sizes beyond its 327k rows are the
table tiled year after year, as in benchmarks/validate_throughput.py, so 1,000,000 works but takes long), with
20 trials:
  1. a warm-up flow run (1 trial, another seed): creates the MLflow
     and Optuna stores, ingests the rows and registers a champion, as in a real deployment;
  2. for each of three seeds, alternately:
     - the training flow, timed: new-rows check, SQL read, contract check, tuning with an RDB study,
       final fit, champion scoring and bootstrap, MLflow run and raw-row model, registration or rejection;
     - a bare script doing the same Optuna + LightGBM work in memory (same split, seed and budget).
Prints every time, the medians and their ratio (target <= 1.10 at 100k rows, tending to 1.0 as the snapshot
grows), then where the flow's time goes, step by step, read from the flow's own task runs on the Prefect server
(so the remaining overhead has names). The same seed gives both the same trials. Each size runs in a fresh
RETRAIN_HOME, and the machine's load average is printed beside each table (2 shared cores here).
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path

ROWS = (20_000, 100_000)
TRIALS = 20
SEEDS = (2, 3, 4)

HOME = Path(tempfile.mkdtemp(prefix="retrain-bench-"))
os.environ["RETRAIN_HOME"] = str(HOME)
os.environ.setdefault("PREFECT_HOME", str(HOME / "prefect"))
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["DO_NOT_TRACK"] = "1"
os.environ["PREFECT_LOGGING_LEVEL"] = "WARNING"
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import yaml  # noqa: E402

from retrain.config import load_model_config  # noqa: E402
from retrain.model_package import encode_rows  # noqa: E402
from retrain.settings import get_settings  # noqa: E402
from retrain.warehouse import create_warehouse_engine, get_warehouse, write_frame  # noqa: E402
from tasks.example_data import read_flights_example  # noqa: E402
from tasks.features import make_target, prepare_data, training_window  # noqa: E402
from tasks.training import fit_and_score  # noqa: E402
from tasks.tuning import tune  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

# The flow's task runs, grouped into the steps a reader thinks in (task name -> step).
STEPS = {
    "close-abandoned-runs": "start: close abandoned MLflow runs",
    "count_new_rows": "ingest check",
    "resolve-training-window": "window (as_of) and run name",
    "label-training-run": "window (as_of) and run name",
    "load-training-snapshot": "SQL read",
    "read_model_contract": "contract check",
    "check-snapshot-contract": "contract check",
    "prepare-training-data": "split and fingerprint",
    "find-earlier-training": "nothing-new check",
    "start-training-run": "MLflow logging",
    "tune-hyperparameters": "tuning",
    "fit-final-model": "fit",
    "score-champion": "champion scoring and gates",
    "compare-with-champion": "champion scoring and gates",
    "log-training-results": "MLflow logging",
    "check-model-loads": "infra gate (model loads, raw rows)",
    "release-model": "registration",
    "finish-training-run": "MLflow logging",
    "publish-training-report": "Prefect report",
}
ORDER = [
    "flow start", "start: close abandoned MLflow runs", "ingest check", "window (as_of) and run name", "SQL read",
    "contract check", "split and fingerprint", "nothing-new check", "tuning", "fit", "champion scoring and gates",
    "MLflow logging", "infra gate (model loads, raw rows)", "registration", "Prefect report",
    "between tasks", "flow end",
]


def write_config(seed: int, trials: int, end: str) -> Path:
    raw = yaml.safe_load((REPO / "examples" / "flights.yaml").read_text())
    raw["training_window"] = {"start": "2013-01-01", "end": end}
    raw["tuning"] = {**raw["tuning"], "seed": seed, "trials": trials, "timeout_seconds": None}
    raw["gates"] = {**raw["gates"], "threshold": 1000.0}
    raw["contract"] = str(REPO / "examples" / "flights.contract.yaml")
    path = Path(os.environ["RETRAIN_HOME"]).parent / f"flights-{Path(os.environ['RETRAIN_HOME']).name}-{seed}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def bare_run(frame, config_path: Path) -> dict[str, float]:  # noqa: ANN001 - a DataFrame
    """The same split, search and final fit with no orchestration, tracking or storage; seconds per step."""
    config = load_model_config(config_path)
    times = {}
    started = time.perf_counter()
    window = training_window(config, frame["time_hour"].max().to_pydatetime(), as_of_given=False)
    data = prepare_data(frame, config, where="memory", window=window)
    times["split and fingerprint"] = time.perf_counter() - started
    started = time.perf_counter()
    result = tune(
        config,
        encode_rows(data.split.train, data.encoding),
        make_target(data.split.train, config.target),
        encode_rows(data.split.validation, data.encoding),
        make_target(data.split.validation, config.target),
        storage=None,  # in-memory study
        study_name="bare",
    )
    times["tuning"] = time.perf_counter() - started
    started = time.perf_counter()
    fit_and_score(data, config, result.best_params, result.best_rounds)
    times["fit"] = time.perf_counter() - started
    return times


def flow_steps(flow_run_id: str, called: datetime, returned: datetime) -> dict[str, float]:
    """Seconds per step of one training flow run, from its task runs as the Prefect server recorded them."""
    from uuid import UUID

    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        run = client.read_flow_run(UUID(flow_run_id))
        task_runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
    steps: dict[str, float] = defaultdict(float)
    spans = sorted((t.start_time, t.end_time, t.name.rsplit("-", 1)[0]) for t in task_runs if t.start_time)
    for start, end, name in spans:
        steps[STEPS.get(name, name)] += (end - start).total_seconds()
    steps["flow start"] = (spans[0][0] - called).total_seconds()
    steps["flow end"] = (returned - spans[-1][1]).total_seconds()
    total = (returned - called).total_seconds()
    steps["between tasks"] = total - sum(steps.values())
    return dict(steps)


def snapshot_rows(rows: int):  # noqa: ANN201 - a DataFrame
    """The first `rows` rows of the flights example; beyond its 327k rows, the table tiled a year later each time
    (as benchmarks/validate_throughput.py does), so every row is a real flight at a new instant."""
    import pandas as pd

    flights = read_flights_example()
    copies = []
    for copy in range(-(-rows // len(flights))):
        shifted = flights.copy()
        shifted["time_hour"] = shifted["time_hour"] + pd.DateOffset(years=copy)
        shifted["year"] = shifted["year"] + copy
        copies.append(shifted)
    return pd.concat(copies, ignore_index=True).head(rows)


def measure(rows: int, seeds: tuple[int, ...], trials: int) -> None:
    """One size: a warm-up run, then flow and bare script alternately per seed; prints the table."""
    from flows.training import train_model

    frame = snapshot_rows(rows)
    end = (frame["time_hour"].max()).isoformat()
    frame = frame[frame["time_hour"] < frame["time_hour"].max()]  # the window is half-open
    write_frame(get_warehouse(), frame, "flights", if_exists="replace")

    warm = time.perf_counter()
    train_model(config_path=str(write_config(seed=1, trials=1, end=end)))
    print(f"\n== {len(frame):,} rows, {trials} trials ==")
    print(f"warm-up flow run (server start, stores, ingest of {len(frame):,} rows): {time.perf_counter() - warm:.1f} s")

    flow_times, bare_times = [], []
    flow_breakdowns, bare_breakdowns = [], []
    for seed in seeds:
        config_path = write_config(seed=seed, trials=trials, end=end)
        called = datetime.now(UTC)
        started = time.perf_counter()
        outcome = train_model(config_path=str(config_path))
        flow_times.append(time.perf_counter() - started)
        flow_breakdowns.append(flow_steps(outcome.flow_run_id, called, datetime.now(UTC)))
        bare_breakdowns.append(bare_run(frame, config_path))
        bare_times.append(sum(bare_breakdowns[-1].values()))
        print(
            f"seed {seed}: flow {flow_times[-1]:6.1f} s  bare {bare_times[-1]:6.1f} s  "
            f"trials {outcome.trials['run_now']} run ({outcome.trials['complete']} complete, "
            f"{outcome.trials['pruned']} pruned)  decision {outcome.decision}  mae {outcome.metric_value:.3f}"
        )

    flow_median, bare_median = statistics.median(flow_times), statistics.median(bare_times)
    load = os.getloadavg()
    print(f"rows {len(frame):,}, trials {trials}, medians of {len(seeds)} seeds; {os.cpu_count()} cores, load "
          f"average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}:")
    print(f"training flow  {flow_median:7.1f} s")
    print(f"bare script    {bare_median:7.1f} s")
    print(f"ratio          {flow_median / bare_median:7.3f}   (target <= 1.10 at 100k rows)")
    print(f"fixed cost     {flow_median - bare_median:7.1f} s   (flow - bare)")
    print("where the time goes (median seconds per step):")
    print(f"  {'step':<38} {'flow':>8} {'bare':>8} {'extra':>8}")
    steps = ORDER + sorted({name for b in flow_breakdowns for name in b} - set(ORDER))
    for step in steps:
        flow = statistics.median(b.get(step, 0.0) for b in flow_breakdowns)
        bare = statistics.median(b.get(step, 0.0) for b in bare_breakdowns)
        print(f"  {step:<38} {flow:8.2f} {bare:8.2f} {flow - bare:8.2f}")


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default=",".join(str(r) for r in ROWS), help="Snapshot sizes, comma-separated.")
    parser.add_argument("--seeds", default=",".join(str(s) for s in SEEDS), help="Seeds (one timed pair each).")
    parser.add_argument("--trials", type=int, default=TRIALS)
    options = parser.parse_args()
    seeds = tuple(int(seed) for seed in options.seeds.split(","))
    from retrain.prefect_server import temporary_prefect_server

    # The flows run against a Prefect server as `retrain train` runs them (the temporary one, unless
    # PREFECT_API_URL names one); started before any timing, so no size pays for it.
    with temporary_prefect_server():
        for rows in (int(size) for size in options.rows.split(",")):
            home = HOME / f"rows-{rows}"
            os.environ["RETRAIN_HOME"] = str(home)
            get_settings.cache_clear()
            create_warehouse_engine.cache_clear()
            measure(rows, seeds, options.trials)


if __name__ == "__main__":
    main()
