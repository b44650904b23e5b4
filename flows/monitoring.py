"""The monitoring flow: score new rows with the champion, compare them with its training data, decide.

Wiring only; the work lives in `tasks.monitoring` (I/O) and `monitoring/` (reports, numbers, the policy).
A run ends Completed whatever it decides; a retrain it asks for goes out as the `retrain.retrain.requested`
event, which the train deployment triggers on (that training still has to pass the gates).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

from prefect import flow

from flows.ingest import ingest_when_new_rows
from retrain.config import load_model_config
from tasks.failures import record_failed_run
from tasks.ingest import check_source_config, count_new_rows
from tasks.monitoring import (
    MonitoringOutcome,
    assemble_outcome,
    build_reports,
    decide,
    find_champion_task,
    gather_signals,
    monitoring_actor,
    publish_report,
    read_windows,
    record_decision,
    resolve_as_of_task,
    score_new_rows,
    store_metrics,
)
from tasks.runs import label_flow_run
from tasks.stores import verify_stores


@flow(name="monitor-model", log_prints=False, on_failure=[record_failed_run], on_crashed=[record_failed_run])
def monitor_model(
    config_path: str = "examples/flights.yaml",
    as_of: datetime | None = None,
    manual_reason: str = "",
) -> MonitoringOutcome:
    """Monitor one model as of `as_of`: drift and performance reports, their numbers, a retrain decision.

    Args:
        config_path: The model config YAML (its `monitoring:` section holds the window and the policy).
        as_of: Monitor as of this instant (naive UTC). Empty: just after the newest clean row.
        manual_reason: Non-empty: a person asks for a retrain, with this reason (overrides the cooldown).
    """
    verify_stores()  # warehouse and MLflow answer, or the run fails here in seconds naming which
    config = load_model_config(config_path)
    check_source_config(config)

    # Ingest: rows that arrived up to as_of pass the data contract first (a refused batch fails this run).
    if count_new_rows(config, as_of=as_of):
        ingest_when_new_rows(config_path=config_path, as_of=as_of, config=config)
    instant = resolve_as_of_task(config=config, as_of=as_of)
    label_flow_run(config=config, what="monitor", as_of=instant)

    # The champion and its training window (the reference); without one there is nothing to watch.
    champion = find_champion_task(config=config)
    current = result = None
    scored = 0
    if champion is not None:
        # Batch scoring: new clean rows scored by the champion, with their labels, into the prediction table.
        scored = score_new_rows(config=config, champion=champion, as_of=instant)
        # Reports: reference sample vs the current window; numbers read by name and stored.
        reference, current, history = read_windows(config=config, champion=champion, as_of=instant)
        result = build_reports(config=config, champion=champion, reference=reference, current=current,
                               as_of=instant, history=history)
        if result is not None:
            store_metrics(config=config, champion=champion, current=current, result=result)

    # Decision: one policy over the signals; then MLflow run, artifacts, ledger row and events.
    signals = gather_signals(config=config, champion=champion, current=current, result=result, as_of=instant,
                             manual_reason=manual_reason)
    decision = decide(config=config, signals=signals)
    outcome = assemble_outcome(config, instant, champion, current, result, scored, decision)
    run_id = publish_report(config=config, outcome=outcome, result=result)
    outcome = replace(outcome, mlflow_run_id=run_id)
    record_decision(config=config, outcome=outcome, actor=monitoring_actor(manual_reason))
    return outcome
