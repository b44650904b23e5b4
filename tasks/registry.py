"""Model versions and aliases: the one function that applies a release transition.

Release state is the registry's aliases (champion, challenger, canary, previous) plus the canary's traffic share
(the registered model's tag `retrain.canary_share`), read by `retrain.release_state`. Every change is a named
transition (register, start_canary, promote, reject, rollback) applied by `apply_transition`, the only code that
calls `set_registered_model_alias` / `delete_registered_model_alias`:

- compare-and-set: under the model's release lock on the warehouse, the aliases must still be where the decision
  saw them; otherwise `TransitionConflict` and nothing moves, so of two promotions at once exactly one wins;
- crash-safe: the whole transition is first written as an intent (the registered model's tag `retrain.intent`),
  then its steps run in order (aliases, share tag, version tags and description, ledger row, event) and the
  intent is removed last. Every step is idempotent, so the next transition of the model finishes an interrupted
  one (`finish_interrupted`);
- one finisher: applying and finishing take the same lock, so an intent under a live holder is never finished
  by anyone else (it is being applied, not interrupted), and a dead holder's is finished by exactly one process;
  the ledger row carries the transition's id, unique in the ledger table, so it is written once whatever
  happens;
- recorded: one append-only ledger row, facts on the model versions (tags and a dated line of description, which
  say what happened when, never a state the aliases do not have) and a Prefect event named by the action.

No Prefect import at module level: the CLI's release commands import it before any flow starts.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from retrain import mlflow_keys as keys
from retrain.errors import ExitCode, RetrainError
from retrain.pauses import pause_point
from retrain.release_state import ALIASES, full_aliases, read_release_state
from retrain.warehouse import LedgerEntry, Warehouse, append_ledger_entry, hold_lock, read_ledger

logger = logging.getLogger(__name__)

TAG_TEXT_LIMIT = 4000  # MLflow keeps tag values up to 5000 characters
LOCK_WAIT_SECONDS = 30.0


class Action(StrEnum):
    REGISTER = "register"
    START_CANARY = "start_canary"
    PROMOTE = "promote"
    REJECT = "reject"
    ROLLBACK = "rollback"


# What the ledger calls each transition, and the Prefect event that announces it.
LEDGER_ACTION: dict[Action, str] = {
    Action.REGISTER: "registered",
    Action.START_CANARY: "canary-started",
    Action.PROMOTE: "promoted",
    Action.REJECT: "rejected",
    Action.ROLLBACK: "rolled-back",
}
EVENT: dict[Action, str] = {
    Action.REGISTER: "retrain.model.registered",
    Action.START_CANARY: "retrain.canary.started",
    Action.PROMOTE: "retrain.model.promoted",
    Action.REJECT: "retrain.model.rejected",
    Action.ROLLBACK: "retrain.model.rolled-back",
}


class ReleaseInputError(RetrainError):
    """A release command names something that does not exist (model, version) or cannot be used."""

    exit_code = ExitCode.USAGE


class TransitionRefused(RetrainError):
    """The transition is not legal from the current aliases (e.g. rollback with no previous version)."""

    exit_code = ExitCode.REFUSED


class TransitionConflict(RetrainError):
    """The aliases moved between the decision and its application: nothing was moved; decide again."""

    exit_code = ExitCode.BUSY


@dataclass(frozen=True)
class Transition:
    """One named change of the aliases, planned from the aliases as a decision saw them.

    `moves` maps each alias it changes to its new version (None: removed); `seen` holds all four aliases as the
    decision saw them, which `apply_transition` compares before moving anything.
    """

    model: str
    action: Action
    version: str | None
    seen: Mapping[str, str | None]
    moves: Mapping[str, str | None]
    from_version: str | None
    to_version: str | None
    canary_share: float | None = None  # set by start_canary
    clears_share: bool = False  # the canary ends: its share tag goes too
    id: str = field(default_factory=lambda: uuid.uuid4().hex)

    @property
    def ledger_action(self) -> str:
        return LEDGER_ACTION[self.action]

    @property
    def event(self) -> str:
        return EVENT[self.action]


@dataclass(frozen=True)
class Record:
    """Who decided a transition, why, with which numbers; what the ledger row, tags and event carry."""

    actor: str
    reason: str
    at: datetime
    metrics: Mapping[str, float] = field(default_factory=dict)
    details: Mapping[str, Any] = field(default_factory=dict)
    flow_run_id: str | None = None
    mlflow_run_id: str | None = None


# ------------------------------------------------------------------------------------- pure planning


def _transition(
    model: str, action: Action, version: str | None, seen: Mapping[str, str | None],
    moves: Mapping[str, str | None], from_version: str | None, to_version: str | None, **extra: Any,
) -> Transition:
    changed = {alias: target for alias, target in moves.items() if seen.get(alias) != target}
    return Transition(model, action, version, dict(seen), changed, from_version, to_version, **extra)


def plan_register(model: str, seen: Mapping[str, str | None], version: str) -> Transition:
    """A version that passed the gates becomes the challenger (replacing an earlier challenger)."""
    for alias in ("champion", "canary"):
        if seen[alias] == version:
            raise TransitionRefused(f"version {version} of '{model}' is the {alias} already; it cannot be registered "
                                    "as challenger")
    return _transition(model, Action.REGISTER, version, seen, {"challenger": version}, seen["challenger"], version)


def plan_start_canary(
    model: str, seen: Mapping[str, str | None], share: float, version: str | None = None
) -> Transition:
    """The challenger becomes the canary with `share` of the traffic; refused while a canary runs."""
    if seen["canary"] is not None:
        raise TransitionRefused(f"a canary of '{model}' runs already (version {seen['canary']}): run the canary "
                                "check (promote or reject it) before starting another")
    version = version or seen["challenger"]
    if version is None:
        raise TransitionRefused(f"'{model}' has no challenger to start a canary with: train one first")
    if version != seen["challenger"]:
        raise TransitionRefused(f"version {version} of '{model}' is not the challenger ({seen['challenger']}): "
                                "only the challenger starts a canary")
    if seen["champion"] is None:
        raise TransitionRefused(f"'{model}' has no champion for a canary to share traffic with: promote instead")
    if not 0 < share < 1:
        raise TransitionRefused(f"a canary's share must be between 0 and 1, got {share}")
    return _transition(model, Action.START_CANARY, version, seen, {"canary": version, "challenger": None},
                       seen["champion"], version, canary_share=share)


def plan_promote(
    model: str, seen: Mapping[str, str | None], version: str | None, passed_gates: Callable[[str], bool]
) -> Transition:
    """`version` (default: the canary, else the challenger) becomes champion; the old champion becomes previous.

    Only a version that passed the gates may be promoted, whoever asks.
    """
    version = version or seen["canary"] or seen["challenger"]
    if version is None:
        raise TransitionRefused(f"'{model}' has no canary or challenger to promote: train one first")
    if seen["champion"] == version:
        raise TransitionRefused(f"version {version} of '{model}' is the champion already")
    if not passed_gates(version):
        raise TransitionRefused(f"version {version} of '{model}' never passed the gates (no tag {keys.GATES}=passed): "
                                "only a version that passed them may become champion")
    moves: dict[str, str | None] = {"champion": version}
    if seen["champion"] is not None:
        moves["previous"] = seen["champion"]
    elif seen["previous"] == version:
        moves["previous"] = None
    for alias in ("canary", "challenger"):
        if seen[alias] == version:
            moves[alias] = None
    return _transition(model, Action.PROMOTE, version, seen, moves, seen["champion"], version,
                       clears_share=seen["canary"] == version)


def plan_reject(model: str, seen: Mapping[str, str | None], version: str | None = None) -> Transition:
    """The canary (default) or the challenger loses its alias: it will not be released."""
    version = version or seen["canary"] or seen["challenger"]
    if version is None:
        raise TransitionRefused(f"'{model}' has no canary or challenger to reject")
    roles = [alias for alias in ("canary", "challenger") if seen[alias] == version]
    if not roles:
        raise TransitionRefused(f"version {version} of '{model}' is neither the canary ({seen['canary']}) nor the "
                                f"challenger ({seen['challenger']}): there is nothing to reject")
    return _transition(model, Action.REJECT, version, seen, dict.fromkeys(roles), version, None,
                       clears_share="canary" in roles)


def plan_rollback(
    model: str, seen: Mapping[str, str | None], to: str | None, former_champions: Sequence[str]
) -> Transition:
    """The champion goes back to `previous`, or to `to`, which must have been champion before (per the ledger)."""
    champion = seen["champion"]
    if champion is None:
        raise TransitionRefused(f"'{model}' has no champion to roll back")
    if to is None:
        to = seen["previous"]
        if to is None:
            raise TransitionRefused(f"'{model}' has no previous champion to roll back to (champion is version "
                                    f"{champion}); nothing was moved. Name one with --to VERSION")
    elif to == champion:
        raise TransitionRefused(f"version {to} of '{model}' is the champion already")
    elif to not in former_champions and to != seen["previous"]:
        raise TransitionRefused(f"version {to} of '{model}' was never champion (former champions per the ledger: "
                                f"{', '.join(former_champions) or 'none'}); nothing was moved")
    moves: dict[str, str | None] = {"champion": to}
    if seen["previous"] == to:
        moves["previous"] = None
    return _transition(model, Action.ROLLBACK, to, seen, moves, champion, to)


def step_names(transition: Transition) -> list[str]:
    """The steps of a transition in the order they run; every one is idempotent."""
    sets = [f"set {alias}" for alias, target in _ordered_moves(transition) if target is not None]
    removes = [f"remove {alias}" for alias, target in _ordered_moves(transition) if target is None]
    share = ["set share"] if transition.canary_share is not None else []
    share += ["remove share"] if transition.clears_share else []
    return [*sets, *removes, *share, "version facts", "ledger", "event", "clear intent"]


def _ordered_moves(transition: Transition) -> list[tuple[str, str | None]]:
    # `previous` is written before `champion` moves: a crash in between leaves the old champion serving.
    order = {"previous": 0, "champion": 1, "canary": 2, "challenger": 3}
    return sorted(transition.moves.items(), key=lambda item: order[item[0]])


def fact_tags(transition: Transition, record: Record) -> dict[str, dict[str, str]]:
    """Tags per version: what happened to it, when, why and by whom (history, not a claim of current state)."""
    action = "restored" if transition.action is Action.ROLLBACK else transition.ledger_action.replace("-", "_")
    stamp = record.at.isoformat()
    facts = {
        keys.action_fact_tag(action, "at"): stamp,
        keys.action_fact_tag(action, "by"): record.actor[:TAG_TEXT_LIMIT],
        keys.action_fact_tag(action, "reason"): record.reason[:TAG_TEXT_LIMIT],
        keys.LAST_ACTION: f"{transition.ledger_action} at {stamp}",
    }
    tags = {transition.version: facts} if transition.version is not None else {}
    replaced = transition.from_version
    if transition.action in (Action.PROMOTE, Action.ROLLBACK) and replaced is not None:
        verb = "replaced" if transition.action is Action.PROMOTE else "rolled_back"
        tags[replaced] = {
            keys.action_fact_tag(verb, "at"): stamp,
            keys.action_fact_tag(verb, "by"): record.actor[:TAG_TEXT_LIMIT],
            keys.LAST_ACTION: f"{verb.replace('_', '-')} as champion at {stamp}",
        }
    return tags


def history_line(transition: Transition, record: Record, version: str) -> str:
    """One dated line for a version's description: what the transition did to it."""
    stamp = f"{record.at:%Y-%m-%d %H:%M} UTC"
    if version == transition.version:
        what = {
            Action.REGISTER: "registered as challenger",
            Action.START_CANARY: f"canary started ({transition.canary_share:.0%} of traffic)"
            if transition.canary_share is not None else "canary started",
            Action.PROMOTE: "promoted to champion",
            Action.REJECT: "rejected",
            Action.ROLLBACK: f"champion again by rollback from version {transition.from_version}",
        }[transition.action]
    else:
        what = {Action.PROMOTE: f"replaced as champion by version {transition.version}",
                Action.ROLLBACK: f"rolled back as champion (to version {transition.version})"}[transition.action]
    return f"[{stamp}] {what} by {record.actor}: {record.reason}"


def intent_text(transition: Transition, record: Record) -> str:
    """The intent record: the transition and its record as JSON, enough to finish it from another process."""
    payload = {"transition": {**asdict(transition), "action": str(transition.action)},
               "record": {**asdict(record), "at": record.at.isoformat()}}
    text = json.dumps(payload, default=str, separators=(",", ":"))
    if len(text) > 5000:  # the reason and details are cut, never the moves
        record = replace(record, reason=record.reason[:1000], details={})
        return intent_text(transition, record)
    return text


def read_intent(text: str) -> tuple[Transition, Record]:
    payload = json.loads(text)
    transition = dict(payload["transition"])
    transition["action"] = Action(transition["action"])
    record = dict(payload["record"])
    record["at"] = datetime.fromisoformat(record["at"])
    return Transition(**transition), Record(**record)


# ------------------------------------------------------------------------------------------ MLflow reads


def read_aliases(client: MlflowClient, model: str) -> dict[str, str | None]:
    """All four aliases of a registered model (None where unset).

    Raises:
        ReleaseInputError: the model is not registered.
    """
    return full_aliases(_registered(client, model).aliases)


def get_alias_version(client: MlflowClient, model: str, alias: str) -> str | None:
    """The version an alias points to, None when the model or the alias does not exist."""
    return read_release_state(client, model).aliases.get(alias)


def check_version(client: MlflowClient, model: str, version: str) -> Any:
    """The model version, or a clear error when the model or the version does not exist (e.g. was deleted)."""
    _registered(client, model)
    try:
        return client.get_model_version(model, str(version))
    except MlflowException as error:
        if error.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            known = sorted((str(v.version) for v in client.search_model_versions(f"name='{model}'")), key=_number)
            raise ReleaseInputError(f"model '{model}' has no version {version} (it has {', '.join(known) or 'none'}); "
                                    "nothing was moved") from None
        raise


def passed_gates(client: MlflowClient, model: str, version: str) -> bool:
    return check_version(client, model, version).tags.get(keys.GATES) == "passed"


def former_champions(warehouse: Warehouse, model: str) -> list[str]:
    """Versions that were champion at some point, per the ledger (MLflow keeps no alias history)."""
    champions = []
    for entry in read_ledger(warehouse, model):
        if entry.action in ("promoted", "rolled-back") and entry.to_version is not None:
            champions.append(entry.to_version)
        if entry.action in ("promoted", "rolled-back") and entry.from_version is not None:
            champions.append(entry.from_version)
    return sorted(set(champions), key=_number)


def _number(version: str) -> tuple[int, str]:
    return (int(version), version) if str(version).isdigit() else (0, str(version))


def _registered(client: MlflowClient, model: str) -> Any:
    try:
        return client.get_registered_model(model)
    except MlflowException as error:
        if error.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise ReleaseInputError(f"model '{model}' is not registered in MLflow: train it first "
                                    "(retrain train --config ...)") from None
        raise


# ------------------------------------------------------------------------------------------ applying


Announce = Callable[[Transition, Record], None]


def apply_transition(
    client: MlflowClient,
    warehouse: Warehouse,
    transition: Transition,
    record: Record,
    announce: Announce | None = None,
) -> Transition:
    """Apply a planned transition, compare-and-set, recorded; the only code that moves aliases.

    Under the model's release lock: an interrupted transition is finished first, then the aliases must be
    exactly as `transition.seen`; the intent is written, the steps run, the intent is removed.

    Raises:
        TransitionConflict: the aliases moved since the decision; nothing was moved.
        ReleaseInputError: the model, or a version the transition names, does not exist.
    """
    with hold_lock(warehouse, release_lock(transition.model), wait_seconds=LOCK_WAIT_SECONDS,
                   holder=f"{transition.action} of '{transition.model}' by {record.actor}"):
        finish_interrupted(client, warehouse, transition.model, announce)
        for version in {v for v in (*transition.moves.values(), transition.version) if v is not None}:
            check_version(client, transition.model, version)
        current = read_aliases(client, transition.model)
        if current != dict(transition.seen):
            moved = {alias: (transition.seen.get(alias), current[alias]) for alias in ALIASES
                     if transition.seen.get(alias) != current[alias]}
            described = ", ".join(f"{alias} {before} → {now}" for alias, (before, now) in moved.items())
            raise TransitionConflict(
                f"the aliases of '{transition.model}' moved since this {transition.action} was decided ({described}); "
                "nothing was moved: look at `retrain status` and decide again"
            )
        pause_point("intent")
        client.set_registered_model_tag(transition.model, keys.INTENT, intent_text(transition, record))
        _run_steps(client, warehouse, transition, record, announce)
    logger.info("%s: %s %s → %s (%s)", transition.model, transition.ledger_action, transition.from_version,
                transition.to_version, record.reason)
    return transition


def release_lock(model: str) -> str:
    """The lock every change of a model's aliases holds: applying a transition and finishing one."""
    return f"release:{model}"


def finish_interrupted(
    client: MlflowClient, warehouse: Warehouse, model: str, announce: Announce | None = None
) -> Transition | None:
    """Finish a transition a crash left half done (its intent is still on the registered model).

    Under the model's release lock, the same one `apply_transition` holds: a transition whose process still
    lives holds it, so this waits for it to end (and then finds no intent) instead of finishing it a second
    time; a dead holder's lock is taken over, its row replaced. Every alias the intent moves must be where the
    decision saw it or where the transition puts it; otherwise someone moved aliases by hand since, and the
    intent is refused rather than guessed at.

    Raises:
        Busy: another process held the lock for longer than `LOCK_WAIT_SECONDS`.
        TransitionConflict: the aliases were moved by other means since the intent was written.
    """
    with hold_lock(warehouse, release_lock(model), wait_seconds=LOCK_WAIT_SECONDS,
                   holder=f"finishing an interrupted transition of '{model}'"):
        return _finish_interrupted(client, warehouse, model, announce)


def _finish_interrupted(
    client: MlflowClient, warehouse: Warehouse, model: str, announce: Announce | None
) -> Transition | None:
    try:
        registered = client.get_registered_model(model)
    except MlflowException as error:
        if error.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    text = (registered.tags or {}).get(keys.INTENT)
    if text is None:
        return None
    transition, record = read_intent(text)
    current = full_aliases(registered.aliases)
    allowed = {alias: {transition.seen.get(alias), transition.moves.get(alias, transition.seen.get(alias))}
               for alias in ALIASES}
    stray = [alias for alias in ALIASES if current[alias] not in allowed[alias]]
    if stray:
        raise TransitionConflict(
            f"an interrupted {transition.action} of '{model}' (intent {transition.id}) cannot be finished: aliases "
            f"{stray} were moved by other means since. Set them by hand, then delete the registered model tag "
            f"{keys.INTENT}"
        )
    logger.warning("finishing an interrupted %s of '%s' (intent %s)", transition.action, model, transition.id)
    _run_steps(client, warehouse, transition, record, announce)
    return transition


def _run_steps(
    client: MlflowClient, warehouse: Warehouse, transition: Transition, record: Record, announce: Announce | None
) -> None:
    model = transition.model
    for alias, target in _ordered_moves(transition):
        if target is not None:
            pause_point(f"set {alias}")
            client.set_registered_model_alias(model, alias, target)
    current = full_aliases(_registered(client, model).aliases)
    for alias, target in _ordered_moves(transition):
        if target is None and current[alias] is not None:
            pause_point(f"remove {alias}")
            client.delete_registered_model_alias(model, alias)
    if transition.canary_share is not None:
        pause_point("set share")
        client.set_registered_model_tag(model, keys.CANARY_SHARE, f"{transition.canary_share:g}")
    if transition.clears_share and keys.CANARY_SHARE in (_registered(client, model).tags or {}):
        pause_point("remove share")
        client.delete_registered_model_tag(model, keys.CANARY_SHARE)
    pause_point("version facts")
    for version, tags in fact_tags(transition, record).items():
        for key, value in tags.items():
            client.set_model_version_tag(model, version, key, value)
        line = history_line(transition, record, version)
        description = client.get_model_version(model, version).description or ""
        if line not in description:
            client.update_model_version(model, version, description=f"{description}\n{line}".strip())
    pause_point("ledger")
    # The transition id is unique in the ledger table: a row already there (a finisher before us got this far)
    # is kept, and this insert adds nothing. A row written before the column existed names it in its details.
    if not any(entry.transition_id is None and entry.details.get("transition") == transition.id
               for entry in read_ledger(warehouse, model, limit=50)):
        append_ledger_entry(warehouse, LedgerEntry(
            model=model, action=transition.ledger_action, reason=record.reason, actor=record.actor, at=record.at,
            from_version=transition.from_version, to_version=transition.to_version, metrics=dict(record.metrics),
            details={**dict(record.details), "transition": transition.id, "moves": dict(transition.moves)},
            flow_run_id=record.flow_run_id, mlflow_run_id=record.mlflow_run_id, transition_id=transition.id,
        ))
    if announce is not None:
        pause_point("event")
        announce(transition, record)
    pause_point("clear intent")
    client.delete_registered_model_tag(model, keys.INTENT)


def ledger_summary(entries: Sequence[LedgerEntry]) -> list[dict[str, Any]]:
    """The ledger as `retrain status` prints it, newest first on the Retrain clock (`at`), with the wall time each
    row was written (`recorded_at`)."""
    return [{"action": e.action, "from_version": e.from_version, "to_version": e.to_version, "reason": e.reason,
             "actor": e.actor, "at": e.at.isoformat(),
             "recorded_at": e.recorded_at.isoformat(timespec="seconds") if e.recorded_at else None} for e in entries]
