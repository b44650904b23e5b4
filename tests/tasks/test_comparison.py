"""The gates as pure decisions: threshold, then a paired bootstrap against the champion."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from retrain.outcomes import Verdict
from tasks.comparison import (
    ChampionScore,
    champion_unscorable,
    check_baseline,
    compare_with_champion,
    paired_bootstrap_p_value,
    rows_to_compare,
    unseen_rows,
)

pytestmark = pytest.mark.model


RNG = np.random.default_rng(0)
Y = RNG.normal(10.0, 5.0, size=2000)
GOOD = Y + RNG.normal(0.0, 1.0, size=2000)
BAD = Y + RNG.normal(0.0, 4.0, size=2000)
LABELS = (RNG.random(2000) < 0.3).astype(float)
SHARP = np.clip(LABELS * 0.7 + RNG.random(2000) * 0.3, 0, 1)
BLURRED = np.clip(LABELS * 0.1 + RNG.random(2000) * 0.9, 0, 1)


def decide(challenger: np.ndarray, champion: np.ndarray | None, metric: str = "mae", threshold: float | None = 10.0,
           margin: float = 0.0, y: np.ndarray = Y, baseline: float | None = None, baseline_margin: float | None = None):
    return compare_with_champion(y, challenger, champion, metric, threshold, margin, 500, 0.05, seed=1,
                                 baseline=baseline, baseline_margin=baseline_margin)


def test_first_model_passes_on_the_threshold_alone() -> None:
    decision = decide(GOOD, None)
    assert decision.verdict is Verdict.CHAMPION and decision.passed
    assert decision.champion_value is None


def test_threshold_failure_rejects_naming_metric_value_and_threshold() -> None:
    decision = decide(BAD, None, threshold=1.0)
    assert decision.verdict is Verdict.REJECTED and decision.gate == "absolute"
    assert "mae" in decision.reason and "threshold 1.0" in decision.reason
    assert f"{decision.value:.4f}" in decision.reason


def test_a_tie_with_the_champion_is_rejected() -> None:
    decision = decide(GOOD, GOOD.copy())
    assert decision.verdict is Verdict.REJECTED and decision.gate == "relative"
    assert decision.p_value == 1.0


def test_a_worse_challenger_is_rejected() -> None:
    decision = decide(BAD, GOOD)
    assert decision.verdict is Verdict.REJECTED and decision.value > decision.champion_value


def test_a_clearly_better_challenger_wins() -> None:
    decision = decide(GOOD, BAD)
    assert decision.verdict is Verdict.CHALLENGER
    assert decision.p_value < 0.05 and decision.champion_value > decision.value


def test_a_better_challenger_within_the_margin_is_rejected() -> None:
    gap = float(np.mean(np.abs(Y - BAD)) - np.mean(np.abs(Y - GOOD)))
    assert decide(GOOD, BAD, margin=gap * 0.5).verdict is Verdict.CHALLENGER
    assert decide(GOOD, BAD, margin=gap * 1.5).verdict is Verdict.REJECTED


def test_a_noise_level_improvement_is_not_significant() -> None:
    nudged = GOOD.copy()
    nudged[:3] = Y[:3]  # three rows slightly better out of 2000
    decision = decide(nudged, GOOD)
    assert decision.value < decision.champion_value
    assert decision.verdict is Verdict.REJECTED and decision.p_value >= 0.05


@pytest.mark.parametrize("metric", ["auc", "log_loss", "f1"])
def test_classification_metrics_follow_their_direction(metric: str) -> None:
    threshold = 0.5 if metric != "log_loss" else 5.0
    assert decide(SHARP, BLURRED, metric=metric, threshold=threshold, y=LABELS).verdict is Verdict.CHALLENGER
    assert decide(BLURRED, SHARP, metric=metric, threshold=threshold, y=LABELS).verdict is Verdict.REJECTED


@pytest.mark.parametrize("metric", ["mae", "rmse", "r2"])
def test_bootstrap_is_seeded(metric: str) -> None:
    first = paired_bootstrap_p_value(Y, GOOD, BAD, metric, 0.0, 300, seed=5)
    assert first == paired_bootstrap_p_value(Y, GOOD, BAD, metric, 0.0, 300, seed=5)


def test_unscorable_champion_fails_closed() -> None:
    decision = champion_unscorable("mae", 3.0, 10.0, "champion v1: OSError: no such file")
    assert not decision.passed and "could not be scored" in decision.reason and "OSError" in decision.reason


@pytest.mark.parametrize(
    ("metric", "value", "baseline", "margin", "passes"),
    [("mae", 3.0, 4.0, 0.5, True), ("mae", 3.8, 4.0, 0.5, False), ("mae", 4.0, 4.0, 0.0, False),
     ("auc", 0.7, 0.5, 0.02, True), ("auc", 0.51, 0.5, 0.02, False), ("mae", 9.0, 4.0, None, True)],
    ids=["beats", "within-margin", "tie", "auc-beats", "auc-within-margin", "gate-off"],
)
def test_baseline_gate(metric: str, value: float, baseline: float, margin: float | None, passes: bool) -> None:
    failed = check_baseline(metric, value, baseline, margin)
    assert (failed is None) is passes
    if failed is not None:
        assert failed.gate == "baseline" and f"{baseline:.4f}" in failed.reason and str(margin) in failed.reason


def test_a_first_model_worse_than_the_median_never_becomes_champion() -> None:
    """A loose absolute threshold (what the example had: MAE < 40) must not let a constant-beater through."""
    worse = Y + RNG.normal(0.0, 8.0, size=len(Y))
    median = float(np.mean(np.abs(Y - np.median(Y))))
    decision = decide(worse, None, threshold=40.0, baseline=median, baseline_margin=0.0)
    assert decision.value > median and decision.verdict is Verdict.REJECTED and decision.gate == "baseline"
    assert decision.baseline_value == median and decision.threshold == 40.0


def test_the_champion_is_compared_on_the_rows_after_its_window_when_there_are_enough() -> None:
    times = pd.Series(pd.date_range("2013-03-01", periods=10, freq="D"))
    unseen = unseen_rows(times, "2013-03-05T00:00:00")
    assert unseen.tolist() == [False] * 4 + [True] * 6 and unseen_rows(times, None) is None
    score = ChampionScore(version="1", predictions=np.zeros(10), unseen=unseen)
    mask, reason = rows_to_compare(score, 10, min_rows=5)
    assert mask.tolist() == unseen.tolist() and "6 holdout rows after the champion's training window" in reason
    every, why = rows_to_compare(score, 10, min_rows=7)  # too few new rows: all of them, said so
    assert every.all() and "only 6 are new to it" in why
    assert rows_to_compare(ChampionScore(version="1", predictions=np.zeros(10)), 10, 5)[0].all()
