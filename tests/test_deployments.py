"""Every prefect.yaml deployment points at a real flow and passes parameters that flow accepts."""

from __future__ import annotations

import inspect

import pytest
import yaml
from prefect import Flow
from prefect.flows import load_flow_from_entrypoint

from tests.conftest import REPO

DEPLOYMENTS = yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]


@pytest.mark.parametrize("deployment", DEPLOYMENTS, ids=lambda d: f"{d['entrypoint']}")
def test_entrypoint_loads_and_parameters_fit_its_signature(deployment: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    flow = load_flow_from_entrypoint(deployment["entrypoint"])
    assert isinstance(flow, Flow)
    signature = inspect.signature(flow.fn)
    given = {**deployment.get("parameters", {})}
    for trigger in deployment.get("triggers", []):
        given.update(trigger.get("parameters", {}))
    unknown = set(given) - set(signature.parameters)
    assert not unknown, f"{deployment['name']}: parameters {unknown} are not arguments of {flow.name}"
    required = {name for name, p in signature.parameters.items() if p.default is inspect.Parameter.empty}
    assert required <= set(deployment.get("parameters", {})), f"missing required parameters {required}"
    flow.validate_parameters(deployment.get("parameters", {}))
    assert (REPO / deployment["parameters"]["config_path"]).is_file()


def test_every_deployment_has_a_work_pool_and_cron_schedules_if_any() -> None:
    # Release actions by hand (promote, rollback) are ad hoc: run from the UI form, no schedule.
    for deployment in DEPLOYMENTS:
        assert deployment["work_pool"]["name"] == "retrain"
        assert all("cron" in schedule for schedule in deployment.get("schedules", []))


def test_deployment_names_are_distinct_and_say_what_they_do() -> None:
    names = [deployment["name"] for deployment in DEPLOYMENTS]
    assert len(set(names)) == len(names), names
    assert {"flights-delay-train", "flights-delay-ingest", "flights-delay-monitor"} <= set(names)


def test_every_trigger_is_a_named_automation_on_a_deployed_model() -> None:
    from retrain.config import load_model_config

    for deployment in DEPLOYMENTS:
        model = load_model_config(REPO / deployment["parameters"]["config_path"]).name
        for trigger in deployment.get("triggers", []):
            assert trigger.get("name"), f"{deployment['name']}: automation without a name"
            assert trigger["match"]["prefect.resource.id"] == f"retrain.model.{model}"


def test_the_train_deployment_retrains_when_monitoring_asks() -> None:
    train = next(d for d in DEPLOYMENTS if d["name"] == "flights-delay-train")
    assert [t["expect"] for t in train["triggers"]] == [["retrain.retrain.requested"]]
    assert train["concurrency_limit"] == 1


def test_release_deployments_are_there_the_canary_check_on_a_schedule() -> None:
    names = {deployment["name"]: deployment for deployment in DEPLOYMENTS}
    assert {"flights-delay-release", "flights-delay-canary-check", "flights-delay-promote",
            "flights-delay-rollback"} <= set(names)
    assert names["flights-delay-canary-check"]["schedules"][0]["cron"]


@pytest.mark.parametrize("deployment", DEPLOYMENTS, ids=lambda d: d["name"])
def test_the_ad_hoc_form_shows_editable_numbers_not_none_toggles(
    deployment: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A count preset to None is drawn as an empty toggle a person must first switch on: give it a value instead.
    from prefect.utilities.callables import parameter_schema

    monkeypatch.chdir(REPO)
    flow = load_flow_from_entrypoint(deployment["entrypoint"])
    for name, field in parameter_schema(flow).model_dump()["properties"].items():
        kinds = {option.get("type") for option in field.get("anyOf", [field])}
        assert not ("integer" in kinds and field.get("default") is None), f"{flow.name}: '{name}' is an int | None"
