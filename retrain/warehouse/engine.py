"""The warehouse handle: one SQLAlchemy engine per URL and process, and the schema every table lives in.

Every query in `retrain.warehouse` is built with SQLAlchemy Core, so values are bound parameters and names are
quoted by the dialect; the same code runs on SQLite and PostgreSQL. Callers hold a `Warehouse` (engine and
schema) and pass it first.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from retrain.settings import get_settings, redact_url

logger = logging.getLogger(__name__)

WRITE_CHUNK_ROWS = 50_000  # measured: ~20% faster than one chunk on SQLite; method="multi" is 13x slower


# ------------------------------------------------------------------------------------------- the handle


@dataclass(frozen=True)
class Warehouse:
    """Where the tables live: an engine (one connection pool per URL and process) and the schema of every
    table read or written (None: the database's default)."""

    engine: Engine
    schema: str | None = None

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @property
    def url(self) -> str:
        """The URL without its password: safe to print."""
        return self.engine.url.render_as_string(hide_password=True)

    def name_of(self, table: str) -> str:
        """The table as a person would write it, schema included."""
        return f"{self.schema}.{table}" if self.schema else table


@lru_cache(maxsize=8)
def create_warehouse_engine(url: str) -> Engine:
    """One engine per URL per process: engines hold the connection pool, so they are made once."""
    engine = sa.create_engine(url, future=True)
    if engine.dialect.name == "sqlite":
        # A monitoring or serving process may read while a flow writes: wait instead of failing.
        sa.event.listen(engine, "connect", _configure_sqlite)
    logger.debug("warehouse engine for %s", redact_url(url))
    return engine


def _configure_sqlite(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def open_warehouse(url: str, schema: str | None = None) -> Warehouse:
    """The warehouse at `url` (engine shared per process) with `schema`."""
    return Warehouse(create_warehouse_engine(url), schema)


def get_warehouse() -> Warehouse:
    """The warehouse named by the settings of this process."""
    settings = get_settings()
    url = settings.resolved_warehouse_url()
    if url.startswith("sqlite:///"):
        settings.resolved_home.mkdir(parents=True, exist_ok=True)
    return open_warehouse(url, settings.warehouse_schema)

