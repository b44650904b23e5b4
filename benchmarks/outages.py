"""Figures for outages and kills, measured on real processes: run on demand, never in `make test`.

1. `retrain train` against an unreachable MLflow whose URI carries a password (MLflow's own retry settings
   left as the user has them): seconds to fail, exit code, and how often the password shows on
   stdout/stderr and anywhere under PREFECT_HOME.
2. The training flow run directly, as a worker runs it (no CLI in front): the same figures.
3. `kill -9` of `retrain train` mid-tuning: how long its temporary Prefect server outlives it.

    .venv/bin/python benchmarks/outages.py
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PASSWORD = "S3cretPW42"
UNREACHABLE_MLFLOW = f"http://user:{PASSWORD}@127.0.0.1:9"


def environment(home: Path, **extra: str) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("RETRAIN_", "PREFECT_", "MLFLOW_"))}
    return {**clean, "RETRAIN_HOME": str(home), "PREFECT_HOME": str(home / "prefect"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1", **extra}


def model_config(folder: Path, trials: int) -> Path:
    raw = yaml.safe_load((REPO / "examples" / "flights.yaml").read_text())
    raw["training_window"] = {"start": "2013-01-01", "end": "2013-01-25"}
    raw["tuning"] = {"trials": trials, "seed": 7, "max_rounds": 400}
    raw["contract"] = "flights.contract.yaml"
    shutil.copy(REPO / "examples" / "flights.contract.yaml", folder / "flights.contract.yaml")
    path = folder / "model.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def password_hits(text: str, folder: Path) -> tuple[int, int]:
    """Occurrences in `text`, and files under `folder` holding it (as bytes or base64-encoded)."""
    files = 0
    for path in (p for p in folder.rglob("*") if p.is_file()) if folder.exists() else ():
        data = path.read_bytes()
        try:
            decoded = base64.b64decode(b"".join(data.split()), validate=False)
        except (binascii.Error, ValueError):
            decoded = b""
        files += PASSWORD.encode() in data or PASSWORD.encode() in decoded
    return text.count(PASSWORD), files


def timed(args: list[str], env: dict[str, str], cwd: Path) -> tuple[float, int, str]:
    started = time.perf_counter()
    result = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=900, check=False)
    return time.perf_counter() - started, result.returncode, result.stdout + result.stderr


def server_lifetime_after_kill(folder: Path) -> float | None:
    """Seconds the temporary server lived after `kill -9` of its command (None: still alive after 120 s)."""
    home = folder / "kill"
    config = model_config(folder, trials=200)
    env = environment(home)
    subprocess.run([BIN / "retrain", "load-example", "--config", config, "--until", "2013-01-25"], env=env,
                   cwd=folder, capture_output=True, timeout=300, check=True)
    training = subprocess.Popen([BIN / "retrain", "train", "--config", config, "--json"], env=env, cwd=folder,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    server = None
    for line in training.stderr:
        match = re.search(r"temporary Prefect server http://127\.0\.0\.1:(\d+)", line)
        if match:
            found = subprocess.run(["pgrep", "-P", str(training.pid), "-f", f"port {match.group(1)}"],
                                   capture_output=True, text=True, check=False).stdout.split()
            server = int(found[0]) if found else None
        if "tune-hyperparameters" in line:
            break
    if server is None:  # Prefect's own temporary server: any uvicorn child of the command
        found = subprocess.run(["pgrep", "-P", str(training.pid), "-f", "uvicorn"], capture_output=True, text=True,
                               check=False).stdout.split()
        server = int(found[0]) if found else None
    training.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    training.wait()
    if server is None:
        return 0.0
    while time.monotonic() - killed < 120:
        if not Path(f"/proc/{server}").exists():
            return time.monotonic() - killed
        time.sleep(0.1)
    os.kill(server, signal.SIGKILL)
    return None


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="retrain-outages-") as name:
        folder = Path(name)
        home = folder / "home"
        config = model_config(folder, trials=1)
        subprocess.run([BIN / "retrain", "load-example", "--config", config, "--until", "2013-01-25"],
                       env=environment(home), cwd=folder, capture_output=True, timeout=300, check=True)
        down = environment(home, RETRAIN_MLFLOW_TRACKING_URI=UNREACHABLE_MLFLOW)

        seconds, code, output = timed([str(BIN / "retrain"), "train", "--config", str(config), "--json"], down,
                                      folder)
        printed, stored = password_hits(output, home / "prefect")
        print(f"CLI, MLflow down:    {seconds:6.1f} s to fail, exit {code}, password printed {printed}x, "
              f"in {stored} file(s) under PREFECT_HOME")

        script = f"from flows.training import train_model\ntrain_model(config_path={str(config)!r}, trials=1)\n"
        seconds, code, output = timed([sys.executable, "-c", script], down, REPO)
        printed, stored = password_hits(output, home / "prefect")
        print(f"worker, MLflow down: {seconds:6.1f} s to fail, exit {code}, password printed {printed}x, "
              f"in {stored} file(s) under PREFECT_HOME")

        lifetime = server_lifetime_after_kill(folder)
        after = "still alive after 120 s (killed by this script)" if lifetime is None else f"{lifetime:.1f} s"
        print(f"kill -9 of `retrain train`: its temporary Prefect server outlived it by {after}")


if __name__ == "__main__":
    main()
