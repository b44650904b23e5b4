"""The demo: months of NYC flights lived day by day on the Retrain clock, by the same flows the deployments run.

Wiring only: what a day brings is `tasks.demo`'s, every decision is a flow's (ingest, monitoring, training, release,
canary check), taken with the parameters a deployment would pass, and the prediction server is the real one, asked
through HTTP. A day of the replay:

1. at its start the day's departures are predicted by the server (the Retrain clock stamps the requests);
2. at its end its flights have landed: their rows arrive in the source table (some days with faults, one day
   broken enough to be refused, then fixed by the data engineer), the ingest flow lands what passes the contract,
   and the actual delays come back through `/feedback`;
3. the canary check runs while a canary or a new champion's bake window lasts;
4. every `monitor_every` days the monitoring flow reports and decides; a retrain it asks for starts the training
   flow, and a challenger it registers is released by the release flow.

The server follows the aliases like a live one, but is asked to look at once after a flow that may move them (a
replayed day takes seconds, shorter than a live server's polling interval).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from prefect import flow
from pydantic import SecretStr

from flows.ingest import ingest_when_new_rows
from flows.monitoring import monitor_model
from flows.release import check_canary, release_challenger, roll_back_model
from flows.training import train_model
from retrain.clock import ReplayClock, replaying
from retrain.config import load_model_config
from retrain.settings import get_settings
from serving.app import create_app
from serving.background import serving_in_background
from tasks.demo import (
    DAY,
    MonthSummary,
    fix_the_feed,
    load_history,
    plan_replay,
    read_example_flights,
    reload_models,
    rows_arrive,
    rows_of_day,
    send_labels,
    serve_the_day,
    summarise_replay,
    watching_releases,
)
from tasks.ingest import BatchRefused

Progress = Callable[[int, int, str], None]  # day number (from 1), days, what happened


@dataclass(frozen=True)
class DemoOutcome:
    """What the replay showed: the month table and the story counts (`retrain demo --json`)."""

    start: datetime
    end: datetime
    months: list[MonthSummary]
    story: dict[str, int]
    rollback_by: str = "none"  # "rule", "person" or "none": where the rollback of the story came from
    notes: list[str] = field(default_factory=list)


_progress: list[Progress] = []  # the CLI's progress display, when it runs the demo in this process


def tell(day: int, days: int, what: str) -> None:
    for listener in _progress:
        listener(day, days, what)


@flow(name="replay-months", log_prints=False)
def replay_months(config_path: str, start: datetime, days: int = 61, monitor_every: int = 7) -> DemoOutcome:
    """Live `days` days of the example model from `start` (the first champion is trained as of `start`).

    Args:
        config_path: The demo's model config (the example's, with the demo's budget and release knobs).
        start: The first replayed day, on the Retrain clock (naive UTC midnight).
        days: How many days to live.
        monitor_every: Monitoring runs every this many days, as a daily schedule's cheaper cousin.
    """
    config = load_model_config(config_path)
    plan = plan_replay(start, days, monitor_every)

    # The history: the source holds the flights before the replay; the first champion learns from them.
    flights = read_example_flights()
    load_history(config=config, flights=flights, before=start)
    ingest_when_new_rows(config_path=config_path, as_of=start, config=config)
    train_model(config_path=config_path, as_of=start)

    token = secrets.token_hex(16)
    settings = get_settings().model_copy(update={"admin_token": SecretStr(token), "alias_poll_seconds": 3600.0})
    notes: list[str] = []
    with replaying(ReplayClock(start)) as clock, serving_in_background(create_app(config, settings)) as url:
        for number in range(plan.days):
            day = plan.day(number)
            tell(number + 1, plan.days, f"{day:%Y-%m-%d}")

            # Morning: the day's departures are predicted through HTTP.
            clock.advance_to(day)
            arrived = rows_of_day(config=config, flights=flights, plan=plan, number=number)
            serve_the_day(url=url, config=config, rows=arrived.clean)

            # Evening: the flights have landed; their rows arrive and pass the contract (or not); labels follow.
            clock.advance_to(day + DAY)
            rows_arrive(config=config, rows=arrived.delivered)
            try:
                ingest_when_new_rows(config_path=config_path, as_of=day + DAY, config=config)
            except BatchRefused as refusal:
                notes.append(f"{day:%Y-%m-%d}: the feed was refused ({refusal.violation.rule}) and fixed")
                fix_the_feed(config=config, broken=arrived.delivered, fixed=arrived.clean, start=day, end=day + DAY)
                ingest_when_new_rows(config_path=config_path, as_of=day + DAY, config=config)
            send_labels(url=url, config=config, rows=arrived.clean)

            # Release: the canary check while a canary or a new champion's bake window lasts.
            if watching_releases(config=config, as_of=day + DAY):
                check_canary(config_path=config_path, as_of=day + DAY, actor="schedule")
                reload_models(url=url, token=token)

            # Monitoring on its schedule; a retrain it asks for trains, and a challenger is released.
            if (number + 1) % plan.monitor_every == 0:
                monitored = monitor_model(config_path=config_path, as_of=day + DAY)
                if monitored.decision.retrain:
                    trained = train_model(config_path=config_path, as_of=day + DAY)
                    if trained.version is not None and trained.decision == "challenger":
                        release_challenger(config_path=config_path, as_of=day + DAY, actor="event")
                    reload_models(url=url, token=token)

        summary, story = summarise_replay(config=config, start=start, end=plan.end)
        rollback_by = "rule" if story["rollbacks"] else "none"
        if not story["rollbacks"]:
            # The data gave no rollback: a person shows one, which is what a rollback command is for.
            roll_back_model(config_path=config_path, reason="demo: a person rolls the last promotion back",
                            as_of=plan.end, actor="person:demo")
            summary, story = summarise_replay(config=config, start=start, end=plan.end)
            rollback_by = "person" if story["rollbacks"] else "none"
    return DemoOutcome(start, plan.end, summary, story, rollback_by, notes)


def listen(progress: Progress) -> Callable[[], Any]:
    """Show the replay's progress with `progress(day, days, what)`; returns the call that stops listening."""
    _progress.append(progress)
    return lambda: _progress.remove(progress)
