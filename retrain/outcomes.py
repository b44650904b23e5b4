"""What the training and release flows answer: the results the CLI prints, the demo tells and the flows return.

These are read by every room above the kernel (flows, the CLI, the demo, the backtest), so they live here, where
each can import them without reaching into `tasks/`. Their JSON shape is declared beside their fields
(`retrain.jsonable`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import ClassVar

from retrain.clock import shown
from retrain.errors import ExitCode
from retrain.jsonable import json_field

SKIPPED = "skipped"
GIVEN = "given"
NEWEST_CLEAN_ROW = "newest clean row"


class Verdict(StrEnum):
    """What the gates decided about a trained model."""

    CHAMPION = "champion"  # first model: nothing to beat, the absolute gate was enough
    CHALLENGER = "challenger"  # beat the champion: registered, waits for release
    REJECTED = "rejected"


@dataclass(frozen=True)
class TrainingWindow:
    """The rows one training reads, `[start, end)`, and the instant it trains as of.

    `as_of_given` tells a replay or an operator's choice from the default (just after the newest clean row);
    `lookback` is None for a fixed window.
    """

    json_properties: ClassVar[tuple[str, ...]] = ("as_of_source", "lookback")

    start: datetime
    end: datetime
    as_of: datetime
    as_of_given: bool = json_field(None)
    lookback: timedelta | None = json_field(None)  # written after as_of_source, as a property

    @property
    def as_of_source(self) -> str:
        return GIVEN if self.as_of_given else NEWEST_CLEAN_ROW

    def __str__(self) -> str:
        return f"[{shown(self.start)}, {shown(self.end)})"


@dataclass(frozen=True)
class EarlierTraining:
    """An earlier training on the same snapshot with the same settings: the champion's, the challenger's, or a
    rejection against the current champion (then `version` is None)."""

    decision: str
    version: str | None
    run_id: str | None


@dataclass(frozen=True)
class TrainingOutcome:
    """What one training decided (champion, challenger, rejected or skipped): the CLI's and the API's answer.

    `run_id` is None for a skipped training (nothing was logged), `version` is None unless a version was
    registered; `same_as` names the version a skipped training would have repeated.
    """

    json_properties: ClassVar[tuple[str, ...]] = ("metric",)

    model: str
    decision: str
    reason: str
    fingerprint: str
    rows: int
    window: TrainingWindow
    settings: str
    metric_name: str = json_field(None)
    run_id: str | None = None
    version: str | None = None
    gate: str | None = None
    metric_value: float | None = json_field(None, default=None)
    threshold: float | None = None
    champion_metric: float | None = None
    champion_version: str | None = None
    baseline_metric: float | None = None
    metrics: Mapping[str, float] = field(default_factory=dict)
    baseline: Mapping[str, float] = field(default_factory=dict)
    p_value: float | None = None
    study: str | None = None
    trials: Mapping[str, int] = field(default_factory=dict)
    same_as: EarlierTraining | None = None
    flow_run_id: str | None = None
    # A rejection the same model would meet again against the same champion (an MLflow tag, not printed).
    settled: bool = json_field(None, default=False)
    # Each naive forecaster's holdout score in the metric, by name (median, last-value, seasonal-7d), and the best.
    baselines: Mapping[str, float] = field(default_factory=dict)
    baseline_name: str | None = None
    # What was registered: "refit" (the gated model refitted on the whole window) or "gated" (the gated model).
    released_fit: str | None = None

    @property
    def rejected(self) -> bool:
        return self.decision == Verdict.REJECTED

    @property
    def metric(self) -> dict[str, object]:
        return {"name": self.metric_name, "value": self.metric_value}


@dataclass(frozen=True)
class ReleaseOutcome:
    """What a release, canary check, promotion, rejection or rollback did: the CLI's and the flow's answer."""

    model: str
    action: str  # the ledger action written ("promoted", "rejected", ...) or "none"
    decision: str  # what was decided: canary, champion, promote, reject, rollback, wait, skipped, refused
    reason: str
    from_version: str | None = None
    to_version: str | None = None
    metrics: Mapping[str, float] = field(default_factory=dict)
    exit_code: int = json_field(None, default=int(ExitCode.OK))  # the CLI's exit code, not part of the answer
    flow_run_id: str | None = None
