"""The flows' check of their stores, before any work: the Prefect task around `retrain.stores.check_stores`."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from retrain.redaction import install_redaction
from retrain.settings import get_settings
from retrain.stores import STORES, StoreStatus, check_stores


@task(name="check-stores", cache_policy=NO_CACHE)
def verify_stores(stores: tuple[str, ...] = STORES) -> tuple[StoreStatus, ...]:
    """Fail the run before any work when a store is down or misconfigured, naming the store.

    Also puts the redaction filter on this process's log handlers (a worker runs flows without our CLI),
    so nothing the run logs afterwards carries a password to the console or to Prefect's database.
    """
    settings = get_settings()
    install_redaction(settings.known_secrets())
    statuses = check_stores(settings, stores)
    log = get_run_logger()
    for status in statuses:
        log.info("%s answered in %.2f s: %s", status.store, status.seconds, status.location)
    return statuses
