"""`retrain ui` (what `make ui` runs): the Prefect UI, the MLflow UI and the Evidently UI on this project's stores.

Each is the tool's own server, started the way its docs say, on a fixed loopback port (overridable) and pointed at
the stores under `RETRAIN_HOME`: Prefect's server on the Prefect home the commands use (its UI told to call its own
API port), `mlflow ui` on the tracking store (one worker, no job runner: 3 processes and ~500 MB instead of 11 and
2.2 GB), `evidently ui` on the workspace monitoring writes. The command prints the three URLs (the MLflow one opens
the model-training view, not the GenAI one) and waits; Ctrl-C (or SIGTERM) stops all three, and so does any one of
them ending. A store that is a server already (`PREFECT_API_URL`, an `http(s)://` tracking URI) is not started
again: its URL is printed instead.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer

from retrain.cli.app import JsonOption, app, prepare_environment
from retrain.settings import Settings, get_settings

READY_TIMEOUT_SECONDS = 120.0
MLFLOW_TRAINING_VIEW = "/#/experiments?workflowType=machine_learning"


@dataclass(frozen=True)
class UiService:
    """One UI server: how to start it, where it answers, what a person opens."""

    name: str
    url: str
    health: str | None = None  # polled until it answers 200; None: not started here (a server already)
    command: tuple[str, ...] = ()
    environment: dict[str, str] = field(default_factory=dict)


def console_script(name: str) -> str:
    """A console script of this environment (`.venv/bin/<name>`), found beside the running Python."""
    return str(Path(sys.executable).with_name(name))


def ui_services(settings: Settings, prefect_port: int, mlflow_port: int, evidently_port: int,
                prefect_api: str | None = None) -> list[UiService]:
    """The three UI servers on this project's stores (pure: nothing is started)."""
    services: list[UiService] = []
    if prefect_api:
        services.append(UiService("Prefect", prefect_api.removesuffix("/api").rstrip("/") + "/"))
    else:
        api = f"http://127.0.0.1:{prefect_port}/api"
        services.append(UiService(
            "Prefect", f"http://127.0.0.1:{prefect_port}/", f"{api}/health",
            (sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(prefect_port)),
            {"PREFECT_HOME": str(settings.resolved_home / "prefect"), "PREFECT_UI_API_URL": api,
             "PREFECT_SERVER_API_PORT": str(prefect_port), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
             "DO_NOT_TRACK": "1"},
        ))
    tracking = settings.resolved_tracking_uri()
    if tracking.lower().startswith(("http://", "https://")):
        services.append(UiService("MLflow", tracking.rstrip("/") + MLFLOW_TRAINING_VIEW))
    else:
        services.append(UiService(
            "MLflow", f"http://127.0.0.1:{mlflow_port}{MLFLOW_TRAINING_VIEW}", f"http://127.0.0.1:{mlflow_port}/health",
            (console_script("mlflow"), "ui", "--backend-store-uri", tracking, "--host", "127.0.0.1", "--port",
             str(mlflow_port), "--workers", "1"),
            {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        ))
    services.append(UiService(
        "Evidently", f"http://127.0.0.1:{evidently_port}/", f"http://127.0.0.1:{evidently_port}/api/version",
        (console_script("evidently"), "ui", "--workspace", str(settings.evidently_workspace_dir), "--host",
         "127.0.0.1", "--port", str(evidently_port)),
    ))
    return services


@contextlib.contextmanager
def running(services: Sequence[UiService], logs: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Start the services that need starting (logs under `logs`), wait until each answers, stop them all after."""
    from retrain.prefect_server import end_with_parent

    logs.mkdir(parents=True, exist_ok=True)
    environment = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for service in services:
            if not service.command:
                continue
            settings_dir = Path(service.environment.get("PREFECT_HOME", logs))
            settings_dir.mkdir(parents=True, exist_ok=True)
            with open(logs / f"{service.name.lower()}.log", "ab") as log:
                processes.append(subprocess.Popen(
                    service.command, env={**environment, **service.environment}, stdin=subprocess.DEVNULL,
                    stdout=log, stderr=subprocess.STDOUT,
                    preexec_fn=end_with_parent(os.getpid()),  # noqa: PLW1509 - they end with this command
                ))
        started = [service for service in services if service.command]
        for service, process in zip(started, processes, strict=True):
            wait_until_up(service, process, logs / f"{service.name.lower()}.log")
        yield processes
    finally:
        stop_all(processes)


def stop_all(processes: Sequence[subprocess.Popen[bytes]]) -> None:
    """SIGTERM to every server at once, then each gets what is left of one shared grace period before SIGKILL:
    stopping them one after another took three grace periods on a busy machine."""
    from retrain.prefect_server import STOP_TIMEOUT_SECONDS

    for process in processes:
        if process.poll() is None:
            process.terminate()
    deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
    for process in processes:
        try:
            process.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_until_up(service: UiService, process: subprocess.Popen[bytes], log: Path) -> None:
    """Poll the service's health URL until it answers 200.

    Raises:
        typer.Exit: the server ended, or did not answer within `READY_TIMEOUT_SECONDS` (its log says why).
    """
    import httpx  # here, not at import: every other command would pay for it

    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    with httpx.Client(timeout=2.0) as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                typer.echo(f"error: the {service.name} UI ended with code {process.returncode}; see {log}", err=True)
                raise typer.Exit(3)
            with contextlib.suppress(httpx.HTTPError):
                if service.health and client.get(service.health).status_code == 200:
                    return
            time.sleep(0.3)
    typer.echo(f"error: the {service.name} UI did not answer within {READY_TIMEOUT_SECONDS:g} s; see {log}", err=True)
    raise typer.Exit(3)


def wait_for_stop(processes: Sequence[subprocess.Popen[bytes]]) -> int:
    """Block until Ctrl-C, SIGTERM or one of the servers ending; returns the exit code."""
    stop = {"asked": False}

    def asked(_signal: int, _frame: Any) -> None:
        stop["asked"] = True

    previous = signal.signal(signal.SIGTERM, asked)
    try:
        while not stop["asked"]:
            if any(process.poll() is not None for process in processes):
                return 3
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0


@app.command()
def ui(
    prefect_port: Annotated[int, typer.Option(help="Port of the Prefect server and UI.", min=1, max=65535)] = 4200,
    mlflow_port: Annotated[int, typer.Option(help="Port of the MLflow UI.", min=1, max=65535)] = 5000,
    evidently_port: Annotated[int, typer.Option(help="Port of the Evidently UI.", min=1, max=65535)] = 8001,
    as_json: JsonOption = False,
) -> None:
    """Open the Prefect, MLflow and Evidently UIs on this project's stores (loopback), print their URLs, and keep
    them running until Ctrl-C, which stops all three."""
    prepare_environment()
    settings = get_settings()
    services = ui_services(settings, prefect_port, mlflow_port, evidently_port, os.environ.get("PREFECT_API_URL"))
    with running(services, settings.resolved_home / "ui-logs") as processes:
        urls = {service.name.lower(): service.url for service in services}
        if as_json:
            sys.stdout.write(json_line({"urls": urls, "home": str(settings.resolved_home)}))
            sys.stdout.flush()
        else:
            for service in services:
                typer.echo(f"{service.name:<10} {service.url}")
            typer.echo("Ctrl-C stops all three.", err=True)
        code = wait_for_stop(processes)
    typer.echo("a UI server ended: stopped the others" if code else "stopped", err=True)
    raise typer.Exit(code)


def json_line(value: dict[str, Any]) -> str:
    import json

    return json.dumps(value) + "\n"
