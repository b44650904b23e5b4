"""Release decisions: the canary analysis, the settle rule of a canary that ran out of time, the rollback rule,
the approval form; and the tasks that apply them.

The pure part decides from numbers (per-row losses of two models on the same rows); the tasks read the registry,
the ledger and the prediction log, score a model in shadow on logged inputs, and apply transitions through
`tasks.registry.apply_transition`, the one code path that moves aliases. `retrain backtest` calls the pure part
(`compare_paired`, `decide_canary`, `settle_canary`, `judge_rollback`) with its own losses.

Every live comparison is between two models on the same rows, never a live metric against a holdout metric from
another season:

- The canary check reads the predictions the champion's and the canary's versions served since the canary
  started, by event time (the Retrain clock), with labels matured by `as_of`. Each matured row is scored by the
  other version in shadow on its logged inputs (the prediction table's `features`), so both versions have a loss
  on every row. Past `min_predictions` paired rows, two one-sided paired t-tests on the loss difference with a
  margin m = `margin` × the champion's mean loss: the canary is rejected when it is worse by more than m with
  significance, promoted when it is worse by less than m with significance (non-inferior), and otherwise "not
  decided yet". A canary undecided after `max_duration` is settled by `on_timeout`.
- The rollback rule watches a champion in its bake window: the previous champion is scored in shadow on the
  champion's matured rows, and the champion is rolled back when it is worse than the previous one by more than
  `max_degradation` × the previous one's mean loss with significance (a one-sided paired t-test).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.tracking import MlflowClient
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.input import RunInput
from prefect.runtime import flow_run
from scipy import stats

from retrain import mlflow_keys as keys
from retrain.clock import arrival_as_of, format_duration, model_as_of, shown, years_before
from retrain.config import CanaryConfig, CanaryTimeout, ModelConfig, RollbackConfig, TaskType
from retrain.errors import ExitCode
from retrain.outcomes import ReleaseOutcome, TrainingOutcome, Verdict
from retrain.release_state import ReleaseState, read_release_state
from retrain.settings import get_settings
from retrain.warehouse import (
    LedgerEntry,
    Warehouse,
    append_ledger_entry,
    get_warehouse,
    read_labelled_predictions,
    read_newest_timestamp,
    read_prediction_features,
)
from retrain.warehouse import read_ledger as read_ledger_rows
from tasks.comparison import Decision
from tasks.features import PreparedData
from tasks.outcome import trained_outcome
from tasks.registry import (
    Record,
    Transition,
    TransitionConflict,
    TransitionRefused,
    apply_transition,
    check_version,
    finish_interrupted,
    former_champions,
    passed_gates,
    plan_promote,
    plan_register,
    plan_reject,
    plan_rollback,
    plan_start_canary,
    read_aliases,
)
from tasks.tracking import LoggedRun, configure_mlflow
from tasks.training import FittedModel
from tasks.tuning import TuningResult

PROMOTE, REJECT, WAIT = "promote", "reject", "wait"
CHAMPION_ARM, CANARY_ARM = "champion", "canary"
# Who acted, for the ledger: a rule a flow applied on its own is the flow's decision, whoever started the run
# (that one is kept in the row's details as `requested_by`).
CHECK_ACTOR = "flow:check-canary"
RELEASE_ACTOR = "flow:release-model"


@dataclass(frozen=True)
class PairedComparison:
    """Two models' per-row losses on the same rows, and what the paired tests say about `new` against `old`.

    `margin` is absolute (the share asked for × the old model's mean loss); `p_worse` tests "new is worse than old
    by more than the margin", `p_noninferior` "new is worse by less than the margin" (one-sided paired t-tests on
    the per-row difference). Means and p-values are None when there is no row.
    """

    rows: int
    new_mean_loss: float | None = None
    old_mean_loss: float | None = None
    margin: float | None = None
    p_worse: float | None = None
    p_noninferior: float | None = None

    @property
    def within_margin(self) -> bool:
        """The point estimate: new's mean loss is at most old's plus the margin (no row: nothing says harm)."""
        if self.new_mean_loss is None or self.old_mean_loss is None or self.margin is None:
            return True
        return self.new_mean_loss <= self.old_mean_loss + self.margin

    def describe(self, new: str, old: str) -> str:
        if self.new_mean_loss is None or self.old_mean_loss is None:
            return "no matured row scored by both"
        return (f"mean loss {new} {self.new_mean_loss:.4f} vs {old} {self.old_mean_loss:.4f} on the same {self.rows} "
                f"matured rows, margin {self.margin:.4f}")


@dataclass(frozen=True)
class CanaryEvidence:
    """What the canary check compares: the canary's served predictions (for its error rate) and both versions'
    losses on the same matured rows (rows either version served; the other scored in shadow)."""

    canary_served: int
    canary_nonfinite: int
    canary_rows: int  # matured rows the canary served (the champion scored in shadow)
    champion_rows: int  # matured rows the champion served (the canary scored in shadow)
    comparison: PairedComparison

    @property
    def error_rate(self) -> float:
        return self.canary_nonfinite / self.canary_served if self.canary_served else 0.0


@dataclass(frozen=True)
class CanaryVerdict:
    decision: str  # promote, reject or wait
    reason: str
    evidence: CanaryEvidence
    settled: bool = False  # decided by the on_timeout rule after max_duration, not by the tests

    def metrics(self) -> dict[str, float]:
        comparison = self.evidence.comparison
        values: dict[str, float | int | None] = {
            "paired_rows": comparison.rows, "canary_matured": self.evidence.canary_rows,
            "champion_matured": self.evidence.champion_rows, "canary_served": self.evidence.canary_served,
            "canary_error_rate": self.evidence.error_rate, "canary_mean_loss": comparison.new_mean_loss,
            "champion_mean_loss": comparison.old_mean_loss, "margin": comparison.margin,
            "p_worse": comparison.p_worse, "p_noninferior": comparison.p_noninferior,
        }
        return {key: float(value) for key, value in values.items() if value is not None}


@dataclass(frozen=True)
class RollbackVerdict:
    """The rollback rule's answer: the comparison, and why it fires (None: it does not)."""

    comparison: PairedComparison
    breach: str | None

    def metrics(self) -> dict[str, float]:
        values = {"paired_rows": self.comparison.rows, "champion_mean_loss": self.comparison.new_mean_loss,
                  "previous_mean_loss": self.comparison.old_mean_loss, "margin": self.comparison.margin,
                  "p_worse": self.comparison.p_worse}
        return {key: float(value) for key, value in values.items() if value is not None}


# ------------------------------------------------------------------------------------------ pure decisions


def binary_labels(actual: np.ndarray, positive_above: float | None) -> np.ndarray:
    """Labels as 0/1: already 0/1 as logged by feedback, or the raw target cut at `positive_above`."""
    if positive_above is None or np.isin(actual, (0.0, 1.0)).all():
        return actual
    return (actual > positive_above).astype("float64")


def row_losses(actual: np.ndarray, predicted: np.ndarray, metric: str) -> np.ndarray:
    """The per-row loss whose mean the canary test compares (lower is better whatever the metric).

    Regression: absolute error for MAE, squared error for RMSE and R²; binary: log loss for AUC and log loss,
    0/1 error at 0.5 for F1.
    """
    actual, predicted = np.asarray(actual, dtype="float64"), np.asarray(predicted, dtype="float64")
    if metric == "mae":
        return np.abs(actual - predicted)
    if metric in ("rmse", "r2"):
        return (actual - predicted) ** 2
    if metric == "f1":
        return ((predicted >= 0.5) != (actual >= 0.5)).astype("float64")
    clipped = np.clip(predicted, 1e-15, 1 - 1e-15)
    return -(actual * np.log(clipped) + (1 - actual) * np.log(1 - clipped))


def compare_paired(new_losses: np.ndarray, old_losses: np.ndarray, margin_share: float) -> PairedComparison:
    """Paired one-sided tests of `new` against `old` on the same rows, with a margin of `margin_share` × old's
    mean loss.

    Raises:
        ValueError: the two arrays differ in length (they must be losses on the same rows).
    """
    new, old = np.asarray(new_losses, dtype="float64"), np.asarray(old_losses, dtype="float64")
    if new.shape != old.shape:
        raise ValueError(f"paired losses must be on the same rows: {new.shape} vs {old.shape}")
    if not len(new):
        return PairedComparison(0)
    margin = margin_share * float(old.mean())
    difference = new - old - margin
    return PairedComparison(len(new), float(new.mean()), float(old.mean()), margin,
                            _one_sided_p(difference, "greater"), _one_sided_p(difference, "less"))


def _one_sided_p(difference: np.ndarray, alternative: str) -> float:
    """p of a one-sided paired t-test that the mean difference is above (greater) or below (less) zero."""
    if len(difference) < 2 or np.ptp(difference) == 0:  # no spread: the mean decides with certainty
        mean = float(difference.mean())
        holds = mean > 0 if alternative == "greater" else mean < 0
        return 0.0 if holds else 1.0
    return float(stats.ttest_1samp(difference, 0.0, alternative=alternative).pvalue)


def canary_evidence(rows: pd.DataFrame, metric: str, margin_share: float) -> CanaryEvidence:
    """The evidence of one canary period from `rows`: one row per prediction either version served, with columns
    `arm` (which served it), `actual` (null until matured) and `canary`, `champion` (each version's prediction:
    the served one, and the other's in shadow where the row matured)."""
    served = rows[rows["arm"] == CANARY_ARM]
    canary_served = pd.to_numeric(served["canary"], errors="coerce").to_numpy(dtype="float64")
    predictions = rows[["canary", "champion"]].apply(pd.to_numeric, errors="coerce").to_numpy(dtype="float64")
    matured = rows["actual"].notna().to_numpy() & np.isfinite(predictions).all(axis=1)
    actual = rows["actual"].to_numpy(dtype="float64")[matured]
    comparison = compare_paired(row_losses(actual, predictions[matured, 0], metric),
                                row_losses(actual, predictions[matured, 1], metric), margin_share)
    arms = rows["arm"].to_numpy()[matured]
    return CanaryEvidence(len(served), int((~np.isfinite(canary_served)).sum()), int((arms == CANARY_ARM).sum()),
                          int((arms == CHAMPION_ARM).sum()), comparison)


def decide_canary(evidence: CanaryEvidence, rules: CanaryConfig) -> CanaryVerdict:
    """Promote, reject or wait, from the evidence of one canary period."""
    if evidence.canary_served and evidence.error_rate > rules.max_error_rate:
        return CanaryVerdict(REJECT, f"the canary's error rate {evidence.error_rate:.2%} (non-finite predictions) is "
                             f"above max_error_rate {rules.max_error_rate:.2%}", evidence)
    comparison = evidence.comparison
    if comparison.rows < rules.min_predictions:
        return CanaryVerdict(WAIT, f"not enough data yet: {comparison.rows} matured rows scored by both versions "
                             f"({evidence.canary_rows} served by the canary, {evidence.champion_rows} by the "
                             f"champion), {rules.min_predictions} needed", evidence)
    numbers = (f"{comparison.describe('canary', 'champion')} ({rules.margin:g} of the champion's; "
               f"{evidence.canary_rows} served by the canary, {evidence.champion_rows} by the champion)")
    assert comparison.p_worse is not None and comparison.p_noninferior is not None
    if comparison.p_worse < rules.significance:
        return CanaryVerdict(REJECT, f"the canary is worse than the champion beyond the margin: {numbers}, "
                             f"paired p={comparison.p_worse:.4f} < {rules.significance:g}", evidence)
    if comparison.p_noninferior < rules.significance:
        return CanaryVerdict(PROMOTE, f"the canary is no worse than the champion within the margin: {numbers}, "
                             f"paired p={comparison.p_noninferior:.4f} < {rules.significance:g}", evidence)
    return CanaryVerdict(WAIT, f"not decided yet: the difference is within the noise ({numbers}, p worse "
                         f"{comparison.p_worse:.3f}, p no worse {comparison.p_noninferior:.3f}); more matured "
                         "predictions will tell", evidence)


def analyse_canary(rows: pd.DataFrame, metric: str, rules: CanaryConfig) -> CanaryVerdict:
    """`decide_canary` on the rows of one canary period (see `canary_evidence` for their columns)."""
    return decide_canary(canary_evidence(rows, metric, rules.margin), rules)


def settle_canary(
    verdict: CanaryVerdict, running_for: timedelta | None, gates_passed: bool, rules: CanaryConfig
) -> CanaryVerdict:
    """The verdict, or, for a canary still undecided `max_duration` after it started, the `on_timeout` rule's.

    `no-harm` (the default) promotes a canary that passed the offline gates and whose live evidence shows no harm
    beyond the margin (its mean loss on the paired rows is at most the champion's plus the margin; no paired row
    shows none), and rejects it otherwise; `reject` rejects it. `running_for` None (no record of when the canary
    started) never settles: a duration nobody knows cannot have run out.
    """
    if verdict.decision != WAIT or running_for is None or running_for < rules.max_duration:
        return verdict
    ran = (f"the canary ran {_span(running_for)} on the Retrain clock undecided (release.canary."
           f"max_duration {format_duration(rules.max_duration)}); settled by on_timeout '{rules.on_timeout}'")
    comparison = verdict.evidence.comparison
    live = comparison.describe("canary", "champion")
    if rules.on_timeout == CanaryTimeout.REJECT:
        decision, why = REJECT, f"an undecided canary is rejected ({live})"
    elif not gates_passed:
        decision, why = REJECT, "it never passed the offline gates"
    elif comparison.within_margin:
        decision, why = PROMOTE, f"it passed the offline gates and the live evidence shows no harm beyond the " \
            f"margin ({live})"
    else:
        decision, why = REJECT, f"its live loss is worse than the champion's beyond the margin, though not " \
            f"significantly ({live})"
    return CanaryVerdict(decision, f"{ran}: {why}", verdict.evidence, settled=True)


def _span(duration: timedelta) -> str:
    """A duration as a person reads it: 14d, 15.5d, 6h, 45m."""
    seconds = duration.total_seconds()
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if seconds >= size or unit == "m":
            return f"{seconds / size:.1f}".removesuffix(".0") + unit
    return ""  # not reached: minutes always answer


def judge_rollback(champion_losses: np.ndarray, previous_losses: np.ndarray, rules: RollbackConfig) -> RollbackVerdict:
    """Whether a champion in its bake window goes back to `previous`: both models' losses on the same matured rows
    the champion served (the previous one scored in shadow); it fires when the champion is worse by more than
    `max_degradation` × the previous one's mean loss with significance, with at least `min_predictions` rows."""
    comparison = compare_paired(champion_losses, previous_losses, rules.max_degradation)
    if comparison.rows < rules.min_predictions or comparison.p_worse is None \
            or comparison.p_worse >= rules.significance:
        return RollbackVerdict(comparison, None)
    return RollbackVerdict(comparison, (
        f"the champion is worse than the previous champion beyond the margin: "
        f"{comparison.describe('champion', 'previous')} ({rules.max_degradation:g} of the previous one's), paired "
        f"p={comparison.p_worse:.4f} < {rules.significance:g}"))


def model_inputs(records: pd.DataFrame, event_at: pd.Series, timestamp: str) -> pd.DataFrame:
    """Logged records as a model's input frame: the timestamp column from the event time where a record did
    not carry it (models that derive calendar features read it)."""
    inputs = records.reset_index(drop=True).copy()
    times = pd.to_datetime(event_at.reset_index(drop=True))
    if timestamp not in inputs:
        inputs[timestamp] = times
    else:
        inputs[timestamp] = inputs[timestamp].where(inputs[timestamp].notna(), times.map(pd.Timestamp.isoformat))
    return inputs


def approval_markdown(model: str, version: str, state: ReleaseState, registered: LedgerEntry | None, link: str) -> str:
    """What the person approving sees: challenger vs champion on the same holdout, the p-value, the run."""
    metrics = dict(registered.metrics) if registered is not None else {}
    lines = [
        f"### Release version {version} of `{model}`?",
        f"Champion: version {state.aliases['champion'] or 'none'}. Approve to start its canary "
        f"(or to make it champion when there is none); reject to drop it. No answer rejects it.",
        "",
        "| | value |",
        "|---|---|",
    ]
    lines += [f"| {key} | {value:.4f} |" for key, value in sorted(metrics.items()) if isinstance(value, float | int)]
    if registered is not None:
        lines += ["", f"Gates: {registered.reason}"]
    lines += ["", f"MLflow: {link}"]
    return "\n".join(lines)


class ReleaseApproval(RunInput):
    """The form a person fills in the Prefect UI to let a challenger go on (or not)."""

    approve: bool = False
    reviewer: str = ""
    comment: str = ""


# ------------------------------------------------------------------------------------------ helpers with I/O


def release_client(config: ModelConfig) -> MlflowClient:
    configure_mlflow(get_settings(), config.name)
    return MlflowClient()


def announce(transition: Transition, record: Record) -> None:
    """The Prefect event of a transition (resource `retrain.model.<name>`), for automations to trigger on."""
    from prefect.events import emit_event

    emit_event(
        event=transition.event,
        resource={"prefect.resource.id": f"retrain.model.{transition.model}",
                  "prefect.resource.name": transition.model},
        payload={"action": transition.ledger_action, "from_version": transition.from_version,
                 "to_version": transition.to_version, "reason": record.reason, "actor": record.actor,
                 "metrics": dict(record.metrics), "transition": transition.id,
                 "canary_share": transition.canary_share},
    )


def make_record(actor: str, reason: str, as_of: datetime | None, metrics: Mapping[str, float] | None = None,
                details: Mapping[str, Any] | None = None, mlflow_run_id: str | None = None) -> Record:
    return Record(actor=actor, reason=reason, at=arrival_as_of(as_of), metrics=dict(metrics or {}),
                  details=dict(details or {}), flow_run_id=flow_run.get_id(), mlflow_run_id=mlflow_run_id)


def record_decision(warehouse: Warehouse, model: str, action: str, record: Record,
                    from_version: str | None = None, to_version: str | None = None) -> None:
    """A ledger row for a decision that moves no alias (gated-out, approved, skipped, ...)."""
    append_ledger_entry(warehouse, LedgerEntry(
        model=model, action=action, reason=record.reason, actor=record.actor, at=record.at,
        from_version=from_version, to_version=to_version, metrics=dict(record.metrics),
        details=dict(record.details), flow_run_id=record.flow_run_id, mlflow_run_id=record.mlflow_run_id,
    ))


def transition_outcome(transition: Transition, record: Record, decision: str) -> ReleaseOutcome:
    code = ExitCode.REFUSED if decision in ("rejected", "reject") else ExitCode.OK
    return ReleaseOutcome(transition.model, transition.ledger_action, decision, record.reason,
                          transition.from_version, transition.to_version, dict(record.metrics), int(code),
                          flow_run.get_id())


def refused_outcome(model: str, error: TransitionRefused | TransitionConflict) -> ReleaseOutcome:
    return ReleaseOutcome(model, "none", "refused", str(error), exit_code=int(error.exit_code),
                          flow_run_id=flow_run.get_id())


def apply_or_refuse(client: MlflowClient, warehouse: Warehouse, transition: Transition, record: Record,
                    decision: str) -> ReleaseOutcome:
    try:
        applied = apply_transition(client, warehouse, transition, record, announce)
    except (TransitionRefused, TransitionConflict) as error:
        return refused_outcome(transition.model, error)
    return transition_outcome(applied, record, decision)


def last_entry(warehouse: Warehouse, model: str, actions: Sequence[str], version: str | None) -> LedgerEntry | None:
    """The newest ledger row of one of `actions` that moved `version` in (to_version)."""
    for entry in read_ledger_rows(warehouse, model):
        if entry.action in actions and entry.to_version == version:
            return entry
    return None


def with_requester(details: Mapping[str, Any], actor: str, decided_by: str) -> dict[str, Any]:
    """Details of a ledger row, naming who started the run when a flow's rule decided (`requested_by`)."""
    return {**dict(details), **({"requested_by": actor} if actor != decided_by else {})}


def score_in_shadow(config: ModelConfig, version: str, inputs: pd.DataFrame) -> np.ndarray:
    """Predictions of `version` (loaded through MLflow like the server loads it) on logged raw inputs, for rows
    another version served: what it would have answered on the very same records."""
    if inputs.empty:
        return np.empty(0, dtype="float64")
    model = mlflow.pyfunc.load_model(f"models:/{config.name}/{version}")
    schema = model.metadata.get_input_schema()
    columns = schema.input_names() if schema is not None else config.features.all
    frame = inputs.reindex(columns=list(columns))
    for name in config.features.numeric:
        if name in frame:
            frame[name] = pd.to_numeric(frame[name], errors="coerce")
    return np.asarray(model.predict(frame), dtype="float64").ravel()


def logged_inputs(
    warehouse: Warehouse, config: ModelConfig, rows: pd.DataFrame, start: datetime, end: datetime,
    arms: Sequence[str], versions: Sequence[str],
) -> pd.DataFrame:
    """The logged raw records of `rows` (in their order), with the timestamp column filled from event time."""
    records = read_prediction_features(warehouse, config.name, start, end, arms, versions)
    joined = rows[["request_id"]].merge(records, on="request_id", how="left")
    return model_inputs(joined.drop(columns=["request_id"]), rows["event_at"], config.source.timestamp)


def labelled_rows(
    warehouse: Warehouse, config: ModelConfig, start: datetime, end: datetime, served: Mapping[str, str]
) -> pd.DataFrame:
    """Predictions each arm's version served with event time in [start, end), labels matured by `end`, as 0/1 for
    a binary model: `served` maps arm to version, and a row of an arm under another version (served before a
    swap) is not read."""
    rows = read_labelled_predictions(warehouse, config.name, start, end, matured_by=end, arms=list(served),
                                     versions=list(served.values()))
    mine = np.zeros(len(rows), dtype=bool)
    for arm, version in served.items():
        mine |= ((rows["arm"] == arm) & (rows["version"].astype(str) == str(version))).to_numpy()
    return _target_as_labels(rows[mine].reset_index(drop=True), config)


def paired_canary_rows(
    warehouse: Warehouse, config: ModelConfig, champion: str, canary: str, start: datetime, end: datetime
) -> pd.DataFrame:
    """The canary period's rows for `canary_evidence`: each served prediction of the two versions, and on matured
    rows the other version's prediction in shadow on the logged inputs."""
    served = {CHAMPION_ARM: champion, CANARY_ARM: canary}
    rows = labelled_rows(warehouse, config, start, end, served)
    prediction = pd.to_numeric(rows["prediction"], errors="coerce")
    frame = pd.DataFrame({
        "request_id": rows["request_id"], "arm": rows["arm"], "event_at": rows["event_at"], "actual": rows["actual"],
        "canary": prediction.where(rows["arm"] == CANARY_ARM),
        "champion": prediction.where(rows["arm"] == CHAMPION_ARM),
    })
    for arm, other in ((CANARY_ARM, CHAMPION_ARM), (CHAMPION_ARM, CANARY_ARM)):
        matured = frame[(frame["arm"] == arm) & frame["actual"].notna()]
        if matured.empty:
            continue
        inputs = logged_inputs(warehouse, config, matured, start, end, [arm], [served[arm]])
        frame.loc[matured.index, other] = score_in_shadow(config, served[other], inputs)
    return frame


# ------------------------------------------------------------------------------------------ Prefect tasks


@task(name="register-model", cache_policy=NO_CACHE)
def register_trained_model(
    config: ModelConfig,
    logged: LoggedRun,
    data: PreparedData,
    tuning: TuningResult,
    fitted: FittedModel,
    decision: Decision,
) -> TrainingOutcome:
    """Register a model that passed the gates as challenger (transition `register`); record a gated-out one.

    The version carries facts only (fingerprint, settings, gates passed, holdout metrics); what it is now is its
    aliases, moved by the transition.
    """
    client, warehouse = MlflowClient(), get_warehouse()
    actor = "flow:train-model"
    metrics = {f"holdout_{name}": value for name, value in fitted.metrics.all.items()}
    metrics |= {f"baseline_{name}": value for name, value in fitted.metrics.baseline_all.items()}
    metrics |= {f"baseline_{name}": value for name, value in fitted.metrics.baselines.items()}  # each naive forecaster
    if decision.champion_value is not None:
        metrics[f"champion_holdout_{config.metric}"] = decision.champion_value
    if decision.p_value is not None:
        metrics["bootstrap_p_value"] = decision.p_value
    # On the Retrain clock (the training's as_of), so a replayed year writes the same ledger as living through it.
    record = make_record(actor, decision.reason, data.window.as_of, metrics, {"gate": decision.gate,
                                                                "fingerprint": data.fingerprint},
                         mlflow_run_id=logged.run_id)
    if not decision.passed or logged.model_uri is None:
        record_decision(warehouse, config.name, "gated-out", record)
        get_run_logger().info("rejected: %s", decision.reason)
        return trained_outcome(config, data, tuning, fitted, decision, logged.run_id, version=None)
    finish_interrupted(client, warehouse, config.name, announce)
    version = str(mlflow.register_model(
        logged.model_uri,
        config.name,
        tags={
            keys.FINGERPRINT: data.fingerprint,
            keys.SETTINGS: config.settings_digest(),
            keys.GATES: "passed",
            keys.GATE: decision.gate,
            keys.WINDOW_END: data.window.end.isoformat(),
            **{keys.holdout_metric_tag(name): f"{value:.6g}" for name, value in fitted.metrics.all.items()},
        },
    ).version)
    client.update_model_version(
        config.name,
        version,
        description=f"Trained as of {shown(data.window.as_of)} on {config.source.clean} {data.window} "
        f"({data.rows:,} rows): holdout {config.metric} {fitted.metrics.value:.4f}, best naive "
        f"forecaster ({fitted.metrics.baseline_name}) {fitted.metrics.baseline:.4f}. Gates: {decision.reason}",
    )
    transition = plan_register(config.name, read_aliases(client, config.name), version)
    apply_transition(client, warehouse, transition, record, announce)
    outcome_decision = replace(decision, verdict=Verdict.CHALLENGER)
    return trained_outcome(config, data, tuning, fitted, outcome_decision, logged.run_id, version=version)


def released_outcome(outcome: TrainingOutcome, release: ReleaseOutcome) -> TrainingOutcome:
    """A training's outcome after the release path took its model on (champion when it was promoted)."""
    if release.decision != "champion":
        return replace(outcome, reason=f"{outcome.reason}; release: {release.reason}")
    return replace(outcome, decision=str(Verdict.CHAMPION), reason=f"{outcome.reason}; released: {release.reason}")


@task(name="record-skipped-training", cache_policy=NO_CACHE)
def record_skipped_training(config: ModelConfig, outcome: TrainingOutcome, as_of: datetime | None = None) -> None:
    """A skipped training is a decision too: one ledger row saying what it would have repeated."""
    same = outcome.same_as.version if outcome.same_as is not None else None
    record = make_record("flow:train-model", outcome.reason, as_of, details={"fingerprint": outcome.fingerprint})
    record_decision(get_warehouse(), config.name, "skipped", record, to_version=same)


@task(name="finish-interrupted-transition", cache_policy=NO_CACHE)
def finish_interrupted_transition(config: ModelConfig) -> str | None:
    """Finish a transition a crash left half done; None when there was none."""
    client = release_client(config)
    finished = finish_interrupted(client, get_warehouse(), config.name, announce)
    if finished is not None:
        get_run_logger().warning("finished an interrupted %s of version %s", finished.action, finished.version)
    return None if finished is None else str(finished.action)


@task(name="resolve-release-clock", cache_policy=NO_CACHE)
def resolve_release_clock(config: ModelConfig, as_of: datetime | None) -> datetime:
    """The release clock: the given instant, or the model's clock (just after the newest clean row), as training
    and monitoring use, so bake windows, canary periods and ledger rows of a replay fall on the replayed time."""
    if as_of is not None:
        return model_as_of(as_of, None, config.source.clean)
    newest = read_newest_timestamp(get_warehouse(), config.source.clean, config.source.timestamp)
    return model_as_of(None, newest, config.source.clean)


@dataclass(frozen=True)
class ReleasePlan:
    """What a release would do, decided before any approval: the transition, or why there is nothing to do.

    `supersedes` names a running canary the challenger replaces (`release.canary.superseded_by_newer`): it is
    rejected just before the challenger's canary starts. `seen` holds the aliases as the plan saw them: every
    transition the release ends with is compare-and-set against them, however long an approval took.
    """

    transition: Transition | None
    outcome: ReleaseOutcome | None
    approval_text: str = ""
    supersedes: str | None = None
    seen: Mapping[str, str | None] | None = None


@task(name="plan-release", cache_policy=NO_CACHE)
def plan_release(config: ModelConfig, actor: str, as_of: datetime | None = None) -> ReleasePlan:
    """The challenger's next step: a canary beside the champion, or champion when there is none.

    While a canary runs, the challenger waits (its alias stays) and is released when the canary ends (the release
    deployment also runs on promote, reject and rollback), unless `release.canary.superseded_by_newer` lets it
    replace the canary.
    """
    client, warehouse = release_client(config), get_warehouse()
    state = read_release_state(client, config.name)
    if state.aliases["challenger"] is None and all(version is None for version in state.aliases.values()):
        check_version(client, config.name, "1")  # names the model when nothing was ever registered
    version = state.aliases["challenger"]
    if version is None:
        outcome = ReleaseOutcome(config.name, "none", "skipped", "no challenger to release: train one first",
                                 flow_run_id=flow_run.get_id())
        return ReleasePlan(None, outcome)
    running = state.aliases["canary"]
    supersedes = None
    seen = dict(state.aliases)
    if running is not None:
        if not config.release.canary.superseded_by_newer:
            return ReleasePlan(None, challenger_waits(warehouse, config, version, running, actor, as_of))
        supersedes = running
        seen = {**seen, "canary": None}  # as it will be once the canary is rejected
    try:
        if seen["champion"] is None:
            transition = plan_promote(config.name, seen, version, lambda v: passed_gates(client, config.name, v))
        else:
            transition = plan_start_canary(config.name, seen, config.release.canary.share, version)
    except TransitionRefused as error:
        return ReleasePlan(None, refused_outcome(config.name, error))
    registered = last_entry(warehouse, config.name, ("registered",), version)
    link = f"{get_settings().resolved_tracking_uri()} run {registered.mlflow_run_id if registered else '?'}"
    text = approval_markdown(config.name, version, state, registered, link)
    if supersedes is not None:
        text += f"\n\nApproving rejects the running canary (version {supersedes}): release.canary.superseded_by_newer."
    return ReleasePlan(transition, None, text, supersedes, dict(state.aliases))


def challenger_waits(warehouse: Warehouse, config: ModelConfig, version: str, canary: str, actor: str,
                     as_of: datetime | None) -> ReleaseOutcome:
    """The outcome (and, once per version, the ledger row `waiting`) of a challenger that waits for a canary."""
    reason = (f"version {version} waits as challenger: the canary (version {canary}) runs until the canary check "
              "promotes or rejects it, or it reaches release.canary.max_duration; the release runs again then")
    if last_entry(warehouse, config.name, ("waiting",), version) is None:
        record_decision(warehouse, config.name, "waiting", make_record(actor, reason, as_of), from_version=canary,
                        to_version=version)
    return ReleaseOutcome(config.name, "none", "waiting", reason, canary, version, flow_run_id=flow_run.get_id())


NO_ANSWER = "(no answer within release.approval_timeout)"
PAUSE_GRACE_SECONDS = 120  # the server's own expiry, after ours: a run whose process died still fails closed


def wait_for_approval(config: ModelConfig, plan: ReleasePlan) -> ReleaseApproval | None:
    """Pause the flow run with the approval form; None when nobody answered within the timeout (fail closed).

    Called from the flow body: Prefect pauses the flow run itself, which a task cannot own. Prefect fails a run
    whose pause expires, so the deadline is ours: at `approval_timeout` a timer answers the form with a
    rejection (if a person has not), and the run goes on to record it; the server's expiry comes later. The run
    holds no concurrency lease while it waits (the release deployment has no `concurrency_limit`: a lease released
    on pause and renewed by the paused process crashes the run with 410 Gone after ~225 s); the alias moves it
    ends with are compare-and-set under the model's release lock instead.
    """
    from prefect.exceptions import FlowPauseTimeout, NotPausedError
    from prefect.flow_runs import pause_flow_run, resume_flow_run

    timeout = int(config.release.approval_timeout.total_seconds())
    run_id = flow_run.get_id()

    def answer_no() -> None:
        with contextlib.suppress(NotPausedError, FlowPauseTimeout, RuntimeError):  # a person answered first
            resume_flow_run(run_id, run_input={"approve": False, "reviewer": "", "comment": NO_ANSWER})

    deadline = threading.Timer(timeout, answer_no)
    deadline.daemon = True
    form = ReleaseApproval.with_initial_data(description=plan.approval_text, approve=False)
    deadline.start()
    try:
        answer = pause_flow_run(wait_for_input=form, timeout=timeout + PAUSE_GRACE_SECONDS,
                                poll_interval=min(config.release.approval_poll_seconds, max(timeout // 2, 1)))
    except FlowPauseTimeout:
        return None
    finally:
        deadline.cancel()
    return None if (answer.comment == NO_ANSWER and not answer.reviewer) else answer


@task(name="carry-out-release", cache_policy=NO_CACHE)
def carry_out_release(
    config: ModelConfig, plan: ReleasePlan, approval: ReleaseApproval | None, as_of: datetime | None, actor: str
) -> ReleaseOutcome:
    """Apply the planned step (auto, or approved), or reject the challenger (refused or no answer in time)."""
    assert plan.transition is not None
    client, warehouse = release_client(config), get_warehouse()
    transition = plan.transition
    version = transition.version
    if config.release.mode == "manual":
        if approval is None:
            reason = (f"no approval within {format_duration(config.release.approval_timeout)} "
                      "(release.approval_timeout): a release nobody approved is rejected")
            record = make_record(RELEASE_ACTOR, reason, as_of, details=with_requester({}, actor, RELEASE_ACTOR))
        else:
            who = f"person:{approval.reviewer}" if approval.reviewer else actor
            reason = approval.comment or ("approved" if approval.approve else "rejected by the reviewer")
            record = make_record(who, reason, as_of)
        if approval is None or not approval.approve:
            rejection = plan_reject(config.name, plan.seen or transition.seen, version)
            return apply_or_refuse(client, warehouse, rejection, record, "rejected")
        record_decision(warehouse, config.name, "approved", record, to_version=version)
        actor = record.actor
    if plan.supersedes is not None:
        reason = (f"superseded by the newer challenger version {version} (release.canary.superseded_by_newer): "
                  "the canary had not been decided")
        rejection = plan_reject(config.name, plan.seen or transition.seen, plan.supersedes)
        rejected = apply_or_refuse(client, warehouse, rejection,
                                   make_record(RELEASE_ACTOR, reason, as_of,
                                               details=with_requester({}, actor, RELEASE_ACTOR)), "rejected")
        if rejected.action == "none":
            return rejected
    if transition.action == "promote":
        reason = "no champion yet: the first model that passed the gates becomes champion"
        decision = "champion"
    else:
        reason = f"challenger starts its canary on {config.release.canary.share:.0%} of traffic"
        decision = "canary"
    return apply_or_refuse(client, warehouse, transition, make_record(actor, reason, as_of), decision)


@task(name="check-canary", cache_policy=NO_CACHE)
def judge_canary(config: ModelConfig, as_of: datetime, actor: str) -> ReleaseOutcome:
    """Promote, reject or wait on the running canary (settled once it reaches `max_duration`); with none, watch
    a freshly promoted champion. Decisions are the flow's (`flow:check-canary`); `actor` started the run."""
    client, warehouse = release_client(config), get_warehouse()
    state = read_release_state(client, config.name)
    canary, champion = state.aliases["canary"], state.aliases["champion"]
    if canary is None or champion is None:
        return watch_new_champion(client, warehouse, config, state, as_of, actor)
    started = last_entry(warehouse, config.name, ("canary-started",), canary)
    since = started.at if started is not None else years_before(as_of, 1)
    rows = paired_canary_rows(warehouse, config, champion, canary, since, as_of)
    verdict = analyse_canary(rows, config.metric, config.release.canary)
    running_for = as_of - started.at if started is not None else None
    verdict = settle_canary(verdict, running_for, passed_gates(client, config.name, canary), config.release.canary)
    get_run_logger().info("canary v%s: %s (%s)", canary, verdict.decision, verdict.reason)
    if verdict.decision == WAIT:
        return ReleaseOutcome(config.name, "none", WAIT, verdict.reason, champion, canary, verdict.metrics(),
                              flow_run_id=flow_run.get_id())
    details = with_requester({"since": since.isoformat(), "settled": verdict.settled}, actor, CHECK_ACTOR)
    record = make_record(CHECK_ACTOR, verdict.reason, as_of, verdict.metrics(), details)
    if verdict.decision == PROMOTE:
        transition = plan_promote(config.name, state.aliases, canary, lambda v: passed_gates(client, config.name, v))
        outcome = apply_or_refuse(client, warehouse, transition, record, PROMOTE)
    else:
        outcome = apply_or_refuse(client, warehouse, plan_reject(config.name, state.aliases, canary), record, REJECT)
    return with_waiting_challenger(outcome, state.aliases["challenger"])


def with_waiting_challenger(outcome: ReleaseOutcome, challenger: str | None) -> ReleaseOutcome:
    """An outcome that ended a canary, saying what comes next for a challenger that waited for it."""
    if challenger is None or outcome.action == "none":
        return outcome
    return replace(outcome, reason=f"{outcome.reason}; version {challenger} waited as challenger: the release flow "
                   "starts its canary next (the release deployment runs on this event; `retrain release` by hand)")


def _target_as_labels(rows: pd.DataFrame, config: ModelConfig) -> pd.DataFrame:
    if config.target.task is not TaskType.BINARY or rows.empty:
        return rows
    rows = rows.copy()
    labelled = rows["actual"].notna()
    rows.loc[labelled, "actual"] = binary_labels(rows.loc[labelled, "actual"].to_numpy(dtype="float64"),
                                                 config.target.positive_above)
    return rows


def watch_new_champion(client: MlflowClient, warehouse: Warehouse, config: ModelConfig, state: ReleaseState,
                       moment: datetime, actor: str) -> ReleaseOutcome:
    """Roll back a champion promoted less than the bake window ago that is worse than the previous champion on
    the same matured rows (the previous one scored in shadow on the champion's logged inputs)."""
    champion, previous = state.aliases["champion"], state.aliases["previous"]
    nothing = ReleaseOutcome(config.name, "none", "none", "no canary runs", flow_run_id=flow_run.get_id())
    if champion is None:
        return nothing
    promoted = last_entry(warehouse, config.name, ("promoted", "rolled-back"), champion)
    rules = config.release.rollback
    if promoted is None or moment - promoted.at >= rules.bake:
        return nothing
    baking = (f"no canary runs; champion v{champion} promoted {shown(promoted.at)} bakes until "
              f"{shown(promoted.at + rules.bake)}")
    if previous is None:
        return replace(nothing, reason=f"{baking}; no previous champion to compare it with")
    rows = labelled_rows(warehouse, config, promoted.at, moment, {CHAMPION_ARM: champion})
    rows = rows[rows["actual"].notna() & np.isfinite(pd.to_numeric(rows["prediction"], errors="coerce"))]
    inputs = logged_inputs(warehouse, config, rows, promoted.at, moment, [CHAMPION_ARM], [champion])
    shadow = score_in_shadow(config, previous, inputs)
    finite = np.isfinite(shadow)
    actual = rows["actual"].to_numpy(dtype="float64")[finite]
    verdict = judge_rollback(row_losses(actual, rows["prediction"].to_numpy(dtype="float64")[finite], config.metric),
                             row_losses(actual, shadow[finite], config.metric), rules)
    summary = verdict.comparison.describe(f"v{champion}", f"previous v{previous}")
    if verdict.breach is None:
        return replace(nothing, reason=f"{baking}: {summary}; the rollback rule does not fire (at least "
                       f"{rules.min_predictions} rows and worse by more than {rules.max_degradation:g} with p < "
                       f"{rules.significance:g})", metrics=verdict.metrics())
    try:
        transition = plan_rollback(config.name, state.aliases, None, former_champions(warehouse, config.name))
    except TransitionRefused as error:
        return replace(refused_outcome(config.name, error), reason=f"{verdict.breach}; but {error}")
    record = make_record(CHECK_ACTOR, f"automatic rollback: {verdict.breach}", moment, verdict.metrics(),
                         with_requester({"since": promoted.at.isoformat()}, actor, CHECK_ACTOR))
    return apply_or_refuse(client, warehouse, transition, record, "rollback")


@task(name="promote-version", cache_policy=NO_CACHE)
def promote_by_hand(config: ModelConfig, version: str | None, as_of: datetime | None, actor: str,
                    reason: str) -> ReleaseOutcome:
    """Promote `version` (default: the canary, else the challenger); only a version that passed the gates."""
    client, warehouse = release_client(config), get_warehouse()
    if version:
        check_version(client, config.name, version)
    seen = read_aliases(client, config.name)
    try:
        transition = plan_promote(config.name, seen, version or None, lambda v: passed_gates(client, config.name, v))
    except TransitionRefused as error:
        return refused_outcome(config.name, error)
    record = make_record(actor, reason or f"promoted by {actor}", as_of)
    ended_canary = transition.version == seen["canary"]
    outcome = apply_or_refuse(client, warehouse, transition, record, "champion")
    return with_waiting_challenger(outcome, seen["challenger"]) if ended_canary else outcome


@task(name="reject-version", cache_policy=NO_CACHE)
def reject_by_hand(config: ModelConfig, version: str | None, as_of: datetime | None, actor: str,
                   reason: str) -> ReleaseOutcome:
    """Reject `version` (default: the canary, else the challenger): it loses its alias and is never released."""
    client, warehouse = release_client(config), get_warehouse()
    if version:
        check_version(client, config.name, version)
    seen = read_aliases(client, config.name)
    try:
        transition = plan_reject(config.name, seen, version or None)
    except TransitionRefused as error:
        return refused_outcome(config.name, error)
    record = make_record(actor, reason or f"rejected by {actor}", as_of)
    outcome = apply_or_refuse(client, warehouse, transition, record, "rejected")
    waiting = seen["challenger"] if transition.version == seen["canary"] else None
    return with_waiting_challenger(outcome, waiting)


@task(name="roll-back", cache_policy=NO_CACHE)
def roll_back_champion(config: ModelConfig, to_version: str | None, as_of: datetime | None, actor: str,
                       reason: str) -> ReleaseOutcome:
    """Champion back to `previous`, or to `to_version` (which the ledger says was champion before)."""
    client, warehouse = release_client(config), get_warehouse()
    if to_version:
        check_version(client, config.name, to_version)
    seen = read_aliases(client, config.name)
    try:
        transition = plan_rollback(config.name, seen, to_version or None, former_champions(warehouse, config.name))
    except TransitionRefused as error:
        return refused_outcome(config.name, error)
    record = make_record(actor, reason or f"rolled back by {actor}", as_of)
    return apply_or_refuse(client, warehouse, transition, record, "rollback")
