"""Release decisions as pure functions: the canary analysis on tiny prediction tables, the rollback rule."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pandas as pd
import pytest

from retrain.config import CanaryConfig, ReleaseConfig, RollbackConfig
from tasks.release import PROMOTE, REJECT, WAIT, analyse_canary, binary_labels, breaches_rollback_rule, row_losses

RULES = CanaryConfig(min_predictions=100, margin=0.05, significance=0.05)


def arm_rows(arm: str, errors: np.ndarray, labelled: int | None = None) -> pd.DataFrame:
    """Predictions of one arm whose absolute errors are `errors`; only the first `labelled` have matured."""
    actual = np.full(len(errors), 20.0)
    labelled = len(errors) if labelled is None else labelled
    return pd.DataFrame({
        "arm": arm,
        "prediction": actual + errors,
        "actual": [value if row < labelled else None for row, value in enumerate(actual)],
    })


def table(champion_error: float, canary_error: float, rows: int = 400, labelled: int | None = None) -> pd.DataFrame:
    generator = np.random.default_rng(3)
    champion = np.abs(generator.normal(champion_error, 2.0, rows))
    canary = np.abs(generator.normal(canary_error, 2.0, rows))
    return pd.concat([arm_rows("champion", champion), arm_rows("canary", canary, labelled)], ignore_index=True)


@pytest.mark.parametrize(
    ("champion", "canary", "decision"),
    [(10.0, 8.0, PROMOTE), (10.0, 10.0, PROMOTE), (10.0, 13.0, REJECT), (10.0, 10.5, WAIT)],
    ids=["better", "equal", "worse", "within-noise"],
)
def test_the_canary_is_promoted_rejected_or_waited_on(champion: float, canary: float, decision: str) -> None:
    verdict = analyse_canary(table(champion, canary), "mae", RULES)
    assert verdict.decision == decision, verdict.reason
    assert verdict.canary.matured == verdict.champion.matured == 400


def test_too_few_matured_labels_decides_nothing() -> None:
    verdict = analyse_canary(table(10.0, 30.0, labelled=99), "mae", RULES)
    assert verdict.decision == WAIT and verdict.p_worse is None
    assert verdict.reason.startswith("not enough data yet: 99 matured canary and 400 matured champion predictions")


def test_non_finite_canary_predictions_reject_it() -> None:
    rows = table(10.0, 8.0)
    rows.loc[rows.index[-10:], "prediction"] = np.nan
    verdict = analyse_canary(rows, "mae", RULES)
    assert verdict.decision == REJECT and "error rate 2.50%" in verdict.reason


def test_losses_follow_the_metric() -> None:
    actual, predicted = np.array([0.0, 1.0]), np.array([0.2, 0.6])
    assert row_losses(actual, predicted, "mae").tolist() == pytest.approx([0.2, 0.4])
    assert row_losses(actual, predicted, "rmse").tolist() == pytest.approx([0.04, 0.16])
    assert row_losses(actual, predicted, "f1").tolist() == [0.0, 0.0]
    assert row_losses(actual, predicted, "log_loss")[1] == pytest.approx(-np.log(0.6))
    assert binary_labels(np.array([3.0, 30.0]), 15.0).tolist() == [0.0, 1.0]
    assert binary_labels(np.array([0.0, 1.0]), 15.0).tolist() == [0.0, 1.0]


@pytest.mark.parametrize(
    ("live", "matured", "metric", "breach"),
    [(12.0, 500, "mae", False), (12.1, 500, "mae", True), (20.0, 10, "mae", False), (0.79, 500, "auc", True),
     (0.81, 500, "auc", False)],
)
def test_the_rollback_rule(live: float, matured: int, metric: str, breach: bool) -> None:
    rules = RollbackConfig(max_degradation=0.2, min_predictions=100)
    holdout = 10.0 if metric == "mae" else 1.0
    reason = breaches_rollback_rule(live, matured, holdout, metric, rules)
    assert (reason is not None) == breach, reason


def test_release_config_refuses_a_zero_approval_timeout() -> None:
    with pytest.raises(ValueError, match="approval_timeout must be a positive duration"):
        ReleaseConfig(approval_timeout="0m")
    assert ReleaseConfig(approval_timeout="90m").approval_timeout == timedelta(minutes=90)
