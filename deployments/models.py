"""Many models from one set of deployments: each model config gives its eight deployments (`retrain deploy`).

A team with twenty models does not copy 160 entries of prefect.yaml: `model_deployments` writes a model's
entries from its config (name, source table, window, the `deployment:` section's work pool, schedules and
triggers, defaults where it is silent), in prefect.yaml's own shape, and `deploy_models` hands them to
Prefect's deployment API (`RunnerDeployment.from_entrypoint(...).apply()`), with the work pool, one global
concurrency limit per model (`tasks/limits.py`: held by every training and ingest of the model, on any
worker of any machine) and the crashed-run automation. prefect.yaml keeps the example model's set for
`prefect deploy --all`; a test keeps it equal to what this module generates.

Entrypoints and config paths are relative to the project root, the working directory of every run (the
deployment's path): a config outside the project is deployed by its absolute path.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from retrain.config import ModelConfig, load_model_config
from retrain.errors import ConfigError
from tasks.limits import model_limit_name

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
# What each deployment runs, in prefect.yaml's order.
KINDS = ("train", "ingest", "monitor", "release", "canary-check", "promote", "reject", "rollback")
RELEASE_EVENTS = ("retrain.model.registered", "retrain.model.promoted", "retrain.model.rejected",
                  "retrain.model.rolled-back")


@dataclass(frozen=True)
class DeployedModel:
    """What `retrain deploy` put on the Prefect server for one model."""

    model: str
    config_path: str
    deployments: dict[str, str]  # deployment name → id
    limit: str
    work_pool: str


@dataclass(frozen=True)
class DeployResult:
    models: list[DeployedModel]
    work_pools: list[str]
    limits: dict[str, int]  # global concurrency limit → slots, as read back from the server
    automation: str | None = None
    notes: list[str] = field(default_factory=list)


def find_model_configs(path: Path) -> list[Path]:
    """The model configs at `path`: the file itself, or every `*.yaml`/`*.yml` of a folder except data
    contracts (`*.contract.yaml`), sorted.

    Raises:
        ConfigError: the path does not exist, or a folder holds no model config.
    """
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise ConfigError(f"--config {path}: no such file or folder")
    found = sorted(
        candidate for candidate in path.iterdir()
        if candidate.suffix in {".yaml", ".yml"} and not candidate.name.endswith((".contract.yaml", ".contract.yml"))
    )
    if not found:
        raise ConfigError(f"--config {path}: the folder holds no model config (*.yaml other than *.contract.yaml)")
    return found


def load_model_configs(paths: Iterable[Path]) -> list[ModelConfig]:
    """Every config validated before anything is deployed, and names distinct (a name is a deployment prefix).

    Raises:
        ConfigError: a config is invalid (naming its file and field), or two configs share a model name.
    """
    configs = [load_model_config(path) for path in paths]
    seen: dict[str, Path | None] = {}
    for config in configs:
        if config.name in seen:
            raise ConfigError(
                f"model name '{config.name}' is in both {seen[config.name]} and {config.config_path}: "
                "deployments are named after the model, so names must differ"
            )
        seen[config.name] = config.config_path
    return configs


def project_path(path: Path, root: Path = REPO) -> str:
    """A config's path as a run finds it: relative to the project root (a run's working directory) if it is
    inside it, else absolute."""
    resolved = path.resolve()
    try:
        return resolved.relative_to(root.resolve()).as_posix()
    except ValueError:
        return resolved.as_posix()


def describe_window(config: ModelConfig) -> str:
    window = config.training_window
    if window.lookback is not None and window.lookback.total_seconds() % 86_400 == 0:
        return f"the {window.lookback.days} days before as_of"
    return str(window)


def model_deployments(config: ModelConfig, config_path: str) -> list[dict[str, Any]]:
    """The model's eight deployments as prefect.yaml entries (plain data: what `prefect deploy` reads).

    Args:
        config_path: The config as the runs will open it (see `project_path`).
    """
    name, table = config.name, config.source.table
    settings = config.deployment
    resource = f"retrain.model.{name}"

    def schedule(cron: str | None) -> dict[str, Any]:
        if cron is None:
            return {}
        return {"schedules": [{"cron": cron, "timezone": settings.schedules.timezone, "active": True}]}

    def entry(kind: str, entrypoint: str, tag: str, description: str, **extra: Any) -> dict[str, Any]:
        parameters = {"config_path": config_path, **extra.pop("parameters", {})}
        return {"name": f"{name}-{kind}", "description": description, "entrypoint": entrypoint,
                "tags": ["retrain", tag, f"model:{name}"], "parameters": parameters,
                "work_pool": {"name": settings.work_pool}, **extra}

    by_hand = {"version": "", "reason": "", "actor": "person:prefect-ui"}
    train_triggers = [{
        "type": "event", "name": f"{name}: retrain when monitoring asks", "enabled": True,
        "match": {"prefect.resource.id": resource}, "expect": ["retrain.retrain.requested"],
        "parameters": {"config_path": config_path},
    }] if settings.retrain_when_requested else []
    release_triggers = [{
        "type": "event", "name": f"{name}: release the challenger when one is registered or a canary ends",
        "enabled": True, "match": {"prefect.resource.id": resource}, "expect": list(RELEASE_EVENTS),
        "parameters": {"config_path": config_path, "actor": "event"},
    }] if settings.release_on_events else []
    return [
        entry(
            "train", "flows/training.py:train_model", "training",
            f"Ingest new {table} rows through the data contract, then tune, gate and register the model on "
            f"{describe_window(config)} (empty: just after the newest clean row). Ends Completed, Skipped (nothing "
            "new) or Rejected (a gate said no); Failed only on a real failure. Started by the weekly schedule, by "
            "hand from the UI, or by the monitoring policy's `retrain.retrain.requested` event (the policy decides "
            "when new data is worth a retrain, so new data alone no longer starts one).",
            concurrency_limit=1, **schedule(settings.schedules.train),
            **({"triggers": train_triggers} if train_triggers else {}),
        ),
        entry(
            "ingest", "flows/ingest.py:ingest_when_new_rows", "ingest",
            f"Validate the {table} rows that arrived since the last batch (if any); quarantine bad rows.",
            concurrency_limit=1, **schedule(settings.schedules.ingest),
        ),
        entry(
            "monitor", "flows/monitoring.py:monitor_model", "monitoring",
            "Score the new clean rows with the champion, compare them with its training window (Evidently drift "
            "and performance reports, MAE by day per version), store the numbers, and decide whether to retrain: "
            "the decision goes to the ledger and out as events (retrain.drift.detected, "
            "retrain.performance.degraded, retrain.retrain.requested). Fill manual_reason to ask for a retrain by "
            "hand.",
            parameters={"manual_reason": ""}, concurrency_limit=1, **schedule(settings.schedules.monitor),
        ),
        entry(
            "release", "flows/release.py:release_challenger", "release",
            "Move the challenger on: a canary on release.canary.share of traffic beside the champion (champion "
            "when there is none). While a canary runs the challenger waits, and is released when the canary ends. "
            "In release.mode manual the run pauses with an approval form (challenger vs champion, p-value, MLflow "
            "run) and waits up to release.approval_timeout; no answer rejects it. Starts on every registration, "
            "promotion, rejection and rollback.",
            parameters={"actor": "event"}, **({"triggers": release_triggers} if release_triggers else {}),
        ),
        entry(
            "canary-check", "flows/release.py:check_canary", "release",
            "Analyse the canary against the champion on the same matured rows (each scored by both versions): "
            'promote, reject or "not enough data yet"; a canary undecided after release.canary.max_duration is '
            "settled by release.canary.on_timeout. With no canary, roll back a champion promoted within "
            "release.rollback.bake that is worse than the previous champion on the same rows; with neither, a "
            "no-op (\"no canary\"). On the model's clock (empty as_of: just after the newest clean row).",
            parameters={"actor": "schedule"}, concurrency_limit=1, **schedule(settings.schedules.canary_check),
        ),
        entry(
            "promote", "flows/release.py:promote_model", "release",
            "Make a version champion by hand (empty version: the canary, else the challenger); only a version "
            "that passed the gates. The old champion becomes `previous`.",
            parameters=by_hand,
        ),
        entry(
            "reject", "flows/release.py:reject_model", "release",
            "End a canary, or drop a waiting challenger, by hand (empty version: the canary, else the "
            "challenger); it loses its alias and is never released. Say why in reason.",
            parameters=by_hand,
        ),
        entry(
            "rollback", "flows/release.py:roll_back_model", "release",
            "Give `champion` back to the previous champion, or to to_version (a version that was champion "
            "before).",
            parameters={"to_version": "", "reason": "", "actor": "person:prefect-ui"},
        ),
    ]


def runner_deployment(entry: dict[str, Any]) -> Any:
    """One prefect.yaml entry as Prefect's own `RunnerDeployment` (loads the flow from its entrypoint)."""
    from prefect.deployments.runner import RunnerDeployment
    from prefect.events import DeploymentEventTrigger
    from prefect.schedules import Cron

    schedules = [Cron(item["cron"], timezone=item.get("timezone"), active=item.get("active", True))
                 for item in entry.get("schedules", [])]
    triggers = [DeploymentEventTrigger(**{key: value for key, value in trigger.items() if key != "type"})
                for trigger in entry.get("triggers", [])]
    return RunnerDeployment.from_entrypoint(
        entry["entrypoint"],
        name=entry["name"],
        description=entry["description"],
        tags=entry["tags"],
        parameters=entry["parameters"],
        schedules=schedules or None,
        triggers=triggers or None,
        concurrency_limit=entry.get("concurrency_limit"),
        work_pool_name=entry["work_pool"]["name"],
    )


def ensure_process_pool(name: str) -> bool:
    """Create the work pool (type process) if the server has none of that name; True when created."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(name)
            return False
        except ObjectNotFound:
            with contextlib.suppress(ObjectAlreadyExists):
                client.create_work_pool(WorkPoolCreate(name=name, type="process"))
            return True


def deploy_models(configs: Sequence[ModelConfig], root: Path = REPO) -> DeployResult:
    """Create or update every model's deployments, work pool, concurrency limit, and the crash automation,
    on the Prefect server of `PREFECT_API_URL` (idempotent: a second deploy updates in place)."""
    from deployments.operations import (
        apply_automation,
        apply_model_limits,
        crash_automation,
        heartbeat_seconds,
        retrain_flow_names,
    )

    notes: list[str] = []
    pools = sorted({config.deployment.work_pool for config in configs})
    for pool in pools:
        if ensure_process_pool(pool):
            notes.append(f"created work pool '{pool}' (type process): start workers with "
                         f"`prefect worker start --pool {pool}` in {root}")
    limits = apply_model_limits(tuple(config.name for config in configs))
    deployed = []
    with contextlib.chdir(root):  # entrypoints are relative to the project root, which becomes each run's path
        for config in configs:
            assert config.config_path is not None  # load_model_config sets it
            path = project_path(config.config_path, root)
            ids = {}
            for entry in model_deployments(config, path):
                ids[entry["name"]] = str(runner_deployment(entry).apply(work_pool_name=entry["work_pool"]["name"]))
            limit = model_limit_name(config.name)
            deployed.append(DeployedModel(config.name, path, ids, limit, config.deployment.work_pool))
    try:
        automation = apply_automation(crash_automation(retrain_flow_names(), heartbeat_seconds())).name
    except ConfigError as error:
        automation = None
        notes.append(f"crashed-run automation not applied: {error}")
    return DeployResult(models=deployed, work_pools=pools, limits=limits, automation=automation, notes=notes)
