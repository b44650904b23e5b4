"""Release state, read: which version each alias names, the canary's share, a transition left half done.

Release state is the registry's aliases (champion, challenger, canary, previous) plus two tags of the registered
model: the canary's traffic share and the intent of a transition being applied. The release tasks change it
(only through `tasks.registry.apply_transition`); `retrain status`, training, monitoring and the prediction server
read it through this one reader, so they never disagree about what is served.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from retrain import mlflow_keys as keys

logger = logging.getLogger(__name__)

CHAMPION, CHALLENGER, CANARY, PREVIOUS = "champion", "challenger", "canary", "previous"
ALIASES = (CHAMPION, CHALLENGER, CANARY, PREVIOUS)


@dataclass(frozen=True)
class ReleaseState:
    """Aliases → version (None where unset), the canary's share, and the action of an interrupted transition."""

    model: str
    aliases: Mapping[str, str | None]
    canary_share: float | None
    pending: str | None = None  # the action of an interrupted transition the next one finishes

    @property
    def champion(self) -> str | None:
        return self.aliases.get(CHAMPION)

    @property
    def canary(self) -> str | None:
        return self.aliases.get(CANARY)


def full_aliases(aliases: Mapping[str, Any]) -> dict[str, str | None]:
    """All four aliases, None for those not set (other aliases a person added are left out)."""
    return {alias: (str(aliases[alias]) if alias in aliases else None) for alias in ALIASES}


def parse_canary_share(value: str | float | None, source: str) -> float | None:
    """A share as release state writes it ("0.1"); None when absent or unusable (logged, never raised: a bad tag
    must not stop the champion from serving).

    Args:
        value: The tag's text, a number, or None.
        source: Where the value came from, for the log line.
    """
    if value is None or value == "":
        return None
    try:
        share = float(value)
    except (TypeError, ValueError):
        logger.warning("canary share %r from %s is not a number; the canary gets no traffic", value, source)
        return None
    if not math.isfinite(share) or not 0 <= share <= 1:
        logger.warning("canary share %r from %s is not in [0, 1]; the canary gets no traffic", value, source)
        return None
    return share


def pending_action(intent: str | None) -> str | None:
    """The action of the transition an intent tag records (None without one, or when it cannot be read)."""
    if not intent:
        return None
    try:
        return str(json.loads(intent)["transition"]["action"])
    except (ValueError, KeyError, TypeError):
        return "unreadable"


def release_state_of(model: str, aliases: Mapping[str, Any], tags: Mapping[str, str]) -> ReleaseState:
    """Release state from a registered model's aliases and tags."""
    share = parse_canary_share(tags.get(keys.CANARY_SHARE), f"tag {keys.CANARY_SHARE} of '{model}'")
    return ReleaseState(model, full_aliases(aliases), share, pending_action(tags.get(keys.INTENT)))


def read_release_state(client: Any, model: str) -> ReleaseState:
    """The release state of `model` in one registry call; a model not registered yet has no aliases.

    Args:
        client: An `mlflow.tracking.MlflowClient` pointed at the registry.
    """
    from mlflow.exceptions import MlflowException

    try:
        registered = client.get_registered_model(model)
    except MlflowException as error:
        if error.error_code == "RESOURCE_DOES_NOT_EXIST":
            return ReleaseState(model, full_aliases({}), None)
        raise
    return release_state_of(model, dict(registered.aliases or {}), dict(registered.tags or {}))
