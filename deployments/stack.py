"""`make stack`: the team setup on one machine, on loopback, as processes (compose.yaml has the same services).

    .venv/bin/python -m deployments.stack [--prefix retrain_stack] [--prefect-port 4200] [--mlflow-port 5000]

Starts, on one PostgreSQL server (`RETRAIN_STACK_DATABASE_URL`, default the machine's at 127.0.0.1:5432, database
`test`), one database per store (`<prefix>_warehouse`, `_mlflow`, `_prefect`, `_optuna`, created if missing):

- `postgres`: not started here, the machine's (compose.yaml starts one);
- `mlflow`: `mlflow server` on its database with `--serve-artifacts`, so every machine reads and writes models
  through the server (`mlflow-artifacts:/`), never through a path only one machine has;
- `prefect-server`: `prefect server start` on its database;
- `prefect-worker-1`, `prefect-worker-2`: process workers of the work pool `retrain`, each with its own data folder
  (what two machines would have), both on the shared stores.

Then it prints the URLs and the environment to export (`retrain deploy --config models/` and `retrain train` use
the same stores), and waits; Ctrl-C (or SIGTERM) stops everything it started, and so does any of them ending.
Nothing here is a scheduler or a queue of ours: the processes are the tools' own servers and workers.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import sqlalchemy as sa

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATABASE_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
WORK_POOL = "retrain"
WORKERS = 2
STORES = ("warehouse", "mlflow", "prefect", "optuna")
READY_TIMEOUT_SECONDS = 120.0


@dataclass(frozen=True)
class StackService:
    """One process of the stack: how it starts and where it answers (compose.yaml names the same services)."""

    name: str
    command: tuple[str, ...]
    environment: dict[str, str] = field(default_factory=dict)
    health: str | None = None  # polled until it answers 200; None: ready once started


@dataclass(frozen=True)
class StackPlan:
    """Everything the stack starts, and the environment a user exports to work against it."""

    databases: dict[str, str]  # store → SQLAlchemy URL
    services: list[StackService]
    environment: dict[str, str]
    urls: dict[str, str]
    folder: Path


def database_url(base: str, database: str) -> str:
    """`base` (any database of the server) pointed at `database`, keeping driver, user and host."""
    return sa.engine.make_url(base).set(database=database).render_as_string(hide_password=False)


def driver_url(url: str, driver: str) -> str:
    return sa.engine.make_url(url).set(drivername=f"postgresql+{driver}").render_as_string(hide_password=False)


def console_script(name: str) -> str:
    """A console script of this environment (`.venv/bin/<name>`), found beside the running Python."""
    return str(Path(sys.executable).with_name(name))


def plan_stack(base_url: str, prefix: str, folder: Path, prefect_port: int, mlflow_port: int,
               workers: int = WORKERS) -> StackPlan:
    """The stack as data (pure: nothing is created or started), for `run_stack` and the compose test."""
    databases = {store: database_url(base_url, f"{prefix}_{store}") for store in STORES}
    api = f"http://127.0.0.1:{prefect_port}/api"
    tracking = f"http://127.0.0.1:{mlflow_port}"
    quiet = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}
    environment = {
        "PREFECT_API_URL": api,
        "RETRAIN_WAREHOUSE_URL": driver_url(databases["warehouse"], "psycopg"),
        "RETRAIN_MLFLOW_TRACKING_URI": tracking,
        "RETRAIN_OPTUNA_STORAGE": driver_url(databases["optuna"], "psycopg"),
        "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30",
    }
    services = [
        StackService(
            "mlflow",
            (console_script("mlflow"), "server", "--backend-store-uri", driver_url(databases["mlflow"], "psycopg"),
             "--serve-artifacts", "--artifacts-destination", (folder / "mlflow-artifacts").as_uri(),
             "--host", "127.0.0.1", "--port", str(mlflow_port), "--workers", "1"),
            {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
            f"{tracking}/health",
        ),
        StackService(
            "prefect-server",
            (sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(prefect_port)),
            {"PREFECT_API_DATABASE_CONNECTION_URL": driver_url(databases["prefect"], "asyncpg"),
             "PREFECT_HOME": str(folder / "prefect-server"), "PREFECT_SERVER_API_PORT": str(prefect_port),
             "PREFECT_UI_API_URL": api, **quiet},
            f"{api}/health",
        ),
    ]
    for number in range(1, workers + 1):
        home = folder / f"worker-{number}"
        services.append(StackService(
            f"prefect-worker-{number}",
            (sys.executable, "-m", "prefect", "worker", "start", "--pool", WORK_POOL, "--type", "process",
             "--name", f"worker-{number}"),
            {**environment, "RETRAIN_HOME": str(home), "PREFECT_HOME": str(home / "prefect"), **quiet},
        ))
    urls = {"prefect": f"http://127.0.0.1:{prefect_port}/", "mlflow": tracking + "/"}
    return StackPlan(databases, services, environment, urls, folder)


def create_databases(base_url: str, databases: Mapping[str, str]) -> list[str]:
    """Create each database that does not exist yet, connected through `base_url`; returns the names created."""
    created = []
    for url in databases.values():
        name = sa.engine.make_url(url).database
        admin = sa.create_engine(base_url, isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as connection:
                exists = connection.execute(sa.text("select 1 from pg_database where datname = :n"), {"n": name})
                if exists.first() is None:
                    connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
                    created.append(name)
        finally:
            admin.dispose()
    return created


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def wait_until_ready(process: subprocess.Popen, url: str, log: Path, timeout: float) -> None:
    """Poll `url` until it answers 200; fail naming the log if the process ends or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url}: the process ended with {process.returncode}; see {log}")
        if answers(url):
            return
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f} s; see {log}")


@contextlib.contextmanager
def started(plan: StackPlan, timeout: float = READY_TIMEOUT_SECONDS) -> Iterator[list[subprocess.Popen]]:
    """Start the services in order (each ready before the next), create the work pool, yield; stop them all."""
    plan.folder.mkdir(parents=True, exist_ok=True)
    processes: list[subprocess.Popen] = []
    pool_created = False
    try:
        for service in plan.services:
            if service.name.startswith("prefect-worker") and not pool_created:
                create_work_pool(plan.environment)
                pool_created = True
            if service.health and answers(service.health):
                raise RuntimeError(f"{service.name}: {service.health} answers already: another server holds the "
                                   "port (stop it, or pass --prefect-port / --mlflow-port)")
            log = plan.folder / f"{service.name}.log"
            with log.open("ab") as output:
                process = subprocess.Popen(
                    list(service.command), cwd=REPO, stdout=output, stderr=subprocess.STDOUT,
                    env={**os.environ, **service.environment}, start_new_session=True,
                )
            processes.append(process)
            if service.health:
                wait_until_ready(process, service.health, log, timeout)
        yield processes
    finally:
        stop(processes)


def create_work_pool(environment: Mapping[str, str]) -> None:
    """The process work pool the workers poll (Prefect's CLI; an existing pool is left as it is)."""
    subprocess.run(
        [sys.executable, "-m", "prefect", "work-pool", "create", WORK_POOL, "--type", "process", "--overwrite"],
        env={**os.environ, **environment}, cwd=REPO, check=True, capture_output=True, timeout=120,
    )


def stop(processes: list[subprocess.Popen]) -> None:
    """SIGTERM each process group (a worker's flow runs too), then SIGKILL what is still there after 20 s."""
    for process in reversed(processes):
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + 20
    for process in reversed(processes):
        try:
            process.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def announce(plan: StackPlan) -> str:
    """What a person needs: the URLs and the environment to export in another shell."""
    lines = ["stack ready (Ctrl-C stops it)"]
    lines += [f"  {name:<8} {url}" for name, url in plan.urls.items()]
    lines += [f"  logs     {plan.folder}", "", "# in another shell, from the project root:"]
    lines += [f"export {name}={value}" for name, value in plan.environment.items()]
    lines += ["retrain load-example --config examples/flights.yaml --until 2013-03-01",
              "retrain deploy --config examples/"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m deployments.stack", description=__doc__.splitlines()[0])
    parser.add_argument("--prefix", default="retrain_stack", help="Database name prefix (one database per store).")
    parser.add_argument("--folder", type=Path, default=REPO / ".retrain" / "stack", help="Logs, artifacts, homes.")
    parser.add_argument("--prefect-port", type=int, default=4200)
    parser.add_argument("--mlflow-port", type=int, default=5000)
    parser.add_argument("--workers", type=int, default=WORKERS)
    arguments = parser.parse_args(argv)
    base = os.environ.get("RETRAIN_STACK_DATABASE_URL", DEFAULT_DATABASE_URL)
    plan = plan_stack(base, arguments.prefix, arguments.folder.resolve(), arguments.prefect_port,
                      arguments.mlflow_port, arguments.workers)
    try:
        create_databases(base, plan.databases)
    except sa.exc.OperationalError as error:
        raise SystemExit(f"no PostgreSQL at {sa.engine.make_url(base).render_as_string()}: set "
                         f"RETRAIN_STACK_DATABASE_URL ({error.orig})") from None
    # Both stop the stack; SIGINT explicitly too, since a shell that starts us in the background ignores it.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        with started(plan) as processes:
            sys.stdout.write(announce(plan) + "\n")
            sys.stdout.flush()
            while all(process.poll() is None for process in processes):
                time.sleep(1)
            ended = [p.args for p in processes if p.poll() is not None]
            sys.stderr.write(f"a service ended ({ended[0][:4]}); stopping the stack\n")
    except KeyboardInterrupt:
        sys.stderr.write("stopping the stack\n")
    except RuntimeError as error:
        raise SystemExit(f"stack not started: {error}") from None


if __name__ == "__main__":
    main()
