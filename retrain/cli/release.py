"""Release commands: status, release, canary-check, promote, reject, rollback.

Every command that moves something takes `--as-of`, the release clock; without it the flow runs on the model's
clock (just after the newest clean row), like training and monitoring, so a replay's decisions fall on its days.
"""

from __future__ import annotations

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
from retrain.jsonable import to_jsonable
from retrain.settings import get_settings

AS_OF_HELP = typer.Option("--as-of", help="The release clock, ISO 8601 (default: just after the newest clean row).")

# ------------------------------------------------------------------------------------------ release


def person_actor() -> str:
    """Who runs a release command from the shell: `person:<RETRAIN_ACTOR or $USER>`."""
    return f"person:{get_settings().actor}"


@app.command()
def status(
    config: ConfigOption,
    limit: Annotated[int, typer.Option(help="How many ledger rows to show, newest first.", min=1,
                                        max=100_000)] = 20,
    as_json: JsonOption = False,
) -> None:
    """Release state: aliases → versions, the canary's traffic share and the latest decisions (no Prefect).

    A transition half applied is `pending` (interrupted: the next release command finishes it) only when no live
    process holds the model's release lock; while one does, it is `applying` (being applied by that process).
    """
    model = load_model_config(config)
    with stdout_to_stderr():
        check_stores_first("warehouse", "mlflow")
        import mlflow
        from mlflow.tracking import MlflowClient

        from retrain.release_state import read_release_state
        from retrain.warehouse import get_warehouse, live_lock_holder, read_ledger
        from tasks.registry import ledger_summary, release_lock

        mlflow.set_tracking_uri(get_settings().resolved_tracking_uri())
        warehouse = get_warehouse()
        state = read_release_state(MlflowClient(), model.name)
        holder = live_lock_holder(warehouse, release_lock(model.name)) if state.pending else None
        ledger = read_ledger(warehouse, model.name, limit=limit)
    result = {
        "model": model.name,
        "aliases": dict(state.aliases),
        "canary_share": state.canary_share,
        "pending": state.pending if holder is None else None,
        "applying": None if holder is None else {"action": state.pending, "by": holder.describe()},
        "ledger": ledger_summary(ledger),
    }
    finish(result, as_json, _render_status)


def _render_status(result: dict[str, Any]) -> str:
    aliases = "  ".join(f"{alias}={version or '-'}" for alias, version in result["aliases"].items())
    lines = [f"model      {result['model']}", f"aliases    {aliases}"]
    if result["canary_share"] is not None:
        lines.append(f"canary     {result['canary_share']:.0%} of traffic")
    if result["pending"]:
        lines.append(f"pending    an interrupted {result['pending']} (the next release command finishes it)")
    if result["applying"]:
        lines.append(f"applying   a {result['applying']['action']} now, by {result['applying']['by']}")
    for entry in result["ledger"]:
        moved = f"{entry['from_version'] or '-'} -> {entry['to_version'] or '-'}"
        at = entry["at"].replace("T", " ")[:19]  # to the second, on the Retrain clock (JSON keeps it exact)
        lines.append(f"{at}  {entry['action']:<14} {moved:<9} {entry['actor']}: {entry['reason']}")
    return "\n".join(lines)


def _run_release_flow(name: str, **parameters: Any) -> dict[str, Any]:
    """Run one of the release flows (flows/release.py) against the Prefect API; its outcome as a dict."""
    with stdout_to_stderr():
        check_stores_first("warehouse", "mlflow", "prefect")
        with prefect_api():
            import flows.release

            outcome = getattr(flows.release, name)(**parameters)
    return to_jsonable(outcome) | {"exit_code": outcome.exit_code}


def _render_release(result: dict[str, Any]) -> str:
    moved = ""
    if result["action"] != "none":
        moved = f" ({result['from_version'] or '-'} -> {result['to_version'] or '-'})"
    return f"{result['decision']}: {result['action']}{moved}\n{result['reason']}"


def _finish_release(result: dict[str, Any], as_json: bool) -> None:
    code = result.pop("exit_code")
    finish(result, as_json, _render_release, code)


@app.command()
def release(
    config: ConfigOption,
    as_of: Annotated[str | None, AS_OF_HELP] = None,
    as_json: JsonOption = False,
) -> None:
    """Move the challenger on: canary beside the champion (champion if there is none); in manual mode the run
    waits for a person's approval in the Prefect UI. Exit 1 when it was rejected or refused."""
    prepare_environment()
    load_model_config(config)
    instant = parse_instant_option(as_of, "--as-of")
    result = _run_release_flow("release_challenger", config_path=str(config), as_of=instant, actor=person_actor())
    _finish_release(result, as_json)


@app.command("canary-check")
def canary_check(
    config: ConfigOption,
    as_of: Annotated[str | None, AS_OF_HELP] = None,
    as_json: JsonOption = False,
) -> None:
    """Analyse the canary on matured labels: promote, reject, or "not enough data yet" (decides nothing).
    With no canary, roll back a new champion that breaches the rollback rule in its bake window."""
    prepare_environment()
    load_model_config(config)
    instant = parse_instant_option(as_of, "--as-of")
    result = _run_release_flow("check_canary", config_path=str(config), as_of=instant, actor=person_actor())
    _finish_release(result, as_json)


@app.command()
def promote(
    config: ConfigOption,
    version: Annotated[str | None, typer.Option(help="Version to promote (default: the canary, else the "
                                                     "challenger); it must have passed the gates.")] = None,
    reason: Annotated[str, typer.Option(help="Why, for the ledger and the version's description.")] = "",
    as_of: Annotated[str | None, AS_OF_HELP] = None,
    as_json: JsonOption = False,
) -> None:
    """Make a version champion by hand; the old champion becomes `previous`."""
    prepare_environment()
    load_model_config(config)
    instant = parse_instant_option(as_of, "--as-of")
    result = _run_release_flow("promote_model", config_path=str(config), version=version or "", reason=reason,
                               as_of=instant, actor=person_actor())
    _finish_release(result, as_json)


@app.command()
def reject(
    config: ConfigOption,
    reason: Annotated[str, typer.Option(help="Why, for the ledger and the version's description.")],
    version: Annotated[str | None, typer.Option(help="Version to reject (default: the canary, else the "
                                                     "challenger).")] = None,
    as_of: Annotated[str | None, AS_OF_HELP] = None,
    as_json: JsonOption = False,
) -> None:
    """End a canary, or drop a waiting challenger, by hand: it loses its alias and is never released. Exit 1
    (rejected, or refused when there is nothing to reject)."""
    prepare_environment()
    load_model_config(config)
    instant = parse_instant_option(as_of, "--as-of")
    if not reason.strip():
        raise typer.BadParameter("say why: the reason goes to the ledger and the version's description",
                                 param_hint="--reason")
    result = _run_release_flow("reject_model", config_path=str(config), version=version or "", reason=reason,
                               as_of=instant, actor=person_actor())
    _finish_release(result, as_json)


@app.command()
def rollback(
    config: ConfigOption,
    to: Annotated[str | None, typer.Option("--to", help="A version that was champion before (default: the "
                                                        "`previous` alias).")] = None,
    reason: Annotated[str, typer.Option(help="Why, for the ledger and the versions' descriptions.")] = "",
    as_of: Annotated[str | None, AS_OF_HELP] = None,
    as_json: JsonOption = False,
) -> None:
    """Give `champion` back to the previous champion (or `--to VERSION`); refused (exit 1) with none."""
    prepare_environment()
    load_model_config(config)
    instant = parse_instant_option(as_of, "--as-of")
    result = _run_release_flow("roll_back_model", config_path=str(config), to_version=to or "", reason=reason,
                               as_of=instant, actor=person_actor())
    _finish_release(result, as_json)


