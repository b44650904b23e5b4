"""Optuna search over LightGBM parameters: seeded TPE, pruning on the validation curve, a resumable study.

The study is stored in an RDB (SQLite by default, PostgreSQL for teams) under a name derived from the
snapshot's fingerprint and the tuning knobs, so a re-run of the same training resumes its study:
`tuning.trials` (`--trials`) is the number of finished trials the study holds when tuning ends, and a
re-run only runs the ones still missing (none when the study already holds that many).

Resuming right after a kill: a trial that was running when its process died stays RUNNING in the
store forever, so it is marked FAIL first (one training of a model runs at a time, so a RUNNING trial
found at the start is never alive); and the sampler is seeded with the seed plus the number of trials
already in the study, because a sampler restarted on its first seed proposes the first trials'
parameters again.

Parallel tuning (`tuning.workers` > 1): the missing trials run in that many worker processes (Prefect task
runs, each driving one spawned process) against the one study in a shared RDB storage (PostgreSQL; SQLite is
refused). The budget counts the study's finished trials across workers (`MaxTrialsCallback`), the TPE
sampler of each worker has its own seed and lies about running trials (`constant_liar`) so no two workers
evaluate the same parameters, and Optuna's heartbeat fails the running trial of a worker that died.
Parallel trials are not reproducible trial by trial (which worker asks first is up to the machine); the
single-worker path stays seeded and deterministic.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import warnings
from collections.abc import Callable, Mapping
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import lightgbm as lgb
import optuna
import pandas as pd
from optuna.trial import TrialState
from optuna_integration.lightgbm import LightGBMPruningCallback
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from retrain.config import ModelConfig, TaskType
from retrain.errors import ConfigError, DataError
from retrain.model_package import encode_rows
from retrain.settings import get_settings
from tasks.features import PreparedData, learning_target
from tasks.training import LIGHTGBM_METRIC, base_params, make_dataset

logger = logging.getLogger(__name__)

MAXIMIZED_LIGHTGBM_METRICS = {"auc"}
FINISHED_STATES = (TrialState.COMPLETE, TrialState.PRUNED)
# Parallel workers: a running trial beats every HEARTBEAT_SECONDS; one silent for the grace period is failed.
HEARTBEAT_SECONDS = 10
HEARTBEAT_GRACE_SECONDS = 60


@dataclass(frozen=True)
class TuningResult:
    """The best trial of a study and the study's record, for the final fit and the MLflow run.

    Counts say what happened: `run_now` trials ran in this call, the study holds `in_study` finished
    ones (`complete` + `pruned`) for a `budget` of finished trials, `failed` trials failed in all, and
    `abandoned` RUNNING trials of a killed run were marked failed on resume.
    """

    study_name: str
    best_params: Mapping[str, Any]
    best_value: float
    best_rounds: int
    trials: pd.DataFrame
    budget: int
    run_now: int
    in_study: int
    complete: int
    pruned: int
    failed: int
    abandoned: int

    def counts(self) -> dict[str, int]:
        return {
            "budget": self.budget,
            "run_now": self.run_now,
            "in_study": self.in_study,
            "complete": self.complete,
            "pruned": self.pruned,
            "failed": self.failed,
            "abandoned": self.abandoned,
        }


def objectives_for(config: ModelConfig) -> list[str]:
    """LightGBM objectives worth trying for the configured metric.

    For MAE an L2 fit chases the heavy right tail of delays and barely beats a median, so the
    absolute-error objectives (L1, Huber) are in the space; AUC and log loss want the binary one.
    """
    if config.target.task is TaskType.BINARY:
        return ["binary"]
    if config.metric == "mae":
        return ["l1", "huber", "regression"]
    return ["regression", "huber"]


def suggest_params(trial: optuna.Trial, config: ModelConfig) -> dict[str, Any]:
    """The search space; conditional parameters appear only where their objective is chosen."""
    objectives = objectives_for(config)
    params: dict[str, Any] = {
        "objective": trial.suggest_categorical("objective", objectives) if len(objectives) > 1 else objectives[0],
        "learning_rate": trial.suggest_float("learning_rate", 0.02, 0.3, log=True),
        "num_leaves": trial.suggest_int("num_leaves", 15, 255, log=True),
        "min_data_in_leaf": trial.suggest_int("min_data_in_leaf", 10, 300, log=True),
        "feature_fraction": trial.suggest_float("feature_fraction", 0.5, 1.0),
        "bagging_fraction": trial.suggest_float("bagging_fraction", 0.5, 1.0),
        "bagging_freq": 1,
        "lambda_l2": trial.suggest_float("lambda_l2", 1e-3, 10.0, log=True),
    }
    if params["objective"] == "huber":
        params["alpha"] = trial.suggest_float("huber_delta", 1.0, 60.0, log=True)
    return params


def study_name_for(config: ModelConfig, fingerprint: str) -> str:
    """Same model, snapshot and tuning knobs → same study, so a re-run resumes instead of restarting."""
    knobs = {
        "metric": config.metric,
        "target": config.target.model_dump(mode="json"),
        "features": config.features.model_dump(mode="json"),
        "split": config.split.model_dump(mode="json"),
        "seed": config.tuning.seed,
        "max_rounds": config.tuning.max_rounds,
        "early_stopping_rounds": config.tuning.early_stopping_rounds,
    }
    knob_hash = hashlib.blake2b(json.dumps(knobs, sort_keys=True).encode(), digest_size=4).hexdigest()
    return f"{config.name}-{fingerprint[:12]}-{knob_hash}"


def study_storage(url: str | None, heartbeat: bool = False) -> optuna.storages.BaseStorage | None:
    """The study's RDB storage (None: in memory). A SQLite file is switched to WAL, once and for good:
    each pruning report is a commit, and WAL measured about 20% less time per report than SQLite's
    default rollback journal; it also lets a dashboard read while a study writes.

    Args:
        heartbeat: Beat a heartbeat per running trial (parallel workers): a trial whose worker died is
            marked FAIL after the grace period by the next trial any worker starts.
    """
    if url is None:
        return None
    is_sqlite = url.startswith("sqlite")
    beats = {"heartbeat_interval": HEARTBEAT_SECONDS, "grace_period": HEARTBEAT_GRACE_SECONDS} if heartbeat else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeat: experimental since 2.9
        storage = optuna.storages.RDBStorage(
            url, engine_kwargs={"connect_args": {"timeout": 30}} if is_sqlite else {}, **beats
        )
    if is_sqlite:
        with storage.engine.connect() as connection:
            connection.exec_driver_sql("PRAGMA journal_mode=WAL")
    return storage


def fail_abandoned_trials(study: optuna.Study, storage: optuna.storages.BaseStorage) -> int:
    """Mark the study's RUNNING trials FAIL: left by a process that died mid-trial; returns how many.

    Only correct while one process tunes a study at a time, which the per-model lock of a training
    guarantees. (Optuna's heartbeat would also find them, but only after a grace period, so a resume
    right after a kill would still count them as running.)
    """
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    if not running:
        return 0
    study_id = storage.get_study_id_from_name(study.study_name)
    for trial in running:
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        storage.set_trial_user_attr(trial_id, "failed_because", "its process ended while it ran")
        storage.set_trial_state_values(trial_id, state=TrialState.FAIL)
    logger.warning("study %s: %d trial(s) left RUNNING by an ended process marked FAIL", study.study_name, len(running))
    return len(running)


@dataclass(frozen=True)
class TuningFrames:
    """The encoded rows a trial fits and scores: what every worker of a study needs, and nothing else."""

    train_features: pd.DataFrame
    train_target: pd.Series
    validation_features: pd.DataFrame
    validation_target: pd.Series


@dataclass(frozen=True)
class WorkerJob:
    """One trial worker's share of a parallel study: a picklable description, so it runs in another process.

    `budget` is the number of finished trials the study must hold; every worker stops once it does
    (Optuna's `MaxTrialsCallback` counts the study's trials, not the worker's), so the budget holds across
    workers however the trials fall between them.
    """

    config: ModelConfig
    frames: TuningFrames
    storage: str
    study_name: str
    budget: int
    seed: int
    threads: int
    index: int


def make_objective(
    config: ModelConfig, frames: TuningFrames, threads: int | None = None
) -> Callable[[optuna.Trial], float]:
    """The trial function: fit LightGBM with the trial's parameters, prune on the validation curve.

    Args:
        threads: LightGBM threads per fit (default: the config's); parallel workers share the machine's cores.
    """
    lightgbm_metric = LIGHTGBM_METRIC[config.metric]
    categorical = [column for column in frames.train_features.columns if column in set(config.features.categorical)]
    train_set = make_dataset(frames.train_features, frames.train_target, categorical)
    validation_set = lgb.Dataset(
        frames.validation_features,
        label=frames.validation_target.to_numpy(),
        reference=train_set,
        params={"verbosity": -1},
        free_raw_data=False,
    )
    fixed = base_params(config) | ({"num_threads": threads} if threads else {})

    def objective(trial: optuna.Trial) -> float:
        params = {**fixed, **suggest_params(trial, config)}
        booster = lgb.train(
            params,
            train_set,
            num_boost_round=config.tuning.max_rounds,
            valid_sets=[validation_set],
            valid_names=["validation"],
            callbacks=[
                lgb.early_stopping(config.tuning.early_stopping_rounds, verbose=False),
                LightGBMPruningCallback(
                    trial, lightgbm_metric, valid_name="validation", report_interval=config.tuning.pruning_interval
                ),
            ],
        )
        trial.set_user_attr("best_rounds", int(booster.best_iteration or booster.current_iteration()))
        return float(booster.best_score["validation"][lightgbm_metric])

    return objective


def make_pruner() -> optuna.pruners.BasePruner:
    return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=20)


def check_workers_storage(workers: int, storage: str | None) -> None:
    """Refuse parallel workers on a storage they cannot share.

    Raises:
        ConfigError: `tuning.workers` > 1 with SQLite or in memory: SQLite serialises every write of every
            worker behind one file lock (and a file is not reachable from another machine), so the workers
            would wait on each other instead of tuning.
    """
    if workers <= 1:
        return
    if storage is None or storage.startswith("sqlite"):
        where = "in memory" if storage is None else "SQLite"
        raise ConfigError(
            f"tuning.workers is {workers} but the Optuna storage is {where}: parallel workers need a shared RDB "
            "storage; set RETRAIN_OPTUNA_STORAGE to a PostgreSQL URL (postgresql+psycopg://...) or use "
            "tuning.workers: 1"
        )


def worker_seed(seed: int, earlier: int, index: int) -> int:
    """A distinct sampler seed per worker (and per resume): workers on one seed would propose the same
    random start-up trials at the same moment."""
    return seed + earlier + 7919 * index


def run_trial_worker(job: WorkerJob) -> int:
    """One worker: optimise the shared study until it holds `job.budget` finished trials; returns how many
    trials this worker ran.

    The sampler lies about running trials (`constant_liar`), so two workers never propose what another
    is evaluating; the storage beats a heartbeat per running trial, so a trial whose worker died is failed
    by whichever worker starts its next trial after the grace period.
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = study_storage(job.storage, heartbeat=True)
    study = optuna.load_study(
        study_name=job.study_name,
        storage=storage,
        sampler=optuna.samplers.TPESampler(seed=job.seed, constant_liar=True),
        pruner=make_pruner(),
    )
    if len(study.get_trials(deepcopy=False, states=FINISHED_STATES)) >= job.budget:
        return 0
    objective = make_objective(job.config, job.frames, threads=job.threads)
    ran = 0

    def count(_study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        nonlocal ran
        ran += 1
        logger.info("worker %d: trial %d %s value=%s", job.index, trial.number, trial.state.name, trial.value)

    study.optimize(
        objective,
        n_trials=job.budget,
        timeout=job.config.tuning.timeout_seconds,
        callbacks=[optuna.study.MaxTrialsCallback(job.budget, states=FINISHED_STATES), count],
    )
    return ran


RunWorkers = Callable[[list[WorkerJob]], list[int]]


def run_workers_in_processes(jobs: list[WorkerJob]) -> list[int]:
    """Each job in its own process (the standard library's pool): the plain runner, without Prefect."""
    with ProcessPoolExecutor(max_workers=len(jobs), mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(run_trial_worker, jobs))


def tune(
    config: ModelConfig,
    train_features: pd.DataFrame,
    train_target: pd.Series,
    validation_features: pd.DataFrame,
    validation_target: pd.Series,
    storage: str | None,
    study_name: str,
    on_trial: Callable[[optuna.Study, optuna.trial.FrozenTrial, int, int], None] | None = None,
    run_workers: RunWorkers = run_workers_in_processes,
) -> TuningResult:
    """Run the trials still missing from the budget, then report the best one.

    With `tuning.workers` > 1 the missing trials run in that many worker processes against the one study
    in the RDB storage (`run_workers` starts them: Prefect task runs, each driving a process); with one
    worker they run here, seeded, so a re-run proposes the same trials.

    Args:
        on_trial: Called after each trial run now with the study, the trial, its position among the
            trials run now (from 1) and how many are planned now (in this process: one worker only).
        run_workers: Runs the worker jobs in parallel and returns how many trials each ran.

    Raises:
        ConfigError: several workers on a storage they cannot share (SQLite, in memory).
        DataError: no trial completed (all pruned or failed), so there is nothing to fit.
    """
    workers = config.tuning.workers
    check_workers_storage(workers, storage)
    frames = TuningFrames(train_features, train_target, validation_features, validation_target)
    lightgbm_metric = LIGHTGBM_METRIC[config.metric]
    fixed = base_params(config)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rdb = study_storage(storage)
    study = optuna.create_study(
        study_name=study_name,
        storage=rdb,
        load_if_exists=True,
        direction="maximize" if lightgbm_metric in MAXIMIZED_LIGHTGBM_METRICS else "minimize",
        sampler=optuna.samplers.TPESampler(seed=config.tuning.seed),
        pruner=make_pruner(),
    )
    abandoned = fail_abandoned_trials(study, rdb) if rdb is not None else 0
    earlier = len(study.trials)
    if earlier:
        # A resumed study: a sampler on the first seed would propose the first trials' parameters again.
        study.sampler = optuna.samplers.TPESampler(seed=config.tuning.seed + earlier)
    finished = len(study.get_trials(deepcopy=False, states=FINISHED_STATES))
    remaining = max(config.tuning.trials - finished, 0)
    if remaining and workers > 1:
        assert storage is not None  # check_workers_storage refused the rest
        threads = max(config.tuning.threads // workers, 1)
        jobs = [
            WorkerJob(config, frames, storage, study_name, config.tuning.trials,
                      worker_seed(config.tuning.seed, earlier, index), threads, index)
            for index in range(min(workers, remaining))
        ]
        run_workers(jobs)
    elif remaining:
        objective = make_objective(config, frames)
        position = iter(range(1, remaining + 1))

        def report(current: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
            if on_trial is not None:
                on_trial(current, trial, next(position), remaining)

        study.optimize(objective, n_trials=remaining, timeout=config.tuning.timeout_seconds, callbacks=[report])
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        raise DataError(
            f"no Optuna trial of study '{study_name}' completed ({len(study.trials)} tried): "
            "raise tuning.trials or tuning.timeout_seconds"
        )
    best = study.best_trial
    params = {**fixed, **_trial_params(best.params)}
    pruned = len(study.get_trials(deepcopy=False, states=(TrialState.PRUNED,)))
    return TuningResult(
        study_name=study_name,
        best_params=params,
        best_value=float(best.value),
        best_rounds=int(best.user_attrs["best_rounds"]),
        trials=trials_table(study),
        budget=config.tuning.trials,
        run_now=len(study.trials) - earlier,
        in_study=len(complete) + pruned,
        complete=len(complete),
        pruned=pruned,
        failed=len(study.get_trials(deepcopy=False, states=(TrialState.FAIL,))),
        abandoned=abandoned,
    )


def _trial_params(suggested: Mapping[str, Any]) -> dict[str, Any]:
    """Optuna's names back to LightGBM's (`huber_delta` is LightGBM's `alpha`)."""
    params = dict(suggested)
    if "huber_delta" in params:
        params["alpha"] = params.pop("huber_delta")
    params["bagging_freq"] = 1
    return params


def trials_table(study: optuna.Study) -> pd.DataFrame:
    """One row per trial with JSON-safe columns, for the MLflow table artifact."""
    table = study.trials_dataframe(attrs=("number", "value", "state", "params", "user_attrs", "duration"))
    if "duration" in table:
        table["duration"] = table["duration"].dt.total_seconds()
    if "state" in table:
        table["state"] = table["state"].astype(str)
    return table


# --- Prefect tasks -------------------------------------------------------------------------------


@task(name="tuning-worker", cache_policy=NO_CACHE)
def tuning_worker(job: WorkerJob, pool: Executor) -> int:
    """One trial worker as a Prefect task run (its own state and log line in the UI); its trials run in a
    process of `pool`, so workers use every core instead of sharing one interpreter's lock."""
    ran = pool.submit(run_trial_worker, job).result()
    get_run_logger().info("worker %d ran %d trial(s) on study %s", job.index, ran, job.study_name)
    return ran


def run_workers_as_prefect_tasks(jobs: list[WorkerJob]) -> list[int]:
    """The workers as Prefect task runs on a thread pool, each driving one process that runs its trials.

    Not Prefect's `ProcessPoolTaskRunner`: measured under the CLI's temporary server (Prefect 3.9.1), its
    parent-side thread that forwards the processes' logs and events does not see the run's settings, so it
    started a second Prefect server of its own and the pool took 14 s to stop. Here the processes need no
    Prefect at all (Optuna and LightGBM only), and they are spawned, not forked from a process with threads.
    """
    from prefect.task_runners import ThreadPoolTaskRunner

    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=len(jobs), mp_context=spawn) as pool, ThreadPoolTaskRunner(
        max_workers=len(jobs)
    ) as runner:
        futures = [runner.submit(tuning_worker, parameters={"job": job, "pool": pool}) for job in jobs]
        return [future.result() for future in futures]


@task(name="tune-hyperparameters", cache_policy=NO_CACHE)
def tune_hyperparameters(data: PreparedData, config: ModelConfig) -> TuningResult:
    """Tune against the persistent study; logs each trial so a long search shows its progress."""
    log = get_run_logger()
    settings = get_settings()
    settings.resolved_home.mkdir(parents=True, exist_ok=True)
    study_name = study_name_for(config, data.fingerprint)

    def report(study: optuna.Study, trial: optuna.trial.FrozenTrial, position: int, planned: int) -> None:
        best = study.best_value if study.best_trials else float("nan")
        log.info("trial %d/%d (number %d of the study) %s value=%s best=%.4f",
                 position, planned, trial.number, trial.state.name, trial.value, best)

    result = tune(
        config,
        encode_rows(data.split.train, data.encoding),
        learning_target(data.split.train, config, data.encoding),
        encode_rows(data.split.validation, data.encoding),
        learning_target(data.split.validation, config, data.encoding),
        storage=settings.resolved_optuna_storage(),
        study_name=study_name,
        on_trial=report,
        run_workers=run_workers_as_prefect_tasks,
    )
    log.info(
        "study %s: %d trial(s) run now; it holds %d finished (%d complete, %d pruned) for a budget of %d%s; "
        "best validation %.4f with %s",
        study_name,
        result.run_now,
        result.in_study,
        result.complete,
        result.pruned,
        result.budget,
        f", {result.abandoned} abandoned trial(s) marked failed" if result.abandoned else "",
        result.best_value,
        {k: v for k, v in result.best_params.items() if k not in base_params(config)},
    )
    return result
