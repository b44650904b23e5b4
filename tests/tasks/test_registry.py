"""Release transitions on a real MLflow store and a real warehouse (SQLite; PostgreSQL where it runs): every
legal transition, the illegal ones refused, compare-and-set, and a crash at every step finished by the next run."""

from __future__ import annotations

import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from retrain import mlflow_keys as keys
from retrain.release_state import full_aliases, read_release_state
from retrain.settings import get_settings
from retrain.warehouse import Warehouse, get_warehouse, open_warehouse, read_ledger
from tasks.registry import (
    Action,
    Record,
    ReleaseInputError,
    TransitionConflict,
    TransitionRefused,
    apply_transition,
    check_version,
    finish_interrupted,
    former_champions,
    plan_promote,
    plan_register,
    plan_reject,
    plan_rollback,
    plan_start_canary,
    read_aliases,
    step_names,
)
from tests.conftest import REPO

AT = datetime(2013, 3, 1, 12)


def seen(**aliases: str) -> dict[str, str | None]:
    return full_aliases(aliases)


def record(reason: str = "test") -> Record:
    return Record(actor="person:tester", reason=reason, at=AT, metrics={"mae": 1.5})


def always(_: str) -> bool:
    return True


# ------------------------------------------------------------------------------------------ pure planning


@pytest.mark.parametrize(
    ("planned", "moves"),
    [
        (lambda: plan_register("m", seen(champion="1"), "2"), {"challenger": "2"}),
        (lambda: plan_start_canary("m", seen(champion="1", challenger="2"), 0.1), {"canary": "2", "challenger": None}),
        (lambda: plan_promote("m", seen(champion="1", canary="2"), None, always),
         {"champion": "2", "previous": "1", "canary": None}),
        (lambda: plan_promote("m", seen(challenger="1"), None, always), {"champion": "1", "challenger": None}),
        (lambda: plan_promote("m", seen(champion="1", challenger="3", canary="2"), "3", always),
         {"champion": "3", "previous": "1", "challenger": None}),
        (lambda: plan_reject("m", seen(champion="1", canary="2")), {"canary": None}),
        (lambda: plan_reject("m", seen(champion="1", challenger="2")), {"challenger": None}),
        (lambda: plan_rollback("m", seen(champion="2", previous="1"), None, ["1", "2"]),
         {"champion": "1", "previous": None}),
        (lambda: plan_rollback("m", seen(champion="3", previous="2"), "1", ["1", "2", "3"]), {"champion": "1"}),
    ],
)
def test_every_legal_transition_is_a_set_of_alias_moves(planned: Any, moves: dict[str, str | None]) -> None:
    assert dict(planned().moves) == moves


@pytest.mark.parametrize(
    ("planned", "message"),
    [
        (lambda: plan_promote("m", seen(champion="1", challenger="2"), "2", lambda _: False), "never passed the gates"),
        (lambda: plan_promote("m", seen(champion="1"), "1", always), "champion already"),
        (lambda: plan_promote("m", seen(champion="1"), None, always), "no canary or challenger"),
        (lambda: plan_rollback("m", seen(champion="1"), None, ["1"]), "no previous champion"),
        (lambda: plan_rollback("m", seen(), None, []), "no champion to roll back"),
        (lambda: plan_rollback("m", seen(champion="3", previous="2"), "1", ["2", "3"]), "was never champion"),
        (lambda: plan_start_canary("m", seen(champion="1", challenger="3", canary="2"), 0.1), "runs already"),
        (lambda: plan_start_canary("m", seen(champion="1"), 0.1), "no challenger"),
        (lambda: plan_start_canary("m", seen(challenger="1"), 0.1), "no champion"),
        (lambda: plan_reject("m", seen(champion="1", challenger="2"), "1"), "nothing to reject"),
        (lambda: plan_register("m", seen(champion="1"), "1"), "champion already"),
    ],
)
def test_illegal_transitions_are_refused(planned: Any, message: str) -> None:
    with pytest.raises(TransitionRefused, match=message):
        planned()


def test_steps_write_previous_before_champion_and_clear_the_intent_last() -> None:
    steps = step_names(plan_promote("m", seen(champion="1", canary="2"), None, always))
    assert steps == ["set previous", "set champion", "remove canary", "remove share", "version facts", "ledger",
                     "event", "clear intent"]


# ------------------------------------------------------------------------------------------ real stores


@pytest.fixture
def client(retrain_home: Path) -> MlflowClient:
    mlflow.set_tracking_uri(get_settings().resolved_tracking_uri())
    return MlflowClient()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def warehouse(request: pytest.FixtureRequest, retrain_home: Path) -> Iterator[Warehouse]:
    if request.param == "sqlite":
        yield get_warehouse()
    else:
        url, schema = request.getfixturevalue("postgres_schema")
        yield open_warehouse(url, schema)


def make_versions(client: MlflowClient, count: int, gates: bool = True) -> str:
    """A registered model with `count` versions (a unique name: the PostgreSQL ledger is shared)."""
    model = f"m-{uuid.uuid4().hex[:8]}"
    client.create_registered_model(model)
    for _ in range(count):
        client.create_model_version(model, source="file:///nowhere", tags={keys.GATES: "passed"} if gates else {})
    return model


def step(client: MlflowClient, warehouse: Warehouse, transition: Any, reason: str = "test") -> None:
    apply_transition(client, warehouse, transition, record(reason))


def test_a_model_goes_through_every_transition_and_the_ledger_says_so(
    client: MlflowClient, warehouse: Warehouse
) -> None:
    model = make_versions(client, 3)
    step(client, warehouse, plan_register(model, read_aliases(client, model), "1"))
    step(client, warehouse, plan_promote(model, read_aliases(client, model), None, always), "first model")
    step(client, warehouse, plan_register(model, read_aliases(client, model), "2"))
    step(client, warehouse, plan_start_canary(model, read_aliases(client, model), 0.25))
    state = read_release_state(client, model)
    assert state.aliases == seen(champion="1", canary="2") and state.canary_share == 0.25
    step(client, warehouse, plan_promote(model, read_aliases(client, model), None, always), "canary passed")
    state = read_release_state(client, model)
    assert state.aliases == seen(champion="2", previous="1") and state.canary_share is None
    step(client, warehouse, plan_register(model, read_aliases(client, model), "3"))
    step(client, warehouse, plan_reject(model, read_aliases(client, model)), "worse")
    step(client, warehouse, plan_rollback(model, read_aliases(client, model), None, former_champions(warehouse, model)))
    assert read_aliases(client, model) == seen(champion="1")

    ledger = [(e.action, e.from_version, e.to_version) for e in reversed(read_ledger(warehouse, model))]
    assert ledger == [("registered", None, "1"), ("promoted", None, "1"), ("registered", None, "2"),
                      ("canary-started", "1", "2"), ("promoted", "1", "2"), ("registered", None, "3"),
                      ("rejected", "3", None), ("rolled-back", "2", "1")]
    assert former_champions(warehouse, model) == ["1", "2"]
    # The versions tell their story as dated facts, never as a state the aliases might not have.
    two = client.get_model_version(model, "2")
    assert two.tags["retrain.rolled_back_at"] == AT.isoformat() and "retrain.decision" not in two.tags
    assert "promoted to champion by person:tester: canary passed" in two.description
    assert "rolled back as champion (to version 1)" in two.description
    assert client.get_model_version(model, "3").tags["retrain.rejected_reason"] == "worse"
    assert keys.INTENT not in client.get_registered_model(model).tags


def test_a_decision_on_aliases_that_moved_since_is_refused_and_moves_nothing(
    client: MlflowClient, warehouse: Warehouse
) -> None:
    model = make_versions(client, 3)
    step(client, warehouse, plan_promote(model, read_aliases(client, model), "1", always))
    step(client, warehouse, plan_register(model, read_aliases(client, model), "2"))
    stale = plan_promote(model, read_aliases(client, model), "2", always)
    step(client, warehouse, plan_promote(model, read_aliases(client, model), "3", always))  # champion moved
    before = (read_aliases(client, model), len(read_ledger(warehouse, model)))
    with pytest.raises(TransitionConflict, match=r"champion 1 → 3"):
        step(client, warehouse, stale)
    assert (read_aliases(client, model), len(read_ledger(warehouse, model))) == before


def test_two_concurrent_promotions_exactly_one_wins(client: MlflowClient, warehouse: Warehouse) -> None:
    model = make_versions(client, 3)
    step(client, warehouse, plan_promote(model, read_aliases(client, model), "1", always))
    aliases = read_aliases(client, model)
    results: dict[str, str] = {}

    def promote(version: str) -> None:
        try:
            step(client, warehouse, plan_promote(model, aliases, version, always))
            results[version] = "won"
        except TransitionConflict:
            results[version] = "conflict"

    threads = [threading.Thread(target=promote, args=(version,)) for version in ("2", "3")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results.values()) == ["conflict", "won"]
    winner = next(version for version, result in results.items() if result == "won")
    assert read_aliases(client, model) == seen(champion=winner, previous="1")
    assert [e.to_version for e in read_ledger(warehouse, model) if e.action == "promoted"] == [winner, "1"]


def test_unknown_model_and_unknown_or_deleted_versions_are_clear_errors(
    client: MlflowClient, warehouse: Warehouse
) -> None:
    with pytest.raises(ReleaseInputError, match="'nobody' is not registered"):
        read_aliases(client, "nobody")
    model = make_versions(client, 2)
    with pytest.raises(ReleaseInputError, match="has no version 7 .it has 1, 2"):
        check_version(client, model, "7")
    step(client, warehouse, plan_promote(model, read_aliases(client, model), "1", always))
    transition = plan_register(model, read_aliases(client, model), "2")
    client.delete_model_version(model, "2")
    with pytest.raises(ReleaseInputError, match="has no version 2"):
        step(client, warehouse, transition)
    assert read_aliases(client, model) == seen(champion="1") and len(read_ledger(warehouse, model)) == 1


class FaultyClient(MlflowClient):
    """A real client whose `fail_at`-th write raises, as a crash between two steps would stop the transition."""

    WRITES = ("set_registered_model_alias", "delete_registered_model_alias", "set_registered_model_tag",
              "delete_registered_model_tag", "set_model_version_tag", "update_model_version")

    def __init__(self, fail_at: int) -> None:
        super().__init__()
        self.fail_at, self.writes = fail_at, 0

    def __getattribute__(self, name: str) -> Any:
        attribute = super().__getattribute__(name)
        if name in FaultyClient.WRITES:
            def write(*args: Any, **kwargs: Any) -> Any:
                self.writes += 1
                if self.writes == self.fail_at:
                    raise RuntimeError(f"crash at write {self.writes} ({name})")
                return attribute(*args, **kwargs)
            return write
        return attribute


def test_a_crash_at_every_step_is_finished_by_the_next_run(client: MlflowClient, warehouse: Warehouse) -> None:
    fail_at, crashes = 1, 0
    while True:
        model = make_versions(client, 2)
        step(client, warehouse, plan_promote(model, read_aliases(client, model), "1", always))
        step(client, warehouse, plan_register(model, read_aliases(client, model), "2"))
        step(client, warehouse, plan_start_canary(model, read_aliases(client, model), 0.1))
        promotion = plan_promote(model, read_aliases(client, model), None, always)
        faulty = FaultyClient(fail_at)
        try:
            apply_transition(faulty, warehouse, promotion, record("canary passed"))
        except RuntimeError:
            crashes += 1
            if fail_at == 1:  # the intent itself was not written: nothing moved, the next run decides again
                assert read_release_state(client, model).aliases == promotion.seen
                assert not [e for e in read_ledger(warehouse, model) if e.action == "promoted" and e.to_version == "2"]
                step(client, warehouse, promotion)
            else:
                # The intent was written: the next transition (here the canary check's next run) finishes it first.
                assert read_release_state(client, model).pending == "promote"
                assert finish_interrupted(client, warehouse, model).id == promotion.id
        else:
            break
        state = read_release_state(client, model)
        assert state.aliases == seen(champion="2", previous="1") and state.canary_share is None, fail_at
        assert state.pending is None
        promoted = [e for e in read_ledger(warehouse, model) if e.action == "promoted" and e.to_version == "2"]
        assert len(promoted) == 1 and promoted[0].details["transition"] == promotion.id, fail_at
        fail_at += 1
    assert crashes == fail_at - 1 >= 8  # every write of the promotion was a crash point once


KILLED = """
import os, sys
from datetime import datetime
import mlflow
from mlflow.tracking import MlflowClient
from tasks.registry import Record, apply_transition, plan_promote, read_aliases
from retrain.warehouse import get_warehouse

class Killed(MlflowClient):
    def delete_registered_model_alias(self, *args, **kwargs):
        os.kill(os.getpid(), 9)  # champion and previous are set, the canary not yet removed

mlflow.set_tracking_uri(sys.argv[2])
client = Killed()
model = sys.argv[1]
transition = plan_promote(model, read_aliases(client, model), None, lambda _: True)
apply_transition(client, get_warehouse(), transition, Record("person:tester", "killed", datetime(2013, 3, 1, 12)))
"""


def test_a_killed_promotion_is_finished_by_the_next_transition(client: MlflowClient, retrain_home: Path) -> None:
    warehouse = get_warehouse()
    model = make_versions(client, 3)
    step(client, warehouse, plan_promote(model, read_aliases(client, model), "1", always))
    step(client, warehouse, plan_register(model, read_aliases(client, model), "2"))
    step(client, warehouse, plan_start_canary(model, read_aliases(client, model), 0.1))
    killed = subprocess.run([sys.executable, "-c", KILLED, model, get_settings().resolved_tracking_uri()],
                            check=False, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert killed.returncode == -9, killed.stderr
    assert read_release_state(client, model).aliases == seen(champion="2", previous="1", canary="2")
    assert not [e for e in read_ledger(warehouse, model) if e.reason == "killed"]
    # The next transition finishes the killed one first (its lock died with it), then applies its own.
    step(client, warehouse, plan_register(model, seen(champion="2", previous="1"), "3"))
    state = read_release_state(client, model)
    assert state.aliases == seen(champion="2", previous="1", challenger="3") and state.canary_share is None
    actions = [(e.action, e.reason) for e in read_ledger(warehouse, model)][:2]
    assert actions == [("registered", "test"), ("promoted", "killed")]
    assert keys.CANARY_SHARE not in client.get_registered_model(model).tags
    assert Action.PROMOTE.value == "promote"
