"""Parallel tuning: several worker processes on one Optuna study in PostgreSQL (`tuning.workers`)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

import optuna
import pandas as pd
import pytest
import sqlalchemy as sa
from optuna.trial import TrialState

from retrain.config import load_model_config
from retrain.errors import ConfigError
from retrain.model_package import encode_rows
from tasks.features import make_target, prepare_data
from tasks.tuning import (
    check_workers_storage,
    run_workers_as_prefect_tasks,
    run_workers_in_processes,
    tune,
    worker_seed,
)
from tests.conftest import EXAMPLE_CONFIG, POSTGRES_URL, postgres_available, window_around

pytestmark = pytest.mark.postgres


@contextlib.contextmanager
def fresh_database() -> Iterator[str]:
    """A PostgreSQL database of our own (Optuna keeps its tables in the default schema), dropped after."""
    reason = postgres_available()
    if reason:
        pytest.skip(reason)
    name = f"retrain_optuna_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield POSTGRES_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


@pytest.fixture
def optuna_database() -> Iterator[str]:
    with fresh_database() as url:
        yield url


@pytest.fixture(scope="module")
def small_problem(flights_small: pd.DataFrame):
    config = load_model_config(EXAMPLE_CONFIG)
    config = config.model_copy(update={"tuning": config.tuning.model_copy(update={"max_rounds": 40, "workers": 2})})
    rows = flights_small.iloc[:6000]
    data = prepare_data(rows, config, where="flights", window=window_around(rows))
    return config, (
        encode_rows(data.split.train, data.encoding),
        make_target(data.split.train, config.target),
        encode_rows(data.split.validation, data.encoding),
        make_target(data.split.validation, config.target),
    )


def finished(storage: str, name: str) -> list[optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name=name, storage=storage)
    return study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))


@pytest.mark.parametrize("storage", [None, "sqlite:///optuna.db", "sqlite:////tmp/x/optuna.db"])
def test_several_workers_are_refused_on_a_storage_they_cannot_share(storage: str | None) -> None:
    with pytest.raises(ConfigError, match=r"tuning\.workers is 2 .*(SQLite|in memory).*PostgreSQL"):
        check_workers_storage(2, storage)


def test_one_worker_runs_on_any_storage_and_several_on_postgresql() -> None:
    check_workers_storage(1, None)
    check_workers_storage(1, "sqlite:///optuna.db")
    check_workers_storage(4, "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def test_workers_get_distinct_seeds_across_resumes() -> None:
    seeds = {worker_seed(42, earlier, index) for earlier in range(0, 40, 8) for index in range(4)}
    assert len(seeds) == 20


def test_tune_refuses_two_workers_on_sqlite_before_any_trial(small_problem, tmp_path) -> None:
    config, arrays = small_problem
    with pytest.raises(ConfigError, match="tuning.workers"):
        tune(config, *arrays, storage=f"sqlite:///{tmp_path / 'optuna.db'}", study_name="refused")
    assert not (tmp_path / "optuna.db").exists()


def test_two_worker_processes_fill_one_study_without_repeats(small_problem, optuna_database: str) -> None:
    config, arrays = small_problem
    config = config.with_overrides(trials=8)
    used: list[list[int]] = []

    def run_and_record(jobs):
        assert [job.index for job in jobs] == [0, 1] and len({job.seed for job in jobs}) == 2
        assert all(job.threads == 1 for job in jobs)  # two workers share the config's 2 threads
        counts = run_workers_in_processes(jobs)
        used.append(counts)
        return counts

    result = tune(config, *arrays, storage=optuna_database, study_name="parallel", run_workers=run_and_record)
    trials = finished(optuna_database, "parallel")
    params = [tuple(sorted(trial.params.items())) for trial in trials]
    assert 8 <= len(trials) <= 9  # each worker stops once the study holds 8; one trial may finish in flight
    assert len(set(params)) == len(params), "two workers evaluated the same parameters"
    # Every trial run now is one worker's; how the budget splits between them is the scheduler's (a worker that
    # starts late on a busy machine may find the study full), so the test does not ask for both to take part.
    assert sum(used[0]) == result.run_now and len(used[0]) == 2
    assert result.in_study == len(trials) and result.budget == 8
    study = optuna.load_study(study_name="parallel", storage=optuna_database)
    assert not study.get_trials(states=(TrialState.RUNNING,))
    assert result.best_value == study.best_value  # one best, the study's
    assert result.best_rounds == study.best_trial.user_attrs["best_rounds"]

    again = tune(config, *arrays, storage=optuna_database, study_name="parallel", run_workers=run_and_record)
    assert again.run_now == 0 and len(used) == 1, "a full study starts no worker"


@pytest.mark.slow
def test_workers_run_as_prefect_task_runs(small_problem, optuna_database: str, prefect_harness) -> None:
    from prefect import flow

    config, arrays = small_problem
    config = config.with_overrides(trials=4)

    @flow
    def parallel_tuning() -> int:
        return tune(config, *arrays, storage=optuna_database, study_name="prefect",
                    run_workers=run_workers_as_prefect_tasks).in_study

    assert parallel_tuning() >= 4
    params = [tuple(sorted(t.params.items())) for t in finished(optuna_database, "prefect")]
    assert len(set(params)) == len(params)


def test_a_dead_workers_running_trial_is_failed_by_the_heartbeat(
    small_problem, optuna_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    from tasks import tuning
    from tasks.tuning import TuningFrames, WorkerJob, run_trial_worker, study_storage

    monkeypatch.setattr(tuning, "HEARTBEAT_SECONDS", 1)
    monkeypatch.setattr(tuning, "HEARTBEAT_GRACE_SECONDS", 2)
    config, arrays = small_problem
    storage = study_storage(optuna_database, heartbeat=True)
    study = optuna.create_study(study_name="dead", storage=storage)
    dead = study.ask()  # a worker took this trial, beat once, and died
    storage.record_heartbeat(dead._trial_id)
    time.sleep(3)
    job = WorkerJob(config, TuningFrames(*arrays), optuna_database, "dead", budget=2, seed=1, threads=1, index=0)
    assert run_trial_worker(job) == 2
    trials = optuna.load_study(study_name="dead", storage=optuna_database).trials
    states = {trial.number: trial.state for trial in trials}
    assert states[dead.number] == TrialState.FAIL
    assert sorted(state.name for number, state in states.items() if number != dead.number) in (
        ["COMPLETE", "COMPLETE"], ["COMPLETE", "PRUNED"], ["PRUNED", "PRUNED"])
