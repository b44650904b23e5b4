"""Commands about training: train."""

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
from retrain.errors import ExitCode
from retrain.jsonable import to_jsonable
from retrain.settings import get_settings


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
                     min=1, max=1_000_000),
    ] = None,
    timeout: Annotated[float | None, typer.Option(help="Tuning budget in seconds.", min=1, max=30 * 86_400)] = None,
    workers: Annotated[
        int | None,
        typer.Option(help="Parallel tuning workers on the study (overrides tuning.workers; more than 1 needs "
                     "RETRAIN_OPTUNA_STORAGE on PostgreSQL).", min=1, max=256),
    ] = None,
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
    model = load_model_config(config).with_overrides(workers=workers)
    threshold = _threshold_override(model.lower_is_better, model.metric, max_metric, min_metric)
    instant = parse_instant_option(as_of, "--as-of")
    with stdout_to_stderr():
        check_stores_first("warehouse")
        from tasks.tuning import check_workers_storage

        check_workers_storage(model.tuning.workers, get_settings().resolved_optuna_storage())
        from retrain.contract import check_model_source
        from retrain.warehouse import get_warehouse

        check_model_source(model, get_warehouse())  # a config that does not fit fails before Prefect loads
        check_stores_first("mlflow", "optuna", "prefect")
        with prefect_api():
            from flows.training import train_model

            outcome = train_model(
                config_path=str(config), as_of=instant, trials=trials or 0, timeout_seconds=timeout or 0.0,
                threshold=threshold, workers=workers or 0
            )
    code = ExitCode.REFUSED if outcome.rejected else ExitCode.OK
    if code and not as_json:
        typer.echo(f"rejected: {outcome.reason}", err=True)
    finish(to_jsonable(outcome), as_json, _render_training, code)



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
            f"holdout    {metric['name']} = {metric['value']:.4f}  (best naive "
            f"{result.get('baseline_name') or 'baseline'} {result['baseline_metric']:.4f},"
            f" champion {'none' if champion is None else f'{champion:.4f}'}, threshold {result['threshold']})"
        )
        trials = result["trials"]
        lines.append(
            f"tuning     {trials['run_now']} trial(s) run now, {trials['in_study']} in study {result['study']}"
        )
    registered = f" -> version {result['version']}" if result["version"] is not None else " (nothing registered)"
    lines += [f"decision   {result['decision']}{registered}", f"reason     {result['reason']}"]
    return "\n".join(lines)


