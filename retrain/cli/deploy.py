"""Commands about deployments: deploy (many models from one set of deployments)."""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from retrain.cli.app import JsonOption, app, check_stores_first, finish, prepare_environment, stdout_to_stderr
from retrain.errors import ConfigError


@app.command()
def deploy(
    config: Annotated[
        Path,
        typer.Option("--config", "-c", help="A model config YAML, or a folder of them (every *.yaml except "
                     "*.contract.yaml): one set of deployments per model."),
    ],
    show: Annotated[
        bool,
        typer.Option("--print", help="Print the deployments as prefect.yaml entries instead of deploying them."),
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Create or update each model's deployments (train, ingest, monitor, release, canary-check, promote,
    reject, rollback) with the schedules and triggers its config declares, its work pool and its global
    concurrency limit, on the Prefect server of PREFECT_API_URL (`make stack` prints it)."""
    prepare_environment()
    from deployments.models import REPO, find_model_configs, load_model_configs, model_deployments, project_path

    configs = load_model_configs(find_model_configs(config))
    if show:
        entries = [entry for model in configs for entry in model_deployments(model, project_path(model.config_path))]
        if as_json:
            finish({"deployments": entries}, True, str)
        else:
            typer.echo(yaml.safe_dump({"deployments": entries}, sort_keys=False, width=120), nl=False)
        return
    if not os.environ.get("PREFECT_API_URL"):
        raise ConfigError(
            "retrain deploy needs the Prefect server your workers use: set PREFECT_API_URL "
            "(e.g. http://127.0.0.1:4200/api; `make stack` prints it). Without it the deployments would go to "
            "a temporary server that ends with this command."
        )
    with stdout_to_stderr():
        check_stores_first("prefect")  # a server that does not answer: exit 3 naming it, not a traceback
        from deployments.models import deploy_models

        result = deploy_models(configs, root=REPO)
    finish(asdict(result), as_json, _render_deploy)


def _render_deploy(result: dict[str, Any]) -> str:
    lines = []
    for model in result["models"]:
        lines.append(f"{model['model']:<24} {len(model['deployments'])} deployments on pool '{model['work_pool']}', "
                     f"limit {model['limit']}  ({model['config_path']})")
        lines += [f"    {name}" for name in model["deployments"]]
    lines += [f"note: {note}" for note in result["notes"]]
    return "\n".join(lines)
