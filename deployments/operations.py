"""What prefect.yaml cannot say: the crashed-run automation and one concurrency limit per deployed model.

`prefect.yaml` stays the one place for deployments, schedules and triggers; this applies the rest to the
Prefect server named by `PREFECT_API_URL`, idempotently (run it after every `prefect deploy`):

    PREFECT_FLOWS_HEARTBEAT_FREQUENCY=30 .venv/bin/python -m deployments.operations

- **Crashed-run detection** (Prefect's "zombie flow" automation): every flow run sends a heartbeat event
  (`prefect.flow-run.heartbeat`) every `PREFECT_FLOWS_HEARTBEAT_FREQUENCY` seconds while its process
  lives. A proactive trigger expects the next heartbeat or a final state within `MISSED_HEARTBEATS`
  beats; when none comes (the process was killed, the machine died) it sets the run to Crashed. Scoped
  to Retrain's flows, so other teams' flows on a shared server are left alone. Its window is computed
  from the heartbeat setting of the process applying it: workers must send heartbeats at least that
  often, so set the same `PREFECT_FLOWS_HEARTBEAT_FREQUENCY` on them (30 s gives detection in ~90 s).
- **Per-model concurrency**: one global concurrency limit per model named in prefect.yaml
  (`retrain-model-<name>`, 1 slot), which the training and ingest flows hold (see `tasks/limits.py`).
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import sys
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path

import yaml
from prefect import Flow
from prefect.automations import Automation
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType
from prefect.events.actions import ChangeFlowRunState
from prefect.events.schemas.automations import EventTrigger, Posture
from prefect.events.schemas.events import ResourceSpecification
from prefect.settings import get_current_settings

import flows
from retrain.config import load_model_config
from retrain.errors import ConfigError
from tasks.limits import MODEL_SLOTS, model_limit_name

REPO = Path(__file__).resolve().parents[1]
CRASH_AUTOMATION = "retrain: mark unresponsive flow runs crashed"
MISSED_HEARTBEATS = 3
HEARTBEAT = "prefect.flow-run.heartbeat"
# A final state, or a pause (a paused or suspended run stops beating on purpose), ends the wait.
RUN_ENDED = ("Completed", "Failed", "Cancelled", "Crashed", "Paused", "Suspended")


@dataclass(frozen=True)
class AppliedOperations:
    """What is now on the server: the automation's id and window, the model limits."""

    automation_id: str
    automation: str
    window_seconds: float
    flows: tuple[str, ...]
    limits: dict[str, int]


def retrain_flow_names() -> tuple[str, ...]:
    """The name of every Prefect flow in the `flows` package (subflows included: they beat too)."""
    names: set[str] = set()
    for module_info in pkgutil.iter_modules(flows.__path__):
        module = importlib.import_module(f"flows.{module_info.name}")
        names.update(value.name for value in vars(module).values() if isinstance(value, Flow))
    return tuple(sorted(names))


def heartbeat_seconds() -> int:
    """The heartbeat interval of this process's Prefect settings, which the workers must share.

    Raises:
        ConfigError: heartbeats are off, so no run could ever be told apart from a dead one.
    """
    seconds = get_current_settings().flows.heartbeat_frequency
    if seconds is None:
        raise ConfigError("flow run heartbeats are off: set PREFECT_FLOWS_HEARTBEAT_FREQUENCY (e.g. 30)")
    return int(seconds)


def crash_automation(flow_names: tuple[str, ...], heartbeat: int, missed: int = MISSED_HEARTBEATS) -> Automation:
    """Prefect's zombie-run automation, for the named flows: no heartbeat for `missed` beats → Crashed."""
    return Automation(
        name=CRASH_AUTOMATION,
        description=(
            f"Marks a Retrain flow run Crashed when neither a heartbeat nor a final state arrived for "
            f"{missed} heartbeats ({heartbeat} s each): its process or machine died."
        ),
        enabled=True,
        trigger=EventTrigger(
            after={HEARTBEAT},
            expect={HEARTBEAT, *(f"prefect.flow-run.{state}" for state in RUN_ENDED)},
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            match_related=ResourceSpecification(
                {"prefect.resource.role": "flow", "prefect.resource.name": list(flow_names)}
            ),
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=heartbeat * missed),
        ),
        actions=[
            ChangeFlowRunState(
                state=StateType.CRASHED,
                message=f"no heartbeat for {heartbeat * missed} s: the run's process or machine stopped",
            )
        ],
    )


def apply_automation(automation: Automation) -> Automation:
    """Create the automation, or bring the one of the same name up to date (one copy, however often run).

    An unchanged automation is left alone: Prefect gives an updated trigger a new id, and its open windows
    ("buckets": each watched run's last heartbeat and when it expires) belong to the old one, so updating
    for nothing would forget every run being watched, the very runs killed since the last apply.
    """
    try:
        existing = Automation.read(name=automation.name)
    except ValueError:  # Prefect's "Automation with name ... not found"
        return automation.create()
    if _definition(automation) == _definition(existing):
        return existing
    updated = automation.model_copy(update={"id": existing.id})
    updated.update()
    return updated


def _definition(automation: Automation) -> object:
    """What the automation does, comparable across reads: Prefect keeps a trigger's `expect`, `after` and
    `for_each` as sets, so they come back in any order (measured: an unchanged automation compared unequal
    in one apply of four until sorted)."""
    return _sorted_sets(
        automation.model_dump(
            mode="json", include={"name", "description", "enabled", "trigger", "actions", "actions_on_trigger",
                                  "actions_on_resolve"}
        )
    )


def _sorted_sets(value: object) -> object:
    if isinstance(value, dict):
        return {key: _sorted_sets(item) for key, item in value.items()}
    if isinstance(value, list):
        items = [_sorted_sets(item) for item in value]
        return sorted(items) if all(isinstance(item, str) for item in items) else items
    return value


def deployed_models(prefect_yaml: Path) -> tuple[str, ...]:
    """The model named by each deployment's `config_path` in prefect.yaml (paths relative to its folder)."""
    spec = yaml.safe_load(prefect_yaml.read_text(encoding="utf-8")) or {}
    names = {
        load_model_config(prefect_yaml.parent / deployment["parameters"]["config_path"]).name
        for deployment in spec.get("deployments", [])
        if "config_path" in deployment.get("parameters", {})
    }
    return tuple(sorted(names))


def apply_model_limits(models: tuple[str, ...], slots: int = MODEL_SLOTS) -> dict[str, int]:
    """Upsert one global concurrency limit per model; returns each limit's name and slots as read back."""
    with get_client(sync_client=True) as client:
        for model in models:
            client.upsert_global_concurrency_limit_by_name(model_limit_name(model), slots)
        return {
            model_limit_name(model): client.read_global_concurrency_limit_by_name(model_limit_name(model)).limit
            for model in models
        }


def apply_operations(prefect_yaml: Path = REPO / "prefect.yaml") -> AppliedOperations:
    """Everything this module describes, applied to the current Prefect API."""
    names = retrain_flow_names()
    heartbeat = heartbeat_seconds()
    automation = apply_automation(crash_automation(names, heartbeat))
    limits = apply_model_limits(deployed_models(prefect_yaml))
    return AppliedOperations(
        automation_id=str(automation.id),
        automation=automation.name,
        window_seconds=heartbeat * MISSED_HEARTBEATS,
        flows=names,
        limits=limits,
    )


def main() -> None:
    """Apply, then print what is on the server as one JSON object.

    Refuses to run without `PREFECT_API_URL`: Prefect would apply everything to a temporary server of its
    own that ends with this script, and the workers' server would have none of it.
    """
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        raise SystemExit("set PREFECT_API_URL to the Prefect server your workers use (e.g. http://127.0.0.1:4200/api)")
    applied = apply_operations(Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "prefect.yaml")
    sys.stdout.write(json.dumps(asdict(applied), indent=2) + "\n")


if __name__ == "__main__":
    main()
