"""Release decisions: the canary analysis, the rollback rule, the approval form; and the tasks that apply them.

The pure part decides from numbers (per-row losses of each arm, a live metric against the holdout metric); the
tasks read the registry, the ledger and the prediction log, and apply transitions through
`tasks.registry.apply_transition`, the one code path that moves aliases.

The canary check compares the canary's and the champion's predictions made since the canary started, on labels
matured by `as_of`. Each arm needs `min_predictions` matured rows, then two one-sided Welch tests on the per-row
loss with a margin m = `margin` × the champion's mean loss: the canary is rejected when it is worse by more than m
with significance, promoted when it is worse by less than m with significance (non-inferior), and otherwise
"not decided yet": more data will tell.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
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
from retrain.clock import arrival_as_of, shown, years_before
from retrain.config import LOWER_IS_BETTER, CanaryConfig, ModelConfig, RollbackConfig, TaskType
from retrain.errors import ExitCode
from retrain.outcomes import ReleaseOutcome, TrainingOutcome, Verdict
from retrain.release_state import ReleaseState, read_release_state
from retrain.settings import get_settings
from retrain.warehouse import LedgerEntry, Warehouse, append_ledger_entry, get_warehouse, read_labelled_predictions
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
from tasks.training import METRIC_FUNCTIONS, FittedModel, is_improvement
from tasks.tuning import TuningResult

PROMOTE, REJECT, WAIT = "promote", "reject", "wait"


@dataclass(frozen=True)
class ArmSummary:
    arm: str
    predictions: int
    matured: int
    mean_loss: float | None
    error_rate: float


@dataclass(frozen=True)
class CanaryVerdict:
    decision: str  # promote, reject or wait
    reason: str
    champion: ArmSummary
    canary: ArmSummary
    p_worse: float | None = None
    p_noninferior: float | None = None

    def metrics(self) -> dict[str, float]:
        values: dict[str, float | int | None] = {
            "champion_matured": self.champion.matured, "canary_matured": self.canary.matured,
            "champion_mean_loss": self.champion.mean_loss, "canary_mean_loss": self.canary.mean_loss,
            "canary_error_rate": self.canary.error_rate, "p_worse": self.p_worse, "p_noninferior": self.p_noninferior,
        }
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


def summarise_arm(rows: pd.DataFrame, arm: str, metric: str) -> tuple[ArmSummary, np.ndarray]:
    """Counts, matured rows and the per-row losses of one arm (`rows` as `read_labelled_predictions` gives)."""
    mine = rows[rows["arm"] == arm]
    predicted = pd.to_numeric(mine["prediction"], errors="coerce").to_numpy(dtype="float64")
    finite = np.isfinite(predicted)
    matured = mine[mine["actual"].notna() & finite]
    losses = row_losses(matured["actual"].to_numpy(dtype="float64"),
                        matured["prediction"].to_numpy(dtype="float64"), metric)
    error_rate = float((~finite).mean()) if len(mine) else 0.0
    summary = ArmSummary(arm, len(mine), len(matured), float(losses.mean()) if len(losses) else None, error_rate)
    return summary, losses


def analyse_canary(rows: pd.DataFrame, metric: str, rules: CanaryConfig) -> CanaryVerdict:
    """Promote, reject or wait, from the champion's and the canary's predictions over one period."""
    champion, champion_losses = summarise_arm(rows, "champion", metric)
    canary, canary_losses = summarise_arm(rows, "canary", metric)
    if canary.predictions and canary.error_rate > rules.max_error_rate:
        return CanaryVerdict(REJECT, f"the canary's error rate {canary.error_rate:.2%} (non-finite predictions) is "
                             f"above max_error_rate {rules.max_error_rate:.2%}", champion, canary)
    if min(champion.matured, canary.matured) < rules.min_predictions:
        return CanaryVerdict(WAIT, f"not enough data yet: {canary.matured} matured canary and {champion.matured} "
                             f"matured champion predictions, {rules.min_predictions} needed per arm", champion, canary)
    margin = rules.margin * float(champion_losses.mean())
    shifted = canary_losses - margin
    p_worse = _one_sided_p(shifted, champion_losses, "greater")
    p_noninferior = _one_sided_p(shifted, champion_losses, "less")
    numbers = (f"mean loss canary {canary.mean_loss:.4f} vs champion {champion.mean_loss:.4f} on {canary.matured} / "
               f"{champion.matured} matured predictions, margin {margin:.4f} ({rules.margin:g} of the champion's)")
    if p_worse < rules.significance:
        decision, reason = REJECT, f"the canary is worse than the champion beyond the margin: {numbers}, " \
            f"p={p_worse:.4f} < {rules.significance:g}"
    elif p_noninferior < rules.significance:
        decision, reason = PROMOTE, f"the canary is no worse than the champion within the margin: {numbers}, " \
            f"p={p_noninferior:.4f} < {rules.significance:g}"
    else:
        decision, reason = WAIT, f"not decided yet: the difference is within the noise ({numbers}, p worse " \
            f"{p_worse:.3f}, p no worse {p_noninferior:.3f}); more matured predictions will tell"
    return CanaryVerdict(decision, reason, champion, canary, p_worse, p_noninferior)


def _one_sided_p(first: np.ndarray, second: np.ndarray, alternative: str) -> float:
    if np.ptp(first) == 0 and np.ptp(second) == 0:  # no spread: the means decide with certainty
        mean_first, mean_second = float(first.mean()), float(second.mean())
        holds = mean_first > mean_second if alternative == "greater" else mean_first < mean_second
        return 0.0 if holds else 1.0
    return float(stats.ttest_ind(first, second, equal_var=False, alternative=alternative).pvalue)


def live_metric(rows: pd.DataFrame, metric: str) -> tuple[float | None, int]:
    """The metric on the matured rows of one arm, and how many there were."""
    matured = rows[rows["actual"].notna()]
    if matured.empty:
        return None, 0
    value = METRIC_FUNCTIONS[metric](matured["actual"].to_numpy(dtype="float64"),
                                     matured["prediction"].to_numpy(dtype="float64"))
    return float(value), len(matured)


def breaches_rollback_rule(
    live: float | None, matured: int, holdout: float | None, metric: str, rules: RollbackConfig
) -> str | None:
    """Why the live metric breaches the rollback rule, or None (also when there is too little data to say)."""
    if live is None or holdout is None or matured < rules.min_predictions:
        return None
    allowed = abs(holdout) * rules.max_degradation
    limit = holdout + allowed if LOWER_IS_BETTER[metric] else holdout - allowed
    if is_improvement(live, limit, metric) or live == limit:
        return None
    return (f"live {metric} {live:.4f} on {matured} matured predictions is worse than the holdout's {holdout:.4f} "
            f"by more than max_degradation {rules.max_degradation:g} (limit {limit:.4f})")


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


def holdout_metric(client: MlflowClient, model: str, version: str, metric: str) -> float | None:
    """The version's holdout metric as registered (a version tag written at registration)."""
    value = check_version(client, model, version).tags.get(keys.holdout_metric_tag(metric))
    return None if value is None else float(value)


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
        f"({data.rows:,} rows): holdout {config.metric} {fitted.metrics.value:.4f}, naive baseline "
        f"{fitted.metrics.baseline:.4f}. Gates: {decision.reason}",
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


@dataclass(frozen=True)
class ReleasePlan:
    """What a release would do, decided before any approval: the transition, or why there is nothing to do."""

    transition: Transition | None
    outcome: ReleaseOutcome | None
    approval_text: str = ""


@task(name="plan-release", cache_policy=NO_CACHE)
def plan_release(config: ModelConfig, actor: str) -> ReleasePlan:
    """The challenger's next step: a canary beside the champion, or champion when there is none."""
    client = release_client(config)
    state = read_release_state(client, config.name)
    if state.aliases["challenger"] is None and all(version is None for version in state.aliases.values()):
        check_version(client, config.name, "1")  # names the model when nothing was ever registered
    version = state.aliases["challenger"]
    if version is None:
        outcome = ReleaseOutcome(config.name, "none", "skipped", "no challenger to release: train one first",
                                 flow_run_id=flow_run.get_id())
        return ReleasePlan(None, outcome)
    try:
        if state.aliases["champion"] is None:
            transition = plan_promote(config.name, state.aliases, version,
                                      lambda v: passed_gates(client, config.name, v))
        else:
            transition = plan_start_canary(config.name, state.aliases, config.release.canary.share, version)
    except TransitionRefused as error:
        return ReleasePlan(None, refused_outcome(config.name, error))
    registered = last_entry(get_warehouse(), config.name, ("registered",), version)
    link = f"{get_settings().resolved_tracking_uri()} run {registered.mlflow_run_id if registered else '?'}"
    return ReleasePlan(transition, None, approval_markdown(config.name, version, state, registered, link))


NO_ANSWER = "(no answer within release.approval_timeout)"
PAUSE_GRACE_SECONDS = 120  # the server's own expiry, after ours: a run whose process died still fails closed


def wait_for_approval(config: ModelConfig, plan: ReleasePlan) -> ReleaseApproval | None:
    """Pause the flow run with the approval form; None when nobody answered within the timeout (fail closed).

    Called from the flow body: Prefect pauses the flow run itself, which a task cannot own. Prefect fails a run
    whose pause expires, so the deadline is ours: at `approval_timeout` a timer answers the form with a
    rejection (if a person has not), and the run goes on to record it; the server's expiry comes later.
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
    manual = config.release.mode == "manual"
    if manual:
        if approval is None:
            reason = (f"no approval within {config.release.approval_timeout} (release.approval_timeout): "
                      "a release nobody approved is rejected")
            approver = "automation"
        else:
            who = f"person:{approval.reviewer}" if approval.reviewer else actor
            reason = approval.comment or ("approved" if approval.approve else "rejected by the reviewer")
            approver = who
        if approval is None or not approval.approve:
            rejection = plan_reject(config.name, transition.seen, version)
            return apply_or_refuse(client, warehouse, rejection, make_record(approver, reason, as_of), "rejected")
        record_decision(warehouse, config.name, "approved", make_record(approver, reason, as_of), to_version=version)
        actor = approver
    if transition.action == "promote":
        reason = "no champion yet: the first model that passed the gates becomes champion"
        decision = "champion"
    else:
        reason = f"challenger starts its canary on {config.release.canary.share:.0%} of traffic"
        decision = "canary"
    return apply_or_refuse(client, warehouse, transition, make_record(actor, reason, as_of), decision)


@task(name="check-canary", cache_policy=NO_CACHE)
def judge_canary(config: ModelConfig, as_of: datetime | None, actor: str) -> ReleaseOutcome:
    """Promote, reject or wait on the running canary; with none, watch a freshly promoted champion."""
    client, warehouse = release_client(config), get_warehouse()
    moment = arrival_as_of(as_of)
    state = read_release_state(client, config.name)
    canary = state.aliases["canary"]
    if canary is None:
        return watch_new_champion(client, warehouse, config, state, moment, actor)
    started = last_entry(warehouse, config.name, ("canary-started",), canary)
    since = started.at if started is not None else years_before(moment, 1)
    rows = read_labelled_predictions(warehouse, config.name, since, moment, matured_by=moment,
                                     arms=["champion", "canary"])
    rows = _target_as_labels(rows, config)
    verdict = analyse_canary(rows, config.metric, config.release.canary)
    get_run_logger().info("canary v%s: %s (%s)", canary, verdict.decision, verdict.reason)
    if verdict.decision == WAIT:
        return ReleaseOutcome(config.name, "none", WAIT, verdict.reason, state.aliases["champion"], canary,
                              verdict.metrics(), flow_run_id=flow_run.get_id())
    record = make_record(actor, verdict.reason, moment, verdict.metrics(), {"since": since.isoformat()})
    if verdict.decision == PROMOTE:
        transition = plan_promote(config.name, state.aliases, canary, lambda v: passed_gates(client, config.name, v))
        return apply_or_refuse(client, warehouse, transition, record, PROMOTE)
    return apply_or_refuse(client, warehouse, plan_reject(config.name, state.aliases, canary), record, REJECT)


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
    """Roll back a champion promoted less than the bake window ago whose live metric breaches the rule."""
    champion = state.aliases["champion"]
    nothing = ReleaseOutcome(config.name, "none", "none", "no canary runs", flow_run_id=flow_run.get_id())
    if champion is None:
        return nothing
    promoted = last_entry(warehouse, config.name, ("promoted", "rolled-back"), champion)
    rules = config.release.rollback
    if promoted is None or moment - promoted.at >= rules.bake:
        return nothing
    rows = read_labelled_predictions(warehouse, config.name, promoted.at, moment, matured_by=moment,
                                     arms=["champion"])
    rows = _target_as_labels(rows[rows["version"] == champion], config)
    live, matured = live_metric(rows, config.metric)
    holdout = holdout_metric(client, config.name, champion, config.metric)
    breach = breaches_rollback_rule(live, matured, holdout, config.metric, rules)
    baking = (f"no canary runs; champion v{champion} promoted {promoted.at.isoformat()} bakes until "
              f"{(promoted.at + rules.bake).isoformat()}: live {config.metric} "
              f"{'n/a' if live is None else f'{live:.4f}'} on {matured} matured predictions, holdout "
              f"{'n/a' if holdout is None else f'{holdout:.4f}'}")
    if breach is None:
        return replace(nothing, reason=baking)
    metrics = {f"live_{config.metric}": live or 0.0, f"holdout_{config.metric}": holdout or 0.0, "matured": matured}
    try:
        transition = plan_rollback(config.name, state.aliases, None, former_champions(warehouse, config.name))
    except TransitionRefused as error:
        return replace(refused_outcome(config.name, error), reason=f"{breach}; but {error}")
    record = make_record(actor, f"automatic rollback: {breach}", moment, metrics)
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
    return apply_or_refuse(client, warehouse, transition, record, "champion")


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
