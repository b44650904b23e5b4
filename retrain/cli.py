"""The `retrain` command line.

Every command takes `--json` and then prints exactly one JSON object on stdout, whatever happens
(an outcome, a refusal, a bad option or a failure); progress and logs go to stderr, so
`retrain train --json | jq` works. Exit codes are those of `retrain.errors.ExitCode`. Prefect, MLflow
and Optuna are imported inside the commands, after `prepare_environment` has pointed them at this
project's data folder, so commands that run no flow start no Prefect server.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import is_dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
import typer.core

from retrain.clock import parse_instant
from retrain.config import load_model_config
from retrain.errors import ConfigError, ExitCode, RetrainError
from retrain.jsonable import to_jsonable
from retrain.redaction import redact_text
from retrain.settings import get_settings


class RetrainCommands(typer.core.TyperGroup):
    """Every command's errors end the same way: one line (and one JSON object under `--json`) and the
    exit code of the error's kind; only a real fault (not one of ours) also prints its traceback."""

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        arguments = list(sys.argv[1:] if args is None else args)
        as_json = "--json" in arguments
        try:
            code = super().main(
                args=arguments, prog_name=prog_name, complete_var=complete_var, standalone_mode=False, **extra
            )
        except typer.TyperException as error:  # a bad option or argument: click's usage text, or JSON
            code = report_error(
                type(error).__name__, error.format_message(), ExitCode.USAGE, as_json, getattr(error, "show", None)
            )
        except typer.Abort:
            code = report_error("Aborted", "aborted", ExitCode.FAILURE, as_json)
        except RetrainError as error:
            code = report_error(type(error).__name__, str(error), error.exit_code, as_json)
        except Exception as error:  # noqa: BLE001 - a real fault: its traceback goes to stderr, then the JSON
            sys.stderr.write(redact_text("".join(traceback.format_exception(error)), known_secrets()))
            code = report_error(type(error).__name__, str(error), ExitCode.FAILURE, as_json)
        code = int(code or 0)
        if standalone_mode:
            sys.exit(code)
        return code


app = typer.Typer(
    cls=RetrainCommands, add_completion=False, no_args_is_help=True, help="Continuous training for tabular models."
)

ConfigOption = Annotated[Path, typer.Option("--config", "-c", help="Model config YAML.", exists=False)]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")]


def report_error(
    kind: str, message: str, code: ExitCode, as_json: bool, show: Callable[[], None] | None = None
) -> ExitCode:
    """One line on stderr (or click's own usage text) and, under `--json`, one JSON object on stdout.

    The message is redacted here too: an error from a library may quote a URL with its password.
    """
    message = redact_text(message, known_secrets())
    if as_json:
        sys.stdout.write(json.dumps({"error": kind, "message": message, "exit_code": int(code)}) + "\n")
        sys.stdout.flush()
    if show is not None:
        show()
    else:
        typer.echo(f"error: {message}", err=True)
    return code


def known_secrets() -> tuple[str, ...]:
    """The secrets to mask in what we print; none when the settings themselves cannot be read."""
    try:
        return get_settings().known_secrets()
    except RetrainError:
        return ()


def check_stores_first(*stores: str) -> None:
    """Check the stores a command needs before it starts any work (or Prefect's temporary server), then
    mask passwords in every log line of this process from here on.

    An outage then ends the command in about a second with `StoreUnavailable` (exit 3) naming the store,
    not after the tuning it would otherwise have done first. The flows check again for runs that do not
    come through this CLI (deployments on a worker).
    """
    from retrain.redaction import install_redaction
    from retrain.stores import check_stores

    settings = get_settings()
    install_redaction(settings.known_secrets())
    check_stores(settings, stores)


@contextlib.contextmanager
def prefect_api() -> Iterator[None]:
    """Flows of this command run against `PREFECT_API_URL`, or a temporary server that ends with the command."""
    from retrain.prefect_server import temporary_prefect_server

    with temporary_prefect_server() as url:
        if url:
            typer.echo(
                f"temporary Prefect server {url} (ends with this command; set PREFECT_API_URL to keep runs "
                "on a server of your own)",
                err=True,
            )
            watch_for_crashed_runs()
        yield


def watch_for_crashed_runs() -> None:
    """Put the crashed-run automation on the temporary server's database (once; later calls update it).

    A command killed mid-run leaves its flow run Running in `PREFECT_HOME`'s database; with the automation
    there, a later command's server marks it Crashed once its heartbeats have been missing long enough.
    """
    from deployments.operations import apply_automation, crash_automation, heartbeat_seconds, retrain_flow_names

    try:
        apply_automation(crash_automation(retrain_flow_names(), heartbeat_seconds()))
    except ConfigError:  # heartbeats are off: no run could be told apart from a dead one
        return
    except Exception as error:  # noqa: BLE001 - housekeeping for earlier runs must not fail this one
        typer.echo(f"warning: crashed-run automation not applied to the temporary server: {error}", err=True)


def prepare_environment() -> None:
    """Point Prefect at a home under ours and keep it offline, before anything imports Prefect."""
    home = get_settings().resolved_home
    os.environ.setdefault("PREFECT_HOME", str(home / "prefect"))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    # Heartbeats every 30 s (Prefect's default is 180): a run whose command was killed is marked Crashed by
    # the crashed-run automation about 90 s later instead of 9 minutes later.
    os.environ.setdefault("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", "30")


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Anything a library prints from Python while a command runs goes to stderr; stdout stays for the result."""
    with contextlib.redirect_stdout(sys.stderr):
        yield


@contextlib.contextmanager
def protected_stdout() -> Iterator[None]:
    """Point file descriptor 1 at stderr for the whole process, keeping `sys.stdout` on the real stdout.

    LightGBM's C++ code (and any subprocess we start) writes to descriptor 1 directly, below Python's
    `sys.stdout`, so a Python-level redirect cannot stop "Met negative value in categorical features"
    from landing in the middle of `--json` output. After this, only what we write to `sys.stdout`
    reaches stdout. Where stdout is not a real file (a test runner's buffer) there is nothing to do.
    """
    try:
        descriptor = sys.stdout.fileno()
        sys.stderr.fileno()
    except (AttributeError, OSError, io.UnsupportedOperation):
        yield
        return
    sys.stdout.flush()
    saved = os.dup(descriptor)
    os.dup2(sys.stderr.fileno(), descriptor)
    original, sys.stdout = sys.stdout, open(saved, "w", encoding="utf-8", closefd=True)  # noqa: SIM115
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, descriptor)
        sys.stdout.close()
        sys.stdout = original


def finish(result: dict[str, Any], as_json: bool, render: Callable[[dict[str, Any]], str], code: int = 0) -> None:
    """Print the outcome once, as JSON or as text, and exit with `code`."""
    if as_json:
        sys.stdout.write(json.dumps(to_jsonable(result), default=str) + "\n")
    else:
        typer.echo(render(result))
    sys.stdout.flush()
    raise typer.Exit(code)


@app.command("load-example")
def load_example(
    config: ConfigOption,
    until: Annotated[
        datetime | None,
        typer.Option(help="Only flights scheduled before this New York time, as the data dates them (arrival)."),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Write the NYC flights 2013 example into the warehouse as the model's source table (idempotent)."""
    prepare_environment()
    model = load_model_config(config)
    with stdout_to_stderr():
        check_stores_first("warehouse")
        from retrain.warehouse import get_warehouse, write_frame
        from tasks.example_data import read_flights_example

        frame = read_flights_example(until=until)
        rows = write_frame(get_warehouse(), frame, model.source.table, if_exists="replace")
    result = {
        "table": model.source.table,
        "rows": rows,
        "columns": len(frame.columns),
        "first": frame[model.source.timestamp].min(),
        "last": frame[model.source.timestamp].max(),
    }
    finish(result, as_json, lambda r: f"wrote {r['rows']:,} rows x {r['columns']} columns to '{r['table']}'")


@app.command()
def train(
    config: ConfigOption,
    as_of: Annotated[
        str | None,
        typer.Option(
            "--as-of",
            help="Train as of this time (ISO 8601, UTC unless it carries an offset): the window is the lookback "
            "before it. Default: just after the newest clean row.",
        ),
    ] = None,
    trials: Annotated[
        int | None,
        typer.Option(help="Finished Optuna trials the snapshot's study must hold (a re-run adds only the missing).",
                     min=1),
    ] = None,
    timeout: Annotated[float | None, typer.Option(help="Tuning budget in seconds.", min=1)] = None,
    max_metric: Annotated[
        float | None, typer.Option(help="Absolute gate for a lower-is-better metric (e.g. MAE).")
    ] = None,
    min_metric: Annotated[
        float | None, typer.Option(help="Absolute gate for a higher-is-better metric (e.g. AUC).")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Ingest, tune, train, gate and register a model: champion or challenger (exit 0), skipped because
    nothing is new (exit 0), or rejected by a gate (exit 1, with the reason)."""
    prepare_environment()
    model = load_model_config(config)
    threshold = _threshold_override(model.lower_is_better, model.metric, max_metric, min_metric)
    instant = parse_instant_option(as_of, "--as-of")
    with stdout_to_stderr():
        check_stores_first("warehouse")
        from retrain.contract import check_model_source
        from retrain.warehouse import get_warehouse

        check_model_source(model, get_warehouse())  # a config that does not fit fails before Prefect loads
        check_stores_first("mlflow", "optuna", "prefect")
        with prefect_api():
            from flows.training import train_model

            outcome = train_model(
                config_path=str(config), as_of=instant, trials=trials or 0, timeout_seconds=timeout or 0.0,
                threshold=threshold
            )
    code = ExitCode.REFUSED if outcome.rejected else ExitCode.OK
    if code and not as_json:
        typer.echo(f"rejected: {outcome.reason}", err=True)
    finish(to_jsonable(outcome), as_json, _render_training, code)


def parse_instant_option(value: str | None, option: str) -> datetime | None:
    """An instant option (`--as-of`, `--start`, `--end`): ISO 8601, UTC unless it carries an offset."""
    if value is None:
        return None
    try:
        return parse_instant(value)
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint=option) from None


def _threshold_override(
    lower_is_better: bool, metric: str, max_metric: float | None, min_metric: float | None
) -> float | None:
    if max_metric is not None and not lower_is_better:
        raise typer.BadParameter(f"'{metric}' is higher-is-better: use --min-metric", param_hint="--max-metric")
    if min_metric is not None and lower_is_better:
        raise typer.BadParameter(f"'{metric}' is lower-is-better: use --max-metric", param_hint="--min-metric")
    return max_metric if max_metric is not None else min_metric


def _render_training(result: dict[str, Any]) -> str:
    window = result["window"]
    lines = [
        f"model      {result['model']}  run {result['run_id'] or '(none)'}",
        f"window     [{window['start']}, {window['end']})  as of {window['as_of']} ({window['as_of_source']}),"
        f" {result['rows']:,} rows, snapshot {result['fingerprint']}",
    ]
    if result["decision"] != "skipped":
        metric, champion = result["metric"], result["champion_metric"]
        lines.append(
            f"holdout    {metric['name']} = {metric['value']:.4f}  (baseline {result['baseline_metric']:.4f},"
            f" champion {'none' if champion is None else f'{champion:.4f}'}, threshold {result['threshold']})"
        )
        trials = result["trials"]
        lines.append(
            f"tuning     {trials['run_now']} trial(s) run now, {trials['in_study']} in study {result['study']}"
        )
    registered = f" -> version {result['version']}" if result["version"] is not None else " (nothing registered)"
    lines += [f"decision   {result['decision']}{registered}", f"reason     {result['reason']}"]
    return "\n".join(lines)


contract_app = typer.Typer(no_args_is_help=True, help="Write and inspect the data contract of a model.")
app.add_typer(contract_app, name="contract")


@contract_app.command("infer")
def contract_infer(
    config: ConfigOption,
    force: Annotated[
        bool, typer.Option("--force", help="Overwrite an existing contract (hand edits are lost).")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Write the data contract beside the model config from the source table as it is now.

    The config is checked against the table first: a misspelled column fails here, naming the field.
    """
    prepare_environment()
    model = load_model_config(config)
    with stdout_to_stderr():
        check_stores_first("warehouse")
        from retrain.contract import check_model_source, write_contract
        from retrain.warehouse import get_warehouse, read_source_rows
        from tasks.contract import infer_contract

        warehouse = get_warehouse()
        check_model_source(model, warehouse, with_contract=False)
    path = model.contract_path
    if path.exists() and not force:
        result = {"contract": path, "written": False, "columns": None, "rows": None}
        finish(result, as_json, lambda r: f"kept the existing contract {r['contract']} (use --force to overwrite)")
    with stdout_to_stderr():
        frame = read_source_rows(warehouse, model.source.table, model.source.timestamp)
        contract = write_contract(infer_contract(frame, model), path)
    result = {"contract": contract, "written": True, "columns": len(frame.columns), "rows": len(frame)}
    finish(result, as_json, lambda r: f"wrote {r['contract']} ({r['columns']} columns, from {r['rows']:,} rows)")


@app.command()
def ingest(
    config: ConfigOption,
    start: Annotated[
        str | None, typer.Option(help="First instant to read, ISO 8601 (default: the source's watermark).")
    ] = None,
    end: Annotated[str | None, typer.Option(help="Instant to read up to, excluded, ISO 8601.")] = None,
    as_of: Annotated[
        str | None,
        typer.Option("--as-of", help="The run's clock, ISO 8601: rows dated later have not arrived (default: now)."),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Validate the source rows that arrived since the last batch; append the clean ones, quarantine the rest.

    Instants are UTC unless they carry an offset. Exits 0 when the batch passed, 1 when it was refused, 2 on
    a config that does not fit the table (checked before any flow starts), 4 when another ingest of the
    source held its lock for too long.
    """
    prepare_environment()
    model = load_model_config(config)
    first, until = parse_instant_option(start, "--start"), parse_instant_option(end, "--end")
    instant = parse_instant_option(as_of, "--as-of")
    if first is not None and until is not None and first >= until:
        raise typer.BadParameter(
            f"{first.isoformat()} is not before --end {until.isoformat()}: nothing was read or written",
            param_hint="--start",
        )
    with stdout_to_stderr():
        check_stores_first("warehouse")
        from retrain.contract import check_model_source
        from retrain.warehouse import get_warehouse

        check_model_source(model, get_warehouse())  # a config that does not fit fails before Prefect loads
        check_stores_first("prefect")
        from flows.ingest import ingest_new_rows
        from tasks.ingest import BatchRefused

        try:
            with prefect_api():
                outcome = ingest_new_rows(config_path=str(config), start=first, end=until, as_of=instant)
            code = ExitCode.OK
        except BatchRefused as refusal:
            outcome, code = refusal.outcome, refusal.exit_code
            typer.echo(f"refused: {refusal}", err=True)
        quarantined = [] if as_json else _quarantined_rows(model.source.quarantine, outcome.batch_id)
    if not as_json and quarantined:
        _print_quarantine(outcome.batch_id, quarantined)
    finish(to_jsonable(outcome), as_json, _render_batch, code)


def _quarantined_rows(table: str, batch_id: str, limit: int = 20) -> list[dict[str, Any]]:
    from retrain.warehouse import get_warehouse, read_quarantine

    frame = read_quarantine(get_warehouse(), table, batch_id, limit=limit)
    return frame.to_dict("records")


def _print_quarantine(batch_id: str, rows: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"quarantined rows of batch {batch_id} (first {len(rows)})", show_lines=False)
    for name in ("row", "reasons", "raw values"):
        table.add_column(name, overflow="fold")
    for row in rows:
        table.add_row(str(row["source_row"]), ", ".join(json.loads(row["reasons"])), row["raw"])
    Console(file=sys.stdout).print(table)


def _render_batch(result: dict[str, Any]) -> str:
    lines = [
        f"batch      {result['batch_id']}  {result['source']} [{result['range_start'] or 'start'}, "
        f"{result['range_end'] or 'open'}) as of {result['as_of']}",
        f"rows       read {result['read']:,}  clean {result['clean']:,}  coerced {result['coerced']:,}"
        f"  quarantined {result['quarantined']:,}",
    ]
    lines += [f"  {count:>9,}  {reason}" for reason, count in result["reasons"].items()]
    if result["unknown_columns"]:
        lines.append(f"unknown    {', '.join(result['unknown_columns'])} (reported, not ingested)")
    if result["waiting"]:
        lines.append(f"waiting    {result['waiting']:,} rows dated after as_of + tolerance (read once that time comes)")
    violation = result["violation"]
    verdict = f"{result['status']}"
    if violation:
        verdict += f" by rule '{violation['rule']}': observed {violation['observed']}, limit {violation['limit']}"
    lines.append(f"status     {verdict}")
    return "\n".join(lines)


@app.command()
def serve(
    config: ConfigOption,
    host: Annotated[str | None, typer.Option(help="Address to bind (default: setting serve_host, 127.0.0.1).")] = None,
    port: Annotated[
        int | None, typer.Option(help="Port (default: setting serve_port, 8000).", min=1, max=65535)
    ] = None,
    access_log: Annotated[bool, typer.Option(help="Log every request line (costs throughput).")] = False,
    as_json: JsonOption = False,
) -> None:
    """Serve the model's champion (and canary) over HTTP until stopped (SIGTERM or Ctrl-C flushes the
    prediction log first). Not a Prefect flow: run it under a process manager or in a container."""
    import logging

    model = load_model_config(config)
    settings = get_settings()
    import uvicorn

    from retrain.redaction import install_redaction
    from serving.app import create_app

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    install_redaction(settings.known_secrets())
    bind_host = host or settings.serve_host
    bind_port = port or settings.serve_port
    typer.echo(f"serving '{model.name}' on http://{bind_host}:{bind_port} (warehouse "
               f"{settings.describe()['warehouse']}, registry {settings.describe()['mlflow']})", err=True)
    uvicorn.run(create_app(model, settings), host=bind_host, port=bind_port, access_log=access_log,
                log_level="info", timeout_graceful_shutdown=30)
    finish({"model": model.name, "stopped": True}, as_json, lambda r: f"stopped serving '{r['model']}'")


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
    limit: Annotated[int, typer.Option(help="At most this many, newest first.", min=1)] = 20,
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


# ------------------------------------------------------------------------------------------ release


def person_actor() -> str:
    """Who runs a release command from the shell: `person:<RETRAIN_ACTOR or $USER>`."""
    return f"person:{get_settings().actor}"


@app.command()
def status(
    config: ConfigOption,
    limit: Annotated[int, typer.Option(help="How many ledger rows to show, newest first.", min=1)] = 20,
    as_json: JsonOption = False,
) -> None:
    """Release state: aliases → versions, the canary's traffic share and the latest decisions (no Prefect)."""
    model = load_model_config(config)
    with stdout_to_stderr():
        check_stores_first("warehouse", "mlflow")
        import mlflow
        from mlflow.tracking import MlflowClient

        from retrain.release_state import read_release_state
        from retrain.warehouse import get_warehouse, read_ledger
        from tasks.registry import ledger_summary

        mlflow.set_tracking_uri(get_settings().resolved_tracking_uri())
        state = read_release_state(MlflowClient(), model.name)
        ledger = read_ledger(get_warehouse(), model.name, limit=limit)
    result = {
        "model": model.name,
        "aliases": dict(state.aliases),
        "canary_share": state.canary_share,
        "pending": state.pending,
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
    for entry in result["ledger"]:
        moved = f"{entry['from_version'] or '-'} -> {entry['to_version'] or '-'}"
        lines.append(f"{entry['at']}  {entry['action']:<14} {moved:<9} {entry['actor']}: {entry['reason']}")
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
    as_of: Annotated[str | None, typer.Option("--as-of", help="The release clock, ISO 8601 (default: now).")] = None,
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
    as_of: Annotated[str | None, typer.Option("--as-of", help="The release clock, ISO 8601 (default: now).")] = None,
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
    as_of: Annotated[str | None, typer.Option("--as-of", help="The release clock, ISO 8601 (default: now).")] = None,
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
def rollback(
    config: ConfigOption,
    to: Annotated[str | None, typer.Option("--to", help="A version that was champion before (default: the "
                                                        "`previous` alias).")] = None,
    reason: Annotated[str, typer.Option(help="Why, for the ledger and the versions' descriptions.")] = "",
    as_of: Annotated[str | None, typer.Option("--as-of", help="The release clock, ISO 8601 (default: now).")] = None,
    as_json: JsonOption = False,
) -> None:
    """Give `champion` back to the previous champion (or `--to VERSION`); refused (exit 1) with none."""
    prepare_environment()
    load_model_config(config)
    instant = parse_instant_option(as_of, "--as-of")
    result = _run_release_flow("roll_back_model", config_path=str(config), to_version=to or "", reason=reason,
                               as_of=instant, actor=person_actor())
    _finish_release(result, as_json)


def main() -> None:
    """The console script: stdout is guarded for the whole command, then the group handles errors."""
    with protected_stdout():
        code = app(standalone_mode=False)
    sys.exit(int(code or 0))


if __name__ == "__main__":
    main()
