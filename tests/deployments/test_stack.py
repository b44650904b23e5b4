"""`make stack` (deployments/stack.py) and compose.yaml describe the same stack; the stack runs here, as processes,
and the README's steps work against it (slow)."""

from __future__ import annotations

import shlex
from pathlib import Path

import yaml

from deployments.stack import STORES, WORK_POOL, plan_stack
from tests.conftest import REPO

COMPOSE = yaml.safe_load((REPO / "compose.yaml").read_text())


def default_plan():
    return plan_stack("postgresql+psycopg://postgres@127.0.0.1:5432/test", "retrain_stack", Path("/tmp/stack"),
                      4200, 5000)


def words(service: dict) -> list[str]:
    """The service's main command as words (for `sh -c "a; b"`, the last command: what keeps running)."""
    parts = shlex.split(service["command"])
    if parts[:2] == ["sh", "-c"]:
        parts = shlex.split(parts[2].split(";")[-1])
    return parts


def test_compose_has_the_services_make_stack_starts_plus_its_database() -> None:
    plan = default_plan()
    assert set(COMPOSE["services"]) == {"postgres", *(service.name for service in plan.services)}


def test_compose_and_make_stack_agree_on_databases_ports_and_flags() -> None:
    plan = default_plan()
    sql = (REPO / "deployments" / "compose-databases.sql").read_text()
    assert [f"retrain_stack_{store}" for store in STORES if f"CREATE DATABASE retrain_stack_{store};" in sql] == [
        f"retrain_stack_{store}" for store in STORES]
    stack = {service.name: service for service in plan.services}
    for name, service in COMPOSE["services"].items():
        if name == "postgres":
            continue
        ours = stack[name].command
        theirs = words(service)
        for flag in ("--serve-artifacts", "--workers", "--port", "--pool", "--type", "--name"):
            if flag in ours:
                assert flag in theirs, f"{name}: {flag} in make stack, not in compose.yaml"
                value = ours[ours.index(flag) + 1] if flag != "--serve-artifacts" else None
                if value is not None:
                    assert theirs[theirs.index(flag) + 1] == value, f"{name}: {flag} differs"
        assert set(stack[name].environment) - {"PREFECT_HOME"} <= set(service.get("environment", {})) | {
            "PREFECT_API_DATABASE_CONNECTION_URL"} | set(COMPOSE["x-retrain-environment"]), name
    assert COMPOSE["services"]["prefect-worker-1"]["command"].count(f"--pool {WORK_POOL}") == 1
    assert set(COMPOSE["x-retrain-environment"]) == set(plan.environment)
    for store in ("warehouse", "optuna"):
        key = f"RETRAIN_{store.upper()}_URL" if store == "warehouse" else "RETRAIN_OPTUNA_STORAGE"
        assert COMPOSE["x-retrain-environment"][key].endswith(f"/retrain_stack_{store}")
        assert plan.environment[key].endswith(f"/retrain_stack_{store}")
