"""Commands that help choose: `retrain backtest` (which retrain policy pays on this table) and `retrain init`
(a model config and contract sized to a table). Neither runs a flow: no Prefect server, no MLflow run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

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
from retrain.config import load_model_config


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
    as_json: JsonOption = False,
) -> None:
    """Replay [start, end) day by day on the Retrain clock with the flows' own decisions (split, naive forecasters,
    fit, gates, the monitoring policy, canary and rollback rules), once per policy, and compare the metric each
    policy earns on the same rows with its number of trainings. Reads the model's source table, validated by its
    contract; writes nothing to the warehouse, MLflow or Prefect."""
    prepare_environment()
    model = load_model_config(config)
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
        "model": result.model, "start": result.start, "end": result.end, "days": result.days, "rows": result.rows,
        "metric": model.metric, "refit": result.refit, "rounds": result.rounds, "seconds": result.seconds,
        "chart": chart, "policies": [
            {"name": p.name, "metric": p.metric, "value": p.value, "retrains": p.retrains, "by_month": p.by_month,
             "train_seconds": p.train_seconds, "rows": p.rows, "decisions": p.decisions}
            for p in result.policies],
    }
    finish(payload, as_json, render_backtest)


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

