"""One exception type per failure a user can act on; each message says what was wrong and what to do."""

from __future__ import annotations

from typing import Any


class RetrainError(Exception):
    """Base class, so the CLI can turn any of ours into a clean message and a non-zero exit."""


class ConfigError(RetrainError):
    """A model config or settings value is missing or malformed."""


class DataError(RetrainError):
    """The data in a window cannot be trained on (missing column, empty window, all-null target)."""


class DataContractError(RetrainError):
    """A batch or snapshot breaks the data contract: names the rule, the observed value and the limit."""

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


class GateFailed(RetrainError):
    """A model failed a release gate; carries the outcome so callers can report it without parsing text.

    Args:
        gate: Which gate failed (`absolute`, `relative`, `infra`).
        metric: The metric the gate looked at.
        value: The challenger's value.
        threshold: The value it had to beat.
        reason: A sentence a user can act on.
        outcome: The training outcome (with `decision="rejected"`), when the flow got that far.
    """

    def __init__(
        self,
        gate: str,
        metric: str,
        value: float | None,
        threshold: float | None,
        reason: str,
        outcome: Any = None,
    ) -> None:
        self.gate = gate
        self.metric = metric
        self.value = value
        self.threshold = threshold
        self.reason = reason
        self.outcome = outcome
        super().__init__(f"{gate} gate failed on {metric}: {reason}")

    def __reduce__(self) -> tuple[Any, ...]:
        # Prefect may pickle a failed state's exception; keep every field across that round trip.
        return (
            self.__class__,
            (self.gate, self.metric, self.value, self.threshold, self.reason, self.outcome),
        )
