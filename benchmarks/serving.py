"""Our prediction server against `mlflow models serve` and against two ceilings, same model, same bodies, one run.

    .venv/bin/python benchmarks/serving.py [--home DIR] [--concurrency 8] [--requests 3000]
    .venv/bin/python benchmarks/serving.py --fsync never,interval,always --before /path/to/older/checkout
    .venv/bin/python benchmarks/serving.py --inline-variants   # inference all on the event loop / all in the pool

Request sizes 1, 10, 100 and 1,000 records (MLflow's `dataframe_records`), prediction logging on (every record
journaled before its answer, then shipped to the warehouse; the run checks the log holds one row per record).
Two ceilings, measured in the same run on the same bodies: the HTTP limit (a bare uvicorn endpoint that reads the
body and returns a constant: what this machine's HTTP stack costs per request) and the model limit (LightGBM's own
`Booster.predict` on the same rows, already encoded, in this process: default threads and one thread). Ours is
reported as a share of each, with p50/p99 latency and rows/s per size.

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


# --------------------------------------------------------------------------------------------- ceilings


async def constant_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The HTTP ceiling: read the whole body, answer a constant (no parsing, no model, no log)."""
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    body = b'{"predictions": [0.0]}'
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def constant_main(port: str) -> None:
    """Entry of the HTTP-ceiling process: `--constant PORT` (uvicorn as `retrain serve` runs it, access log off)."""
    import uvicorn

    uvicorn.run(constant_app, host="127.0.0.1", port=int(port), access_log=False, log_level="warning")


def model_ceiling(home: Path, sizes: list[int], rows: list[dict[str, Any]]) -> dict[tuple[int, str], float]:
    """Rows/s of the champion's own booster on the same rows, encoded beforehand: (size, threads) -> rows/s."""
    import mlflow
    import pandas as pd

    from retrain.model_package import encode_rows

    mlflow.set_tracking_uri(f"sqlite:///{home / 'mlflow.db'}")
    python_model = mlflow.pyfunc.load_model("models:/flights-delay@champion").unwrap_python_model()
    frame = pd.DataFrame(rows)
    matrix = encode_rows(frame, python_model.encoding).to_numpy()
    figures: dict[tuple[int, str], float] = {}
    for size in sizes:
        for label, parameters in (("default threads", {}), ("1 thread", {"num_threads": 1})):
            batch = matrix[:size]
            repeats = max(20, 20_000 // size)
            for _ in range(5):
                python_model.booster.predict(batch, **parameters)
            started = time.perf_counter()
            for _ in range(repeats):
                python_model.booster.predict(batch, **parameters)
            figures[size, label] = size * repeats / (time.perf_counter() - started)
    return figures


# ------------------------------------------------------------------------------------------------ bodies


def feature_rows(home: Path, count: int) -> list[dict[str, Any]]:
    """Raw table rows of the model's features, as a client reads them from the table."""
    import pandas as pd
    import sqlalchemy as sa
    import yaml

    config = yaml.safe_load(CONFIG.read_text())
    columns = config["features"]["numeric"] + config["features"]["categorical"]
    engine = sa.create_engine(f"sqlite:///{home / 'warehouse.db'}")
    rows = pd.read_sql(sa.text(f"select {', '.join(columns)} from flights limit {count}"), engine)
    return json.loads(rows.to_json(orient="records"))


def write_bodies(home: Path, folder: Path, size: int, count: int) -> Path:
    """Request bodies of `size` raw table rows each, as a client reads them from the table."""
    records = feature_rows(home, size * count)
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


def start(
    command: list[str], environment: dict[str, str], log: Path, cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(command, env=environment, stdout=log.open("wb"), stderr=subprocess.STDOUT, cwd=cwd)


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=40)
    except subprocess.TimeoutExpired:
        process.kill()


SIZES = [1, 10, 100, 1000]


def main() -> None:  # noqa: PLR0912, PLR0915 - one run, several servers, one table
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=None, help="RETRAIN_HOME with a trained model (else trains).")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--requests", type=int, default=3000,
                        help="Single-record requests per server; larger sizes get fewer (10: 1/2, 100: 1/10, "
                             "1,000: 1/50).")
    parser.add_argument("--fsync", default="interval",
                        help="Comma-separated journal_fsync policies to run ours with (never, interval, always).")
    parser.add_argument("--before", type=Path, default=None,
                        help="Another checkout whose `retrain serve` (its .venv) runs too, for a before/after.")
    parser.add_argument("--inline-variants", action="store_true",
                        help="Also run ours with every request on the event loop and every request in the pool.")
    parser.add_argument("--no-mlflow", action="store_true", help="Leave `mlflow models serve` out.")
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
    counts = {1: options.requests, 10: max(options.requests // 2, 50), 100: max(options.requests // 10, 30),
              1000: max(options.requests // 50, 20)}
    bodies = {size: write_bodies(home, folder, size, min(counts[size], 30 if size >= 100 else 1000))
              for size in SIZES}
    policies = [policy.strip() for policy in options.fsync.split(",") if policy.strip()]
    ours: dict[str, dict[str, str]] = {}
    for policy in policies:
        name = "retrain serve" if len(policies) == 1 else f"retrain serve, fsync {policy}"
        ours[name] = {"RETRAIN_JOURNAL_FSYNC": policy}
    if options.inline_variants:
        ours["retrain serve, all on the loop"] = {"RETRAIN_SERVE_INLINE_RECORDS": "1000000"}
        ours["retrain serve, all in the pool"] = {"RETRAIN_SERVE_INLINE_RECORDS": "0"}
    servers: dict[str, tuple[subprocess.Popen[bytes], int, str]] = {}
    for index, (name, extra) in enumerate(ours.items()):
        port = free_port()
        servers[name] = (start([str(BIN / "retrain"), "serve", "--config", str(CONFIG), "--port", str(port)],
                               {**environment, **extra}, folder / f"retrain-serve-{index}.log"), port, "/ready")
    if options.before is not None:
        port = free_port()
        before_bin = options.before.resolve() / ".venv" / "bin"
        before_bin = before_bin if (before_bin / "retrain").exists() else BIN
        servers["retrain serve (before)"] = (
            start([str(BIN / "python"), "-m", "retrain.cli", "serve", "--config",
                   str(options.before.resolve() / "examples" / "flights.yaml"), "--port", str(port)],
                  {**environment, "PATH": f"{before_bin}:{environment['PATH']}"}, folder / "retrain-before.log",
                  cwd=options.before.resolve()),
            port, "/ready")
    port = free_port()
    servers["HTTP ceiling (uvicorn, constant)"] = (
        start([str(BIN / "python"), __file__, "--constant", str(port)], environment, folder / "constant.log"),
        port, "/ready")
    if not options.no_mlflow:
        mlflow_port = free_port()
        servers["mlflow models serve"] = (
            start([str(BIN / "mlflow"), "models", "serve", "-m", "models:/flights-delay@champion", "--env-manager",
                   "local", "-h", "127.0.0.1", "-p", str(mlflow_port)],
                  {**environment, "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}"},
                  folder / "mlflow-serve.log"),
            mlflow_port, "/ping")
    results: dict[tuple[str, int], dict[str, Any]] = {}
    predicted = 0
    try:
        for _, port, path in servers.values():
            wait_until_up(port, path)
        before = logged_rows(home)
        for size in SIZES:
            for name, (_, port, _) in servers.items():
                results[name, size] = run_load(port, bodies[size], options.concurrency, counts[size])
                if name in ours or name == "retrain serve (before)":
                    predicted += (counts[size] + min(counts[size], 300)) * size
        deadline = time.monotonic() + 120  # the log's writer ships within a second on a quiet machine
        while (logged := logged_rows(home) - before) < predicted and time.monotonic() < deadline:
            time.sleep(1)
    finally:
        for process, _, _ in servers.values():
            stop(process)
    model = model_ceiling(home, SIZES, feature_rows(home, max(SIZES)))
    load = os.getloadavg()
    print(f"{os.cpu_count()} cores, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at the end; concurrency "
          f"{options.concurrency}; servers and load generator on this machine; prediction logging on")
    print(f"{'server':36} {'records':>7} {'requests':>8} {'errors':>6} {'req/s':>8} {'rows/s':>9} {'p50 ms':>7} "
          f"{'p99 ms':>7}")
    for (name, size), result in results.items():
        print(f"{name:36} {size:>7} {result['requests']:>8} {result['errors']:>6} {result['throughput']:>8} "
              f"{result['throughput'] * size:>9,.0f} {result['p50_ms']:>7} {result['p99_ms']:>7}")
    print(f"{'model ceiling (Booster.predict)':36} {'records':>7} {'default threads rows/s':>24} "
          f"{'1 thread rows/s':>17}")
    for size in SIZES:
        print(f"{'':36} {size:>7} {model[size, 'default threads']:>24,.0f} {model[size, '1 thread']:>17,.0f}")
    http = "HTTP ceiling (uvicorn, constant)"
    for name in [*ours, *(["retrain serve (before)"] if options.before else [])]:
        for size in SIZES:
            rows = results[name, size]["throughput"] * size
            shares = [f"{rows / (results[http, size]['throughput'] * size):.0%} of the HTTP ceiling",
                      f"{rows / max(model[size, 'default threads'], model[size, '1 thread']):.1%} of the model's"]
            if "mlflow models serve" in servers:
                ratio = results[name, size]["throughput"] / results["mlflow models serve", size]["throughput"]
                shares.append(f"{ratio:.2f}x mlflow models serve")
            print(f"{name}, {size} record(s): {rows:,.0f} rows/s = " + ", ".join(shares))
        one = results[name, 1]["throughput"]
        print(f"{name}: rows/s at 100 records / rows/s at 1 record = "
              f"{results[name, 100]['throughput'] * 100 / one:.1f}x (target >= 5x)")
    print(f"prediction log: {logged} rows written to the warehouse, {predicted} records predicted by ours "
          "(every one journaled before its answer)")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--load":
        load_main(sys.argv[2:])
    elif len(sys.argv) > 1 and sys.argv[1] == "--constant":
        constant_main(sys.argv[2])
    else:
        main()
