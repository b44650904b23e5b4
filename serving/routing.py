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

logger = logging.getLogger(__name__)

CHAMPION = "champion"
CANARY = "canary"
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


def effective_canary_share(has_canary: bool, tagged: float | None, override: float | None) -> float:
    """The share the server applies: 0 without a canary; else the override, else the release state's share (the
    tag, already parsed by `retrain.release_state`), else 0."""
    if not has_canary:
        return 0.0
    if override is not None:
        return override
    return tagged or 0.0
