"""The ingest flows: validate the source rows that arrived since the last batch and land the clean ones.

Wiring only; the work lives in `tasks.ingest` (batch plan, row selection, recording), `tasks.validation`
(coercion, rules, verdict) and `retrain.warehouse` (reads, ledger, writes, the lock). Both flows hold the source's lock
(`source:<table>`) from planning to recording, so two ingests of one source never read the same rows.
"""

from __future__ import annotations

from datetime import datetime

from prefect import flow

from retrain.config import ModelConfig, load_model_config
from retrain.contract import Contract
from retrain.stores import WAREHOUSE
from tasks.failures import record_failed_run
from tasks.ingest import (
    BatchOutcome,
    BatchPlan,
    BatchRefused,
    BatchRows,
    announce_data_arrived,
    check_source_config,
    count_new_rows,
    plan_batch,
    publish_batch_report,
    read_batch_rows,
    read_model_contract,
    record_batch,
    source_lock,
    unchanged_replay,
    validate_new_rows,
)
from tasks.late_rows import find_late_rows, plan_late_batch, takes_late_rows
from tasks.runs import label_flow_run
from tasks.stores import verify_stores
from tasks.validation import REFUSED

__all__ = ["BatchOutcome", "count_new_rows", "ingest_new_rows", "ingest_when_new_rows"]


@flow(name="ingest-new-rows", log_prints=False, on_failure=[record_failed_run], on_crashed=[record_failed_run])
def ingest_new_rows(
    config_path: str,
    start: datetime | None = None,
    end: datetime | None = None,
    as_of: datetime | None = None,
) -> BatchOutcome:
    """Validate the rows in `[start, end)` (default: since the source's watermark) and append the clean ones.

    Args:
        config_path: The model config YAML; the data contract is found beside it.
        start: First instant to read (naive UTC); default the end of the source's last passed batch.
        end: Instant to read up to, excluded; default the newest row dated before `as_of` plus the
            contract's future tolerance (rows dated later have not arrived yet).
        as_of: The run's clock for the future and freshness rules; default `retrain.clock.now()`.

    Raises:
        ConfigError: the config does not fit the source table or contract, or `start` is not before `end`.
        Busy: another ingest of the source held its lock for longer than `lock_wait_seconds`.
        DataContractError: (as `BatchRefused`, carrying the outcome) the batch broke a batch rule; its
            rows were quarantined and recorded, nothing was appended to the clean table.
    """
    verify_stores((WAREHOUSE,))  # the warehouse answers, or the run fails here in seconds saying so

    # configuration, checked against the table and contract before any work
    config = load_model_config(config_path)
    check_source_config(config)
    contract = read_model_contract(config)

    # one writer per source: plan, read, validate and record under its lock
    with source_lock(config):
        # which rows: a new range, or the outcome of an identical ingest whose range holds nothing new since
        plan = plan_batch(config, contract, start=start, end=end, as_of=as_of)
        label_flow_run(config=config, what="ingest", as_of=plan.as_of)
        rows = read_batch_rows(config, plan)
        replayed = unchanged_replay(plan, rows)
        if replayed is not None:
            return replayed

        # late rows (dated before the watermark, read by no batch): counted, or landed first as their own batch
        late = find_late_rows(config, contract, plan, rows)
        late_outcome = land_late_rows(config, contract, plan, late) if takes_late_rows(contract, start, end, late) \
            else None
        return land_batch(config, contract, plan, rows, late=late.count, late_batch=late_outcome)


@flow(name="ingest-when-new-rows", log_prints=False, on_failure=[record_failed_run], on_crashed=[record_failed_run])
def ingest_when_new_rows(
    config_path: str, as_of: datetime | None = None, config: ModelConfig | None = None
) -> BatchOutcome | None:
    """Ingest only if rows arrived since the last batch: what schedules and the training flow call.

    New rows are counted under the source's lock, so when another run has just ingested them this
    returns None ("nothing new") instead of failing on the empty-batch rule; failed runs keep meaning that
    something is wrong. Only rows with a usable timestamp count: a row whose timestamp is null or
    unparseable waits for the next batch that brings dated rows, instead of being a batch of bad rows on
    its own at every poll. An explicit `retrain ingest` still refuses an empty batch.

    Args:
        config_path: The model config YAML; the data contract is found beside it.
        as_of: The run's clock; default `retrain.clock.now()`. A replay passes the instant it replays, so
            rows dated after it (plus the future tolerance) are not read: they have not arrived yet.
        config: The loaded model config, which a parent flow passes so the YAML is read once per run; empty:
            read from `config_path`.

    Returns:
        The batch's outcome, or None when there was nothing new.

    Raises:
        ConfigError, Busy, DataContractError: as `ingest_new_rows`.
    """
    verify_stores((WAREHOUSE,))
    config = config or load_model_config(config_path)
    check_source_config(config)
    contract = read_model_contract(config)

    with source_lock(config):
        plan = plan_batch(config, contract, as_of=as_of)
        label_flow_run(config=config, what="ingest", as_of=plan.as_of)
        rows = read_batch_rows(config, plan)
        late = find_late_rows(config, contract, plan, rows)
        late_outcome = land_late_rows(config, contract, plan, late) if takes_late_rows(contract, None, None, late) \
            else None
        if not rows.timed_count:
            return late_outcome
        return land_batch(config, contract, plan, rows, late=late.count, late_batch=late_outcome)


def land_batch(
    config: ModelConfig,
    contract: Contract,
    plan: BatchPlan,
    rows: BatchRows,
    late: int = 0,
    late_batch: BatchOutcome | None = None,
) -> BatchOutcome:
    """Validate, judge and record a batch (clean + quarantine + ledger in one transaction), then report it."""
    result = validate_new_rows(config, contract, plan, rows)
    outcome = record_batch(config, contract, plan, rows, result, late=late,
                           late_batch=late_batch.batch_id if late_batch is not None else None)
    publish_batch_report(config, outcome, result)

    # abort rule: a refused batch fails the run, so nothing downstream starts
    if outcome.status == REFUSED and outcome.violation is not None:
        raise BatchRefused(outcome.violation, outcome)

    # tell deployments that new clean rows arrived (an empty batch a contract lets pass brings none)
    if outcome.clean:
        announce_data_arrived(config, outcome)
    return outcome


def land_late_rows(config: ModelConfig, contract: Contract, plan: BatchPlan, late: BatchRows) -> BatchOutcome:
    """Land late rows as a batch of their own, judged like any batch; a refusal is recorded (its rows
    quarantined) and does not stop the new rows behind it."""
    late_plan = plan_late_batch(plan, late, contract)
    result = validate_new_rows(config, contract, late_plan, late)
    outcome = record_batch(config, contract, late_plan, late, result)
    publish_batch_report(config, outcome, result)
    if outcome.clean:
        announce_data_arrived(config, outcome)
    return outcome
