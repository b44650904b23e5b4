"""Named pause points, so a test can stop a real process at a chosen step and interleave another one with it.

Off unless the environment asks: `RETRAIN_PAUSE_AT="<point>=<folder>"` makes the process that reaches `<point>`
write `<folder>/paused` (holding its pid) and wait until `<folder>/resume` exists (at most
`PAUSE_LONGEST_SECONDS`). The variable is read only when a point is reached, and costs one lookup of the
environment when it is unset. Points are the steps of an alias transition (`tasks.registry.step_names`, plus
`intent`) and of an ingest (`ingest:recorded`).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

logger = logging.getLogger(__name__)

PAUSE_VARIABLE = "RETRAIN_PAUSE_AT"
PAUSE_LONGEST_SECONDS = 300.0


def pause_point(point: str) -> None:
    """Wait here if the environment names this point (tests only; a no-op otherwise)."""
    asked = os.environ.get(PAUSE_VARIABLE)
    if not asked:
        return
    name, _, folder = asked.partition("=")
    if name != point or not folder:
        return
    paused, resume = Path(folder) / "paused", Path(folder) / "resume"
    paused.write_text(str(os.getpid()), encoding="utf-8")
    logger.warning("paused at %s (pid %d) until %s exists", point, os.getpid(), resume)
    deadline = time.monotonic() + PAUSE_LONGEST_SECONDS
    while not resume.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
