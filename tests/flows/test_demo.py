"""`retrain demo --fast` end to end, as `make demo` runs it but 25 days long: the story must come from real
decisions on real flights, and the ledger must tell it in order on the replay clock only (never the wall clock)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

from tests.retrain.test_cli_outages import command_environment

REPO = Path(__file__).resolve().parents[2]
STORY = ("quarantined_batches", "refused_batches", "retrain_requests", "rejections", "promotions", "rollbacks",
         "served_predictions", "labelled_predictions")


def first(actions: list[str], action: str) -> int:
    assert action in actions, f"no {action!r} in the ledger: {actions}"
    return actions.index(action)


@pytest.mark.slow
def test_the_fast_demo_tells_the_whole_story_on_the_replay_clock(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "retrain.cli", "demo", "--fast", "--json"], cwd=tmp_path,
                          env=command_environment(tmp_path / "home"), capture_output=True, text=True, timeout=1800,
                          check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    outcome = json.loads(done.stdout.strip().splitlines()[-1])

    story = outcome["story"]
    assert all(story[name] >= 1 for name in STORY), story
    assert story["labelled_predictions"] <= story["served_predictions"]
    assert outcome["rollback_by"] in {"rule", "person"}
    start, end = datetime.fromisoformat(outcome["start"]), datetime.fromisoformat(outcome["end"])
    assert [month["month"] for month in outcome["months"]] == ["2013-03"]
    month = outcome["months"][0]
    assert month["served"] == story["served_predictions"] and month["mae"] is not None

    with sqlite3.connect(tmp_path / "home" / "warehouse.db") as db:
        rows = db.execute("select action, at, recorded_at, actor from retrain_ledger where model = 'flights-delay' "
                          "order by at, id").fetchall()
        served = db.execute("select min(event_at), max(event_at), count(*) from retrain_predictions "
                            "where arm in ('champion', 'canary')").fetchone()
    instants = [datetime.fromisoformat(at) for _, at, _, _ in rows]
    # The replay clock only: every decision lies between the first champion's window end and the replay's end,
    # while the rows were written today (recorded_at, the wall clock).
    assert all(datetime(2013, 1, 1) <= at <= end for at in instants), [str(at) for at in instants]
    assert all(datetime.fromisoformat(recorded).year > 2013 for _, _, recorded, _ in rows)
    assert start <= datetime.fromisoformat(served[0]) and datetime.fromisoformat(served[1]) < end and served[2] > 0

    actions = [action for action, _, _, _ in rows]
    first_champion = first(actions, "promoted") if "registered" not in actions else first(actions, "registered")
    asked = first(actions, "retrain-requested")
    canary = first(actions, "canary-started")
    assert first_champion < asked < canary, actions
    assert canary < canary + actions[canary:].index("promoted"), actions
    promoted = canary + actions[canary:].index("promoted")
    assert "rolled-back" in actions[promoted:], actions
    assert "rejected" in actions or "gated-out" in actions, actions
    actors = {actor for _, _, _, actor in rows}
    assert "person:retrain" not in actors, actors  # automatic decisions name what acted (flow:..., schedule, event)
