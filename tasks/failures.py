"""What a flow that failed after its retries leaves behind: a `run-failed` ledger row and an alert.

Deterministic errors (bad config, refused batch, gate rejection) never retry (`tasks/retries.py`); an outage
retries with backoff at the task. When the flow still fails, its `on_failure` hook lands here: the ledger gets
the flow, its parameters and the error (so `retrain failures` lists it and `retrain rerun RUN_ID` can start it
again with the same parameters), and the Prefect notification block named by the `notification_block`
setting, if any, sends the alert. A hook never raises: it must not hide the failure it reports.

One failure, one row: a subflow (the ingest inside a training or a monitoring run) that fails makes its parent
fail too, so the subflow's hook records nothing and the outer flow's row names the inner failure (the failed
subflow runs and their messages); `retrain rerun` of that row re-runs the outer flow, which is what a person
means to re-run.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from retrain.clock import now, parse_instant
from retrain.settings import get_settings
from retrain.warehouse import LedgerEntry, append_ledger_entry, get_warehouse

logger = logging.getLogger(__name__)

RUN_FAILED = "run-failed"
UNKNOWN_MODEL = "(unknown)"


def jsonable_parameters(parameters: Mapping[str, Any]) -> dict[str, Any]:
    """Parameters as JSON values (datetimes as ISO text), so a re-run can pass them back to the flow."""
    return json.loads(json.dumps(dict(parameters), default=lambda value: value.isoformat()
                                 if isinstance(value, datetime) else str(value)))


def failure_entry(
    model: str, flow_name: str, flow_run_id: str, flow_run_name: str, parameters: Mapping[str, Any],
    error: str, at: datetime, inner: Sequence[str] = (),
) -> LedgerEntry:
    """The ledger row of a failed run: the flow, its parameters, the error and the subflows that failed in it.

    Args:
        inner: The failed subflow runs, each as `<flow> (<run name>): <message>`.
    """
    where = f" (inner failure: {'; '.join(inner)})" if inner else ""
    return LedgerEntry(
        model=model, action=RUN_FAILED, reason=f"{flow_name} failed: {error}{where}"[:4000],
        actor=f"flow:{flow_name}", at=at,
        details={"flow": flow_name, "flow_run_name": flow_run_name, "parameters": jsonable_parameters(parameters),
                 "error": error[:4000], "failed_subflows": [text[:1000] for text in inner]},
        flow_run_id=flow_run_id,
    )


def is_subflow(flow_run: Any) -> bool:
    """Whether a run was started inside another flow run (its parent then fails and records the failure)."""
    return getattr(flow_run, "parent_task_run_id", None) is not None


def read_failed_subflows(flow_run_id: Any) -> list[str]:
    """The subflow runs of a flow run that ended Failed or Crashed, as `<flow> (<run name>): <message>`."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    with get_client(sync_client=True) as client:
        children = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id])))
        failed = [run for run in children if run.state is not None and (run.state.is_failed()
                                                                          or run.state.is_crashed())]
        return [f"{client.read_flow(run.flow_id).name} ({run.name}): {run.state.message or run.state.name}"
                for run in failed]


def alert_text(entry: LedgerEntry) -> tuple[str, str]:
    """Subject and body of the alert (no secrets: the redacted error and the parameters)."""
    subject = f"retrain: {entry.details.get('flow')} failed for {entry.model}"
    body = (f"{entry.reason}\nflow run: {entry.flow_run_id} ({entry.details.get('flow_run_name')})\n"
            f"parameters: {json.dumps(entry.details.get('parameters'))}\n"
            f"re-run with: retrain rerun {entry.flow_run_id}")
    return subject, body


def failure_instant(parameters: Mapping[str, Any]) -> datetime:
    """When a failed run failed on the Retrain clock: its `as_of` when it was given one (a replay's instant, so
    the ledger stays in the replay's order), else now."""
    given = parameters.get("as_of")
    if given:
        try:
            return parse_instant(given)
        except (TypeError, ValueError, AttributeError):
            pass
    return now()


def model_of(parameters: Mapping[str, Any]) -> str:
    """The model a run was about, from its config path; unknown when the config itself is the problem."""
    from retrain.config import load_model_config

    try:
        return load_model_config(parameters["config_path"]).name
    except Exception:  # noqa: BLE001 - the failure may be the config itself
        return UNKNOWN_MODEL


def send_alert(block_name: str, subject: str, body: str) -> None:
    """Notify through a Prefect notification block, named `<block-type-slug>/<name>` (e.g. `slack-webhook/ops`)."""
    from prefect.blocks.core import Block

    block = Block.load(block_name)
    block.notify(body=body, subject=subject)  # type: ignore[attr-defined]


def record_failed_run(flow: Any, flow_run: Any, state: Any) -> None:
    """Prefect `on_failure`/`on_crashed` hook of the training, ingest and monitoring flows."""
    from retrain.redaction import redact_text

    if is_subflow(flow_run):
        logger.info("subflow %s (%s) failed: its parent flow run records the failure", flow.name, flow_run.name)
        return
    settings = get_settings()
    secrets = settings.known_secrets()
    message = redact_text(str(state.message or state.name), secrets)
    try:
        inner = [redact_text(text, secrets) for text in read_failed_subflows(flow_run.id)]
    except Exception as error:  # noqa: BLE001 - the Prefect API may be what failed; the row matters more
        logger.warning("could not read the subflows of failed run %s: %s", flow_run.id, error)
        inner = []
    parameters = dict(flow_run.parameters or {})
    entry = failure_entry(model_of(parameters), flow.name, str(flow_run.id), str(flow_run.name), parameters,
                          message, failure_instant(parameters), inner)
    try:
        append_ledger_entry(get_warehouse(), entry)
    except Exception as error:  # noqa: BLE001 - the warehouse may be what failed
        logger.warning("could not record failed run %s in the ledger: %s", flow_run.id, error)
    if settings.notification_block:
        try:
            send_alert(settings.notification_block, *alert_text(entry))
        except Exception as error:  # noqa: BLE001 - an alert that cannot be sent must not mask the failure
            logger.warning("could not send the failure alert through block '%s': %s",
                           settings.notification_block, error)
