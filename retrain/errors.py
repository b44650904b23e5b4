"""One exception type per failure a user can act on; each message says what was wrong and what to do.

Each type carries the exit code the CLI ends with, so the same outcome exits the same way in every
command (the table is in the README):

| code | meaning |
|---|---|
| 0 | done, or skipped (nothing new) |
| 1 | refused (a batch broke the data contract) or rejected (a model failed a gate) |
| 2 | a user error: bad option, config, settings or data the run cannot use |
| 3 | an infrastructure or internal failure: a store is unreachable, or a bug |
| 4 | busy: another run of the same model or source holds the lock; try again later |
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any


class ExitCode(IntEnum):
    OK = 0
    REFUSED = 1
    USAGE = 2
    FAILURE = 3
    BUSY = 4


class RetrainError(Exception):
    """Base class, so the CLI can turn any of ours into a clean message and its exit code."""

    exit_code: ExitCode = ExitCode.FAILURE


class ConfigError(RetrainError):
    """A model config or settings value is missing or malformed."""

    exit_code = ExitCode.USAGE


class DataError(RetrainError):
    """The data in a window cannot be trained on (missing column, empty window, all-null target)."""

    exit_code = ExitCode.USAGE


class StoreUnavailable(RetrainError):
    """A store (warehouse, MLflow, Optuna storage, Prefect API) cannot be reached: an outage, not a verdict."""

    exit_code = ExitCode.FAILURE


class Busy(RetrainError):
    """Another run of the same model or source holds its lock; nothing was changed."""

    exit_code = ExitCode.BUSY


class DataContractError(RetrainError):
    """A batch or snapshot breaks the data contract: names the rule, the observed value and the limit."""

    exit_code = ExitCode.REFUSED

    def __init__(self, rule: str, observed: Any, limit: Any, detail: str = "") -> None:
        self.rule = rule
        self.observed = observed
        self.limit = limit
        self.detail = detail
        message = f"data contract rule '{rule}' failed: observed {observed}, limit {limit}"
        super().__init__(f"{message}. {detail}".strip() if detail else message)

    def __reduce__(self) -> tuple[Any, ...]:
        # Prefect may pickle a failed state's exception; rebuild it from its fields, not its message.
        return (self.__class__, (self.rule, self.observed, self.limit, self.detail))
