"""Release transitions on a real MLflow store and a real warehouse (SQLite; PostgreSQL where it runs): every
legal transition, the illegal ones refused, compare-and-set, and a crash at every step finished by the next run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
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
from retrain.warehouse import (
    Warehouse,
    get_warehouse,
    live_lock_holder,
    open_warehouse,
    read_ledger,
    read_lock_holder,
)
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
    release_lock,
    step_names,
)
from tests.conftest import REPO, write_model_config

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


# ------------------------------------------------------------------------ two real processes, interleaved

RELEASE_COMMAND = """
import sys
from datetime import datetime
from pathlib import Path
import mlflow
from mlflow.tracking import MlflowClient
from retrain.warehouse import get_warehouse
from tasks.registry import Record, apply_transition, finish_interrupted, former_champions, plan_promote, plan_rollback
from tasks.registry import read_aliases

role, model, uri, folder = sys.argv[1:5]
mlflow.set_tracking_uri(uri)
client, warehouse = MlflowClient(), get_warehouse()
Path(folder, f"{role}.started").touch()

def announce(transition, record):
    with open(Path(folder, "events"), "a") as events:
        events.write(transition.id + "\\n")

# What every release flow does: finish an interrupted transition first, then decide from the aliases and apply.
finish_interrupted(client, warehouse, model, announce)
if role == "finish":
    sys.exit(0)
aliases = read_aliases(client, model)
if role == "promote":
    transition = plan_promote(model, aliases, None, lambda _: True)
else:
    transition = plan_rollback(model, aliases, None, former_champions(warehouse, model))
apply_transition(client, warehouse, transition, Record(f"person:{role}", role, datetime(2013, 3, 1, 12)), announce)
"""
STEPS_OF_A_CANARY_PROMOTION = ["intent", "set previous", "set champion", "remove canary", "remove share",
                               "version facts", "ledger", "event", "clear intent"]


def start_command(role: str, model: str, folder: Path, pause_at: str | None = None) -> subprocess.Popen[str]:
    env = {name: value for name, value in os.environ.items() if name != "RETRAIN_PAUSE_AT"}
    if pause_at is not None:
        env["RETRAIN_PAUSE_AT"] = f"{pause_at}={folder}"
    return subprocess.Popen([sys.executable, "-c", RELEASE_COMMAND, role, model,
                             get_settings().resolved_tracking_uri(), str(folder)],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(path: Path, process: subprocess.Popen[str], seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        if process.poll() is not None:
            raise AssertionError(f"process ended ({process.returncode}) before {path.name}: {process.stderr.read()}")
        assert time.monotonic() < deadline, f"no {path.name} after {seconds} s"
        time.sleep(0.05)


def canary_model(client: MlflowClient, warehouse: Warehouse) -> str:
    model = make_versions(client, 2)
    step(client, warehouse, plan_promote(model, read_aliases(client, model), "1", always))
    step(client, warehouse, plan_register(model, read_aliases(client, model), "2"))
    step(client, warehouse, plan_start_canary(model, read_aliases(client, model), 0.1))
    return model


def assert_each_transition_once(warehouse: Warehouse, model: str) -> None:
    ids = [entry.transition_id for entry in read_ledger(warehouse, model)]
    assert None not in ids and len(ids) == len(set(ids)), ids


def steps_case(steps: list[str], quick: str) -> list[Any]:
    """Every step; only `quick` in the default suite (two processes cost about ten seconds a case)."""
    return [step if step == quick else pytest.param(step, marks=pytest.mark.slow) for step in steps]


@pytest.mark.parametrize("pause_at", steps_case(STEPS_OF_A_CANARY_PROMOTION, "ledger"))
def test_a_second_release_command_waits_for_a_live_transition_instead_of_finishing_it(
    client: MlflowClient, retrain_home: Path, tmp_path: Path, pause_at: str
) -> None:
    interleave_two_release_commands(client, tmp_path, pause_at)


@pytest.mark.slow  # a long scenario (the suite stays under 8 minutes): `make test-all`
@pytest.mark.postgres
def test_on_postgresql_too_a_live_transition_is_waited_for(
    client: MlflowClient, postgres_warehouse: str, tmp_path: Path
) -> None:
    interleave_two_release_commands(client, tmp_path, "ledger")  # the advisory lock, probed by `status`


def interleave_two_release_commands(client: MlflowClient, tmp_path: Path, pause_at: str) -> None:
    """A promotion paused at `pause_at` in one process, a rollback started in another: one ledger row each."""
    warehouse = get_warehouse()
    model = canary_model(client, warehouse)
    first = start_command("promote", model, tmp_path, pause_at)
    wait_for(tmp_path / "paused", first)
    # Paused mid-transition, alive: its lock has a live holder, so the intent is being applied, not interrupted.
    holder = live_lock_holder(warehouse, release_lock(model))
    assert holder is not None and holder.pid == first.pid
    if pause_at != "intent":  # the intent is written: `status` says it is being applied, not interrupted
        config = write_model_config(tmp_path, name=model)
        status = subprocess.run([str(REPO / ".venv" / "bin" / "retrain"), "status", "--config", str(config),
                                 "--json"], capture_output=True, text=True, timeout=120, check=True)
        shown = json.loads(status.stdout)
        assert shown["pending"] is None and shown["applying"]["action"] == "promote", shown
        assert f"pid {first.pid}" in shown["applying"]["by"]
    second = start_command("rollback", model, tmp_path)
    wait_for(tmp_path / "rollback.started", second)
    time.sleep(1.5)
    assert second.poll() is None, second.stderr.read()  # waiting for the lock, not finishing the promotion
    assert not [e for e in read_ledger(warehouse, model) if e.action == "rolled-back"]
    (tmp_path / "resume").touch()
    assert first.wait(120) == 0, first.stderr.read()
    assert second.wait(120) == 0, second.stderr.read()

    assert_each_transition_once(warehouse, model)
    actions = [(e.action, e.from_version, e.to_version) for e in read_ledger(warehouse, model)][:2]
    assert actions == [("rolled-back", "2", "1"), ("promoted", "1", "2")]
    assert read_release_state(client, model).aliases == seen(champion="1")
    events = (tmp_path / "events").read_text().split()
    assert len(events) == len(set(events)) == 2  # each transition announced once
    assert read_lock_holder(warehouse, release_lock(model)) is None


@pytest.mark.parametrize("pause_at", steps_case(STEPS_OF_A_CANARY_PROMOTION, "set champion"))
def test_a_killed_transition_is_finished_once_and_its_lock_row_removed(
    client: MlflowClient, retrain_home: Path, tmp_path: Path, pause_at: str
) -> None:
    warehouse = get_warehouse()
    model = canary_model(client, warehouse)
    first = start_command("promote", model, tmp_path, pause_at)
    wait_for(tmp_path / "paused", first)
    first.kill()
    first.wait(30)
    dead = read_lock_holder(warehouse, release_lock(model))
    assert dead is not None and dead.pid == first.pid  # its row stays until someone takes the lock
    assert live_lock_holder(warehouse, release_lock(model)) is None
    second = start_command("finish", model, tmp_path)  # what every release flow does first
    assert second.wait(120) == 0, second.stderr.read()

    assert_each_transition_once(warehouse, model)
    latest = [(e.action, e.from_version, e.to_version) for e in read_ledger(warehouse, model)][0]
    state = read_release_state(client, model)
    if pause_at == "intent":  # killed before its intent was written: nothing moved, nothing to finish
        assert latest == ("canary-started", "1", "2") and state.aliases == seen(champion="1", canary="2")
    else:
        assert latest == ("promoted", "1", "2") and state.aliases == seen(champion="2", previous="1")
    assert state.pending is None
    assert read_lock_holder(warehouse, release_lock(model)) is None  # the dead holder's row is gone
