"""Release flows under Prefect's test server, on a real MLflow store and a real SQLite warehouse: approval
(approve, reject, timeout, resumed through Prefect's client), the canary check on a replay through the real
server, canary and rollback decisions between real models on the same rows, canaries that time out, waiting and
superseding challengers, promote, reject and rollback by hand with their refusals, all on the Retrain clock."""

from __future__ import annotations

import json
import shutil
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
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

from flows.release import check_canary, promote_model, reject_model, release_challenger, roll_back_model
from retrain import mlflow_keys as keys
from retrain.config import load_model_config
from retrain.outcomes import ReleaseOutcome
from retrain.release_state import read_release_state
from retrain.settings import Settings, get_settings
from retrain.warehouse import append_new_predictions, get_warehouse, read_ledger, write_frame
from serving.app import create_app
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
from tasks.tracking import configure_mlflow
from tests.conftest import write_model_config

pytestmark = pytest.mark.usefixtures("prefect_harness")

MODEL = "flights-delay"
T0 = datetime(2013, 3, 1)


@pytest.fixture(scope="module")
def empty_mlflow_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLflow SQLite store with its tables made, which each test copies into its home: making them takes ~6 s
    on this machine, more than most tests here."""
    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_registered_models()
    return path


@pytest.fixture
def client(retrain_home: Path, empty_mlflow_store: Path) -> MlflowClient:
    retrain_home.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(empty_mlflow_store, retrain_home / "mlflow.db")
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
    entry = read_ledger(get_warehouse(), MODEL)[0]
    assert (entry.actor, entry.details["requested_by"], entry.at) == ("flow:release-model", "person:asker", T0)


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


def real_versions(path: str, rows: pd.DataFrame, shifts: list[float], holdout_mae: float = 10.0) -> list[str]:
    """One real raw-row model version per shift, registered as training would and tagged as passing the gates:
    fitted on the target plus the shift (0: a fair model; 25: one fitted on corrupted labels, worse on any row)."""
    from tests.serving.conftest import register_version

    configure_mlflow(get_settings(), MODEL)
    model_config = load_model_config(path)
    client = MlflowClient()
    versions = []
    for shift in shifts:
        frame = rows.assign(**{model_config.target.column: rows[model_config.target.column] + shift})
        version = register_version(model_config, frame, 30)
        client.set_model_version_tag(MODEL, version, keys.GATES, "passed")
        client.set_model_version_tag(MODEL, version, "retrain.holdout_mae", str(holdout_mae))
        versions.append(version)
    return versions


def served_records(rows: pd.DataFrame, path: str) -> list[dict]:
    """Rows as a client sends them: features and key (the timestamp among them), through `to_json`."""
    model_config = load_model_config(path)
    columns = list(dict.fromkeys([*model_config.features.all, *model_config.source.key]))
    return json.loads(rows[columns].to_json(orient="records", date_format="iso"))


def log_served(path: str, rows: pd.DataFrame, version: str, arm: str, label_delay: timedelta) -> np.ndarray:
    """What the server logs for `rows` served by `version` (its real predictions on the raw records, at their
    event time, answered now) and their labels, matured `label_delay` after each event; returns the predictions."""
    records = served_records(rows, path)
    frame = pd.DataFrame.from_records(records)
    predictions = np.asarray(mlflow.pyfunc.load_model(f"models:/{MODEL}/{version}").predict(
        frame[load_model_config(path).features.all]), dtype="float64")
    wall = datetime.now(UTC).replace(tzinfo=None)
    logged, labels = [], []
    for position, (record, event) in enumerate(zip(records, rows["time_hour"], strict=True)):
        request = f"{arm}-{version}-{position}"
        logged.append({"request_id": request, "model": MODEL, "version": version, "arm": arm, "predicted_at": wall,
                       "event_at": event.to_pydatetime(), "prediction": float(predictions[position]),
                       "features": json.dumps(record), "key": None, "latency_ms": 3.0})
        labels.append({"model": MODEL, "request_id": request, "key": None, "actual": float(rows["arr_delay"].iloc[
            position]), "labelled_at": wall, "event_at": event.to_pydatetime() + label_delay, "source": "feedback"})
    append_new_predictions(get_warehouse(), logged, labels)
    return predictions


def test_a_canary_check_on_a_replay_reads_exactly_the_served_predictions_of_its_versions_in_its_window(
    retrain_home: Path, client: MlflowClient, flights_small: pd.DataFrame
) -> None:
    """A replay: the server answers now (2026) for records of January 2013, labels come back through /feedback with
    the replayed instant they were known. The check as of a replayed day reads by event time and version: what the
    two versions served since the canary started, labels matured by then, and nothing else."""
    path = config(retrain_home, canary={"share": 0.5, "min_predictions": 10_000})
    first, second, third = real_versions(path, flights_small.iloc[:3000], [0.0, 0.0, 0.0])
    started, as_of = datetime(2013, 1, 12), datetime(2013, 1, 15)
    move(client, "promote", version=first, at=started - timedelta(days=5))
    move(client, "register", version=second, at=started)
    move(client, "canary", share=0.5, at=started)
    day = flights_small[(flights_small["time_hour"] >= datetime(2013, 1, 11))
                        & (flights_small["time_hour"] < datetime(2013, 1, 16))]
    rows = day.groupby(day["time_hour"].dt.date).head(30).reset_index(drop=True)  # 30 flights a day, 5 days
    records = served_records(rows, path)
    settings = Settings(home=retrain_home, alias_poll_seconds=3600, log_flush_seconds=0.05)
    with TestClient(create_app(load_model_config(path), settings)) as http:
        deadline = time.monotonic() + 60
        while http.get("/ready").status_code != 200:
            assert time.monotonic() < deadline, "the server never became ready"
            time.sleep(0.05)
        answers = http.post("/predict", json={"records": records, "request_id": "replay"}).json()["predictions"]
        events = rows["time_hour"]
        # Labels known 3 hours after each flight, on the replay clock; the 14th's only after as_of.
        known = events.where(events < datetime(2013, 1, 14), events + timedelta(days=2)) + timedelta(hours=3)
        feedback = [{"request_id": answer["request_id"], "actual": float(actual), "at": at.isoformat()}
                    for answer, actual, at in zip(answers, rows["arr_delay"], known, strict=True)]
        assert http.post("/feedback", json={"labels": feedback}).status_code == 200
        assert http.app.state.server.log.wait_until_written(10)  # type: ignore[attr-defined]
    # Beside them, rows the check must not read: another version on the champion arm (served before a swap) and
    # batch-scored rows, all inside the window.
    inside = flights_small[(flights_small["time_hour"] >= datetime(2013, 1, 13))].head(40).reset_index(drop=True)
    log_served(path, inside.iloc[:20], third, "champion", timedelta(hours=1))
    log_served(path, inside.iloc[20:], first, "batch", timedelta(hours=1))

    outcome = check_canary(config_path=path, as_of=as_of, actor="schedule")
    assert outcome.decision == "wait" and "not enough data yet" in outcome.reason
    arms = pd.Series([answer["arm"] for answer in answers])
    versions = {answer["arm"]: answer["version"] for answer in answers}
    assert versions == {"champion": first, "canary": second} and (arms == "canary").sum() > 20
    in_window = ((events >= started) & (events < as_of)).to_numpy()
    matured = in_window & (known <= as_of).to_numpy()
    expected = {"canary_served": int((in_window & (arms == "canary")).sum()),
                "canary_matured": int((matured & (arms == "canary")).sum()),
                "champion_matured": int((matured & (arms == "champion")).sum())}
    assert {name: int(outcome.metrics[name]) for name in expected} == expected
    assert outcome.metrics["paired_rows"] == expected["canary_matured"] + expected["champion_matured"]
    assert 0 < expected["canary_matured"] < expected["canary_served"]  # the 14th's late labels had not matured


def test_the_canary_check_promotes_a_better_canary_and_rejects_a_worse_one_on_the_same_rows(
    retrain_home: Path, client: MlflowClient, flights_small: pd.DataFrame
) -> None:
    path = config(retrain_home, canary={"min_predictions": 100})
    fair, corrupted, other_fair = real_versions(path, flights_small.iloc[:3000], [0.0, 25.0, 0.0])
    started = datetime(2013, 1, 12)
    rows = flights_small[flights_small["time_hour"] >= started].head(300).reset_index(drop=True)
    move(client, "promote", version=fair, at=started - timedelta(days=5))
    move(client, "register", version=corrupted, at=started)
    move(client, "canary", share=0.1, at=started)
    log_served(path, rows.iloc[::2], fair, "champion", timedelta(hours=2))
    log_served(path, rows.iloc[1::2], corrupted, "canary", timedelta(hours=2))
    rejected = check_canary(config_path=path, as_of=datetime(2013, 1, 20), actor="person:ann")
    assert (rejected.action, rejected.decision, rejected.from_version) == ("rejected", "reject", corrupted)
    assert "the canary is worse than the champion beyond the margin" in rejected.reason
    entry = read_ledger(get_warehouse(), MODEL)[0]
    # The rule decided, not the person who started the check: the flow is the actor, the person who asked is kept.
    assert (entry.actor, entry.details["requested_by"], entry.metrics["paired_rows"]) == (
        "flow:check-canary", "person:ann", 300.0)
    assert entry.at == datetime(2013, 1, 20) and entry.recorded_at > datetime(2026, 1, 1)

    move(client, "register", version=other_fair, at=datetime(2013, 1, 20))
    move(client, "canary", share=0.1, at=datetime(2013, 1, 20))
    later = flights_small[flights_small["time_hour"] >= datetime(2013, 1, 20)].head(300).reset_index(drop=True)
    log_served(path, later.iloc[::2], fair, "champion", timedelta(hours=2))
    log_served(path, later.iloc[1::2], other_fair, "canary", timedelta(hours=2))
    promoted = check_canary(config_path=path, as_of=datetime(2013, 1, 25), actor="schedule")
    assert (promoted.action, promoted.to_version) == ("promoted", other_fair), promoted.reason
    assert read_aliases(client, MODEL)["champion"] == other_fair


@pytest.mark.parametrize(("champion_fitted_on", "fires"), [("fair", False), ("corrupted", True)],
                         ids=["previous-worse", "previous-better"])
def test_the_rollback_rule_compares_the_new_champion_with_the_previous_one_on_the_same_rows(
    retrain_home: Path, client: MlflowClient, flights_small: pd.DataFrame, champion_fitted_on: str, fires: bool
) -> None:
    """Both champions' live error is far above their holdout (1.0): the old rule (live vs holdout) would roll back
    either. On the same rows, only a champion worse than the previous one goes back."""
    path = config(retrain_home, rollback={"bake": "7d", "min_predictions": 100})
    fair, corrupted = real_versions(path, flights_small.iloc[:3000], [0.0, 25.0], holdout_mae=1.0)
    champion, previous = (fair, corrupted) if champion_fitted_on == "fair" else (corrupted, fair)
    promoted = datetime(2013, 1, 12)
    move(client, "promote", version=previous, at=promoted - timedelta(days=10))
    move(client, "register", version=champion, at=promoted)
    move(client, "promote", version=champion, at=promoted)
    rows = flights_small[flights_small["time_hour"] >= promoted].head(300).reset_index(drop=True)
    predictions = log_served(path, rows, champion, "champion", timedelta(hours=2))
    live = float(np.abs(predictions - rows["arr_delay"]).mean())
    assert live > 1.0 * 1.2  # live vs holdout: what rolled back the better model before

    outcome = check_canary(config_path=path, as_of=datetime(2013, 1, 16), actor="schedule")
    if fires:
        assert (outcome.action, outcome.from_version, outcome.to_version) == ("rolled-back", champion, previous)
        assert "automatic rollback: the champion is worse than the previous champion beyond the margin" in \
            outcome.reason and read_aliases(client, MODEL)["champion"] == previous
        assert read_ledger(get_warehouse(), MODEL)[0].actor == "flow:check-canary"
    else:
        assert (outcome.action, outcome.decision) == ("none", "none")
        assert "the rollback rule does not fire" in outcome.reason and read_aliases(client, MODEL)["champion"] == \
            champion
    assert outcome.metrics["paired_rows"] == 300
    # After the bake window nothing is watched.
    later = check_canary(config_path=path, as_of=datetime(2013, 1, 20), actor="schedule")
    assert (later.action, later.decision) == ("none", "none")


# ------------------------------------------------------------------------------------------ canaries that end


def test_a_canary_that_times_out_ends_in_one_decision_and_the_waiting_challenger_is_released_next(
    retrain_home: Path, client: MlflowClient
) -> None:
    registered(client, 3)
    path = config(retrain_home, canary={"max_duration": "14d", "min_predictions": 50})
    move(client, "promote", version="1", at=T0 - timedelta(days=30))
    move(client, "register", version="2", at=T0)
    move(client, "canary", share=0.1, at=T0)
    # A challenger that passes the gates while the canary runs waits, once recorded.
    move(client, "register", version="3", at=T0 + timedelta(days=2))
    for _ in range(2):
        waits = release_challenger(config_path=path, as_of=T0 + timedelta(days=2), actor="event")
        assert (waits.decision, waits.exit_code, waits.to_version) == ("waiting", 0, "3")
    assert read_release_state(client, MODEL).aliases == {"champion": "1", "challenger": "3", "canary": "2",
                                                          "previous": None}
    assert actions().count("waiting") == 1

    running = check_canary(config_path=path, as_of=T0 + timedelta(days=13), actor="schedule")
    assert running.decision == "wait" and "not enough data yet" in running.reason
    ended = check_canary(config_path=path, as_of=T0 + timedelta(days=14), actor="schedule")
    assert (ended.action, ended.to_version) == ("promoted", "2")
    assert ended.reason.startswith("the canary ran 14d on the Retrain clock undecided (release.canary.max_duration "
                                   "14d); settled by on_timeout 'no-harm': it passed the offline gates")
    assert "version 3 waited as challenger" in ended.reason
    again = check_canary(config_path=path, as_of=T0 + timedelta(days=15), actor="schedule")
    assert again.action == "none"
    assert [a for a in actions() if a in ("promoted", "rejected")] == ["promoted", "promoted"]  # one decision

    # What the release deployment does on `retrain.model.promoted`: the waiting challenger's canary starts.
    released = release_challenger(config_path=path, as_of=T0 + timedelta(days=14), actor="event")
    assert (released.action, released.to_version) == ("canary-started", "3")
    assert read_release_state(client, MODEL).aliases == {"champion": "2", "challenger": None, "canary": "3",
                                                          "previous": "1"}


def test_a_newer_challenger_supersedes_a_stalled_canary_when_the_config_says_so(
    retrain_home: Path, client: MlflowClient
) -> None:
    registered(client, 3)
    path = config(retrain_home, canary={"superseded_by_newer": True})
    move(client, "promote", version="1", at=T0 - timedelta(days=30))
    move(client, "register", version="2", at=T0)
    move(client, "canary", share=0.1, at=T0)
    move(client, "register", version="3", at=T0 + timedelta(days=3))
    outcome = release_challenger(config_path=path, as_of=T0 + timedelta(days=3), actor="event")
    assert (outcome.action, outcome.to_version) == ("canary-started", "3")
    rejected = read_ledger(get_warehouse(), MODEL)[1]
    assert (rejected.action, rejected.from_version, rejected.actor) == ("rejected", "2", "flow:release-model")
    assert "superseded by the newer challenger version 3" in rejected.reason
    assert read_release_state(client, MODEL).aliases == {"champion": "1", "challenger": None, "canary": "3",
                                                          "previous": None}


def test_reject_by_hand_ends_a_canary_or_drops_a_waiting_challenger(retrain_home: Path, client: MlflowClient) -> None:
    registered(client, 3)
    path = config(retrain_home)
    move(client, "promote", version="1", at=T0)
    nothing = reject_model(config_path=path, reason="no", as_of=T0, actor="person:ops")
    assert (nothing.decision, nothing.exit_code) == ("refused", 1) and "no canary or challenger" in nothing.reason
    move(client, "register", version="2", at=T0)
    move(client, "canary", share=0.1, at=T0)
    move(client, "register", version="3", at=T0)
    ended = reject_model(config_path=path, reason="latency too high", as_of=T0 + timedelta(days=1),
                         actor="person:ops")
    assert (ended.action, ended.from_version, ended.exit_code) == ("rejected", "2", 1)
    assert ended.reason.startswith("latency too high; version 3 waited as challenger")
    dropped = reject_model(config_path=path, version="3", reason="trained on a bad week",
                           as_of=T0 + timedelta(days=2), actor="person:ops")
    assert (dropped.action, dropped.from_version) == ("rejected", "3")
    assert read_aliases(client, MODEL) == {"champion": "1", "challenger": None, "canary": None, "previous": None}
    entry = read_ledger(get_warehouse(), MODEL)[0]
    assert (entry.actor, entry.reason) == ("person:ops", "trained on a bad week")


# ------------------------------------------------------------------------------------------ by hand


def test_promote_and_roll_back_by_hand_with_their_refusals(retrain_home: Path, client: MlflowClient) -> None:
    registered(client, 3)
    client.create_model_version(MODEL, source="file:///nowhere")  # version 4 never passed the gates
    path = config(retrain_home)
    # With no --as-of the release commands run on the model's clock: just after the newest clean row.
    newest = datetime(2013, 3, 3, 17)  # after the setup moves (T0)
    write_frame(get_warehouse(), pd.DataFrame({"time_hour": [newest - timedelta(days=1), newest]}),
                load_model_config(path).source.clean)
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
    latest = next(entry for entry in read_ledger(get_warehouse(), MODEL) if entry.action != RUN_FAILED)
    assert latest.at == newest + timedelta(microseconds=1) and latest.recorded_at > datetime(2026, 1, 1)
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
