"""How a flow run shows in the Prefect UI: named after the model and the instant it runs as of, tagged `model:<name>`.

Prefect names a run at random (`furry-stork`); a person looking for last Tuesday's monitoring of one model needs
the model and the instant in the name and a tag to filter by. The instant is known only once a run has resolved its
`as_of` (the model's clock), after it started, hence a rename.
"""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from retrain.config import ModelConfig


def instant_label(moment: datetime) -> str:
    """`2013-04-01` at midnight, `2013-04-01 05:00` otherwise (a run name, not a timestamp: minutes suffice)."""
    return moment.strftime("%Y-%m-%d") if moment.time() == datetime.min.time() else moment.strftime("%Y-%m-%d %H:%M")


def run_label(model: str, what: str, moment: datetime) -> str:
    """`flights-delay monitor 2013-06-01`: the model, what the run does, and its instant."""
    return f"{model} {what} {instant_label(moment)}".replace("  ", " ")


def rename_flow_run(name: str, model: str) -> str:
    """Rename the current flow run and tag it `model:<name>` (nothing outside a flow run)."""
    from prefect import get_client

    run_id = flow_run.get_id()
    if run_id is not None:
        tags = sorted({*flow_run.get_tags(), f"model:{model}"})
        with get_client(sync_client=True) as client:
            client.update_flow_run(UUID(run_id), name=name, tags=tags)
    return name


@task(name="label-flow-run", cache_policy=NO_CACHE)
def label_flow_run(config: ModelConfig, what: str, as_of: datetime) -> str:
    """Name the flow run `<model> <what> <as_of>` and tag it with the model."""
    return rename_flow_run(run_label(config.name, what, as_of), config.name)


def typed_actor(actor: str, created_by: str | None, from_deployment: bool) -> str:
    """Who a run acts for: the Prefect user who started it where Prefect knows one (Prefect Cloud), else the
    `actor` parameter, marked as typed by hand when a person's name came from a deployment's run form (anyone who
    can open the form can type any name there; schedules, events and flows are named by the deployment itself)."""
    if created_by:
        return f"person:{created_by}"
    if from_deployment and actor.startswith("person:"):
        return f"{actor} (typed in the run form)"
    return actor


@task(name="who-acts", cache_policy=NO_CACHE)
def who_acts(actor: str) -> str:
    """`typed_actor` for the current flow run, from what Prefect recorded about who started it."""
    from prefect import get_client
    from prefect.runtime import deployment

    run_id = flow_run.get_id()
    created_by = None
    if run_id is not None:
        with get_client(sync_client=True) as client:
            creator = client.read_flow_run(UUID(run_id)).created_by
        if creator is not None and str(getattr(creator, "type", "")).upper().endswith("USER"):
            created_by = creator.display_value or None
    return typed_actor(actor, created_by, deployment.get_id() is not None)
