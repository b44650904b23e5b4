"""Retrain policies replayed on the flights year, day by day on the Retrain clock, on the same footing.

Policies: never (the first model, trained on the first 60 days, forever), monthly (every 30 days), weekly,
daily, and `default`: the one policy of `monitoring/triggers.py` with the knobs of the model config's
`monitoring:` section, driven each day with the signals the monitoring flow computes as of that day:
  - new labelled rows since the current model's training (a flight's actual arrives with its row);
  - time since the last training (and since the last request: the cooldown);
  - drift share and key-feature drift of the current window (`monitoring.window` before as_of, as the flow
    reads it) against a seeded sample of the current model's training window (`monitoring.sample_rows`);
  - the live metric of the current window (the current model's own predictions) against the model's holdout
    metric, one value per daily run, so `consecutive_windows` counts runs as the flow does.

Drift is decided per column by Evidently's own default tests (`get_stattest`: normed Wasserstein for numbers,
Jensen-Shannon for categories above 1000 reference rows, each at its default threshold 0.1) on the same
seeded samples the flow's report reads, without building a Report per day; `--check-drift N` builds the
flow's own report (`monitoring.reports.build_drift_report`) on N days too and prints the agreement.

Every model is what a Retrain training registers, minus Optuna and the gates: the 60-day lookback ending at
the training day, split in time like `tasks.features.split_by_time`, LightGBM fit on train + validation with
fixed parameters (FIXED_PARAMS), its holdout metric on the last 15%. A model trained as of a day serves every
flight departing from that day until the next training; a day's decision sees only rows before it.
Metric: MAE of arr_delay over every flight after the first 60 days; and the number of trainings.

Run: .venv/bin/python benchmarks/policy_backtest.py [--config examples/flights.yaml] [--check-drift 5]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from monitoring.reports import sample_rows  # noqa: E402
from monitoring.triggers import Signals, TriggerPolicy, decide_retrain  # noqa: E402
from retrain.config import ModelConfig, load_model_config  # noqa: E402

DAY = timedelta(days=1)
# Fixed LightGBM parameters for every training of every policy (no Optuna per training): an L1 objective for
# MAE, a moderate tree and learning rate; the same for all policies, so only the timing of trainings differs.
# One thread: on a 2-core machine shared with other work, LightGBM's OpenMP threads spin against each other
# (100 rounds on the 51k rows of one window took 3.7 s with 2 threads under load, 0.87 s with one).
FIXED_PARAMS: dict[str, object] = {
    "objective": "l1", "learning_rate": 0.1, "num_leaves": 63, "min_data_in_leaf": 100,
    "feature_fraction": 0.8, "bagging_fraction": 0.8, "bagging_freq": 1, "lambda_l2": 1.0, "num_threads": 1,
}
FIXED_ROUNDS = 150
INTERVALS = {"monthly": 30, "weekly": 7, "daily": 1}


@dataclass(frozen=True)
class TrainedModel:
    """A model of the replay: when it was trained (its window ends there), its predictor and holdout metric."""

    trained_at: datetime
    window_start: datetime
    predict: Callable[[pd.DataFrame], np.ndarray]
    holdout_metric: float | None = None


@dataclass(frozen=True)
class DayView:
    """What a policy sees as of a day: the rows before it, the current model, the predictions made so far."""

    as_of: datetime
    seen: pd.DataFrame
    model: TrainedModel
    served: pd.DataFrame  # columns: time, actual, prediction, trained_at (only flights before as_of)


@dataclass(frozen=True)
class ReplayResult:
    """Every evaluated flight with the prediction of the model current at its departure, and the trainings."""

    predictions: pd.DataFrame
    trainings: tuple[datetime, ...]
    reasons: Mapping[str, int] = field(default_factory=dict)

    @property
    def mae(self) -> float:
        return float(np.mean(np.abs(self.predictions["actual"] - self.predictions["prediction"])))


class TimeIndex:
    """Slices of a frame ordered by time, by binary search: `[start, end)` never reaches past `end`."""

    def __init__(self, frame: pd.DataFrame, timestamp: str) -> None:
        self.frame = frame.sort_values(timestamp, kind="stable").reset_index(drop=True)
        self.times = self.frame[timestamp].to_numpy()

    def between(self, start: datetime | None, end: datetime) -> pd.DataFrame:
        low = 0 if start is None else int(np.searchsorted(self.times, np.datetime64(start), side="left"))
        high = int(np.searchsorted(self.times, np.datetime64(end), side="left"))
        return self.frame.iloc[low:high]


Decide = Callable[[DayView], str | None]  # a reason to retrain as of the day, or None
Fit = Callable[[pd.DataFrame, datetime], TrainedModel]


def replay(
    frame: pd.DataFrame, timestamp: str, target: str, days: Sequence[datetime], lookback: timedelta, fit: Fit,
    decide: Decide,
) -> ReplayResult:
    """Live through `days`: the first model is trained as of the first day; as of each later day the policy
    sees only the rows before it and may retrain (on the lookback before the day); then the current model
    predicts the day's flights. Nothing after a day's start reaches its decision or its training.
    """
    index = TimeIndex(frame, timestamp)
    model = fit(index.between(days[0] - lookback, days[0]), days[0])
    trainings, reasons = [days[0]], Counter[str]()
    served: list[pd.DataFrame] = []
    for day in days:
        if day > days[0]:
            view = DayView(day, index.between(None, day), model,
                           pd.concat(served, ignore_index=True) if served else empty_served())
            reason = decide(view)
            if reason is not None:
                model = fit(index.between(day - lookback, day), day)
                trainings.append(day)
                reasons[reason] += 1
        today = index.between(day, day + DAY)
        if today.empty:
            continue
        served.append(pd.DataFrame({
            "time": today[timestamp].to_numpy(), "actual": today[target].to_numpy(dtype="float64"),
            "prediction": np.asarray(model.predict(today), dtype="float64"), "trained_at": model.trained_at,
        }))
    predictions = pd.concat(served, ignore_index=True) if served else empty_served()
    return ReplayResult(predictions, tuple(trainings), dict(reasons))


def empty_served() -> pd.DataFrame:
    return pd.DataFrame({"time": pd.Series(dtype="datetime64[ns]"), "actual": pd.Series(dtype="float64"),
                         "prediction": pd.Series(dtype="float64"), "trained_at": pd.Series(dtype="datetime64[ns]")})


def never(view: DayView) -> str | None:
    return None


def every(days: int) -> Decide:
    """Retrain when the current model is `days` old (a fixed schedule)."""
    def decide(view: DayView) -> str | None:
        return "schedule" if view.as_of - view.model.trained_at >= timedelta(days=days) else None
    return decide


# ------------------------------------------------------------------------------------- the flights model


def fit_flights(config: ModelConfig, cache: dict[datetime, TrainedModel]) -> Fit:
    """A Fit for the model config: production's time split and encoding, fixed LightGBM parameters; models are
    cached by training day, so policies training on the same day share one model (trainings are deterministic).
    """
    from retrain.model_package import build_encoding, encode_rows
    from tasks.features import make_target, split_by_time
    from tasks.training import METRIC_FUNCTIONS, base_params, fit_booster

    params = {**base_params(config), **FIXED_PARAMS}
    numeric, categorical = list(config.features.numeric), list(config.features.categorical)

    def fit(rows: pd.DataFrame, as_of: datetime) -> TrainedModel:
        if as_of in cache:
            return cache[as_of]
        labelled = rows[rows[config.target.column].notna()]
        split = split_by_time(labelled, config.source.timestamp, config.split.validation_fraction,
                              config.split.holdout_fraction, config.split.min_rows, where=f"window before {as_of}")
        fit_rows = pd.concat([split.train, split.validation], ignore_index=True)
        encoding = build_encoding(fit_rows, numeric, categorical)
        booster = fit_booster(encode_rows(fit_rows, encoding), make_target(fit_rows, config.target), params,
                              FIXED_ROUNDS, categorical)
        holdout = np.asarray(booster.predict(encode_rows(split.holdout, encoding)), dtype="float64")
        metric = METRIC_FUNCTIONS[config.metric](make_target(split.holdout, config.target).to_numpy(), holdout)
        model = TrainedModel(as_of, as_of - config.training_window.lookback,  # type: ignore[operator]
                             lambda frame: booster.predict(encode_rows(frame, encoding)), metric)
        cache[as_of] = model
        return model

    return fit


def column_drift(reference: pd.DataFrame, current: pd.DataFrame, numeric: Sequence[str],
                 categorical: Sequence[str]) -> dict[str, bool]:
    """Each feature's drift verdict by Evidently's default test for its type and size, at its default threshold
    (what DataDriftPreset decides per column when no method is given); a column empty on either side is not
    drifted (Evidently refuses it)."""
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


class DefaultPolicy:
    """The policy of monitoring/triggers.py, fed each day the signals the monitoring flow would gather."""

    def __init__(self, config: ModelConfig, policy: TriggerPolicy,
                 drift_cache: dict[tuple[datetime, datetime], dict[str, bool]] | None = None) -> None:
        self.config, self.policy = config, policy
        self.drift_cache = {} if drift_cache is None else drift_cache  # (model, day) -> verdicts, across variants
        self.references: dict[datetime, pd.DataFrame] = {}
        self.live: dict[datetime, list[float | None]] = {}
        self.fired: set[str] = set()
        self.last_request: datetime | None = None
        self.drift_days: list[tuple[datetime, pd.DataFrame, pd.DataFrame]] = []  # for --check-drift

    def signals(self, view: DayView) -> Signals:
        config, model, timestamp = self.config, view.model, self.config.source.timestamp
        seen_times = view.seen[timestamp]
        window_start = view.as_of - config.monitoring.window
        current = view.seen[seen_times >= window_start]
        if model.trained_at not in self.references:
            training = view.seen[(seen_times >= model.window_start) & (seen_times < model.trained_at)]
            self.references[model.trained_at] = sample_rows(training, config.monitoring.sample_rows)
        reference = self.references[model.trained_at]
        sample = sample_rows(current, config.monitoring.sample_rows)
        key = (model.trained_at, view.as_of)
        if key not in self.drift_cache:
            self.drift_cache[key] = column_drift(reference, sample, config.features.numeric,
                                                 config.features.categorical)
        drifted = self.drift_cache[key]
        self.drift_days.append((view.as_of, reference, sample))
        own = view.served[(view.served["time"] >= window_start) & (view.served["trained_at"] == model.trained_at)]
        live = None if own.empty else float(np.mean(np.abs(own["actual"] - own["prediction"])))
        history = self.live.setdefault(model.trained_at, [])
        history.append(live)
        return Signals(
            as_of=view.as_of, data_end=None if current.empty else current[timestamp].max().to_pydatetime(),
            drift_share=sum(drifted.values()) / len(drifted),
            drifted_columns=tuple(name for name, up in drifted.items() if up),
            live_metrics=tuple(history[-self.policy.consecutive_windows:]), holdout_metric=model.holdout_metric,
            new_labelled_rows=int(((seen_times >= model.trained_at) & view.seen[config.target.column].notna()).sum()),
            last_training_at=model.trained_at, last_request_at=self.last_request, fired=frozenset(self.fired),
        )

    def __call__(self, view: DayView) -> str | None:
        decision = decide_retrain(self.signals(view), self.policy)
        self.fired.update(signal.key for signal in decision.fired)
        if not decision.retrain:
            return None
        self.last_request = view.as_of
        return "+".join(sorted({signal.name for signal in decision.fired}))


# ------------------------------------------------------------------------------------------------ the run


def replay_days(frame: pd.DataFrame, timestamp: str, warmup: timedelta) -> list[datetime]:
    """The first training day (the data's first instant + warmup) and every day after it that holds data."""
    first = frame[timestamp].min().to_pydatetime()
    last = frame[timestamp].max().to_pydatetime()
    start = first + warmup
    return [start + DAY * step for step in range(int((last - start) / DAY) + 1)]


def check_drift(config: ModelConfig, days: Sequence[tuple[datetime, pd.DataFrame, pd.DataFrame]]) -> str:
    """The flow's own Evidently report on some replayed days, against the per-column verdicts used here."""
    from monitoring.metrics import read_drift
    from monitoring.reports import ReportColumns, build_drift_report

    columns = ReportColumns(tuple(config.features.numeric), tuple(config.features.categorical), None, None)
    agree = total = 0
    for _, reference, current in days:
        ours = column_drift(reference, current, config.features.numeric, config.features.categorical)
        snapshot = build_drift_report(reference, current, columns, config.monitoring.drift_share)
        report = {c.column: c.drifted for c in read_drift(snapshot.dict(), config.features.all).columns}
        agree += sum(ours[name] == report[name] for name in ours)
        total += len(ours)
    return f"drift verdicts vs the flow's Evidently report on {len(days)} day(s): {agree}/{total} columns agree"


def with_knobs(config: ModelConfig, items: Sequence[str]) -> ModelConfig:
    """The config with monitoring knobs overridden (`retrain_every=6d`), validated like the YAML."""
    if not items:
        return config
    knobs = dict(item.split("=", 1) for item in items)
    monitoring = type(config.monitoring).model_validate({**config.monitoring.model_dump(mode="json"), **knobs})
    return config.model_copy(update={"monitoring": monitoring})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO / "examples" / "flights.yaml"))
    parser.add_argument("--policies", default="daily,weekly,monthly,never,default")
    parser.add_argument("--check-drift", type=int, default=0, help="check this many days against Evidently")
    parser.add_argument("--set", action="append", default=[], metavar="KNOB=VALUE",
                        help="override a monitoring knob for the default policy (e.g. retrain_every=6d)")
    parser.add_argument("--variant", action="append", default=[], metavar="KNOB=VALUE[,KNOB=VALUE]",
                        help="also replay the default policy with these knobs (a row of its own; repeatable)")
    args = parser.parse_args()

    from tasks.example_data import read_flights_example
    from tasks.monitoring import trigger_policy

    config = with_knobs(load_model_config(args.config), args.set)
    frame = read_flights_example()
    timestamp, target = config.source.timestamp, config.target.column
    lookback = config.training_window.lookback
    assert lookback is not None, "the backtest needs training_window: {lookback: ...}"
    days = replay_days(frame, timestamp, lookback)
    cache: dict[datetime, TrainedModel] = {}
    fit = fit_flights(config, cache)
    sys.stdout.write(f"{len(frame):,} flights; {len(days)} replayed days from {days[0]:%Y-%m-%d %H:%M} UTC; "
                     f"{FIXED_ROUNDS} rounds of {FIXED_PARAMS}\n")
    results: dict[str, ReplayResult] = {}
    drift_cache: dict[tuple[datetime, datetime], dict[str, bool]] = {}
    default = DefaultPolicy(config, trigger_policy(config), drift_cache)
    variants = {f"[{variant}]": DefaultPolicy(varied, trigger_policy(varied), drift_cache)
                for variant in args.variant for varied in [with_knobs(config, variant.split(","))]}
    for name in [*args.policies.split(","), *variants]:
        decide = {"never": never, "default": default, **variants}.get(name) or every(INTERVALS[name])
        started = time.perf_counter()
        results[name] = replay(frame, timestamp, target, days, lookback, fit, decide)
        sys.stdout.write(f"  {name}: {time.perf_counter() - started:.0f} s, {len(cache)} models trained so far\n")
        sys.stdout.flush()

    daily = results.get("daily")
    knobs = config.monitoring
    width = max(len(name) for name in results) + 2
    lines = [f"\nMAE of {target} over {len(next(iter(results.values())).predictions):,} flights after the first "
             f"{lookback.days} days, each predicted by the model current at its departure:",
             f"{'policy':<{width}}{'MAE':>9}{'vs daily':>10}{'trainings':>11}{'share of daily':>16}"]
    for name, result in results.items():
        versus = f"{(result.mae / daily.mae - 1):+.2%}" if daily else "-"
        share = f"{len(result.trainings) / len(daily.trainings):.2f}" if daily else "-"
        lines.append(f"{name:<{width}}{result.mae:>9.2f}{versus:>10}{len(result.trainings):>11}{share:>16}")
    if "default" in results:
        lines.append(f"default policy: min_new_rows={knobs.min_new_rows}, retrain_every={knobs.retrain_every}, "
                     f"max_age={knobs.max_age}, cooldown={knobs.cooldown}, drift_share={knobs.drift_share}, "
                     f"drift_retrains={knobs.drift_retrains}, degradation={knobs.degradation} x "
                     f"{knobs.consecutive_windows} windows, degradation_retrains={knobs.degradation_retrains}; "
                     f"window={knobs.window}")
    for name in ["default", *variants]:
        if name not in results:
            continue
        result = results[name]
        met = bool(daily) and result.mae <= daily.mae * 1.01 and len(result.trainings) <= len(daily.trainings) / 5
        lines.append(f"{name}: retrains by signal {dict(sorted(result.reasons.items()))}; target (within 1% of "
                     f"daily, at most a fifth of its trainings): {'met' if met else 'missed'}")
    if args.check_drift and default.drift_days:
        picks = np.linspace(0, len(default.drift_days) - 1, args.check_drift).astype(int)
        lines.append(check_drift(config, [default.drift_days[i] for i in picks]))
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
