"""deployments/models.py: a model's deployments generated from its config, equal to prefect.yaml for the example
model, and `deploy_models` on a real Prefect server: two models, sixteen deployments, and a retrain request of one
starts only that model's training."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
import yaml

from deployments.models import (
    KINDS,
    find_model_configs,
    load_model_configs,
    model_deployments,
    project_path,
)
from retrain.config import load_model_config
from retrain.errors import ConfigError
from tests.conftest import EXAMPLE_CONFIG, EXAMPLE_CONTRACT, REPO


def write_model(folder: Path, name: str, extra: dict | None = None) -> Path:
    """The example config under another model name (its contract by absolute path), plus `extra` fields."""
    raw = yaml.safe_load(EXAMPLE_CONFIG.read_text())
    raw.update({"name": name, "contract": str(EXAMPLE_CONTRACT)}, **(extra or {}))
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def test_prefect_yaml_is_what_deploy_generates_for_the_example_model() -> None:
    generated = model_deployments(load_model_config(EXAMPLE_CONFIG), project_path(EXAMPLE_CONFIG))
    assert yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"] == generated
    assert [entry["name"] for entry in generated] == [f"flights-delay-{kind}" for kind in KINDS]


def test_schedules_pool_and_triggers_come_from_the_config(tmp_path: Path) -> None:
    path = write_model(tmp_path, "taxi", {"deployment": {
        "work_pool": "gpu", "schedules": {"train": "0 2 * * *", "ingest": None, "timezone": "Europe/Paris"},
        "release_on_events": False,
    }})
    entries = {entry["name"]: entry for entry in model_deployments(load_model_config(path), project_path(path))}
    assert entries["taxi-train"]["schedules"] == [{"cron": "0 2 * * *", "timezone": "Europe/Paris", "active": True}]
    assert "schedules" not in entries["taxi-ingest"]  # null: unscheduled
    assert entries["taxi-monitor"]["schedules"][0]["cron"] == "30 5 * * *"  # silent: the default
    assert "triggers" not in entries["taxi-release"]
    assert entries["taxi-train"]["triggers"][0]["match"] == {"prefect.resource.id": "retrain.model.taxi"}
    assert {entry["work_pool"]["name"] for entry in entries.values()} == {"gpu"}
    assert {entry["parameters"]["config_path"] for entry in entries.values()} == {str(path.resolve())}


def test_a_folder_gives_every_model_config_but_contracts() -> None:
    found = find_model_configs(REPO / "examples")
    assert [path.name for path in found] == ["flights.yaml", "flights_delayed.yaml"]
    assert [config.name for config in load_model_configs(found)] == ["flights-delay", "flights-delayed"]


def test_bad_folders_and_duplicate_names_are_refused_naming_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file or folder"):
        find_model_configs(tmp_path / "missing")
    with pytest.raises(ConfigError, match="holds no model config"):
        find_model_configs(tmp_path)
    first = write_model(tmp_path, "same")
    second = tmp_path / "copy.yaml"
    second.write_text(first.read_text())
    with pytest.raises(ConfigError, match=r"model name 'same' is in both .*copy.yaml and .*same.yaml"):
        load_model_configs(find_model_configs(tmp_path))
    second.write_text("name: broken\n")
    with pytest.raises(ConfigError, match=r"copy.yaml is invalid: source: Field required"):
        load_model_configs(find_model_configs(tmp_path))


@pytest.mark.slow  # ~35 s: two deploys of sixteen deployments and an automation that must fire
@pytest.mark.usefixtures("prefect_harness")
def test_deploy_two_models_and_a_retrain_request_starts_only_its_training(tmp_path: Path) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId, DeploymentFilterTags
    from prefect.events import emit_event
    from prefect.events.worker import EventsWorker

    from deployments.models import deploy_models

    suffix = uuid.uuid4().hex[:6]
    names = [f"alpha-{suffix}", f"beta-{suffix}"]
    configs = load_model_configs([write_model(tmp_path, name) for name in names])
    result = deploy_models(configs)
    again = deploy_models(configs)  # idempotent: the same deployments, updated in place

    assert [model.model for model in result.models] == names
    assert [model.deployments for model in again.models] == [model.deployments for model in result.models]
    assert result.limits == {f"retrain-model-{name}": 1 for name in names}
    with get_client(sync_client=True) as client:
        for name in names:
            deployed = client.read_deployments(
                deployment_filter=DeploymentFilter(tags=DeploymentFilterTags(all_=[f"model:{name}"]))
            )
            assert sorted(d.name for d in deployed) == sorted(f"{name}-{kind}" for kind in KINDS)
            by_name = {d.name: d for d in deployed}
            train = by_name[f"{name}-train"]
            assert [s.schedule.cron for s in train.schedules] == ["0 4 * * 1"]
            assert train.work_pool_name == "retrain" and train.global_concurrency_limit.limit == 1
            assert train.parameters["config_path"] == str((tmp_path / f"{name}.yaml").resolve())
            assert train.path == str(REPO) and train.entrypoint == "flows/training.py:train_model"
        assert client.read_work_pool("retrain").type == "process"
        automations = {a.name for a in client.read_automations()}
        assert {f"{name}: retrain when monitoring asks" for name in names} <= automations

        # A retrain request of beta: the server's trigger starts beta's training deployment, and nothing of alpha.
        emit_event(event="retrain.retrain.requested", resource={"prefect.resource.id": f"retrain.model.{names[1]}"},
                   payload={"reason": "test"})
        EventsWorker.drain_all()
        ids = {name: set(result.models[i].deployments.values()) for i, name in enumerate(names)}
        every = ids[names[0]] | ids[names[1]]
        deadline = time.monotonic() + 90
        started: list = []
        while time.monotonic() < deadline and not started:
            time.sleep(2)
            started = client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[uuid.UUID(i) for i in every]))
            )
        assert [str(run.deployment_id) for run in started] == [result.models[1].deployments[f"{names[1]}-train"]]
        assert started[0].parameters["config_path"] == str((tmp_path / f"{names[1]}.yaml").resolve())
