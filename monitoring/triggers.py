"""The one retrain-decision policy: signals in, a decision with its reason out. Pure, so a replay can drive it.

Which signals count, and why the defaults favour fresh labels over alarms: on the replayed flights year an
error-threshold trigger on its own did worse than never retraining (it fires after a storm week and trains on
a window full of the storm), while retraining on fresh labels every few days came close to retraining daily
(`benchmarks/policy_backtest.py`: every 6 days, within 0.2% of daily's MAE with under a fifth of its
trainings). So the policy retrains when enough new labelled rows have arrived *and* enough time has passed
since the last training (`fresh-labels`), or when the champion has grown old (`stale-model`); a degraded live
metric, and drift where `drift_retrains` allows it, may bring a retrain forward, but only once there is enough
new data to learn from. A manual request always retrains, cooldown or not.

A degraded metric is judged two ways, both on rows of the same season: the live metric against the champion's
holdout metric (out-of-sample), and the live metric against the naive forecasters scored on the same matured rows
(a champion that loses to "the same day last week" for `consecutive_windows` windows in a row is a `performance`
signal whatever its holdout said).

Dedupe: each signal carries a key naming the signal and the data it was computed on (the newest labelled
instant); a key already fired is never fired again, so re-running monitoring on the same data changes nothing.
Cooldown: no retrain (except a manual one) within `cooldown` of the last training or retrain request.

Nothing here imports Prefect, MLflow or pandas, nor anything of ours but the kernel's JSON shapes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from retrain.jsonable import json_field

# Ledger actions (shared convention) and the Prefect events that go with them.
RETRAIN_REQUESTED = "retrain-requested"
DRIFT_DETECTED = "drift-detected"
PERFORMANCE_DEGRADED = "performance-degraded"
MONITORED = "monitored"
EVENT_RETRAIN = "retrain.retrain.requested"
EVENT_DRIFT = "retrain.drift.detected"
EVENT_DEGRADED = "retrain.performance.degraded"

# Signal names.
FRESH_LABELS = "fresh-labels"
STALE_MODEL = "stale-model"
DRIFT = "drift"
KEY_FEATURE_DRIFT = "key-feature-drift"
DEGRADED = "performance"
MANUAL = "manual"
RETRAIN_SIGNALS = (FRESH_LABELS, STALE_MODEL)
DRIFT_SIGNALS = (DRIFT, KEY_FEATURE_DRIFT)


@dataclass(frozen=True)
class TriggerPolicy:
    """The policy's knobs (the model config's `monitoring:` section gives them)."""

    min_new_rows: int = 2000
    retrain_every: timedelta = timedelta(days=6)
    max_age: timedelta | None = timedelta(days=14)
    cooldown: timedelta = timedelta(days=1)
    drift_share: float = 0.5
    key_features: tuple[str, ...] = ()
    degradation: float = 0.2
    consecutive_windows: int = 3
    drift_retrains: bool = False
    degradation_retrains: bool = True
    lower_is_better: bool = True


@dataclass(frozen=True)
class Signals:
    """What monitoring measured as of `as_of`, plus the history the policy needs to dedupe and cool down.

    Attributes:
        data_end: The newest labelled instant in the current window: the identity of "the same data".
        live_metrics: The live metric of the last windows, oldest first, the current one last (None where
            no label had matured).
        holdout_metric: The champion's metric on its holdout, the bar the live metric is held to.
        naive_metrics: For the same windows as `live_metrics`, each naive forecaster's metric on the same matured
            rows, by name (`seasonal-7d`); an empty mapping where none was measured.
        new_labelled_rows: Labelled rows that arrived after the champion's training window.
        last_training_at: The end of the champion's training window.
        last_request_at: When the last retrain was requested (the ledger), if ever.
        fired: Keys of signals that already fired (from the ledger).
        manual: The reason of a manual request, if this run is one.
    """

    as_of: datetime
    data_end: datetime | None = None
    drift_share: float | None = None
    drifted_columns: tuple[str, ...] = ()
    live_metrics: tuple[float | None, ...] = ()
    holdout_metric: float | None = None
    naive_metrics: tuple[Mapping[str, float | None], ...] = ()
    new_labelled_rows: int = 0
    last_training_at: datetime | None = None
    last_request_at: datetime | None = None
    fired: frozenset[str] = frozenset()
    manual: str | None = None


@dataclass(frozen=True)
class Signal:
    """One signal that is up: its name, what was observed, and the key that dedupes it."""

    name: str
    detail: str
    key: str


def signal_keys(signals: Sequence[Signal]) -> list[str]:
    return [signal.key for signal in signals]


@dataclass(frozen=True)
class TriggerDecision:
    """The policy's answer: retrain or not, why, the signals up, the ones that fire now, the ledger action and
    the events to emit."""

    retrain: bool
    reason: str
    action: str
    signals: tuple[Signal, ...] = ()
    fired: tuple[Signal, ...] = json_field(write=signal_keys, default=())  # written as their keys
    events: tuple[str, ...] = field(default_factory=tuple)


def format_age(duration: timedelta) -> str:
    """A duration as people say it: `4.5d`, `6h`."""
    hours = duration.total_seconds() / 3600
    return f"{hours / 24:.1f}d" if hours >= 48 else f"{hours:.0f}h"


def degraded_windows(live: Sequence[float | None], holdout: float, degradation: float, lower_is_better: bool) -> int:
    """How many of the most recent windows in a row were worse than the holdout metric by `degradation`.

    A window without matured labels breaks the run: it says nothing either way.
    """
    count = 0
    for value in reversed(live):
        if value is None:
            break
        worse = value > holdout * (1 + degradation) if lower_is_better else value < holdout * (1 - degradation)
        if not worse:
            break
        count += 1
    return count


def windows_losing_to_naive(
    live: Sequence[float | None], naive: Sequence[Mapping[str, float | None]], lower_is_better: bool
) -> tuple[int, str | None, float | None]:
    """The longest run of most recent windows in a row in which one naive forecaster beat the live metric on the
    same rows: (windows, that forecaster's name, its value in the newest window); (0, None, None) when none did.

    `naive` is aligned with `live` from the newest window back; a window where either is missing breaks the run.
    """
    best: tuple[int, str | None, float | None] = (0, None, None)
    names = sorted({name for window in naive for name in window})
    for name in names:
        count = 0
        for value, forecasts in zip(reversed(live), reversed(naive), strict=False):
            bar = forecasts.get(name)
            if value is None or bar is None:
                break
            if not (value > bar if lower_is_better else value < bar):
                break
            count += 1
        if count > best[0]:
            best = (count, name, naive[-1].get(name))
    return best


def find_signals(signals: Signals, policy: TriggerPolicy) -> list[Signal]:
    """Every signal that is up as of `signals.as_of`, each keyed by its name and the data it saw."""
    data = (signals.data_end or signals.as_of).isoformat()
    found: list[Signal] = []
    age = None if signals.last_training_at is None else signals.as_of - signals.last_training_at
    if signals.manual is not None:
        found.append(Signal(MANUAL, signals.manual or "manual request", f"{MANUAL}@{signals.as_of.isoformat()}"))
    if signals.new_labelled_rows >= policy.min_new_rows and (age is None or age >= policy.retrain_every):
        since = "no training yet" if age is None else f"{format_age(age)} since the last training"
        found.append(Signal(FRESH_LABELS, f"{signals.new_labelled_rows:,} new labelled rows and {since}",
                            f"{FRESH_LABELS}@{data}"))
    if (policy.max_age is not None and age is not None and age >= policy.max_age and signals.new_labelled_rows > 0):
        found.append(Signal(STALE_MODEL, f"the champion's data ends {format_age(age)} before as_of "
                            f"(max_age {format_age(policy.max_age)})", f"{STALE_MODEL}@{data}"))
    if signals.drift_share is not None and signals.drift_share >= policy.drift_share:
        found.append(Signal(DRIFT, f"{signals.drift_share:.0%} of columns drifted (threshold "
                            f"{policy.drift_share:.0%}): {', '.join(signals.drifted_columns) or '-'}",
                            f"{DRIFT}@{data}"))
    key_drifted = [column for column in policy.key_features if column in signals.drifted_columns]
    if key_drifted:
        found.append(Signal(KEY_FEATURE_DRIFT, f"key feature(s) drifted: {', '.join(key_drifted)}",
                            f"{KEY_FEATURE_DRIFT}@{data}"))
    degraded: list[str] = []
    if signals.holdout_metric is not None:
        windows = degraded_windows(signals.live_metrics, signals.holdout_metric, policy.degradation,
                                   policy.lower_is_better)
        if windows >= policy.consecutive_windows:
            current = signals.live_metrics[-1]
            degraded.append(f"live metric {current:.4g} worse than the holdout's {signals.holdout_metric:.4g} by "
                            f"more than {policy.degradation:.0%} for {windows} consecutive windows")
    losing, naive, bar = windows_losing_to_naive(signals.live_metrics, signals.naive_metrics, policy.lower_is_better)
    if losing >= policy.consecutive_windows and naive is not None and bar is not None:
        degraded.append(f"live metric {signals.live_metrics[-1]:.4g} loses to the naive forecaster {naive} "
                        f"({bar:.4g} on the same matured rows) for {losing} consecutive windows")
    if degraded:
        found.append(Signal(DEGRADED, "; ".join(degraded), f"{DEGRADED}@{data}"))
    return found


def decide_retrain(signals: Signals, policy: TriggerPolicy) -> TriggerDecision:
    """The decision as of `signals.as_of`: retrain or not, with the reason and the signals behind it.

    A retrain it requests still has to pass the training gates before anything is released.
    """
    up = find_signals(signals, policy)
    new = [signal for signal in up if signal.key not in signals.fired]
    names = {signal.name for signal in new}
    alarm_events = tuple(
        event for event, kinds in ((EVENT_DRIFT, DRIFT_SIGNALS), (EVENT_DEGRADED, (DEGRADED,)))
        if names & set(kinds)
    )

    manual = [signal for signal in new if signal.name == MANUAL]
    if manual:  # a person asked: overrides the cooldown
        return TriggerDecision(True, f"manual request: {manual[0].detail}", RETRAIN_REQUESTED, tuple(up),
                               tuple(new), (*alarm_events, EVENT_RETRAIN))

    passive = alarm_action(names)
    if not new:
        reason = "no new signal" if not up else f"already fired on this data: {', '.join(s.key for s in up)}"
        return TriggerDecision(False, reason, MONITORED, tuple(up))

    last = max((t for t in (signals.last_training_at, signals.last_request_at) if t is not None), default=None)
    if last is not None and signals.as_of - last < policy.cooldown:
        reason = (f"cooldown: {format_age(signals.as_of - last)} since the last training or request (cooldown "
                  f"{format_age(policy.cooldown)}); signals: {describe(new)}")
        return TriggerDecision(False, reason, passive, tuple(up), tuple(new), alarm_events)

    enough_data = signals.new_labelled_rows >= policy.min_new_rows
    retrain_on = [signal for signal in new if signal.name in RETRAIN_SIGNALS]
    if enough_data and policy.drift_retrains:
        retrain_on += [signal for signal in new if signal.name in DRIFT_SIGNALS]
    if enough_data and policy.degradation_retrains:
        retrain_on += [signal for signal in new if signal.name == DEGRADED]
    if retrain_on:
        return TriggerDecision(True, describe(retrain_on), RETRAIN_REQUESTED, tuple(up), tuple(new),
                               (*alarm_events, EVENT_RETRAIN))
    reason = f"{describe(new)}; not retraining: {signals.new_labelled_rows:,} new labelled rows (need " \
             f"{policy.min_new_rows:,} to learn from)"
    return TriggerDecision(False, reason, passive, tuple(up), tuple(new), alarm_events)


def alarm_action(names: set[str]) -> str:
    """The ledger action of a decision that does not retrain: the worst alarm, or plain `monitored`."""
    if DEGRADED in names:
        return PERFORMANCE_DEGRADED
    if names & set(DRIFT_SIGNALS):
        return DRIFT_DETECTED
    return MONITORED


def describe(signals: Sequence[Signal]) -> str:
    return "; ".join(f"{signal.name}: {signal.detail}" for signal in signals)
