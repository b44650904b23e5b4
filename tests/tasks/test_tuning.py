"""Optuna tuning: deterministic with its seed, resumable from its RDB study."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from retrain.config import load_model_config
from tasks.features import encode_features, make_target, prepare_data
from tasks.tuning import objectives_for, study_name_for, tune
from tests.conftest import EXAMPLE_CONFIG


@pytest.fixture(scope="module")
def small_problem(flights_small: pd.DataFrame):
    config = load_model_config(EXAMPLE_CONFIG).with_overrides(trials=3)
    config = config.model_copy(update={"tuning": config.tuning.model_copy(update={"max_rounds": 40})})
    data = prepare_data(flights_small.iloc[:6000], config, where="flights")
    features, target = config.features, config.target
    return config, data, (
        encode_features(data.split.train, features, data.vocabulary),
        make_target(data.split.train, target),
        encode_features(data.split.validation, features, data.vocabulary),
        make_target(data.split.validation, target),
    )


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
    again = tune(config.with_overrides(trials=3), *arrays, storage=storage, study_name="resume")
    assert (first.run_now, again.run_now) == (2, 1)
    assert len(again.trials) == 3


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
