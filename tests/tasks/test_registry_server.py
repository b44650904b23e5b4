"""With an MLflow tracking server, models live where the server says: a training on one machine (one
RETRAIN_HOME) registers a champion that another (another RETRAIN_HOME) loads through the server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from retrain.prefect_server import free_port
from tests.conftest import write_model_config
from tests.retrain.test_cli_outages import PASSWORD, RETRAIN, command_environment, password_hits_under

MLFLOW = str(Path(sys.executable).parent / "mlflow")
LOAD_CHAMPION = """
import json, mlflow
model = mlflow.pyfunc.load_model("models:/flights-delay@champion")
predictions = model.predict(model.input_example)
experiment = mlflow.get_experiment_by_name("flights-delay")
print(json.dumps({"rows": len(predictions), "artifact_location": experiment.artifact_location}))
"""


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """`mlflow server` on loopback with its own backend and artifact store; yields its URL and artifact folder."""
    folder = tmp_path / "mlflow-server"
    folder.mkdir()
    port = free_port()
    environment = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    command = [
        MLFLOW, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
        "--artifacts-destination", str(folder / "artifacts"), "--serve-artifacts",
    ]
    with open(folder / "server.log", "wb") as log:
        server = subprocess.Popen(command, env=environment, stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert server.poll() is None, (folder / "server.log").read_text()
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        else:
            pytest.fail("mlflow server did not start within 90 s")
        yield url, folder
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


@pytest.mark.slow
def test_a_champion_trained_on_one_machine_loads_on_another_through_the_server(
    tmp_path: Path, mlflow_server: tuple[str, Path]
) -> None:
    url, server_folder = mlflow_server
    config = write_model_config(tmp_path)
    trainer = tmp_path / "trainer"
    environment = command_environment(trainer, RETRAIN_MLFLOW_TRACKING_URI=url.replace("//", f"//user:{PASSWORD}@"))
    for args in (["load-example", "--config", str(config), "--until", "2013-01-25"],
                 ["train", "--config", str(config), "--trials", "2", "--json"]):
        result = subprocess.run([RETRAIN, *args], env=environment, cwd=tmp_path, capture_output=True, text=True,
                                timeout=600, check=False)
        assert result.returncode == 0, result.stderr[-3000:]
        assert PASSWORD not in result.stdout + result.stderr
    assert json.loads(result.stdout)["decision"] == "champion"
    assert not (trainer / "mlartifacts").exists()  # nothing of the model stayed on the training machine
    assert any((server_folder / "artifacts").rglob("MLmodel"))

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    loader = command_environment(elsewhere, MLFLOW_TRACKING_URI=url)
    loaded = subprocess.run([sys.executable, "-c", LOAD_CHAMPION], env=loader, cwd=elsewhere, capture_output=True,
                            text=True, timeout=300, check=False)
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    answer = json.loads(loaded.stdout.strip().splitlines()[-1])
    assert answer["rows"] > 0 and answer["artifact_location"].startswith("mlflow-artifacts:")
    assert password_hits_under(server_folder) == []  # not in the server's runs, tags, params or artifacts
