"""One run per model at a time across deployments: a Prefect global concurrency limit named after the model.

A deployment's `concurrency_limit: 1` only keeps two runs of *that* deployment apart; the training flow
ingests first, so the ingest deployment and the training deployment of one model would still overlap,
and two trainings started by different means (a trigger, a schedule, the CLI) could both find no champion
and both become it. Both flows hold the model's slot instead: one global concurrency limit per model
(`retrain-model-<name>`, limit 1), taken with Prefect's own `prefect.concurrency.sync.concurrency`. A run
that finds the slot taken waits for it, up to a bound, and then fails with `Busy` (exit 4) saying which
model and limit; nothing was changed.

`hold_model` adds the model's lock on the warehouse (`model:<name>`, `retrain.warehouse.hold_lock`), which
holds on every path, with or without a Prefect server that knows the limit (two CLI commands with
temporary servers of their own, a worker on another server).

Slots are leases: the holder renews its lease while it runs, and a holder that was killed loses the slot
when the lease expires (`LEASE_SECONDS`), so a crash never blocks a model for good.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.client.schemas.objects import ConcurrencyLeaseHolder
from prefect.concurrency.sync import concurrency
from prefect.exceptions import MissingContextError, ObjectAlreadyExists, ObjectNotFound
from prefect.logging import get_run_logger
from prefect.runtime import flow_run

from retrain.config import ModelConfig
from retrain.errors import Busy
from retrain.settings import get_settings
from retrain.warehouse import get_warehouse, hold_lock

logger = logging.getLogger(__name__)

MODEL_LIMIT_PREFIX = "retrain-model-"
MODEL_SLOTS = 1
LEASE_SECONDS = 300.0  # renewed every ~225 s while the run lives; a killed run frees the slot within this


def model_limit_name(model: str) -> str:
    """The global concurrency limit of one model, shared by its ingest and training runs."""
    return f"{MODEL_LIMIT_PREFIX}{model}"


def ensure_model_limit(model: str, slots: int = MODEL_SLOTS) -> str:
    """Create the model's limit if it does not exist (an operator's changed limit is left alone).

    `deployments/operations.py` creates the limits of every deployed model up front, so they show in the
    UI before the first run; this covers runs against a server nobody set up (the CLI's temporary one).
    """
    name = model_limit_name(model)
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            with contextlib.suppress(ObjectAlreadyExists):  # another run created it in between
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=slots))
    return name


@contextlib.contextmanager
def hold_model_slot(model: str, wait_seconds: float | None) -> Iterator[None]:
    """Run the block holding the model's slot; wait up to `wait_seconds` for it (None: as long as it takes).

    Raises:
        Busy: the slot was not free within `wait_seconds`: another ingest or training of this model runs.
    """
    name = ensure_model_limit(model)
    run_id = flow_run.get_id()
    holder = ConcurrencyLeaseHolder(type="flow_run", id=run_id) if run_id else None
    log = _run_logger()
    started = time.monotonic()
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(
                concurrency(
                    name,
                    occupy=1,
                    timeout_seconds=wait_seconds,
                    lease_duration=LEASE_SECONDS,
                    strict=True,
                    holder=holder,
                    # A long training must not be cancelled because one renewal met a network blip.
                    raise_on_lease_renewal_failure=False,
                )
            )
        except TimeoutError:
            raise Busy(
                f"another ingest or training of model '{model}' holds its slot (Prefect global concurrency "
                f"limit '{name}'); waited {wait_seconds:g} s, changed nothing. Try again when it has finished."
            ) from None
        waited = time.monotonic() - started
        if waited >= 1:
            log.info("waited %.0f s for model '%s' (limit '%s') held by another run", waited, model, name)
        yield


@contextlib.contextmanager
def hold_model(config: ModelConfig) -> Iterator[None]:
    """One training of a model at a time: its Prefect slot (seen in the UI), then its warehouse lock.

    Both wait up to the `lock_wait_seconds` setting, then raise `Busy` naming who holds the model.
    """
    wait = get_settings().lock_wait_seconds
    holder = f"training of '{config.name}' (flow run {flow_run.get_name() or '-'})"
    with hold_model_slot(config.name, wait_seconds=wait), hold_lock(
        get_warehouse(), f"model:{config.name}", wait_seconds=wait, holder=holder
    ):
        yield


def _run_logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    try:
        return get_run_logger()
    except MissingContextError:
        return logger
