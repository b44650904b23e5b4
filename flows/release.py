"""Release flows: release a challenger (with approval in manual mode), check the canary, promote, reject, roll
back.

Wiring only: decisions are `tasks.release`'s, alias moves `tasks.registry.apply_transition`'s. Each flow takes
`as_of` (the release clock: bake windows, canary periods and ledger rows are on it; empty: the model's clock, just
after the newest clean row, as training and monitoring) and `actor` (who asked: `person:<name>`, `schedule`,
`event` or `flow:<name>`; a rule the flow applies on its own is recorded as the flow's, e.g. `flow:check-canary`),
and ends Completed, named after what it decided (Refused and Rejected are outcomes, not failures). A run that fails
leaves one `run-failed` ledger row, like the other flows, so `retrain failures` lists it and `retrain rerun`
starts it again.
"""

from __future__ import annotations

from datetime import datetime

from prefect import flow
from prefect.states import Completed, State

from retrain.config import ModelConfig, load_model_config
from retrain.outcomes import ReleaseOutcome
from tasks.failures import record_failed_run
from tasks.release import (
    carry_out_release,
    finish_interrupted_transition,
    judge_canary,
    plan_release,
    promote_by_hand,
    reject_by_hand,
    resolve_release_clock,
    roll_back_champion,
    wait_for_approval,
)
from tasks.runs import label_flow_run, who_acts
from tasks.stores import verify_stores


def release_state(outcome: ReleaseOutcome) -> State:
    """Completed, named after the decision (Canary, Champion, Rejected, Refused, Wait, ...)."""
    name = "Nothing to do" if outcome.decision == "none" else outcome.decision.replace("-", " ").title()
    return Completed(name=name, message=outcome.reason, data=outcome)


@flow(name="release-model", log_prints=False, on_failure=[record_failed_run], on_crashed=[record_failed_run])
def release_challenger(
    config_path: str = "examples/flights.yaml",
    as_of: datetime | None = None,
    actor: str = "person:prefect-ui",
    config: ModelConfig | None = None,
) -> ReleaseOutcome:
    """Move the challenger on: a canary beside the champion, or champion when there is none.

    In `release.mode: manual` the run pauses with a form in the Prefect UI showing challenger vs champion;
    approve goes on, reject (or no answer within `release.approval_timeout`) rejects the challenger. While a
    canary runs the challenger waits (Waiting), unless `release.canary.superseded_by_newer` lets it replace it.

    Args:
        config: The loaded model config, which the training flow passes so the YAML is read once per run; empty:
            read from `config_path`.
    """
    verify_stores()
    config = config or load_model_config(config_path)
    finish_interrupted_transition(config=config)
    moment = resolve_release_clock(config=config, as_of=as_of)
    label_flow_run(config=config, what="release", as_of=moment)
    actor = who_acts(actor)
    plan = plan_release(config=config, actor=actor, as_of=moment)
    if plan.outcome is not None:
        return release_state(plan.outcome)
    # Approval: only a person lets a challenger go on in manual mode; no answer in time is a rejection.
    approval = wait_for_approval(config, plan) if config.release.mode == "manual" else None
    return release_state(carry_out_release(config=config, plan=plan, approval=approval, as_of=moment, actor=actor))


@flow(name="check-canary", log_prints=False, on_failure=[record_failed_run], on_crashed=[record_failed_run])
def check_canary(
    config_path: str = "examples/flights.yaml", as_of: datetime | None = None, actor: str = "schedule"
) -> ReleaseOutcome:
    """Promote, reject or wait on the running canary (settled by `release.canary.on_timeout` once it ran
    `max_duration`); with none, roll back a new champion that is worse than the previous one on the same rows
    within its bake window; with neither, do nothing ("no canary")."""
    verify_stores()
    config = load_model_config(config_path)
    finish_interrupted_transition(config=config)
    moment = resolve_release_clock(config=config, as_of=as_of)
    label_flow_run(config=config, what="canary check", as_of=moment)
    actor = who_acts(actor)
    return release_state(judge_canary(config=config, as_of=moment, actor=actor))


@flow(name="promote-model", log_prints=False, on_failure=[record_failed_run], on_crashed=[record_failed_run])
def promote_model(
    config_path: str = "examples/flights.yaml",
    version: str = "",
    reason: str = "",
    as_of: datetime | None = None,
    actor: str = "person:prefect-ui",
) -> ReleaseOutcome:
    """Make `version` champion (empty: the canary, else the challenger); it must have passed the gates.

    Args:
        version: The version to promote; empty for the canary, else the challenger.
        reason: Why, for the ledger and the version's description.
    """
    verify_stores()
    config = load_model_config(config_path)
    finish_interrupted_transition(config=config)
    moment = resolve_release_clock(config=config, as_of=as_of)
    label_flow_run(config=config, what="promote", as_of=moment)
    actor = who_acts(actor)
    return release_state(promote_by_hand(config=config, version=version, as_of=moment, actor=actor, reason=reason))


@flow(name="reject-model", log_prints=False, on_failure=[record_failed_run], on_crashed=[record_failed_run])
def reject_model(
    config_path: str = "examples/flights.yaml",
    version: str = "",
    reason: str = "",
    as_of: datetime | None = None,
    actor: str = "person:prefect-ui",
) -> ReleaseOutcome:
    """End a canary, or drop a waiting challenger, by hand: it loses its alias and is never released.

    Args:
        version: The version to reject; empty for the canary, else the challenger.
        reason: Why, for the ledger and the version's description.
    """
    verify_stores()
    config = load_model_config(config_path)
    finish_interrupted_transition(config=config)
    moment = resolve_release_clock(config=config, as_of=as_of)
    label_flow_run(config=config, what="reject", as_of=moment)
    actor = who_acts(actor)
    return release_state(reject_by_hand(config=config, version=version, as_of=moment, actor=actor, reason=reason))


@flow(name="roll-back-model", log_prints=False, on_failure=[record_failed_run], on_crashed=[record_failed_run])
def roll_back_model(
    config_path: str = "examples/flights.yaml",
    to_version: str = "",
    reason: str = "",
    as_of: datetime | None = None,
    actor: str = "person:prefect-ui",
) -> ReleaseOutcome:
    """Give the champion alias back to the previous champion (or `to_version`, a former champion).

    Args:
        to_version: A version that was champion before (per the ledger); empty for the `previous` alias.
        reason: Why, for the ledger and the versions' descriptions.
    """
    verify_stores()
    config = load_model_config(config_path)
    finish_interrupted_transition(config=config)
    moment = resolve_release_clock(config=config, as_of=as_of)
    label_flow_run(config=config, what="rollback", as_of=moment)
    actor = who_acts(actor)
    return release_state(roll_back_champion(config=config, to_version=to_version, as_of=moment, actor=actor,
                                            reason=reason))
