"""Commands that help choose: `retrain backtest` (which retrain policy pays on this table) and `retrain init`
(a model config and contract sized to a table). Neither runs a flow: no Prefect server, no MLflow run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from retrain.cli.app import (
    ConfigOption,
    JsonOption,
    app,
    check_stores_first,
    finish,
    parse_instant_option,
    prepare_environment,
    stdout_to_stderr,
)
from retrain.config import ModelConfig, load_model_config
from retrain.errors import ConfigError


@app.command()
def backtest(
    config: ConfigOption,
    start: Annotated[str, typer.Option("--start", help="First day replayed (ISO 8601, UTC).")],
    end: Annotated[str, typer.Option("--end", help="The replay stops before this day (ISO 8601, UTC).")],
    policy: Annotated[
        list[str] | None,
        typer.Option("--policy", help="retrain, never, daily, weekly or monthly (repeatable; default: all). Each "
                     "naive forecaster of the gates is a row too."),
    ] = None,
    rounds: Annotated[int, typer.Option(help="LightGBM rounds of every fit (fixed parameters, no Optuna).",
                                        min=1, max=100_000)] = 100,
    chart: Annotated[Path | None, typer.Option("--chart", help="Write the metric by month as HTML here.")] = None,
    settings: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a config field for this replay, by its dotted path "
                     "(monitoring.cooldown=7d, training.refit=false); repeatable."),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Replay [start, end) day by day on the Retrain clock with the flows' own decisions (split, naive forecasters,
    fit, gates, the monitoring policy, canary and rollback rules), once per policy, and compare the metric each
    policy earns on the same rows with its number of trainings. Reads the model's source table, validated by its
    contract; writes nothing to the warehouse, MLflow or Prefect."""
    prepare_environment()
    model = with_settings(load_model_config(config), settings or [])
    first = parse_instant_option(start, "--start")
    last = parse_instant_option(end, "--end")
    assert first is not None and last is not None
    if last <= first:
        raise typer.BadParameter(f"--end {end} must be after --start {start}", param_hint="--end")
    if chart is not None and chart.suffix.lower() not in (".html", ".htm"):
        raise typer.BadParameter(f"{chart}: the chart is written as HTML (name it .html)", param_hint="--chart")
    with stdout_to_stderr():
        check_stores_first("warehouse")
        from tasks.backtest import backtest_chart, parse_policies, read_backtest_rows, run_backtest
        from tasks.monitoring import trigger_policy

        chosen = parse_policies(policy or [])
        frame = read_backtest_rows(model, last)
        result = run_backtest(frame, model, trigger_policy(model), first, last, chosen, rounds,
                              progress=lambda line: typer.echo(line, err=True))
        if chart is not None:
            chart.parent.mkdir(parents=True, exist_ok=True)
            backtest_chart(result).write_html(str(chart), include_plotlyjs=True)
    payload = {
        "model": result.model, "settings": settings or [], "start": result.start, "end": result.end,
        "days": result.days, "rows": result.rows,
        "metric": model.metric, "refit": result.refit, "rounds": result.rounds, "seconds": result.seconds,
        "chart": chart, "policies": [
            {"name": p.name, "metric": p.metric, "value": p.value, "retrains": p.retrains, "by_month": p.by_month,
             "train_seconds": p.train_seconds, "rows": p.rows, "decisions": p.decisions}
            for p in result.policies],
    }
    finish(payload, as_json, render_backtest)


def with_settings(config: ModelConfig, settings: list[str]) -> ModelConfig:
    """The config with `path=value` overrides (values read as YAML), validated like the file."""
    if not settings:
        return config
    raw = config.model_dump(mode="json", exclude_none=True)
    for item in settings:
        path, sep, text = item.partition("=")
        if not sep or not path.strip():
            raise typer.BadParameter(f"'{item}' is not path=value (e.g. monitoring.cooldown=7d)", param_hint="--set")
        node = raw
        *parents, leaf = path.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise typer.BadParameter(f"'{path}' does not name a config field", param_hint="--set")
        node[leaf] = yaml.safe_load(text)
    try:
        updated = ModelConfig.model_validate(raw)
    except ValueError as error:
        raise typer.BadParameter(f"{settings}: {error}", param_hint="--set") from None
    return updated.model_copy(update={"config_path": config.config_path})


def render_backtest(result: dict[str, Any]) -> str:
    """The table a person reads: each policy's metric, against `daily` and `never`, and its trainings."""
    policies = result["policies"]
    by_name = {p["name"]: p for p in policies}
    daily, never = by_name.get("daily"), by_name.get("never")
    width = max(len(p["name"]) for p in policies) + 2
    lines = [f"backtest of {result['model']}: {result['days']} days from {result['start']:%Y-%m-%d} to "
             f"{result['end']:%Y-%m-%d}, {result['rows']:,} rows, {result['metric']} of the model serving each row "
             f"(refit on the whole window: {result['refit']}; {result['rounds']} rounds, {result['seconds']:.0f} s)",
             f"{'policy':<{width}}{result['metric']:>10}{'vs never':>10}{'vs daily':>10}{'trainings':>11}"
             f"{'train s':>9}  decisions"]
    for p in policies:
        versus_never = f"{p['value'] / never['value'] - 1:+.1%}" if never and never["value"] else "-"
        versus_daily = f"{p['value'] / daily['value'] - 1:+.1%}" if daily and daily["value"] else "-"
        decisions = ", ".join(f"{k} {v}" for k, v in p["decisions"].items()) or "-"
        lines.append(f"{p['name']:<{width}}{p['value']:>10.4f}{versus_never:>10}{versus_daily:>10}"
                     f"{p['retrains']:>11}{p['train_seconds']:>9.1f}  {decisions}")
    if result["chart"]:
        lines.append(f"chart: {result['chart']}")
    return "\n".join(lines)



@app.command()
def init(
    table: Annotated[str, typer.Option("--table", help="The source table in the warehouse.")],
    target: Annotated[str, typer.Option("--target", help="The column to predict.")],
    timestamp: Annotated[str, typer.Option("--timestamp", help="The column that orders rows in time.")],
    out: Annotated[Path, typer.Option("--out", help="Where to write the model config (its contract goes beside).")],
    key: Annotated[str | None, typer.Option("--key", help="Columns naming one row, comma-separated (default: "
                                             "found from the data).")] = None,
    task: Annotated[str, typer.Option("--task", help="regression or binary.")] = "regression",
    positive_above: Annotated[float | None, typer.Option(help="Binary task: the label is target > this.")] = None,
    database_url: Annotated[str | None, typer.Option("--database-url", help="Read the table from this database "
                                                     "(default: the warehouse of the settings).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing config and contract.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Read a table (rows a day, span, key candidates, types, nulls) and write a model config and its data contract
    sized to its cadence: lookback, split, minimums, monitoring window, retrain period, canary and rollback, naive
    forecasters; a comment beside each value says what it was derived from."""
    prepare_environment()
    keys = [name.strip() for name in key.split(",") if name.strip()] if key else None
    contract_path = out.with_name(f"{out.stem}.contract.yaml")
    existing = [str(path) for path in (out, contract_path) if path.exists()]
    if existing and not force:
        raise typer.BadParameter(f"{existing} exist already: use --force to overwrite", param_hint="--out")
    with stdout_to_stderr():
        from retrain.config import ModelConfig
        from retrain.contract import write_contract
        from retrain.warehouse import get_warehouse, open_warehouse, read_source_rows
        from tasks.contract import infer_contract
        from tasks.sizing import config_yaml, describe_sizing, profile_table, size_config

        if database_url is None:
            check_stores_first("warehouse")
        warehouse = get_warehouse() if database_url is None else open_warehouse(database_url)
        frame = read_source_rows(warehouse, table, timestamp)
        profile = profile_table(frame, table, timestamp, keys)
        sizing = size_config(profile, target, task, positive_above)
        text = config_yaml(sizing, timestamp, contract_path.name)
        try:
            import yaml

            config = ModelConfig.model_validate(yaml.safe_load(text))
        except ValueError as error:  # a sizing rule that writes an invalid config is our bug: say which
            raise ConfigError(f"retrain init wrote a config that does not validate: {error}") from error
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")
        write_contract(infer_contract(frame, config), contract_path)
        load_model_config(out)  # what every command will do with it
    result = {"config": out.resolve(), "contract": contract_path.resolve(), "table": table, "rows": profile.rows,
              "first": profile.first, "last": profile.last, "rows_per_day": round(profile.rows_per_day, 3),
              "span_days": round(profile.span_days, 2), "step": profile.step,
              "key_candidates": [list(k) for k in profile.key_candidates], "choices": describe_sizing(sizing)}
    finish(result, as_json, render_init)


def render_init(result: dict[str, Any]) -> str:
    lines = [f"read '{result['table']}': {result['rows']:,} rows, {result['rows_per_day']:,} a day over "
             f"{result['span_days']:,} days ({result['first']} to {result['last']})", "chose:"]
    width = max(len(choice["path"]) for choice in result["choices"]) + 2
    for choice in result["choices"]:
        lines.append(f"  {choice['path']:<{width}}{choice['value']!s:<28} {choice['reason']}")
    lines.append(f"wrote {result['config']} and {result['contract']}")
    return "\n".join(lines)
