"""Commands about data: the example table, the data contract, ingest."""

from __future__ import annotations

import json
import sys
from datetime import datetime
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
from retrain.clock import check_supported
from retrain.config import load_model_config
from retrain.errors import ExitCode
from retrain.jsonable import to_jsonable


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
    if until is not None:
        try:
            check_supported(until)
        except ValueError as error:
            raise typer.BadParameter(str(error), param_hint="--until") from None
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
            again = f" (the same rows as batch {outcome.repeats}: nothing was stored again)" if outcome.repeats else ""
            typer.echo(f"refused: {refusal}{again}", err=True)
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
    if result["already_quarantined"]:
        lines.append(f"           {result['already_quarantined']:,} of the quarantined rows were in quarantine "
                     "already (not stored again)")
    if result["already_clean"] or result["copies"]:
        lines.append(f"there      {result['already_clean']:,} rows equal to rows already clean, {result['copies']:,} "
                     "byte-identical copies (each row lands once)")
    if result["late"]:
        taken = f"landed by batch {result['late_batch']}" if result["late_batch"] else (
            "replay their range, or set batch.late_rows: ingest in the contract")
        lines.append(f"late       {result['late']:,} rows dated before the watermark that no batch had read: {taken}")
    if result["unknown_columns"]:
        lines.append(f"unknown    {', '.join(result['unknown_columns'])} (reported, not ingested)")
    if result["waiting"]:
        lines.append(f"waiting    {result['waiting']:,} rows dated after as_of + tolerance (read once that time comes)")
    violation = result["violation"]
    verdict = f"{result['status']}"
    if violation:
        verdict += f" by rule '{violation['rule']}': observed {violation['observed']}, limit {violation['limit']}"
    if result["repeats"]:
        verdict += f" (the same rows as batch {result['repeats']}, refused before: nothing was stored again)"
    lines.append(f"status     {verdict}")
    return "\n".join(lines)


