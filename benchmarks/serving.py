"""Our prediction server against `mlflow models serve`, same model, same bodies, same load, one run.

    .venv/bin/python benchmarks/serving.py [--home DIR] [--concurrency 8] [--requests 3000]
    .venv/bin/python benchmarks/serving.py --fsync never,interval,always --before /path/to/older/checkout

`--fsync` runs ours once per journal fsync policy (`journal_fsync`: every answered prediction is journaled
before it is answered; the policies differ in what survives a machine crash), and `--before` adds the
`retrain serve` of another checkout (e.g. one without the journal), so the journal's cost is read off one run.

Trains the flights example once into DIR (default: a fresh temporary folder; `retrain load-example` and
`retrain train --trials 2`), starts `retrain serve` and `mlflow models serve -m models:/NAME@champion
--env-manager local` on loopback, and drives each in turn from a separate load process (asyncio, HTTP/1.1
keep-alive, a fixed number of connections and requests) with the identical MLflow scoring bodies on
/invocations: single-record and 100-record requests. Ours logs every prediction meanwhile; the run checks
that the log holds one row per predicted record. Prints throughput, p50 and p99 per server and the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BIN = REPO / ".venv" / "bin"
CONFIG = REPO / "examples" / "flights.yaml"


# ----------------------------------------------------------------------------------------- load process


async def drive(host: str, port: int, bodies: list[bytes], concurrency: int, count: int) -> dict[str, Any]:
    """`count` POSTs to /invocations over `concurrency` keep-alive connections; latency of each, errors."""
    latencies: list[float] = []
    errors = 0
    next_index = 0

    async def connection() -> None:
        nonlocal next_index, errors
        reader, writer = await asyncio.open_connection(host, port)
        while next_index < count:
            body = bodies[next_index % len(bodies)]
            next_index += 1
            request = (f"POST /invocations HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                       f"Content-Length: {len(body)}\r\n\r\n").encode() + body
            started = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - started)
            if not head.startswith(b"HTTP/1.1 200"):
                errors += 1
        writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(connection() for _ in range(concurrency)))
    seconds = time.perf_counter() - started
    latencies.sort()
    return {
        "requests": len(latencies),
        "errors": errors,
        "seconds": round(seconds, 2),
        "throughput": round(len(latencies) / seconds, 1),
        "p50_ms": round(latencies[len(latencies) // 2] * 1000, 2),
        "p99_ms": round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 2),
    }


def load_main(arguments: list[str]) -> None:
    """Entry of the load process: `--load HOST PORT BODIES_FILE CONCURRENCY COUNT`, prints one JSON line."""
    host, port, path, concurrency, count = arguments
    bodies = [line.encode() for line in Path(path).read_text().splitlines()]
    print(json.dumps(asyncio.run(drive(host, int(port), bodies, int(concurrency), int(count)))))


def run_load(port: int, bodies_file: Path, concurrency: int, count: int) -> dict[str, Any]:
    warm = subprocess.run([sys.executable, __file__, "--load", "127.0.0.1", str(port), str(bodies_file),
                           str(concurrency), str(min(count, 300))], capture_output=True, text=True, check=True)
    del warm
    result = subprocess.run([sys.executable, __file__, "--load", "127.0.0.1", str(port), str(bodies_file),
                             str(concurrency), str(count)], capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------------ setup


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_up(port: int, path: str, seconds: float = 120) -> None:
    import httpx

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}{path}", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"server on port {port} did not answer {path} in {seconds} s")


def train_example(environment: dict[str, str]) -> None:
    retrain = str(BIN / "retrain")
    for command in ([retrain, "load-example", "--config", str(CONFIG), "--until", "2013-04-01", "--json"],
                    [retrain, "train", "--config", str(CONFIG), "--trials", "2", "--json"]):
        subprocess.run(command, env=environment, check=True, capture_output=True, text=True)


def write_bodies(home: Path, folder: Path, size: int, count: int) -> Path:
    """Request bodies of `size` raw table rows each, as a client reads them from the table."""
    import pandas as pd
    import sqlalchemy as sa
    import yaml

    config = yaml.safe_load(CONFIG.read_text())
    columns = config["features"]["numeric"] + config["features"]["categorical"]
    engine = sa.create_engine(f"sqlite:///{home / 'warehouse.db'}")
    rows = pd.read_sql(sa.text(f"select {', '.join(columns)} from flights limit {size * count}"), engine)
    records = json.loads(rows.to_json(orient="records"))
    path = folder / f"bodies-{size}.jsonl"
    lines = [json.dumps({"dataframe_records": records[i * size:(i + 1) * size]}) for i in range(count)]
    path.write_text("\n".join(lines))
    return path


def logged_rows(home: Path) -> int:
    import sqlalchemy as sa

    engine = sa.create_engine(f"sqlite:///{home / 'warehouse.db'}")
    if not sa.inspect(engine).has_table("retrain_predictions"):
        return 0
    with engine.connect() as connection:
        return int(connection.execute(sa.text("select count(*) from retrain_predictions")).scalar() or 0)


def start(command: list[str], environment: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(command, env=environment, stdout=log.open("wb"), stderr=subprocess.STDOUT)


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=40)
    except subprocess.TimeoutExpired:
        process.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=None, help="RETRAIN_HOME with a trained model (else trains).")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--requests", type=int, default=3000, help="Single-record requests per server.")
    parser.add_argument("--batch-requests", type=int, default=300, help="100-record requests per server.")
    parser.add_argument("--fsync", default="interval",
                        help="Comma-separated journal_fsync policies to run ours with (never, interval, always).")
    parser.add_argument("--before", type=Path, default=None,
                        help="Another checkout whose `retrain serve` (its .venv) runs too, for a before/after.")
    options = parser.parse_args()
    home = options.home or Path(tempfile.mkdtemp(prefix="retrain-bench-serving-")) / "home"
    environment = {key: value for key, value in os.environ.items() if not key.startswith(("RETRAIN_", "MLFLOW_"))}
    environment.update({"RETRAIN_HOME": str(home), "PATH": f"{BIN}:{environment.get('PATH', '')}",
                        "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"})
    if not (home / "mlflow.db").exists():
        print(f"training the example model into {home} ...", file=sys.stderr)
        train_example(environment)
    folder = home / "benchmark"
    folder.mkdir(exist_ok=True)
    bodies = {1: write_bodies(home, folder, 1, 1000), 100: write_bodies(home, folder, 100, 30)}
    counts = {1: options.requests, 100: options.batch_requests}
    policies = [policy.strip() for policy in options.fsync.split(",") if policy.strip()]
    servers: dict[str, tuple[subprocess.Popen[bytes], int, str]] = {}
    for policy in policies:
        port = free_port()
        name = "retrain serve" if len(policies) == 1 else f"retrain serve, fsync {policy}"
        servers[name] = (start([str(BIN / "retrain"), "serve", "--config", str(CONFIG), "--port", str(port)],
                               {**environment, "RETRAIN_JOURNAL_FSYNC": policy},
                               folder / f"retrain-serve-{policy}.log"), port, "/ready")
    if options.before is not None:
        port = free_port()
        before_bin = options.before.resolve() / ".venv" / "bin"
        servers["retrain serve (before)"] = (
            start([str(before_bin / "retrain"), "serve", "--config", str(options.before.resolve() / "examples" /
                                                                          "flights.yaml"), "--port", str(port)],
                  {**environment, "PATH": f"{before_bin}:{environment['PATH']}"}, folder / "retrain-before.log"),
            port, "/ready")
    mlflow_port = free_port()
    servers["mlflow models serve"] = (
        start([str(BIN / "mlflow"), "models", "serve", "-m", "models:/flights-delay@champion", "--env-manager",
               "local", "-h", "127.0.0.1", "-p", str(mlflow_port)],
              {**environment, "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}"}, folder / "mlflow-serve.log"),
        mlflow_port, "/ping")
    results: dict[tuple[str, int], dict[str, Any]] = {}
    try:
        for _, port, path in servers.values():
            wait_until_up(port, path)
        before = logged_rows(home)
        for size in (1, 100):
            for name, (_, port, _) in servers.items():
                results[name, size] = run_load(port, bodies[size], options.concurrency, counts[size])
        time.sleep(3)  # the log's writer flushes within a second
        logged = logged_rows(home) - before
    finally:
        for process, _, _ in servers.values():
            stop(process)
    cores = os.cpu_count()
    load = os.getloadavg()
    print(f"{cores} cores, load average {load[0]:.1f} at the end; concurrency {options.concurrency}; "
          "server and load generator on this machine")
    print(f"{'server':34} {'records':>7} {'requests':>8} {'errors':>6} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7}")
    for (name, size), result in results.items():
        print(f"{name:34} {size:>7} {result['requests']:>8} {result['errors']:>6} {result['throughput']:>8} "
              f"{result['p50_ms']:>7} {result['p99_ms']:>7}")
    ours = [name for name in servers if name.startswith("retrain serve")]
    for size in (1, 100):
        for name in ours:
            ratio = results[name, size]["throughput"] / results["mlflow models serve", size]["throughput"]
            print(f"throughput ratio {name}/mlflow, {size} record(s) per request: {ratio:.2f}x")
    expected = len(ours) * sum((counts[size] + min(counts[size], 300)) * size for size in (1, 100))
    print(f"prediction log: {logged} rows written during the run, {expected} records predicted by ours")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--load":
        load_main(sys.argv[2:])
    else:
        main()
