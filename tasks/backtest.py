"""`retrain backtest`: a date range replayed day by day on the Retrain clock, one policy at a time, with the flows' own
decisions, so a retrain policy is chosen on evidence for each table.

What is replayed, for each day `d` of `[start, end)` (the model's clock at midnight, naive UTC):
  1. the release rules on the rows served before `d` (their labels have matured): the canary check
     (`tasks.release.analyse_canary`, settled by `settle_canary` once `release.canary.max_duration` ran out), and
     the rollback rule of a champion in its bake window (`judge_rollback`, the previous champion scored in shadow);
  2. the policy's decision: `never`; a fixed schedule (`daily`, `weekly`, `monthly`: a model that old is
     replaced, no gate asked, as a plain cron job would); or `retrain`, the one policy of `monitoring/triggers.py`
     fed the signals the monitoring flow gathers as of `d` (fresh labels since the champion's window, its age,
     its live metric against its holdout metric, drift where `drift_retrains` lets drift retrain);
  3. a training as the training flow does it (the lookback before `d`, `split_by_time`, the encoding learned
     from the training part, LightGBM on train + validation, the holdout scored against the configured naive
     forecasters, then refitted on the whole window where `training.refit` says so); for `retrain` its gates
     (`compare_with_champion`: threshold, the best naive forecaster, the champion on the same holdout rows) and
     its release path (the first model straight to champion, later ones as a canary on `release.canary.share` of
     the rows by a stable hash of the key, a newer challenger waiting while a canary runs);
  4. the day's rows predicted by the model that serves each of them (the canary for its share).
Each configured naive forecaster is a policy row too (`naive:<name>`), forecasting each day's rows from what was
known before the day (`retrain.baselines`, the gates' own forecasters).

What is left out, so a year of daily decisions takes minutes: Prefect, MLflow and Optuna. Every model is fitted
with fixed LightGBM parameters (`FIXED_PARAMS`, the same for every policy), so only the timing of trainings and
the release rules differ between rows; models are cached by training day and shared between policies.

Nothing in a day's decision, training or forecast reads a row at or after that day.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd

from monitoring.reports import sample_rows
from monitoring.triggers import Signals, TriggerPolicy, decide_retrain
from retrain.baselines import NaiveForecaster, entity_columns, naive_predictions
from retrain.clock import CalendarDuration, shift_back
from retrain.config import ModelConfig, TaskType
from retrain.errors import ConfigError, DataError
from retrain.model_package import predict_frame
from tasks.comparison import compare_with_champion
from tasks.features import make_target, prepare_data, training_window
from tasks.release import (
    CANARY_ARM,
    CHAMPION_ARM,
    PROMOTE,
    REJECT,
    analyse_canary,
    judge_rollback,
    row_losses,
    settle_canary,
)
from tasks.training import (
    METRIC_FUNCTIONS,
    base_params,
    configured_forecasters,
    fit_and_score,
    gated_as_released,
    refit_on_window,
)

logger = logging.getLogger(__name__)

DAY = timedelta(days=1)
# Fixed LightGBM parameters for every training of every policy (no Optuna per training): an L1 objective for MAE
# (L2 for RMSE, log loss for a binary task), a moderate tree and learning rate. One thread: on a shared 2-core
# machine LightGBM's OpenMP threads spin against each other (100 rounds on the 51k rows of one flights window took
# 3.7 s with 2 threads under load, 0.87 s with one).
FIXED_PARAMS: dict[str, Any] = {
    "learning_rate": 0.1, "num_leaves": 31, "min_data_in_leaf": 20, "feature_fraction": 0.8,
    "bagging_fraction": 0.8, "bagging_freq": 1, "lambda_l2": 1.0, "num_threads": 1,
}
FIXED_ROUNDS = 100
OBJECTIVES = {"mae": "l1", "rmse": "l2", "r2": "l2"}
SCHEDULES: dict[str, timedelta] = {"daily": DAY, "weekly": 7 * DAY, "monthly": CalendarDuration(1)}
POLICIES = ("retrain", "never", "daily", "weekly", "monthly")
NAIVE_PREFIX = "naive:"


# ------------------------------------------------------------------------------------------------ the models


@dataclass(frozen=True)
class BacktestModel:
    """One training of the replay: what it read, the gated model's holdout, and the model that serves."""

    trained_at: datetime
    window_start: datetime
    predict: Callable[[pd.DataFrame], np.ndarray]
    holdout: pd.DataFrame
    holdout_target: np.ndarray
    holdout_predictions: np.ndarray
    holdout_metric: float
    baseline_metric: float | None
    baseline_name: str | None
    refitted: bool
    seconds: float


@dataclass(frozen=True)
class FailedTraining:
    """A training that could not run (too few rows in its window): an outcome, the policy keeps its model."""

    trained_at: datetime
    reason: str
    seconds: float = 0.0


class TimeIndex:
    """Slices of a frame ordered by time, by binary search: `[start, end)` never reaches past `end`."""

    def __init__(self, frame: pd.DataFrame, timestamp: str) -> None:
        self.frame = frame.sort_values(timestamp, kind="stable").reset_index(drop=True)
        self.times = self.frame[timestamp].to_numpy(dtype="datetime64[ns]")

    def position(self, moment: datetime) -> int:
        return int(np.searchsorted(self.times, np.datetime64(moment, "ns"), side="left"))

    def between(self, start: datetime | None, end: datetime) -> pd.DataFrame:
        low = 0 if start is None else self.position(start)
        return self.frame.iloc[low:self.position(end)]


def as_labels(frame: pd.DataFrame, config: ModelConfig) -> pd.DataFrame:
    """The rows with the target as the model learns it (0/1 for a binary task), so naive forecasters forecast the
    label itself (the last label, the base rate), not the raw column it is cut from."""
    if config.target.task is not TaskType.BINARY:
        return frame
    labelled = frame[frame[config.target.column].notna()].copy()
    labelled[config.target.column] = make_target(labelled, config.target)
    return labelled


def entity_of(config: ModelConfig) -> list[str]:
    """The columns naming one series for last-value and seasonal forecasters (as the gates read them)."""
    return entity_columns(config.source.key, config.source.timestamp, config.gates.baseline_group)


def fit_params(config: ModelConfig) -> dict[str, Any]:
    """The fixed parameters of every backtest fit, on top of the production fit's shared ones."""
    params = {**base_params(config), **FIXED_PARAMS}
    if config.target.task is TaskType.REGRESSION:
        params["objective"] = OBJECTIVES[config.metric]
    return params


class ModelFitter:
    """Fits (and caches by training day) the model a training as of a day would release.

    The same day gives the same model whichever policy asks (trainings are deterministic), so policies share them.
    """

    def __init__(self, index: TimeIndex, config: ModelConfig, rounds: int = FIXED_ROUNDS) -> None:
        self.index, self.config, self.rounds = index, config, rounds
        self.params = fit_params(config)
        self.cache: dict[datetime, BacktestModel | FailedTraining] = {}

    def __call__(self, as_of: datetime) -> BacktestModel | FailedTraining:
        if as_of not in self.cache:
            started = time.perf_counter()
            try:
                model: BacktestModel | FailedTraining = self.fit(as_of, started)
            except DataError as error:
                model = FailedTraining(as_of, str(error), time.perf_counter() - started)
            self.cache[as_of] = model
        return self.cache[as_of]

    def fit(self, as_of: datetime, started: float) -> BacktestModel:
        """A training as of `as_of` as the training flow runs it, minus Optuna: the window before `as_of`, the
        time-ordered split, the encoding of the training part, the fit on train + validation scored on the holdout
        against the naive forecasters, then the released model (refitted on the whole window where
        `training.refit` says so)."""
        config = self.config
        window = training_window(config, as_of, as_of_given=True)
        rows = self.index.between(window.start, as_of)
        data = prepare_data(rows, config, where=config.source.clean, window=window)
        fitted = fit_and_score(data, config, self.params, self.rounds)
        released = refit_on_window(data, config, self.params, self.rounds) if config.training.refit \
            else gated_as_released(data, fitted)

        def predict(frame: pd.DataFrame) -> np.ndarray:
            if frame.empty:
                return np.empty(0, dtype="float64")
            return predict_frame(released.booster, released.encoding, frame)  # a residual model adds its base

        metrics = fitted.metrics
        return BacktestModel(as_of, window.start, predict, data.split.holdout, fitted.holdout_target,
                             fitted.holdout_predictions, metrics.value, metrics.baseline, metrics.baseline_name,
                             released.refit, time.perf_counter() - started)


# ------------------------------------------------------------------------------------------------ the replay


@dataclass
class ReleaseState:
    """Who serves during a policy's replay: the champion, a canary and its start, the previous champion while the
    new one bakes, and a challenger waiting for the canary to end."""

    champion: BacktestModel
    canary: BacktestModel | None = None
    canary_since: datetime | None = None
    previous: BacktestModel | None = None
    promoted_at: datetime | None = None
    waiting: BacktestModel | None = None


@dataclass(frozen=True)
class PolicyResult:
    """One row of the backtest: a policy's metric over the replayed rows, by month, and what it cost."""

    name: str
    metric: str
    value: float
    retrains: int
    by_month: Mapping[str, float]
    train_seconds: float
    rows: int
    decisions: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class BacktestResult:
    """Every policy's row, with the replay's range and the numbers a reader needs to trust them."""

    model: str
    start: datetime
    end: datetime
    days: int
    rows: int
    policies: tuple[PolicyResult, ...]
    fixed_params: Mapping[str, Any]
    rounds: int
    refit: bool
    seconds: float

    def policy(self, name: str) -> PolicyResult:
        return next(result for result in self.policies if result.name == name)


def check_backtest_config(config: ModelConfig) -> None:
    """A backtest replays a moving window: refuse a config with a fixed one, naming the field."""
    if config.training_window.lookback is None:
        raise ConfigError(f"model '{config.name}' trains on a fixed window ({config.training_window}): a backtest "
                          "retrains as of each day, so give training_window: {lookback: 60d}")


def parse_policies(names: Sequence[str]) -> list[str]:
    """The policies asked for (all of them when none is), each checked; `naive:*` rows always come with them."""
    chosen = list(dict.fromkeys(name.strip().lower() for name in names if name.strip())) or list(POLICIES)
    unknown = [name for name in chosen if name not in POLICIES and not name.startswith(NAIVE_PREFIX)]
    if unknown:
        raise ConfigError(f"unknown backtest polic{'y' if len(unknown) == 1 else 'ies'} {unknown}: use some of "
                          f"{list(POLICIES)}")
    return chosen


def replay_days(start: datetime, end: datetime) -> list[datetime]:
    """Every midnight in `[start, end)`: the instants the replay decides at.

    Raises:
        ConfigError: the range is empty.
    """
    first = datetime(start.year, start.month, start.day)
    if first < start:
        first += DAY
    days = []
    moment = first
    while moment < end:
        days.append(moment)
        moment += DAY
    if not days:
        raise ConfigError(f"the backtest range [{start.isoformat()}, {end.isoformat()}) holds no midnight: give "
                          "--start and --end at least a day apart")
    return days


def routed_to_canary(rows: pd.DataFrame, key: Sequence[str], timestamp: str, share: float) -> np.ndarray:
    """Which rows the canary answers: a stable hash of the row's key (as the server routes by request), below the
    share. The same row goes to the same arm in every replay."""
    columns = [column for column in key if column in rows.columns] or [timestamp]
    hashes = pd.util.hash_pandas_object(rows[columns], index=False).to_numpy()
    return (hashes % 10_000) < round(share * 10_000)


class Replay:
    """One policy lived through the days: decisions, trainings, release rules and served predictions."""

    def __init__(self, name: str, index: TimeIndex, config: ModelConfig, fitter: ModelFitter,
                 policy: TriggerPolicy) -> None:
        self.name, self.index, self.config, self.fitter, self.policy = name, index, config, fitter, policy
        self.timestamp = config.source.timestamp
        self.trainings: list[BacktestModel | FailedTraining] = []
        self.served: list[pd.DataFrame] = []
        self.decisions: dict[str, int] = {}
        self.live: dict[datetime, list[float | None]] = {}
        self.fired: set[str] = set()
        self.last_request: datetime | None = None
        self._served_cache: pd.DataFrame | None = None

    def count(self, decision: str) -> None:
        self.decisions[decision] = self.decisions.get(decision, 0) + 1

    def run(self, days: Sequence[datetime], first: BacktestModel) -> PolicyResult:
        state = ReleaseState(first)
        for day in days:
            if day > days[0]:
                if self.name == "retrain":
                    self.judge_release(state, day)
                self.decide(state, day)
            self.serve(state, day)
        return self.result()

    # -- decisions

    def decide(self, state: ReleaseState, day: datetime) -> None:
        if self.name == "never":
            return
        if self.name in SCHEDULES:
            age_limit = SCHEDULES[self.name]
            due = (shift_back(day, age_limit) >= state.champion.trained_at if isinstance(age_limit, CalendarDuration)
                   else day - state.champion.trained_at >= age_limit)
            if due:
                model = self.train(day)
                if isinstance(model, BacktestModel):
                    state.champion = model
            return
        decision = decide_retrain(self.signals(state, day), self.policy)
        self.fired.update(signal.key for signal in decision.fired)
        if not decision.retrain:
            return
        self.last_request = day
        model = self.train(day)
        if isinstance(model, FailedTraining):
            self.count("training-failed")
            return
        self.gate_and_release(state, model, day)

    def train(self, day: datetime) -> BacktestModel | FailedTraining:
        model = self.fitter(day)
        self.trainings.append(model)
        return model

    def gate_and_release(self, state: ReleaseState, model: BacktestModel, day: datetime) -> None:
        """The gates against the champion on the challenger's holdout rows, then the release path."""
        config, gates = self.config, self.config.gates
        champion = state.champion.predict(model.holdout)
        decision = compare_with_champion(
            model.holdout_target, model.holdout_predictions, champion, config.metric, gates.threshold, gates.margin,
            gates.bootstrap_resamples, gates.significance, seed=config.tuning.seed, baseline=model.baseline_metric,
            baseline_margin=gates.baseline_margin)
        if not decision.passed:
            self.count(f"rejected-{decision.gate}")
            return
        self.count("passed-gates")
        if state.canary is not None:
            if config.release.canary.superseded_by_newer:
                self.count("canary-superseded")
                state.canary, state.canary_since = model, day
            else:
                state.waiting = model  # the newest challenger waits for the canary to end
            return
        state.canary, state.canary_since = model, day
        self.count("canary-started")

    def judge_release(self, state: ReleaseState, day: datetime) -> None:
        """The canary check and the rollback rule as of `day`, on the rows served before it (labels matured)."""
        served = self.served_frame()
        rules = self.config.release
        if state.canary is not None and state.canary_since is not None:
            rows = served[served["time"] >= state.canary_since]
            rows = rows[rows["arm"].isin([CANARY_ARM, CHAMPION_ARM])]
            verdict = analyse_canary(rows[["arm", "actual", "canary", "champion"]], self.config.metric,
                                     rules.canary)
            verdict = settle_canary(verdict, day - state.canary_since, True, rules.canary)
            if verdict.decision == PROMOTE:
                self.count("promoted-timeout" if verdict.settled else "promoted")
                state.previous, state.champion, state.promoted_at = state.champion, state.canary, day
            elif verdict.decision == REJECT:
                self.count("rejected-timeout" if verdict.settled else "rejected-canary")
            if verdict.decision in (PROMOTE, REJECT):
                state.canary, state.canary_since = None, None
                if state.waiting is not None:
                    state.canary, state.canary_since, state.waiting = state.waiting, day, None
                    self.count("canary-started")
        if state.previous is not None and state.promoted_at is not None:
            if day - state.promoted_at >= rules.rollback.bake:
                state.previous, state.promoted_at = None, None
                return
            rows = served[(served["time"] >= state.promoted_at) & (served["arm"] == CHAMPION_ARM)
                          & served["previous"].notna()]
            actual = rows["actual"].to_numpy(dtype="float64")
            verdict = judge_rollback(row_losses(actual, rows["champion"].to_numpy(dtype="float64"), self.config.metric),
                                     row_losses(actual, rows["previous"].to_numpy(dtype="float64"),
                                                self.config.metric), rules.rollback)
            if verdict.breach is not None:
                self.count("rolled-back")
                state.champion, state.previous, state.promoted_at = state.previous, None, None

    def signals(self, state: ReleaseState, day: datetime) -> Signals:
        """What the monitoring flow measures as of `day` for the champion: fresh labels, age, live metric."""
        config, champion = self.config, state.champion
        seen = self.index.between(champion.trained_at, day)
        labelled = int(seen[config.target.column].notna().sum())
        window_start = shift_back(day, config.monitoring.window)
        current = self.index.between(window_start, day)
        served = self.served_frame()
        own = served[(served["time"] >= window_start) & (served["arm"] == CHAMPION_ARM)
                     & (served["trained_at"] == champion.trained_at)]
        live = None if own.empty else METRIC_FUNCTIONS[config.metric](own["actual"].to_numpy(dtype="float64"),
                                                                      own["champion"].to_numpy(dtype="float64"))
        history = self.live.setdefault(champion.trained_at, [])
        history.append(live)
        drift_share, drifted = None, ()
        if self.policy.drift_retrains and not current.empty:
            reference = sample_rows(self.index.between(champion.window_start, champion.trained_at),
                                    config.monitoring.sample_rows)
            verdicts = column_drift(reference, sample_rows(current, config.monitoring.sample_rows),
                                    config.features.numeric, config.features.categorical)
            drift_share = sum(verdicts.values()) / max(len(verdicts), 1)
            drifted = tuple(name for name, up in verdicts.items() if up)
        newest = current[current[config.target.column].notna()][self.timestamp]
        return Signals(
            as_of=day, data_end=None if newest.empty else newest.max().to_pydatetime(), drift_share=drift_share,
            drifted_columns=drifted, live_metrics=tuple(history[-self.policy.consecutive_windows:]),
            holdout_metric=champion.holdout_metric, new_labelled_rows=labelled,
            last_training_at=champion.trained_at, last_request_at=self.last_request, fired=frozenset(self.fired))

    # -- serving

    def serve(self, state: ReleaseState, day: datetime) -> None:
        """The day's rows, each predicted by the arm that serves it; the other arm (and, while the champion bakes,
        the previous champion) scored in shadow, as the canary check and the rollback rule read them."""
        rows = self.index.between(day, day + DAY)
        rows = rows[rows[self.config.target.column].notna()]
        if rows.empty:
            return
        champion = state.champion.predict(rows)
        arm = np.full(len(rows), CHAMPION_ARM, dtype=object)
        canary = np.full(len(rows), np.nan)
        if state.canary is not None:
            canary = state.canary.predict(rows)
            arm[routed_to_canary(rows, self.config.source.key, self.timestamp, self.config.release.canary.share)] = \
                CANARY_ARM
        previous = state.previous.predict(rows) if state.previous is not None else np.full(len(rows), np.nan)
        self.served.append(pd.DataFrame({
            "time": rows[self.timestamp].to_numpy(), "actual": make_target(rows, self.config.target).to_numpy(),
            "arm": arm, "champion": champion, "canary": canary, "previous": previous,
            "prediction": np.where(arm == CANARY_ARM, canary, champion),
            "trained_at": state.champion.trained_at,
        }))
        self._served_cache = None

    def served_frame(self) -> pd.DataFrame:
        if self._served_cache is None:
            self._served_cache = pd.concat(self.served, ignore_index=True) if self.served else empty_served()
        return self._served_cache

    def result(self) -> PolicyResult:
        served = self.served_frame()
        seconds = sum(model.seconds for model in self.trainings)
        return summarise(self.name, served["time"], served["actual"].to_numpy(dtype="float64"),
                         served["prediction"].to_numpy(dtype="float64"), self.config.metric, len(self.trainings),
                         seconds, self.decisions)


def empty_served() -> pd.DataFrame:
    return pd.DataFrame({"time": pd.Series(dtype="datetime64[ns]"), "actual": pd.Series(dtype="float64"),
                         "arm": pd.Series(dtype="object"), "champion": pd.Series(dtype="float64"),
                         "canary": pd.Series(dtype="float64"), "previous": pd.Series(dtype="float64"),
                         "prediction": pd.Series(dtype="float64"), "trained_at": pd.Series(dtype="datetime64[ns]")})


def summarise(name: str, times: pd.Series, actual: np.ndarray, predictions: np.ndarray, metric: str, retrains: int,
              seconds: float, decisions: Mapping[str, int] | None = None) -> PolicyResult:
    """A policy's row: the metric over every replayed row, and month by month."""
    function = METRIC_FUNCTIONS[metric]
    if not len(actual):
        raise DataError("no labelled row falls in the backtest range: widen --start/--end or load more data")
    months = pd.to_datetime(times).dt.strftime("%Y-%m").to_numpy()
    by_month = {month: function(actual[months == month], predictions[months == month])
                for month in sorted(set(months))}
    return PolicyResult(name, metric, function(actual, predictions), retrains, by_month, round(seconds, 3),
                        len(actual), dict(sorted((decisions or {}).items())))


def naive_result(forecaster: NaiveForecaster, index: TimeIndex, config: ModelConfig,
                 days: Sequence[datetime]) -> PolicyResult:
    """A naive forecaster as a policy: each day's rows forecast from the rows before the day only."""
    timestamp, target = config.source.timestamp, config.target.column
    lookback = config.training_window.lookback
    assert lookback is not None
    # The history a forecaster reads before each day: the lookback for a constant (as the model's window), the
    # period and a day for a seasonal value, two weeks for the last value (an entity unseen for longer gets the
    # fallback, the median of what was read); so a year of days stays quick.
    reach = (forecaster.period + DAY if forecaster.period is not None else 14 * DAY)
    parts: list[pd.DataFrame] = []
    for day in days:
        rows = index.between(day, day + DAY)
        rows = rows[rows[target].notna()]
        if rows.empty:
            continue
        since = shift_back(day, lookback) if forecaster.is_constant else day - reach
        history = as_labels(index.between(since, day), config)
        predictions = naive_predictions(forecaster, history, rows, timestamp=timestamp, target=target,
                                        entity=entity_of(config), known_until=day)
        parts.append(pd.DataFrame({"time": rows[timestamp].to_numpy(),
                                   "actual": make_target(rows, config.target).to_numpy(),
                                   "prediction": predictions}))
    served = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["time", "actual", "prediction"])
    return summarise(f"{NAIVE_PREFIX}{forecaster.name}", served["time"], served["actual"].to_numpy(dtype="float64"),
                     served["prediction"].to_numpy(dtype="float64"), config.metric, 0, 0.0)


def column_drift(reference: pd.DataFrame, current: pd.DataFrame, numeric: Sequence[str],
                 categorical: Sequence[str]) -> dict[str, bool]:
    """Each feature's drift verdict by Evidently's default test for its type and size, at its default threshold
    (what the monitoring flow's DataDriftPreset decides per column), without building a report per day."""
    from evidently.legacy.calculations.stattests import get_stattest
    from evidently.legacy.core import ColumnType

    verdicts = {}
    for names, kind in ((numeric, ColumnType.Numerical), (categorical, ColumnType.Categorical)):
        for name in names:
            ref, cur = reference[name], current[name]
            if kind is ColumnType.Categorical:
                ref, cur = ref.dropna().astype(str), cur.dropna().astype(str)
            else:
                ref = pd.to_numeric(ref, errors="coerce").replace([np.inf, -np.inf], np.nan).dropna()
                cur = pd.to_numeric(cur, errors="coerce").replace([np.inf, -np.inf], np.nan).dropna()
            if ref.empty or cur.empty:
                verdicts[name] = False
                continue
            test = get_stattest(ref, cur, kind, None)
            verdicts[name] = bool(test(ref, cur, kind, None).drifted)
    return verdicts


def run_backtest(frame: pd.DataFrame, config: ModelConfig, policy: TriggerPolicy, start: datetime, end: datetime,
                 policies: Sequence[str] = POLICIES, rounds: int = FIXED_ROUNDS,
                 progress: Callable[[str], None] | None = None) -> BacktestResult:
    """Replay `[start, end)` for each policy and each naive forecaster on the clean rows of `frame`.

    Args:
        frame: Clean rows (typed, as the clean table holds them) from at least the lookback before `start`.
        policy: The trigger policy of the config (`tasks.monitoring.trigger_policy`).
        policies: Policy names (`retrain`, `never`, `daily`, `weekly`, `monthly`); naive forecasters always come.

    Raises:
        ConfigError: a fixed training window, an unknown policy or an empty range.
        DataError: the window before `start` is too small to train the first model, or no row is in the range.
    """
    check_backtest_config(config)
    chosen = parse_policies(policies)
    started = time.perf_counter()
    days = replay_days(start, end)
    index = TimeIndex(frame, config.source.timestamp)
    lookback = config.training_window.lookback
    assert lookback is not None
    first_window = index.between(shift_back(days[0], lookback), days[0])
    forecasters = configured_forecasters(config, first_window[config.source.timestamp])
    fitter = ModelFitter(index, config, rounds)
    first = fitter(days[0])
    if isinstance(first, FailedTraining):
        raise DataError(f"the first model of the backtest cannot be trained as of {days[0]:%Y-%m-%d}: {first.reason}")
    results: list[PolicyResult] = []
    for name in chosen:
        if name.startswith(NAIVE_PREFIX):
            continue
        clock = time.perf_counter()
        replay = Replay(name, index, config, fitter, policy)
        results.append(replay.run(days, first))
        if progress is not None:
            progress(f"{name}: {time.perf_counter() - clock:.0f} s, {len(fitter.cache)} models fitted so far")
    for forecaster in forecasters:
        results.append(naive_result(forecaster, index, config, days))
    return BacktestResult(
        config.name, days[0], days[-1] + DAY, len(days), results[0].rows if results else 0, tuple(results),
        fit_params(config), rounds, config.training.refit,
        round(time.perf_counter() - started, 1))


def backtest_chart(result: BacktestResult) -> Any:
    """A plotly figure: each policy's metric month by month (retrains in the legend)."""
    import plotly.graph_objects as go

    figure = go.Figure()
    for policy in result.policies:
        months = list(policy.by_month)
        figure.add_trace(go.Scatter(
            x=months, y=[policy.by_month[month] for month in months], mode="lines+markers",
            name=f"{policy.name} ({policy.metric} {policy.value:.4g}, {policy.retrains} trainings)",
            line={"dash": "dot"} if policy.name.startswith(NAIVE_PREFIX) else {}))
    metric = result.policies[0].metric if result.policies else ""
    figure.update_layout(
        title=f"retrain backtest of {result.model}: {metric} by month, {result.start:%Y-%m-%d} to "
              f"{result.end:%Y-%m-%d}", xaxis_title="month", yaxis_title=metric, template="plotly_white")
    return figure


def clean_rows(source: pd.DataFrame, config: ModelConfig, contract: Any | None) -> pd.DataFrame:
    """The rows the clean table would hold: validated by the model's data contract as ingest validates them (the
    quarantined ones left out), or, without a contract, the rows with a parseable timestamp."""
    from retrain.clock import parse_timestamps
    from tasks.validation import validate_batch

    if contract is not None:
        return validate_batch(source, contract, None).clean
    frame = source.copy()
    parsed = parse_timestamps(frame[config.source.timestamp])
    frame[config.source.timestamp] = parsed.values
    return frame[~parsed.unparseable].reset_index(drop=True)


def read_backtest_rows(config: ModelConfig, end: datetime) -> pd.DataFrame:
    """The model's source rows before `end`, validated by its contract where it has one."""
    from retrain.contract import read_contract
    from retrain.warehouse import get_warehouse, read_source_rows

    source = read_source_rows(get_warehouse(), config.source.table, config.source.timestamp, upper=end)
    contract = read_contract(config.contract_path) if config.contract_path.is_file() else None
    rows = clean_rows(source, config, contract)
    return rows[rows[config.source.timestamp] < pd.Timestamp(end)].reset_index(drop=True)
