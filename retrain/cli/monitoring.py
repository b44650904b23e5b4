"""Commands about watching a model: monitor, and the failed runs (failures, rerun)."""

from __future__ import annotations

from dataclasses import is_dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
import typer.core

from retrain.cli.app import (
    ConfigOption,
    JsonOption,
    app,
    check_stores_first,
    finish,
    parse_instant_option,
    prefect_api,
    prepare_environment,
    stdout_to_stderr,
)
from retrain.config import load_model_config
from retrain.errors import ConfigError, ExitCode
from retrain.jsonable import to_jsonable


@app.command()
def monitor(
    config: ConfigOption,
    as_of: Annotated[
        str | None,
        typer.Option("--as-of", help="Monitor as of this time, ISO 8601 (default: just after the newest clean row)."),
    ] = None,
    request_retrain: Annotated[
        str | None,
        typer.Option("--request-retrain", help="Ask for a retrain, with this reason (overrides the cooldown)."),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Score new rows with the champion, write drift and performance reports, and decide whether to retrain.

    Prints the window, the drift share and drifted columns, the metrics on matured labels (null where none
    matured), the decision with its reason and signals, and the paths of the HTML reports. Exit 0 whatever
    the decision; a retrain it asks for goes out as the `retrain.retrain.requested` event.
    """
    prepare_environment()
    load_model_config(config)
    instant = parse_instant_option(as_of, "--as-of")
    with stdout_to_stderr():
        check_stores_first("warehouse", "mlflow", "prefect")
        with prefect_api():
            from flows.monitoring import monitor_model

            outcome = monitor_model(config_path=str(config), as_of=instant, manual_reason=request_retrain or "")
    finish(to_jsonable(outcome), as_json, _render_monitoring)


def _render_monitoring(result: dict[str, Any]) -> str:
    window = result["window"]
    decision = result["decision"]
    metrics = ", ".join(f"{k} {'null' if v is None else f'{v:.3f}'}" for k, v in result["metrics"].items())
    lines = [f"model      {result['model']}  champion v{result['champion_version'] or '(none)'}  as of "
             f"{result['as_of']}"]
    if window:
        lines += [
            f"window     [{window['start']}, {window['end']})  {result['rows']:,} {result['source']} rows, "
            f"{result['labelled']:,} labelled, {result['scored']:,} newly scored",
            f"drift      share {result['drift_share']:.2f}: {', '.join(result['drifted_columns']) or 'none'}",
            f"metrics    {metrics or '-'}",
        ]
    lines.append(f"decision   {'retrain' if decision['retrain'] else 'no retrain'} ({decision['action']}): "
                 f"{decision['reason']}")
    lines += [f"report     {path}" for path in result["reports"]]
    return "\n".join(lines)


@app.command()
def failures(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="Only this model's failures.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many, newest first.", min=1, max=100_000)] = 20,
    as_json: JsonOption = False,
) -> None:
    """List the flow runs that failed after their retries, as the ledger recorded them (no Prefect server)."""
    prepare_environment()
    model = load_model_config(config).name if config is not None else None
    with stdout_to_stderr():
        check_stores_first("warehouse")
        from retrain.warehouse import get_warehouse, read_ledger
        from tasks.failures import RUN_FAILED

        entries = read_ledger(get_warehouse(), model, limit, action=RUN_FAILED)
    runs = [
        {"flow_run_id": e.flow_run_id, "model": e.model, "at": e.at, "flow": e.details.get("flow"),
         "flow_run_name": e.details.get("flow_run_name"), "parameters": e.details.get("parameters", {}),
         "error": e.details.get("error", e.reason)}
        for e in entries
    ]
    finish({"failures": runs, "count": len(runs)}, as_json, _render_failures)


def _render_failures(result: dict[str, Any]) -> str:
    if not result["failures"]:
        return "no failed runs recorded"
    return "\n".join(f"{r['at']}  {r['flow_run_id']}  {r['flow']}  {r['model']}: {r['error'][:150]}"
                     for r in result["failures"])


@app.command()
def rerun(
    run_id: Annotated[str, typer.Argument(help="The flow run id that `retrain failures` lists.")],
    as_json: JsonOption = False,
) -> None:
    """Run a failed flow run again with the same parameters (in this process, like `train` or `ingest`)."""
    prepare_environment()
    with stdout_to_stderr():
        check_stores_first("warehouse")
        from retrain.warehouse import get_warehouse, read_ledger
        from tasks.failures import RUN_FAILED

        entry = next((e for e in read_ledger(get_warehouse(), action=RUN_FAILED) if e.flow_run_id == run_id), None)
        if entry is None:
            raise ConfigError(f"no failed run '{run_id}' in the ledger: `retrain failures` lists the ones there are")
        flow_name, parameters = entry.details.get("flow"), dict(entry.details.get("parameters", {}))
        flow = _flow_by_name(str(flow_name))
        check_stores_first("mlflow", "optuna", "prefect")
        with prefect_api():
            state = flow(**parameters, return_state=True)
    result = state.result(raise_on_failure=False)
    summary = to_jsonable(result) if is_dataclass(result) else {"result": str(result)}
    failed = state.is_failed() or state.is_crashed()
    outcome = {"rerun_of": run_id, "flow": flow_name, "parameters": parameters, "state": state.name,
               "outcome": summary if not failed else None, "error": str(result) if failed else None}
    finish(outcome, as_json, lambda r: f"re-ran {r['flow']} ({r['rerun_of']}): {r['state']}",
           ExitCode.FAILURE if failed else ExitCode.OK)


def _flow_by_name(name: str) -> Any:
    """The flow object of one of Retrain's flows, by its Prefect name."""
    from flows.ingest import ingest_new_rows, ingest_when_new_rows
    from flows.monitoring import monitor_model
    from flows.release import check_canary, promote_model, release_challenger, roll_back_model
    from flows.training import train_model

    known = {f.name: f for f in (train_model, ingest_new_rows, ingest_when_new_rows, monitor_model,
                                 release_challenger, check_canary, promote_model, roll_back_model)}
    if name not in known:
        raise ConfigError(f"flow '{name}' cannot be re-run from here: known flows are {sorted(known)}")
    return known[name]


