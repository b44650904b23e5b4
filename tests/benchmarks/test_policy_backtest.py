"""The policy benchmark is a thin caller of `tasks/backtest.py` (its replay is tested in tests/tasks/test_backtest.py):
its one piece of its own, the monitoring-knob override, validates like the YAML."""

from __future__ import annotations

from datetime import timedelta

import pytest

from benchmarks.policy_backtest import REPO, with_knobs
from retrain.config import load_model_config


def test_knobs_override_the_config_policy_and_are_validated() -> None:
    config = load_model_config(REPO / "examples" / "flights.yaml")
    varied = with_knobs(config, ["retrain_every=3d", "min_new_rows=10"])
    assert varied.monitoring.retrain_every == timedelta(days=3) and varied.monitoring.min_new_rows == 10
    assert with_knobs(config, []) is config
    assert with_knobs(config, ["window=1mo"]).monitoring.window.months == 1  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="retrain_every"):
        with_knobs(config, ["retrain_every=soon"])
