"""The ingest flow: validate the source rows that arrived since the last batch and land the clean ones.

Wiring only; the work lives in `tasks.validation` (coercion, rules, verdict) and `tasks.warehouse`
(ranges, ledger, writes).
"""

from __future__ import annotations

from datetime import datetime

from prefect import flow

from retrain.config import load_model_config
from tasks.stores import WAREHOUSE, verify_stores
from tasks.validation import (
    REFUSED,
    BatchOutcome,
    BatchRefused,
    announce_data_arrived,
    count_new_rows,
    plan_batch,
    publish_batch_report,
    read_batch_rows,
    read_model_contract,
    record_batch,
    validate_new_rows,
)

__all__ = ["BatchOutcome", "count_new_rows", "ingest_new_rows", "ingest_when_new_rows"]


@flow(name="ingest-new-rows", log_prints=False)
def ingest_new_rows(
    config_path: str,
    start: datetime | None = None,
    end: datetime | None = None,
    reference_time: datetime | None = None,
) -> BatchOutcome:
    """Validate the rows in `[start, end)` (default: since the last passed batch) and append the clean ones.

    Args:
        config_path: The model config YAML; the data contract is found beside it.
        start: First timestamp to read (naive UTC); default the watermark of the last passed batch.
        end: Timestamp to read up to, excluded; default everything there is.
        reference_time: "Now" for the freshness and future-timestamp rules; default the wall clock.

    Raises:
        DataContractError: (as `BatchRefused`, carrying the outcome) the batch broke a batch rule; its
            rows were quarantined and recorded, nothing was appended to the clean table.
    """
    verify_stores((WAREHOUSE,))  # the warehouse answers, or the run fails here in seconds saying so

    # configuration and contract
    config = load_model_config(config_path)
    contract = read_model_contract(config)

    # which rows: a new range, or the outcome of an identical ingest that already passed
    plan = plan_batch(config, start=start, end=end, reference_time=reference_time)
    if plan.replay is not None:
        return plan.replay

    # read, validate, judge, record (clean + quarantine + ledger in one transaction)
    frame = read_batch_rows(config, plan)
    result = validate_new_rows(config, contract, plan, frame)
    outcome = record_batch(config, contract, plan, result)
    publish_batch_report(config, outcome, result)

    # abort rule: a refused batch fails the run, so nothing downstream starts
    if outcome.status == REFUSED and outcome.violation is not None:
        raise BatchRefused(outcome.violation, outcome)

    # tell deployments that new clean rows arrived (an empty batch a contract lets pass brings none)
    if outcome.clean:
        announce_data_arrived(config, outcome)
    return outcome


@flow(name="ingest-when-new-rows", log_prints=False)
def ingest_when_new_rows(config_path: str) -> BatchOutcome | None:
    """Ingest only if rows arrived since the last batch: what schedules and the training flow call.

    A scheduled poll that finds nothing new completes with no batch instead of failing on the empty-batch
    rule, so failed runs keep meaning something is wrong; an explicit `retrain ingest` still refuses an
    empty batch.

    Args:
        config_path: The model config YAML; the data contract is found beside it.
    """
    verify_stores((WAREHOUSE,))
    config = load_model_config(config_path)
    if not count_new_rows(config):
        return None
    return ingest_new_rows(config_path=config_path)
