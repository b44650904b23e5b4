"""The `retrain` CLI as a user drives it: one JSON object on stdout, exit codes that scripts can trust."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from retrain.cli import app
from tests.conftest import write_model_config

pytestmark = pytest.mark.usefixtures("prefect_harness")


def run(*args: str) -> tuple[int, dict]:
    result = CliRunner().invoke(app, [*args, "--json"])
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1, f"stdout must hold exactly one JSON line, got: {result.stdout!r}"
    return result.exit_code, json.loads(lines[0])
@pytest.mark.slow  # a long scenario (the suite stays under 8 minutes): `make test-all`


def test_train_as_of_then_nothing_new_is_skipped_then_a_gate_rejects(retrain_home: Path) -> None:
    config = str(write_model_config(retrain_home.parent, training_window={"lookback": "24d"}))
    # 19:00 in New York is midnight UTC: the newest row is the last one before the first training's as_of
    code, loaded = run("load-example", "--config", config, "--until", "2013-01-24T19:00:00")
    assert code == 0 and loaded["table"] == "flights" and loaded["rows"] == 20_543

    code, trained = run("train", "--config", config, "--as-of", "2013-01-25", "--trials", "2")
    assert code == 0, trained
    assert trained["decision"] == "champion" and trained["version"] == "1" and trained["run_id"]
    assert trained["window"] == {"start": "2013-01-01T00:00:00", "end": "2013-01-25T00:00:00",
                                 "as_of": "2013-01-25T00:00:00", "as_of_source": "given", "lookback": "24d"}
    assert trained["metric"]["name"] == "mae" and trained["metric"]["value"] < trained["baseline"]["mae"]
    assert set(trained["baseline"]) == set(trained["metrics"]) == {"mae", "rmse", "r2"}
    assert trained["trials"]["run_now"] == trained["trials"]["in_study"] == 2

    code, skipped = run("train", "--config", config, "--as-of", "2013-01-25", "--trials", "2")
    assert code == 0 and skipped["decision"] == "skipped" and skipped["version"] is None
    assert skipped["fingerprint"] == trained["fingerprint"] and skipped["same_as"]["version"] == "1"

    code, rejected = run("train", "--config", config, "--trials", "2", "--max-metric", "0.0001")
    assert code == 1
    assert rejected["decision"] == "rejected" and rejected["version"] is None and rejected["gate"] == "absolute"
    # The released champion was refitted on its whole window, holdout included: on these rows (the same window) it
    # scores in-sample, better than the gated model's holdout figure that `train` reported for it.
    assert trained["released_fit"] == "refit"
    assert rejected["threshold"] == 0.0001 and rejected["champion_metric"] < trained["metric"]["value"]
    assert rejected["window"]["as_of_source"] == "newest clean row"


def test_a_bad_as_of_is_a_usage_error(retrain_home: Path) -> None:
    config = str(write_model_config(retrain_home.parent))
    code, error = run("train", "--config", config, "--as-of", "next tuesday")
    assert code == 2 and error["error"] == "BadParameter" and "next tuesday" in error["message"]


@pytest.mark.parametrize(
    ("command", "option", "value"),
    [
        ("train", "--as-of", "0001-01-01T00:00+01:00"),  # an offset pushes it before year 1
        ("ingest", "--end", "9999-12-31T23:00-01:00"),  # ... or past year 9999
        ("ingest", "--start", "1500-01-01"),  # a date Python holds but pandas does not
        ("monitor", "--as-of", "2300-01-01T00:00Z"),
        ("release", "--as-of", "0001-01-01"),
        ("load-example", "--until", "0001-01-01"),
        ("failures", "--limit", "9" * 400),  # a number beyond what the option takes
        ("train", "--trials", "9" * 400),
    ],
)
def test_out_of_range_options_are_usage_errors_with_one_json_object(
    retrain_home: Path, command: str, option: str, value: str
) -> None:
    config = str(write_model_config(retrain_home.parent))
    arguments = [command] if command == "failures" else [command, "--config", config]
    result = CliRunner().invoke(app, [*arguments, option, value, "--json"])
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1, result.output
    error = json.loads(lines[0])
    assert result.exit_code == 2 and error["error"] == "BadParameter" and option in error["message"], error
    assert "Traceback" not in result.output


def test_wrong_gate_flag_and_bad_config_are_named(retrain_home: Path, tmp_path: Path) -> None:
    config = str(write_model_config(retrain_home.parent))
    result = CliRunner().invoke(app, ["train", "--config", config, "--min-metric", "0.5"])
    assert result.exit_code == 2 and "lower-is-better" in result.output
    code, error = run("train", "--config", str(tmp_path / "missing.yaml"))
    assert code == 2 and error["error"] == "ConfigError" and "missing.yaml" in error["message"]


def test_reject_asks_why(retrain_home: Path) -> None:
    config = str(write_model_config(retrain_home.parent))
    code, error = run("reject", "--config", config, "--reason", "  ")
    assert code == 2 and error["error"] == "BadParameter" and "--reason" in error["message"]
    missing = CliRunner().invoke(app, ["reject", "--config", config])
    assert missing.exit_code == 2 and "--reason" in missing.output


def test_option_errors_under_json_are_one_json_object() -> None:
    result = CliRunner().invoke(app, ["train", "--config", "x.yaml", "--trials", "many", "--json"])
    error = json.loads(result.stdout.strip())
    assert result.exit_code == 2 and error["error"] == "BadParameter" and "--trials" in error["message"]


def test_writes_below_python_stdout_go_to_stderr() -> None:
    """LightGBM's C++ warnings write to file descriptor 1 directly: they must not reach stdout."""
    script = (
        "import os, sys\n"
        "from retrain.cli.app import protected_stdout\n"
        "with protected_stdout():\n"
        "    os.write(1, b'[LightGBM] [Warning] Met negative value in categorical features\\n')\n"
        "    sys.stdout.write('{\"ok\": true}\\n')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    assert json.loads(result.stdout) == {"ok": True}
    assert "Met negative value" in result.stderr
