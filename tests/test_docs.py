"""docs/config.md is the configuration reference: it names every field with its real default, and its
walkthrough on a table that is not flights runs as written."""

from __future__ import annotations

import json
import os
import re
import subprocess
from datetime import timedelta
from enum import Enum
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from retrain.clock import format_duration
from retrain.config import (
    CanaryConfig,
    DaskConfig,
    DeploymentConfig,
    FeaturesConfig,
    GatesConfig,
    ModelConfig,
    MonitoringConfig,
    ReleaseConfig,
    RollbackConfig,
    ScheduleConfig,
    SourceConfig,
    SplitConfig,
    TargetConfig,
    TrainingConfig,
    TuningConfig,
    WindowConfig,
)
from retrain.contract import BatchRules, ColumnRule, Contract
from retrain.settings import Settings
from tests.conftest import REPO

DOC = REPO / "docs" / "config.md"
MODEL_SECTIONS: dict[str, type[BaseModel]] = {
    "source": SourceConfig,
    "target": TargetConfig,
    "features": FeaturesConfig,
    "training_window": WindowConfig,
    "split": SplitConfig,
    "tuning": TuningConfig,
    "gates": GatesConfig,
    "training": TrainingConfig,
    "monitoring": MonitoringConfig,
    "release": ReleaseConfig,
    "deployment": DeploymentConfig,
}
NESTED_SECTIONS: dict[str, type[BaseModel]] = {"release.canary": CanaryConfig, "release.rollback": RollbackConfig,
                                               "training.dask": DaskConfig, "deployment.schedules": ScheduleConfig}


def documented_rows(part: str) -> dict[str, list[str]]:
    """Table rows of one `## ` part of the doc: the field (first cell, in backticks) → the other cells."""
    text = DOC.read_text(encoding="utf-8")
    body = re.split(r"^## ", text, flags=re.MULTILINE)
    section = next(chunk for chunk in body if chunk.startswith(part))
    rows = {}
    for line in section.splitlines():
        match = re.match(r"^\| `([^`]+)` \|(.*)\|$", line)
        if match:
            rows[match.group(1)] = [cell.strip() for cell in match.group(2).split("|")]
    return rows


def expected_fields() -> dict[str, list[tuple[str, type[BaseModel], str]]]:
    """Per part of the doc: (documented name, model, field) for every field a user can set."""
    model = [(name, ModelConfig, name) for name in ("name", "contract", "metric")]
    for section, config in MODEL_SECTIONS.items():
        model += [(f"{section}.{name}", config, name) for name in config.model_fields]
    for section, config in NESTED_SECTIONS.items():
        model += [(f"{section}.{name}", config, name) for name in config.model_fields]
    contract = [(name, Contract, name) for name in Contract.model_fields]
    contract += [(name, ColumnRule, name) for name in ColumnRule.model_fields]
    contract += [(f"batch.{name}", BatchRules, name) for name in BatchRules.model_fields]
    settings = [(name, Settings, name) for name in Settings.model_fields]
    return {"Model config": model, "Data contract": contract, "Settings": settings}


def plain(value: Any) -> Any:
    if isinstance(value, timedelta):
        return format_duration(value)
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    return value


@pytest.mark.parametrize("part", ["Model config", "Data contract", "Settings"])
def test_every_field_is_documented_with_its_real_default(part: str) -> None:
    rows = documented_rows(part)
    default_column = 2 if part == "Settings" else 1
    for documented, config, name in expected_fields()[part]:
        assert documented in rows, f"docs/config.md ({part}) does not document `{documented}`"
        info = config.model_fields[name]
        cell = rows[documented][default_column]
        if info.is_required():
            assert cell == "required", f"`{documented}` is required, the doc says {cell!r}"
        elif cell.startswith("`") and cell.endswith("`") and info.default_factory is None:
            assert yaml.safe_load(cell.strip("`")) == plain(info.default), f"default of `{documented}`"
    model_sections = {name.split(".")[0] for name, *_ in expected_fields()["Model config"] if "." in name}
    assert model_sections == set(MODEL_SECTIONS) and set(ModelConfig.model_fields) - {"config_path"} == {
        "name", "contract", "metric", *MODEL_SECTIONS}


def walkthrough_script() -> str:
    """The bash blocks of "Point it at your own table", in order, as one script."""
    text = DOC.read_text(encoding="utf-8")
    section = text.split("## Point it at your own table", 1)[1].split("\n## ", 1)[0]
    return "\n".join(re.findall(r"```bash\n(.*?)```", section, flags=re.DOTALL))


@pytest.mark.slow
def test_the_walkthrough_runs_as_written_on_a_table_that_is_not_flights(tmp_path: Path) -> None:
    (tmp_path / ".venv").symlink_to(REPO / ".venv")  # the walkthrough runs from a project folder
    environment = {
        key: value for key, value in os.environ.items() if not key.startswith(("RETRAIN_", "PREFECT_", "MLFLOW_"))
    }
    script = "set -euo pipefail\n" + walkthrough_script()
    result = subprocess.run(
        ["bash", "-c", script], cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=900,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ingested, trained = [json.loads(line) for line in result.stdout.strip().splitlines()[-2:]]
    assert ingested["read"] == ingested["clean"] == 26_115 and ingested["status"] == "passed"
    assert trained["decision"] == "champion" and trained["version"] == "1"
    assert trained["metric"]["value"] > trained["baseline"]["auc"]
    contract = yaml.safe_load((tmp_path / "weather.contract.yaml").read_text())
    assert contract["key"] == ["origin", "time_hour"] and contract["columns"]["origin"]["allowed"] == [
        "EWR", "JFK", "LGA"]


def quick_start_commands() -> list[str]:
    """The commands of the README's quick start, as a newcomer copies them (comments dropped)."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    block = text.split("## Quick start", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    return [line.split("#", 1)[0].strip() for line in block.splitlines() if line.split("#", 1)[0].strip()]


def test_the_quick_start_is_two_commands() -> None:
    assert quick_start_commands() == ["make demo", "make test"]


@pytest.mark.slow
def test_the_quick_start_runs_as_written_in_a_fresh_clone(tmp_path: Path) -> None:
    """`git clone`, then the README's two commands, with nothing installed by hand: `.venv` is built from
    pyproject.toml by the first command (the committed tree only: commit before running this)."""
    clone = tmp_path / "retrain"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True, timeout=300)
    if (REPO.parent / "shared").is_dir():  # the acceptance checks sit beside the project, not in it
        (tmp_path / "shared").symlink_to(REPO.parent / "shared")
    environment = {key: value for key, value in os.environ.items()
                   if not key.startswith(("RETRAIN_", "PREFECT_", "MLFLOW_", "VIRTUAL_ENV", "PYTEST_"))}
    outputs = {}
    for command in quick_start_commands():
        result = subprocess.run(command, shell=True, cwd=clone, env=environment, capture_output=True, text=True,
                                timeout=3600, check=False)
        assert result.returncode == 0, f"{command}: {result.stdout[-2000:]}\n{result.stderr[-3000:]}"
        outputs[command] = result.stdout
    assert "story:" in outputs["make demo"] and "rolled back" in outputs["make demo"]
    assert re.search(r"\d+ passed", outputs["make test"])
    assert (clone / ".retrain" / "warehouse.db").is_file()
