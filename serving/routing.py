"""Which model answers a request: the champion, or the canary for a stable share of requests.

The arm is a pure function of the request's routing id (the client's request id, or else the record's
key), so a retried request lands on the arm it landed on the first time, whichever server process
answers it, and the canary's share is exact in the long run without any shared counter. The share
itself is release state: the registered model's tag `retrain.canary_share`, set when a canary starts;
`RETRAIN_CANARY_SHARE` overrides it, and without a canary alias every request goes to the champion.
"""

from __future__ import annotations

import hashlib
import logging
import math

logger = logging.getLogger(__name__)

CHAMPION = "champion"
CANARY = "canary"
CANARY_SHARE_TAG = "retrain.canary_share"
_HASH_SPACE = float(2**64)


def routing_point(routing_id: str) -> float:
    """A point in [0, 1) fixed by the id: blake2b, so it is the same in every process and Python version
    (the built-in `hash` of a string is salted per process)."""
    digest = hashlib.blake2b(routing_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / _HASH_SPACE


def choose_arm(routing_id: str, canary_share: float) -> str:
    """`canary` for ids whose point falls below the share, `champion` otherwise."""
    if canary_share <= 0:
        return CHAMPION
    return CANARY if routing_point(routing_id) < canary_share else CHAMPION


def parse_canary_share(value: str | float | None, source: str) -> float | None:
    """A share as release state writes it ("0.1"); None when absent or unusable (logged, never raised:
    a bad tag must not stop the champion from serving).

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


def effective_canary_share(has_canary: bool, tag_value: str | None, override: float | None) -> float:
    """The share the server applies: 0 without a canary; else the override, else the tag, else 0."""
    if not has_canary:
        return 0.0
    if override is not None:
        return override
    return parse_canary_share(tag_value, f"tag {CANARY_SHARE_TAG}") or 0.0
