"""Optuna tuning: deterministic with its seed, resumable from its RDB study."""

from __future__ import annotations

from pathlib import Path

import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

from retrain.config import load_model_config
from retrain.model_package import encode_rows
from tasks.features import make_target, prepare_data
from tasks.tuning import objectives_for, study_name_for, tune
from tests.conftest import EXAMPLE_CONFIG, window_around


@pytest.fixture(scope="module")
def small_problem(flights_small: pd.DataFrame):
    config = load_model_config(EXAMPLE_CONFIG).with_overrides(trials=3)
    config = config.model_copy(update={"tuning": config.tuning.model_copy(update={"max_rounds": 40})})
    rows = flights_small.iloc[:6000]
    data = prepare_data(rows, config, where="flights", window=window_around(rows))
    return config, data, (
        encode_rows(data.split.train, data.encoding),
        make_target(data.split.train, config.target),
        encode_rows(data.split.validation, data.encoding),
        make_target(data.split.validation, config.target),
    )


def finished_params(storage: str, name: str) -> list[dict]:
    study = optuna.load_study(study_name=name, storage=storage)
    return [trial.params for trial in study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))]


def test_same_snapshot_and_seed_give_the_same_best_trial(small_problem, tmp_path: Path) -> None:
    config, _, arrays = small_problem
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    first = tune(config, *arrays, storage=storage, study_name="a")
    second = tune(config, *arrays, storage=storage, study_name="b")
    assert first.best_params == second.best_params
    assert first.best_value == second.best_value and first.best_rounds == second.best_rounds
    assert first.complete + first.pruned == 3


def test_a_rerun_resumes_the_study_and_runs_only_missing_trials(small_problem, tmp_path: Path) -> None:
    config, _, arrays = small_problem
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    first = tune(config.with_overrides(trials=2), *arrays, storage=storage, study_name="resume")
    again = tune(config.with_overrides(trials=4), *arrays, storage=storage, study_name="resume")
    same = tune(config.with_overrides(trials=3), *arrays, storage=storage, study_name="resume")
    assert (first.run_now, first.in_study) == (2, 2)
    assert (again.run_now, again.in_study, again.budget) == (2, 4, 4)
    assert (same.run_now, same.in_study, same.budget) == (0, 4, 3)  # a smaller budget runs nothing
    params = finished_params(storage, "resume")
    assert len(params) == 4 and all(params.count(p) == 1 for p in params), "a resumed study repeated parameters"


def test_a_trial_left_running_by_a_dead_process_is_failed_on_resume(small_problem, tmp_path: Path) -> None:
    config, _, arrays = small_problem
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    tune(config.with_overrides(trials=1), *arrays, storage=storage, study_name="killed")
    optuna.load_study(study_name="killed", storage=storage).ask()  # what a kill mid-trial leaves: RUNNING
    positions = []
    resumed = tune(config.with_overrides(trials=3), *arrays, storage=storage, study_name="killed",
                   on_trial=lambda study, trial, position, planned: positions.append((position, planned)))
    assert (resumed.abandoned, resumed.failed, resumed.run_now, resumed.in_study) == (1, 1, 2, 3)
    assert positions == [(1, 2), (2, 2)]
    states = [t.state for t in optuna.load_study(study_name="killed", storage=storage).trials]
    assert TrialState.RUNNING not in states and states.count(TrialState.FAIL) == 1
    params = finished_params(storage, "killed")
    assert all(params.count(p) == 1 for p in params)


def test_mae_searches_absolute_error_objectives() -> None:
    config = load_model_config(EXAMPLE_CONFIG)
    assert {"l1", "huber"} <= set(objectives_for(config))


def test_study_name_follows_snapshot_and_knobs(small_problem) -> None:
    config, data, _ = small_problem
    name = study_name_for(config, data.fingerprint)
    assert name.startswith(f"{config.name}-{data.fingerprint[:12]}")
    assert study_name_for(config, data.fingerprint) == name
    reseeded = config.model_copy(update={"tuning": config.tuning.model_copy(update={"seed": 99})})
    assert study_name_for(reseeded, data.fingerprint) != name
    assert study_name_for(config.with_overrides(trials=50), data.fingerprint) == name  # budget may grow
