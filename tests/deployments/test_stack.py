"""`make stack` (deployments/stack.py) and compose.yaml describe the same stack; the stack runs here, as processes,
and the README's steps work against it (slow)."""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
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


def readme_steps() -> list[str]:
    """The commands of README "When one machine is not enough" after `make stack` and the exports."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("## When one machine is not enough", 1)[1].split("\n## ", 1)[0]
    block = re.findall(r"```bash\n(.*?)```", section, flags=re.DOTALL)[0]
    commands = re.sub(r"\\\n\s*", "", block).splitlines()
    return [line for line in commands if not line.startswith(("make stack", "export "))]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow  # minutes: two servers, two workers, a training on a worker
@pytest.mark.postgres
def test_the_readme_steps_run_against_the_stack(tmp_path: Path) -> None:
    from tests.conftest import POSTGRES_URL, postgres_available

    if reason := postgres_available():
        pytest.skip(reason)
    prefix = f"retrain_stack_{uuid.uuid4().hex[:6]}"
    prefect_port, mlflow_port = free_port(), free_port()
    folder = tmp_path / "stack"
    stack = subprocess.Popen(
        [sys.executable, "-m", "deployments.stack", "--prefix", prefix, "--folder", str(folder),
         "--prefect-port", str(prefect_port), "--mlflow-port", str(mlflow_port)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "RETRAIN_STACK_DATABASE_URL": POSTGRES_URL},
    )
    try:
        printed = []
        for line in stack.stdout:  # type: ignore[union-attr]
            printed.append(line)
            if line.startswith("retrain deploy"):
                break
        assert "stack ready" in "".join(printed), "".join(printed)
        exports = dict(line.removeprefix("export ").strip().split("=", 1) for line in printed
                       if line.startswith("export "))
        assert exports["PREFECT_API_URL"] == f"http://127.0.0.1:{prefect_port}/api"
        environment = {key: value for key, value in os.environ.items()
                       if not key.startswith(("RETRAIN_", "PREFECT_", "MLFLOW_"))}
        environment |= exports | {"RETRAIN_HOME": str(tmp_path / "cli"), "PREFECT_HOME": str(tmp_path / "cli-prefect")}
        outputs = []
        for command in readme_steps():
            result = subprocess.run(["bash", "-c", command], cwd=REPO, env=environment, capture_output=True,
                                    text=True, timeout=1200, check=False)
            assert result.returncode == 0, f"{command}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
            outputs.append(result.stdout)
        assert re.fullmatch(r"m-[0-9a-f]{32}\n", outputs[-1]), outputs[-1]  # the champion, loaded from elsewhere
        assert "Completed" in outputs[2]  # the training ran on a worker of the stack and completed
    finally:
        stack.send_signal(signal.SIGINT)  # what Ctrl-C sends
        try:
            stack.wait(timeout=120)
        finally:
            if stack.poll() is None:
                stack.kill()
        admin = sa.create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            for store in STORES:
                connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{prefix}_{store}" WITH (FORCE)')
        admin.dispose()
