"""Things happening at once or stopping halfway, driven through the `retrain` CLI as real processes.

Each scenario starts from an empty data folder and prints what it left behind; every figure should be
zero (or one, for champions made):

  two-ingests       two `retrain ingest` of one model started together: clean rows stored twice
  two-trainings     two `retrain train` of a model with no champion started together: champions made
  shared-source     both shipped example configs (one source table) ingested into one warehouse:
                    rows quarantined as duplicates of the other model's batch
  password          a training against an unreachable MLflow whose URI holds a password: lines of
                    stdout, stderr and the Prefect database that show it, seconds until it failed
  kill-in-tuning    a training killed with SIGKILL while Optuna tunes, then a second training:
                    MLflow runs and Prefect flow runs left RUNNING, processes left behind, trials that
                    repeated earlier parameters
  late-rows         five rows of an hour arrive after their hour was ingested: late rows the next ingest
                    reports, late rows a replay of the hour lands, other clean rows it changed
  refused-thrice    a new arrival with 300 keys sent twice with other content (refused), ingested by two
                    commands at once, again, and once more after the day is re-sent: quarantine rows
                    against the arrival's distinct rows
  kill-serve        `retrain serve` killed with SIGKILL after 20 s of load from 4 clients, then started again
                    and stopped with SIGTERM: predictions answered 200, missing from the log, logged twice;
                    the exit code and output of the SIGTERM
  interleaved-releases
                    `retrain promote` paused at each step of its transition (RETRAIN_PAUSE_AT; a checkout
                    without the hook runs it through) while `retrain rollback` and `retrain status` run:
                    transition ids in the ledger more than once, whether replaying the ledger gives the
                    aliases, live transitions that `status` called interrupted, lock rows left behind

Run it against any checkout, so a before/after comparison uses the same script:

    .venv/bin/python benchmarks/safety_scenarios.py                       # this checkout
    .venv/bin/python benchmarks/safety_scenarios.py --repo /old/checkout  # another one (its .venv)
    .venv/bin/python benchmarks/safety_scenarios.py two-ingests password  # some scenarios
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import yaml

PASSWORD = "S3cretPW42"
KEY = ["time_hour", "carrier", "flight", "origin"]


class Scenario:
    """One fresh data folder and the CLI of the checkout under test."""

    def __init__(self, repo: Path) -> None:
        self.repo = repo
        self.retrain = repo / ".venv" / "bin" / "retrain"
        self.home = Path(tempfile.mkdtemp(prefix="retrain-safety-"))
        self.env = {**os.environ, "RETRAIN_HOME": str(self.home)}
        for name in ("PREFECT_HOME", "PREFECT_API_URL", "RETRAIN_MLFLOW_TRACKING_URI", "RETRAIN_WAREHOUSE_URL"):
            self.env.pop(name, None)

    def config(self, example: str = "flights.yaml", end: str = "2013-02-01") -> Path:
        """An example config with a small absolute window and budget, valid for old and new checkouts."""
        raw = yaml.safe_load((self.repo / "examples" / example).read_text())
        raw["training_window"] = {"start": "2013-01-01", "end": end}
        raw["tuning"] = {**raw.get("tuning", {}), "trials": 2, "max_rounds": 100, "timeout_seconds": 600}
        folder = self.home / "config"
        folder.mkdir(exist_ok=True)
        contract = self.repo / "examples" / "flights.contract.yaml"
        (folder / contract.name).write_text(contract.read_text())
        raw["contract"] = contract.name
        path = folder / example
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
        return path

    def start(self, *args: str, extra_env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [str(self.retrain), *args, "--json"],
            cwd=self.home,
            env={**self.env, **(extra_env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def run(self, *args: str, extra_env: dict[str, str] | None = None) -> tuple[int, str, str]:
        process = self.start(*args, extra_env=extra_env)
        stdout, stderr = process.communicate(timeout=1800)
        return process.returncode, stdout, stderr

    def warehouse(self) -> sqlite3.Connection:
        return sqlite3.connect(self.home / "warehouse.db")


def outcome(stdout: str) -> dict:
    lines = stdout.strip().splitlines()
    return json.loads(lines[-1]) if lines else {}


def two_ingests(scenario: Scenario) -> dict[str, object]:
    config = str(scenario.config())
    scenario.run("load-example", "--config", config, "--until", "2013-03-01")
    scenario.run("ingest", "--config", config, "--start", "2013-01-01", "--end", "2013-01-02")
    first, second = scenario.start("ingest", "--config", config), scenario.start("ingest", "--config", config)
    codes = [first.wait(timeout=900), second.wait(timeout=900)]
    with scenario.warehouse() as connection:
        rows, keys = connection.execute(
            f"select count(*), count(distinct {'||'.join(KEY)}) from flights_clean"
        ).fetchone()
    return {"exit codes": codes, "clean rows": rows, "distinct keys": keys, "rows doubled": rows - keys}


def two_trainings(scenario: Scenario) -> dict[str, object]:
    config = str(scenario.config())
    scenario.run("load-example", "--config", config, "--until", "2013-02-01")
    scenario.run("ingest", "--config", config)
    first, second = scenario.start("train", "--config", config), scenario.start("train", "--config", config)
    results = [first.communicate(timeout=1800), second.communicate(timeout=1800)]
    decisions = [outcome(stdout).get("decision") or _last_line(stderr) for stdout, stderr in results]
    with scenario.warehouse() as connection:
        promoted = connection.execute(
            "select count(*) from retrain_ledger where action = 'promoted'"
        ).fetchone()[0]
    return {"exit codes": [first.returncode, second.returncode], "decisions": decisions, "champions made": promoted}


def shared_source(scenario: Scenario) -> dict[str, object]:
    regression, binary = str(scenario.config("flights.yaml")), str(scenario.config("flights_delayed.yaml"))
    scenario.run("load-example", "--config", regression, "--until", "2013-02-01")
    code_a, out_a, _ = scenario.run("ingest", "--config", regression)
    code_b, out_b, _ = scenario.run("ingest", "--config", binary)
    with scenario.warehouse() as connection:
        quarantined = connection.execute("select count(*) from flights_quarantine").fetchone()[0]
    return {
        "exit codes": [code_a, code_b],
        "second model's batch": outcome(out_b).get("status") or outcome(out_b).get("error"),
        "rows quarantined": quarantined,
    }


def password(scenario: Scenario) -> dict[str, object]:
    config = str(scenario.config())
    scenario.run("load-example", "--config", config, "--until", "2013-02-01")
    started = time.monotonic()
    code, stdout, stderr = scenario.run(
        "train", "--config", config,
        extra_env={"RETRAIN_MLFLOW_TRACKING_URI": f"http://user:{PASSWORD}@127.0.0.1:9"},
    )
    seconds = time.monotonic() - started
    printed = sum(PASSWORD in line for line in (stdout + stderr).splitlines())
    stored = 0
    for path in (scenario.home / "prefect").rglob("*"):
        if path.is_file():
            stored += path.read_bytes().count(PASSWORD.encode())
    return {"exit code": code, "lines printed": printed, "copies in Prefect's files": stored,
            "seconds to fail": round(seconds, 1)}


def kill_in_tuning(scenario: Scenario) -> dict[str, object]:
    config_path = scenario.config(end="2013-03-01")
    raw = yaml.safe_load(config_path.read_text())
    raw["tuning"] = {**raw["tuning"], "trials": 400, "max_rounds": 300}
    config_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    config = str(config_path)
    scenario.run("load-example", "--config", config, "--until", "2013-03-01")
    scenario.run("ingest", "--config", config)
    process = subprocess.Popen(
        [str(scenario.retrain), "train", "--config", config, "--json"],
        cwd=scenario.home, env=scenario.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    group = process.pid
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and _finished_trials(scenario.home) < 3:
        time.sleep(1)
    finished_before = _finished_trials(scenario.home)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    time.sleep(60)
    left_behind = _processes_in_group(group)
    killed = {"mlflow runs RUNNING": _count(scenario.home / "mlflow.db", "select count(*) from runs where "
                                                                       "status = 'RUNNING'"),
              "prefect flow runs RUNNING": _count(scenario.home / "prefect" / "prefect.db",
                                                  "select count(*) from flow_run where state_type = 'RUNNING'"),
              "processes alive 60 s after the kill": left_behind}
    for pid in left_behind:
        os.kill(pid, signal.SIGKILL)
    raw["tuning"]["trials"] = finished_before + 6  # more than the study holds, whether --trials counts in total or more
    config_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    code, stdout, _ = scenario.run("train", "--config", config)
    after = {
        "mlflow runs RUNNING after the next training": _count(
            scenario.home / "mlflow.db", "select count(*) from runs where status = 'RUNNING'"),
        "prefect flow runs RUNNING after the next training": _count(
            scenario.home / "prefect" / "prefect.db", "select count(*) from flow_run where state_type = 'RUNNING'"),
        "trials RUNNING after the next training": _count(
            scenario.home / "optuna.db", "select count(*) from trials where state = 'RUNNING'"),
        "repeated parameter sets": _repeated_parameters(scenario.home),
    }
    return {"trials finished before the kill": finished_before, **killed, **after,
            "next training": outcome(stdout).get("decision") or outcome(stdout).get("error"), "exit code": code}


def _source(scenario: Scenario) -> sqlite3.Connection:
    return sqlite3.connect(scenario.home / "warehouse.db")


def late_rows(scenario: Scenario) -> dict[str, object]:
    config = str(scenario.config())
    scenario.run("load-example", "--config", config, "--until", "2013-02-01")
    hour = "2013-01-29 15:00:00.000000"  # as load-example stores it
    import pandas as pd

    with _source(scenario) as connection:
        held_back = pd.read_sql(f"select * from flights where time_hour = '{hour}' limit 5", connection)
        connection.execute(f"delete from flights where rowid in (select rowid from flights where time_hour = "
                           f"'{hour}' limit 5)")
    scenario.run("ingest", "--config", config)
    with _source(scenario) as connection:
        before = connection.execute("select count(*) from flights_clean").fetchone()[0]
        held_back.to_sql("flights", connection, if_exists="append", index=False)
    _, reported, _ = scenario.run("ingest", "--config", config)  # nothing new: refused as empty, late counted
    code, replayed, _ = scenario.run("ingest", "--config", config, "--start", "2013-01-29T15:00",
                                     "--end", "2013-01-29T16:00")
    replay = outcome(replayed)
    with _source(scenario) as connection:
        after = connection.execute("select count(*) from flights_clean").fetchone()[0]
        flights = ",".join(str(int(value)) for value in held_back["flight"])
        landed = connection.execute(f"select count(*) from flights_clean where time_hour like '2013-01-29 15%' and "
                                    f"flight in ({flights}) and _batch_id = ?", (replay.get("batch_id"),)).fetchone()[0]
    return {"late rows reported by the next ingest": outcome(reported).get("late", "not reported"),
            "replay exit code, status": [code, replay.get("status"), (replay.get("violation") or {}).get("rule")],
            "late rows landed by the replay (of 5)": landed,
            "clean rows before, after (difference)": [before, after, after - before],
            "quarantined by the replay": replay.get("quarantined")}


def refused_thrice(scenario: Scenario) -> dict[str, object]:
    config = str(scenario.config())
    # Four months first, so the new arrival lies beyond the 100,000 rows whose keys the config check samples.
    scenario.run("load-example", "--config", config, "--until", "2013-05-04")
    import pandas as pd

    with _source(scenario) as connection:
        arrival = pd.read_sql("select * from flights where time_hour >= '2013-05-01'", connection)
        connection.execute("delete from flights where time_hour >= '2013-05-01'")
    scenario.run("ingest", "--config", config)
    twins = arrival.iloc[:300].copy()
    twins["dep_delay"] = twins["dep_delay"] + 7
    arrival = pd.concat([arrival, twins], ignore_index=True)
    with _source(scenario) as connection:
        arrival.to_sql("flights", connection, if_exists="append", index=False)
    first, second = scenario.start("ingest", "--config", config), scenario.start("ingest", "--config", config)
    runs = [first.communicate(timeout=900), second.communicate(timeout=900)]
    third = scenario.run("ingest", "--config", config)
    with _source(scenario) as connection:
        arrival.to_sql("flights", connection, if_exists="append", index=False)  # the day is sent again
    fourth = scenario.run("ingest", "--config", config)
    outputs = [outcome(stdout) for stdout, _ in runs] + [outcome(third[1]), outcome(fourth[1])]
    with _source(scenario) as connection:
        quarantined = connection.execute("select count(*) from flights_quarantine").fetchone()[0]
        refused = connection.execute("select count(*) from retrain_batches where status = 'refused'").fetchone()[0]
    return {"arrival: rows, distinct rows": [len(arrival), len(arrival.drop_duplicates())],
            "exit codes": [first.returncode, second.returncode, third[0], fourth[0]],
            "answers that repeat an earlier refusal": sum(bool(result.get("repeats")) for result in outputs),
            "refused batches in the ledger": refused,
            "quarantine rows": quarantined}


def kill_serve(scenario: Scenario) -> dict[str, object]:
    import socket
    import threading

    import httpx

    config = str(scenario.config())
    scenario.run("load-example", "--config", config, "--until", "2013-03-01")
    scenario.run("train", "--config", config)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with scenario.warehouse() as connection:
        columns = "sched_dep_time, sched_arr_time, distance, hour, minute, temp, dewp, humid, wind_dir, wind_speed, " \
                  "wind_gust, precip, pressure, visib, carrier, origin, dest"
        cursor = connection.execute(f"select {columns} from flights_clean limit 200")
        names = [column[0] for column in cursor.description]
        records = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def serve() -> subprocess.Popen[str]:
        process = scenario.start("serve", "--config", config, "--port", str(port))
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code == 200:
                    return process
            except httpx.HTTPError:
                time.sleep(0.5)
        raise RuntimeError("the server did not get ready")

    answered: list[str] = []
    stop = threading.Event()

    def client(number: int) -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            index = 0
            while not stop.is_set():
                body = {"records": records[index % 150: index % 150 + 1 + index % 3],
                        "request_id": f"c{number}-{index}"}
                index += 1
                try:
                    response = http.post("/predict", json=body)
                except httpx.HTTPError:
                    return
                if response.status_code == 200:
                    answered.extend(p["request_id"] for p in response.json()["predictions"])

    first = serve()
    threads = [threading.Thread(target=client, args=(number,)) for number in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(20)
    first.kill()
    first.wait()
    stop.set()
    for thread in threads:
        thread.join()
    second = serve()
    time.sleep(10)  # a restarted server ships what the killed one left (if it can) within its flush time
    second.terminate()
    stdout, _ = second.communicate(timeout=120)
    with scenario.warehouse() as connection:
        logged = [row[0] for row in connection.execute("select request_id from retrain_predictions")]
    return {"predictions answered 200": len(answered),
            "answered but missing from the log": len(set(answered) - set(logged)),
            "request ids logged more than once": len(logged) - len(set(logged)),
            "SIGTERM: exit code, output": [second.returncode, stdout.strip()[-200:]]}


PROMOTION_STEPS = ["intent", "set previous", "set champion", "version facts", "ledger", "event", "clear intent"]
REGISTER_VERSIONS = """
import sys
import mlflow
from mlflow.tracking import MlflowClient
mlflow.set_tracking_uri(sys.argv[1])
client = MlflowClient()
client.create_registered_model(sys.argv[2])
for _ in range(2):
    client.create_model_version(sys.argv[2], source="file:///nowhere", tags={"retrain.gates": "passed"})
client.set_registered_model_alias(sys.argv[2], "champion", "1")
"""


def interleaved_releases(scenario: Scenario) -> dict[str, object]:
    config = str(scenario.config())
    model = yaml.safe_load(Path(config).read_text())["name"]
    python = scenario.repo / ".venv" / "bin" / "python"
    subprocess.run([str(python), "-c", REGISTER_VERSIONS, f"sqlite:///{scenario.home / 'mlflow.db'}", model],
                   check=True, env=scenario.env, cwd=scenario.home, capture_output=True)
    called_interrupted, paused_rounds, codes = 0, 0, []
    for step in PROMOTION_STEPS:
        folder = Path(tempfile.mkdtemp(prefix="pause-", dir=scenario.home))
        first = scenario.start("promote", "--config", config, "--version", "2", "--reason", f"paused at {step}",
                               extra_env={"RETRAIN_PAUSE_AT": f"{step}={folder}"})
        while not (folder / "paused").exists() and first.poll() is None:
            time.sleep(0.1)
        if first.poll() is None:  # paused, alive, mid-transition: what does a second command do?
            paused_rounds += 1
            _, status, _ = scenario.run("status", "--config", config)
            called_interrupted += bool(outcome(status).get("pending"))
            second = scenario.start("rollback", "--config", config, "--reason", f"while paused at {step}")
            time.sleep(15)  # long enough for the rollback's flow to reach the lock (or, before, to finish it)
            (folder / "resume").touch()
        else:
            second = scenario.start("rollback", "--config", config, "--reason", f"after {step}")
        codes.append([first.wait(timeout=600), second.wait(timeout=600)])
    with scenario.warehouse() as connection:
        rows = connection.execute("select action, details from retrain_ledger order by at, id").fetchall()
        locks = connection.execute("select count(*) from retrain_locks").fetchone()[0]
    transitions = [json.loads(details or "{}").get("transition") for _, details in rows]
    repeated = sum(count > 1 for count in _counts([t for t in transitions if t]).values())
    replayed: dict[str, str | None] = {"champion": "1"}
    for _, details in rows:
        replayed.update(json.loads(details or "{}").get("moves", {}))
    _, status, _ = scenario.run("status", "--config", config)
    aliases = {alias: version for alias, version in outcome(status).get("aliases", {}).items() if version}
    return {"rounds paused mid-transition": f"{paused_rounds} of {len(PROMOTION_STEPS)}",
            "exit codes (promote, rollback)": codes,
            "transition ids in the ledger more than once": repeated,
            "ledger replay gives the aliases": {k: v for k, v in replayed.items() if v} == aliases,
            "live transitions status called interrupted": called_interrupted,
            "lock rows left in retrain_locks": locks}


def _counts(values: list[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    return counts


def _last_line(text: str) -> str:
    """The last line that reads like an error (else the last line): why a process ended."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower() or "exception" in line.lower()]
    return (errors or lines or [""])[-1][:200]


def _count(database: Path, query: str) -> int | str:
    if not database.exists():
        return "no database"
    with sqlite3.connect(database) as connection:
        try:
            return int(connection.execute(query).fetchone()[0])
        except sqlite3.OperationalError as error:
            return f"n/a ({error})"


def _finished_trials(home: Path) -> int:
    value = _count(home / "optuna.db", "select count(*) from trials where state in ('COMPLETE', 'PRUNED')")
    return value if isinstance(value, int) else 0


def _repeated_parameters(home: Path) -> int | str:
    """Trials of one study whose whole parameter set equals an earlier trial's."""
    database = home / "optuna.db"
    if not database.exists():
        return "no database"
    with sqlite3.connect(database) as connection:
        rows = connection.execute(
            "select t.study_id, t.trial_id, p.param_name, p.param_value from trials t "
            "join trial_params p on p.trial_id = t.trial_id order by t.trial_id, p.param_name"
        ).fetchall()
    sets: dict[tuple[int, int], list[tuple[str, float]]] = {}
    for study, trial, name, value in rows:
        sets.setdefault((study, trial), []).append((name, value))
    seen: set[tuple[int, tuple[tuple[str, float], ...]]] = set()
    repeated = 0
    for (study, _), params in sorted(sets.items()):
        signature = (study, tuple(params))
        repeated += signature in seen
        seen.add(signature)
    return repeated


def _processes_in_group(group: int) -> list[int]:
    result = subprocess.run(["pgrep", "-g", str(group)], capture_output=True, text=True, check=False)
    return [int(pid) for pid in result.stdout.split()]


SCENARIOS: dict[str, Callable[[Scenario], dict[str, object]]] = {
    "two-ingests": two_ingests,
    "two-trainings": two_trainings,
    "shared-source": shared_source,
    "password": password,
    "kill-in-tuning": kill_in_tuning,
    "late-rows": late_rows,
    "refused-thrice": refused_thrice,
    "kill-serve": kill_serve,
    "interleaved-releases": interleaved_releases,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenarios", nargs="*", help=f"some of {', '.join(SCENARIOS)} (default: all)")
    parser.add_argument("--repo", type=Path, default=Path(__file__).resolve().parents[1],
                        help="checkout to test (its .venv/bin/retrain and examples/)")
    arguments = parser.parse_args()
    unknown = sorted(set(arguments.scenarios) - set(SCENARIOS))
    if unknown:
        parser.error(f"unknown scenario(s) {unknown}: choose from {list(SCENARIOS)}")
    print(f"checkout: {arguments.repo}")
    for name in arguments.scenarios or SCENARIOS:
        scenario = Scenario(arguments.repo.resolve())
        started = time.monotonic()
        figures = SCENARIOS[name](scenario)
        print(f"{name} ({time.monotonic() - started:.0f} s, data in {scenario.home}):")
        for label, value in figures.items():
            print(f"  {label:<50} {value}")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
