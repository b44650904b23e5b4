"""What Prefect, MLflow, the warehouse and the gates cost on top of the bare Optuna + LightGBM work.

Runs, on the first 100k rows of the flights example with 20 trials:
  1. a warm-up flow run (1 trial, another seed): starts the local Prefect server, creates the MLflow
     and Optuna stores, ingests the rows and registers a champion, as in a real deployment;
  2. for each of three seeds, alternately:
     - the training flow, timed: new-rows check, SQL read, contract check, tuning with an RDB study,
       final fit, champion scoring and bootstrap, MLflow run and model, registration or rejection;
     - a bare script doing the same Optuna + LightGBM work in memory (same split, seed and budget).
Prints every time, the medians and their ratio (target <= 1.10); the same seed gives both the same trials.
Run: .venv/bin/python benchmarks/train_overhead.py
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROWS = 100_000
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
from tasks.example_data import read_flights_example  # noqa: E402
from tasks.features import encode_features, make_target, prepare_data  # noqa: E402
from tasks.training import fit_and_score  # noqa: E402
from tasks.tuning import tune  # noqa: E402
from tasks.warehouse import get_warehouse, write_frame  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def write_config(seed: int, trials: int, end: str) -> Path:
    raw = yaml.safe_load((REPO / "examples" / "flights.yaml").read_text())
    raw["training_window"] = {"start": "2013-01-01", "end": end}
    raw["tuning"] = {**raw["tuning"], "seed": seed, "trials": trials, "timeout_seconds": None}
    raw["gates"] = {**raw["gates"], "threshold": 1000.0}
    raw["contract"] = str(REPO / "examples" / "flights.contract.yaml")
    path = HOME / f"flights-{seed}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def bare_run(frame, config_path: Path) -> float:  # noqa: ANN001 - a DataFrame
    """The same split, search and final fit with no orchestration, tracking or storage."""
    config = load_model_config(config_path)
    started = time.perf_counter()
    data = prepare_data(frame, config, where="memory")
    features, target = config.features, config.target
    result = tune(
        config,
        encode_features(data.split.train, features, data.vocabulary),
        make_target(data.split.train, target),
        encode_features(data.split.validation, features, data.vocabulary),
        make_target(data.split.validation, target),
        storage=None,  # in-memory study
        study_name="bare",
    )
    fit_and_score(data, config, result.best_params, result.best_rounds)
    return time.perf_counter() - started


def main() -> None:
    from flows.training import train_model
    from retrain.errors import GateFailed

    frame = read_flights_example().head(ROWS)
    end = (frame["time_hour"].max()).isoformat()
    frame = frame[frame["time_hour"] < frame["time_hour"].max()]  # the window is half-open
    write_frame(get_warehouse(), frame, "flights", if_exists="replace")

    warm = time.perf_counter()
    train_model(config_path=str(write_config(seed=1, trials=1, end=end)))
    print(f"warm-up flow run (server start, stores, ingest of {len(frame):,} rows): {time.perf_counter() - warm:.1f} s")

    flow_times, bare_times = [], []
    for seed in SEEDS:
        config_path = write_config(seed=seed, trials=TRIALS, end=end)
        started = time.perf_counter()
        try:
            outcome = train_model(config_path=str(config_path))
        except GateFailed as rejected:
            outcome = rejected.outcome
        flow_times.append(time.perf_counter() - started)
        bare_times.append(bare_run(frame, config_path))
        print(
            f"seed {seed}: flow {flow_times[-1]:6.1f} s  bare {bare_times[-1]:6.1f} s  "
            f"trials {outcome.trials}  decision {outcome.decision}  mae {outcome.metric_value:.3f}"
        )

    flow_median, bare_median = statistics.median(flow_times), statistics.median(bare_times)
    print(f"rows {len(frame):,}, trials {TRIALS}, medians of {len(SEEDS)} seeds:")
    print(f"training flow  {flow_median:7.1f} s")
    print(f"bare script    {bare_median:7.1f} s")
    print(f"ratio          {flow_median / bare_median:7.3f}   (target <= 1.10)")


if __name__ == "__main__":
    main()
