"""How long the commands that run no flow take to answer, each in a fresh process, as a user types them.

    .venv/bin/python benchmarks/commands.py [--runs 5] [--before /path/to/older/checkout]

Sets up a fresh RETRAIN_HOME (the flights example loaded into the warehouse, the MLflow store created by a
first `retrain status`, the model config copied so `contract infer --force` writes beside the copy), then times
`retrain --help`, `retrain status`, `retrain failures` and `retrain contract infer` (each `--runs` times, the
median), beside two anchors measured in the same run: a bare `python -c pass` (the interpreter's start) and
`python -c "import mlflow"` (what any command reading the registry pays, whoever writes it), and the import of
MLflow's SQL registry store (what MLflow itself loads to read aliases from a database). Also prints which
heavy libraries each command imported (none of them should import Prefect, Optuna or pandera). Commands run as
`python -m retrain.cli ...` from the checkout's root; `--before` runs them from another checkout too (with this
virtual environment), so a before/after comes from one run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = REPO / ".venv" / "bin"
HEAVY = ("prefect", "optuna", "pandera", "mlflow", "lightgbm", "evidently", "pandas", "fastapi", "httpx")
TARGETS = {"status": 1.5}  # seconds (issue 19)

# Runs the console script's `main` in this interpreter, then says which heavy libraries it imported.
PROBE = """
import sys
sys.argv = ["retrain", *sys.argv[1:]]
from retrain.cli import main
try:
    main()
except SystemExit:
    pass
sys.stderr.write("LOADED " + " ".join(m for m in {heavy!r} if m in sys.modules) + "\\n")
"""


def timed_run(command: list[str], environment: dict[str, str], checkout: Path) -> float:
    started = time.perf_counter()
    subprocess.run(command, env=environment, cwd=checkout, check=True, capture_output=True)
    return time.perf_counter() - started


def loaded_modules(arguments: list[str], environment: dict[str, str], checkout: Path) -> str:
    result = subprocess.run([str(BIN / "python"), "-c", PROBE.format(heavy=HEAVY), *arguments], env=environment,
                            cwd=checkout, capture_output=True, text=True, check=False)
    lines = [line for line in result.stderr.splitlines() if line.startswith("LOADED")]
    return lines[-1].removeprefix("LOADED").strip() if lines else "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="Fresh processes per command (the median is shown).")
    parser.add_argument("--before", type=Path, default=None, help="Another checkout whose commands run too.")
    options = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="retrain-bench-commands-"))
    environment = {key: value for key, value in os.environ.items() if not key.startswith(("RETRAIN_", "MLFLOW_"))}
    environment.update({"RETRAIN_HOME": str(folder / "home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                        "DO_NOT_TRACK": "1"})
    config = folder / "flights.yaml"
    shutil.copy(REPO / "examples" / "flights.yaml", config)
    shutil.copy(REPO / "examples" / "flights.contract.yaml", folder / "flights.contract.yaml")
    retrain = str(BIN / "retrain")
    subprocess.run([retrain, "load-example", "--config", str(config), "--until", "2013-03-01", "--json"],
                   env=environment, check=True, capture_output=True)
    subprocess.run([retrain, "status", "--config", str(config), "--json"], env=environment, check=True,
                   capture_output=True)  # creates the MLflow store's tables once, as the first command of a home
    python = str(BIN / "python")
    cli = [python, "-m", "retrain.cli"]
    arguments = {
        "--help": ["--help"],
        "status": ["status", "--config", str(config), "--json"],
        "failures": ["failures", "--json"],
        "contract infer": ["contract", "infer", "--config", str(config), "--force", "--json"],
    }
    commands: dict[str, tuple[list[str], Path]] = {
        "python -c pass (anchor)": ([python, "-c", "pass"], REPO),
        "python -c 'import mlflow' (anchor)": ([python, "-c", "import mlflow"], REPO),
        # What MLflow alone loads to read a registry in a database (its SQL store, ORM models, alembic).
        "python -c 'import mlflow SQL registry'": ([python, "-c", "import mlflow.store.model_registry."
                                                    "sqlalchemy_store"], REPO),
    }
    checkouts = {"": REPO} | ({" (before)": options.before.resolve()} if options.before else {})
    for label, checkout in checkouts.items():
        for name, given in arguments.items():
            commands[f"retrain {name}{label}"] = ([*cli, *given], checkout)
    timings: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(options.runs):  # interleaved, so a busy neighbour slows every command alike
        for name, (command, checkout) in commands.items():
            timings[name].append(timed_run(command, environment, checkout))
    load = os.getloadavg()
    print(f"{os.cpu_count()} cores, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at the end; "
          f"median of {options.runs} fresh processes each")
    print(f"{'command':38} {'median s':>8} {'min s':>7} {'target':>7}  imports")
    for name, (command, checkout) in commands.items():
        seconds = timings[name]
        target = TARGETS.get(name.removeprefix("retrain ").removesuffix(" (before)"))
        shown = loaded_modules(command[3:], environment, checkout) if name.startswith("retrain") else ""
        print(f"{name:38} {statistics.median(seconds):8.2f} {min(seconds):7.2f} "
              f"{(f'<= {target}' if target else ''):>7}  {shown}")
    anchor = statistics.median(timings["python -c 'import mlflow' (anchor)"])
    for label in checkouts:
        status = statistics.median(timings[f"retrain status{label}"])
        print(f"retrain status{label} - import mlflow: {status - anchor:+.2f} s")
    shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
