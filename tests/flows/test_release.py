"""Release flows under Prefect's test server, on a real MLflow store and a real SQLite warehouse: approval
(approve, reject, timeout, resumed through Prefect's client), the canary check on prediction tables, automatic
rollback, promote and rollback by hand with their refusals."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import StateType
from prefect.flow_runs import resume_flow_run

from flows.release import check_canary, promote_model, release_challenger, roll_back_model
from retrain import mlflow_keys as keys
from retrain.outcomes import ReleaseOutcome
from retrain.release_state import read_release_state
from retrain.settings import get_settings
from retrain.warehouse import (
    append_rows,
    create_declared_table,
    get_warehouse,
    label_table,
    prediction_table,
    read_ledger,
)
from tasks.failures import RUN_FAILED
from tasks.registry import (
    Record,
    ReleaseInputError,
    apply_transition,
    plan_promote,
    plan_register,
    plan_start_canary,
    read_aliases,
)
from tests.conftest import write_model_config

pytestmark = pytest.mark.usefixtures("prefect_harness")

MODEL = "flights-delay"
T0 = datetime(2013, 3, 1)


@pytest.fixture
def client(retrain_home: Path) -> MlflowClient:
    mlflow.set_tracking_uri(get_settings().resolved_tracking_uri())
    return MlflowClient()


def registered(client: MlflowClient, versions: int, holdout_mae: float = 10.0, gates: bool = True) -> None:
    client.create_registered_model(MODEL)
    for _ in range(versions):
        tags = {"retrain.holdout_mae": str(holdout_mae)} | ({keys.GATES: "passed"} if gates else {})
        client.create_model_version(MODEL, source="file:///nowhere", tags=tags)


def move(client: MlflowClient, planner: str, at: datetime = T0, **arguments: object) -> None:
    plans = {"register": plan_register, "promote": plan_promote, "canary": plan_start_canary}
    seen = read_aliases(client, MODEL)
    if planner == "promote":
        arguments["passed_gates"] = lambda _: True
    transition = plans[planner](MODEL, seen, **arguments)  # type: ignore[operator]
    apply_transition(client, get_warehouse(), transition, Record("person:setup", "setup", at))


def config(retrain_home: Path, **release: object) -> str:
    return str(write_model_config(retrain_home.parent, release=release))


def actions() -> list[str]:
    return [entry.action for entry in read_ledger(get_warehouse(), MODEL)]


# ------------------------------------------------------------------------------------------ approval


def paused_run(started: float, timeout: float = 60) -> uuid.UUID:
    with get_client(sync_client=True) as prefect:
        while time.monotonic() - started < timeout:
            runs = prefect.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=["release-model"])),
                flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(
                    any_=[StateType.PAUSED]))),
            )
            if runs:
                return runs[0].id
            time.sleep(0.5)
    raise AssertionError("the release never paused for approval")


def release_in_thread(path: str) -> tuple[threading.Thread, dict[str, ReleaseOutcome]]:
    result: dict[str, ReleaseOutcome] = {}
    thread = threading.Thread(target=lambda: result.update(
        outcome=release_challenger(config_path=path, as_of=T0, actor="person:asker")))
    thread.start()
    return thread, result


@pytest.mark.parametrize("approve", [True, False], ids=["approved", "rejected"])
def test_a_person_approves_or_rejects_a_waiting_release(
    retrain_home: Path, client: MlflowClient, approve: bool
) -> None:
    registered(client, 2)
    move(client, "promote", version="1")
    move(client, "register", version="2")
    path = config(retrain_home, mode="manual", approval_timeout="5m", approval_poll_seconds=1)
    thread, result = release_in_thread(path)
    run_id = paused_run(time.monotonic())
    resume_flow_run(run_id, run_input={"approve": approve, "reviewer": "ann", "comment": "checked the numbers"})
    thread.join(timeout=120)
    outcome = result["outcome"]
    if approve:
        assert (outcome.action, outcome.decision, outcome.to_version) == ("canary-started", "canary", "2")
        assert read_release_state(client, MODEL).aliases["canary"] == "2"
        assert actions()[:2] == ["canary-started", "approved"]
    else:
        assert (outcome.action, outcome.decision, outcome.exit_code) == ("rejected", "rejected", 1)
        assert read_release_state(client, MODEL).aliases == {
            "champion": "1", "challenger": None, "canary": None, "previous": None}
        assert actions()[0] == "rejected"
    entry = read_ledger(get_warehouse(), MODEL)[1 if approve else 0]  # the approval, or the rejection
    assert (entry.actor, entry.reason) == ("person:ann", "checked the numbers")


def test_no_answer_in_time_rejects_the_challenger(retrain_home: Path, client: MlflowClient) -> None:
    registered(client, 2)
    move(client, "promote", version="1")
    move(client, "register", version="2")
    path = config(retrain_home, mode="manual", approval_timeout="0.05m", approval_poll_seconds=1)
    outcome = release_challenger(config_path=path, as_of=T0, actor="person:asker")
    assert (outcome.action, outcome.decision, outcome.exit_code) == ("rejected", "rejected", 1)
    assert "no approval within" in outcome.reason and read_aliases(client, MODEL)["challenger"] is None
    assert read_ledger(get_warehouse(), MODEL)[0].actor == "automation"


def test_auto_release_starts_a_canary_or_makes_the_first_champion(retrain_home: Path, client: MlflowClient) -> None:
    registered(client, 2)
    move(client, "register", version="1")
    path = config(retrain_home, canary={"share": 0.2})
    first = release_challenger(config_path=path, as_of=T0, actor="person:asker")
    assert (first.action, first.decision, first.to_version) == ("promoted", "champion", "1")
    move(client, "register", version="2")
    second = release_challenger(config_path=path, as_of=T0, actor="person:asker")
    assert (second.action, second.decision) == ("canary-started", "canary")
    assert read_release_state(client, MODEL).canary_share == 0.2
    nothing = release_challenger(config_path=path, as_of=T0, actor="person:asker")
    assert (nothing.action, nothing.decision) == ("none", "skipped")


# ------------------------------------------------------------------------------------------ canary check


def log_predictions(arm: str, version: str, errors: np.ndarray, labelled: int, start: datetime) -> None:
    """Served predictions of one arm whose absolute errors are `errors`; the first `labelled` get a label."""
    warehouse = get_warehouse()
    predictions = create_declared_table(warehouse, prediction_table(warehouse.schema))
    labels = create_declared_table(warehouse, label_table(warehouse.schema))
    rows, actuals = [], []
    for row, error in enumerate(errors):
        request = f"{arm}-{row}"
        at = start + timedelta(minutes=row)
        rows.append({"request_id": request, "model": MODEL, "version": version, "arm": arm, "predicted_at": at,
                     "prediction": 20.0 + float(error), "features": "{}", "key": None, "latency_ms": 3.0})
        if row < labelled:
            actuals.append({"model": MODEL, "request_id": request, "key": None, "actual": 20.0,
                            "labelled_at": at + timedelta(hours=1), "source": "feedback"})
    append_rows(warehouse, predictions, rows)
    if actuals:
        append_rows(warehouse, labels, actuals)


@pytest.mark.parametrize(
    ("canary_error", "labelled", "decision", "action", "aliases"),
    [
        (8.0, 300, "promote", "promoted", {"champion": "2", "previous": "1"}),
        (10.0, 300, "promote", "promoted", {"champion": "2", "previous": "1"}),
        (14.0, 300, "reject", "rejected", {"champion": "1"}),
        (8.0, 50, "wait", "none", {"champion": "1", "canary": "2"}),
    ],
    ids=["better", "equal", "worse", "too-few-labels"],
)
def test_the_canary_check_decides_on_matured_labels(
    retrain_home: Path, client: MlflowClient, canary_error: float, labelled: int, decision: str, action: str,
    aliases: dict[str, str],
) -> None:
    registered(client, 2)
    move(client, "promote", version="1", at=T0 - timedelta(days=30))
    move(client, "register", version="2", at=T0)
    move(client, "canary", share=0.1, at=T0)
    generator = np.random.default_rng(5)
    log_predictions("champion", "1", np.abs(generator.normal(10.0, 2.0, 300)), 300, T0)
    log_predictions("canary", "2", np.abs(generator.normal(canary_error, 2.0, 300)), labelled, T0)
    path = config(retrain_home, canary={"min_predictions": 100})
    outcome = check_canary(config_path=path, as_of=T0 + timedelta(days=1), actor="schedule")
    assert (outcome.decision, outcome.action) == (decision, action), outcome.reason
    state = read_release_state(client, MODEL)
    assert {alias: version for alias, version in state.aliases.items() if version} == aliases
    assert (state.canary_share is not None) == (decision == "wait")
    if action != "none":
        entry = read_ledger(get_warehouse(), MODEL)[0]
        assert (entry.action, entry.actor, entry.metrics["canary_matured"]) == (action, "schedule", 300.0)
    else:
        assert actions()[0] == "canary-started" and "not enough data yet" in outcome.reason
    # Labels that arrive after as_of are not used: a check as of the start sees no matured label at all.
    if decision == "wait":
        early = check_canary(config_path=path, as_of=T0 + timedelta(minutes=30), actor="schedule")
        assert early.decision == "wait" and "0 matured canary" in early.reason


def test_a_new_champion_that_breaches_the_rule_in_its_bake_window_is_rolled_back(
    retrain_home: Path, client: MlflowClient
) -> None:
    registered(client, 2, holdout_mae=10.0)
    move(client, "promote", version="1", at=T0 - timedelta(days=30))
    move(client, "register", version="2", at=T0)
    move(client, "promote", version="2", at=T0)
    log_predictions("champion", "2", np.full(300, 15.0), 300, T0)  # live MAE 15 vs holdout 10: +50 %
    path = config(retrain_home, rollback={"bake": "7d", "max_degradation": 0.2, "min_predictions": 100})
    outcome = check_canary(config_path=path, as_of=T0 + timedelta(days=1), actor="schedule")
    assert (outcome.action, outcome.from_version, outcome.to_version) == ("rolled-back", "2", "1")
    assert "automatic rollback: live mae 15.0000" in outcome.reason
    assert read_aliases(client, MODEL)["champion"] == "1"
    # After the bake window the same numbers roll nothing back; with no canary and no new champion: a no-op.
    move(client, "promote", version="2", at=T0)
    later = check_canary(config_path=path, as_of=T0 + timedelta(days=8), actor="schedule")
    assert (later.action, later.decision) == ("none", "none") and read_aliases(client, MODEL)["champion"] == "2"


# ------------------------------------------------------------------------------------------ by hand


def test_promote_and_roll_back_by_hand_with_their_refusals(retrain_home: Path, client: MlflowClient) -> None:
    registered(client, 3)
    client.create_model_version(MODEL, source="file:///nowhere")  # version 4 never passed the gates
    path = config(retrain_home)
    move(client, "promote", version="1")
    refused = roll_back_model(config_path=path, actor="person:ops")
    assert (refused.decision, refused.exit_code) == ("refused", 1) and "no previous champion" in refused.reason
    gated = promote_model(config_path=path, version="4", actor="person:ops")
    assert gated.decision == "refused" and "never passed the gates" in gated.reason
    with pytest.raises(ReleaseInputError, match="has no version 9"):
        promote_model(config_path=path, version="9", actor="person:ops")
    move(client, "register", version="2")
    promoted = promote_model(config_path=path, version="2", reason="hotfix", actor="person:ops")
    assert (promoted.action, promoted.from_version, promoted.to_version) == ("promoted", "1", "2")
    never = roll_back_model(config_path=path, to_version="3", actor="person:ops")
    assert never.decision == "refused" and "was never champion" in never.reason
    back = roll_back_model(config_path=path, actor="person:ops", reason="latency")
    assert (back.action, back.from_version, back.to_version) == ("rolled-back", "2", "1")
    assert read_aliases(client, MODEL) == {"champion": "1", "challenger": None, "canary": None, "previous": None}
    again = roll_back_model(config_path=path, to_version="2", actor="person:ops")
    assert (again.action, again.to_version) == ("rolled-back", "2")
    assert [action for action in actions() if action != RUN_FAILED] == [
        "rolled-back", "rolled-back", "promoted", "registered", "promoted"]
    # The promotion of a version that does not exist failed its run: recorded once, like any flow's failure.
    failed = read_ledger(get_warehouse(), MODEL, action=RUN_FAILED)
    assert len(failed) == 1 and "has no version 9" in failed[0].reason
    assert failed[0].details["flow"] == "promote-model" and failed[0].details["parameters"]["version"] == "9"


def test_a_canary_check_on_29_february_without_a_start_record_reads_the_year_before(
    retrain_home: Path, client: MlflowClient
) -> None:
    """A canary whose start the ledger does not hold is judged on the year before as_of; on 29 February that
    year has no 29 February (the old `replace(year=...)` raised ValueError there)."""
    registered(client, 2)
    move(client, "promote", version="1")
    client.set_registered_model_alias(MODEL, "canary", "2")  # set by hand: no canary-started row
    outcome = check_canary(config_path=config(retrain_home), as_of=datetime(2024, 2, 29, 12), actor="schedule")
    assert outcome.decision == "wait" and "not enough data yet" in outcome.reason
