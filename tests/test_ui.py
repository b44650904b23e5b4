"""`retrain ui` (what `make ui` runs) opens the three UIs on a project's stores; a real browser finds in each what the
README says to look at: the model's flow runs in Prefect, its training runs in MLflow's model-training view, and a
dashboard panel with data in Evidently. Screenshots are kept as test artifacts (and written to `docs/ui/` with
RETRAIN_UPDATE_SCREENSHOTS=1, which is how the README's pictures are made)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from retrain.cli.ui import MLFLOW_TRAINING_VIEW, ui_services
from retrain.settings import Settings
from tests.conftest import REPO, write_model_config
from tests.monitoring.test_browser import HEADLESS

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def test_the_three_services_point_at_the_projects_stores(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    prefect, mlflow, evidently = ui_services(settings, 14200, 15000, 18001)
    assert prefect.url == "http://127.0.0.1:14200/" and prefect.environment["PREFECT_HOME"] == str(tmp_path / "prefect")
    assert prefect.environment["PREFECT_UI_API_URL"] == "http://127.0.0.1:14200/api"  # the UI calls its own port
    assert mlflow.url.endswith(MLFLOW_TRAINING_VIEW) and f"sqlite:///{tmp_path / 'mlflow.db'}" in mlflow.command
    assert "--workers" in mlflow.command and mlflow.environment["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    assert str(tmp_path / "evidently") in evidently.command and "127.0.0.1" in evidently.command
    served = ui_services(Settings(home=tmp_path, mlflow_tracking_uri="http://mlflow.internal:5000"), 1, 2, 3,
                         prefect_api="http://prefect.internal:4200/api")
    assert [service.command for service in served[:2]] == [(), ()]  # servers already: only their URLs
    assert served[0].url == "http://prefect.internal:4200/" and served[1].url.startswith("http://mlflow.internal")


def own_environment(home: Path) -> dict[str, str]:
    """A user's shell: no Prefect settings of the test session (its server, its home), so the commands keep their
    runs under `home` and `retrain ui` starts Prefect on that home, as `make ui` does after `make demo`."""
    kept = {name: value for name, value in os.environ.items() if not name.startswith("PREFECT_")}
    return {**kept, "RETRAIN_HOME": str(home)}


def cli(*args: str, home: Path) -> dict:
    result = subprocess.run([sys.executable, "-m", "retrain.cli", *args, "--json"], cwd=REPO, capture_output=True,
                            text=True, timeout=900, env=own_environment(home), check=False)
    assert result.returncode in (0, 1), result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def page(url: str, screenshot: Path, expected: str) -> str:
    """The page a real browser draws at `url` once its scripts ran, holding `expected` (a busy server can take
    several loads to answer every request of a single-page app), and a screenshot of it."""
    assert CHROMIUM is not None
    dom = ""
    for budget in (30_000, 60_000, 90_000):
        dom = subprocess.run([CHROMIUM, *HEADLESS, f"--virtual-time-budget={budget}", "--dump-dom", url],
                             capture_output=True, text=True, timeout=300, check=False).stdout
        if expected in dom:
            break
    subprocess.run([CHROMIUM, *HEADLESS, f"--virtual-time-budget={budget}", f"--screenshot={screenshot}", url],
                   capture_output=True, timeout=300, check=False)
    assert screenshot.is_file() and screenshot.stat().st_size > 10_000
    return dom


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (Debian: apt-get install -y chromium)")
def test_make_ui_shows_the_model_in_each_ui(tmp_path: Path) -> None:
    home = tmp_path / "home"
    config = str(write_model_config(tmp_path, training_window={"lookback": "21d"}, monitoring={"window": "7d"}))
    cli("load-example", "--config", config, "--until", "2013-02-01", home=home)
    cli("train", "--config", config, "--as-of", "2013-01-22", "--trials", "2", home=home)
    cli("monitor", "--config", config, "--as-of", "2013-02-01", home=home)
    ports = {"prefect": 24200, "mlflow": 25000, "evidently": 28001}
    process = subprocess.Popen(
        [sys.executable, "-m", "retrain.cli", "ui", "--prefect-port", str(ports["prefect"]), "--mlflow-port",
         str(ports["mlflow"]), "--evidently-port", str(ports["evidently"]), "--json"],
        cwd=REPO, env=own_environment(home), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    shots = REPO / "docs" / "ui" if os.environ.get("RETRAIN_UPDATE_SCREENSHOTS") else tmp_path
    shots.mkdir(parents=True, exist_ok=True)
    try:
        urls = json.loads(process.stdout.readline())["urls"]  # printed once all three answer
        assert set(urls) == {"prefect", "mlflow", "evidently"}
        run = "flights-delay monitor 2013-02-01"  # the runs are named after model and instant
        assert run in page(f"http://127.0.0.1:{ports['prefect']}/runs", shots / "prefect.png", run)
        experiment = httpx.get(f"http://127.0.0.1:{ports['mlflow']}/api/2.0/mlflow/experiments/get-by-name",
                               params={"experiment_name": "flights-delay"}).json()["experiment"]["experiment_id"]
        run = "flights-delay 2013-01-22"  # the training run, in the model-training view
        assert run in page(f"http://127.0.0.1:{ports['mlflow']}/#/experiments/{experiment}/runs?workflowType="
                           "machine_learning", shots / "mlflow.png", run)
        project = httpx.get(f"http://127.0.0.1:{ports['evidently']}/api/projects").json()[0]
        dashboard = page(f"http://127.0.0.1:{ports['evidently']}/projects/{project['id']}", shots / "evidently.png",
                         "version 1")
        assert "Live MAE per version" in dashboard and "version 1" in dashboard  # a panel drawn with its data
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(120)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    assert process.returncode == 0
    time.sleep(1)
    with pytest.raises(httpx.HTTPError):  # Ctrl-C stopped all three
        httpx.get(f"http://127.0.0.1:{ports['evidently']}/api/version", timeout=2)
