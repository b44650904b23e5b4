"""Release decisions as pure functions on tiny inline tables: the paired canary analysis, the settle rule of a
canary that ran out of time, the rollback rule on the same rows, and the logged inputs a shadow model reads."""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from retrain.config import CanaryConfig, ReleaseConfig, RollbackConfig
from tasks.release import (
    PROMOTE,
    REJECT,
    WAIT,
    analyse_canary,
    binary_labels,
    compare_paired,
    judge_rollback,
    model_inputs,
    row_losses,
    settle_canary,
)

RULES = CanaryConfig(min_predictions=100, margin=0.05, significance=0.05, max_duration="14d")


def paired_table(factor: float, rows: int = 400, spread: float = 2.0, noise: float = 1.0,
                 labelled: int | None = None) -> pd.DataFrame:
    """Rows served half by each arm, the other version's prediction beside (as the check scores it in shadow):
    the champion's absolute error e, the canary's `factor` × e plus noise; the first `labelled` have matured."""
    generator = np.random.default_rng(3)
    champion_error = np.abs(generator.normal(10.0, spread, rows))
    canary_error = np.abs(champion_error * factor + generator.normal(0.0, noise, rows))
    labelled = rows if labelled is None else labelled
    return pd.DataFrame({
        "arm": np.where(np.arange(rows) % 2 == 0, "champion", "canary"),
        "actual": [20.0 if row < labelled else None for row in range(rows)],
        "champion": 20.0 + champion_error,
        "canary": 20.0 - canary_error,
    })


@pytest.mark.parametrize(
    ("factor", "decision"),
    [(0.8, PROMOTE), (1.0, PROMOTE), (1.3, REJECT), (1.05, WAIT)],
    ids=["better", "equal", "worse", "within-noise"],
)
def test_the_canary_is_promoted_rejected_or_waited_on(factor: float, decision: str) -> None:
    verdict = analyse_canary(paired_table(factor), "mae", RULES)
    assert verdict.decision == decision, verdict.reason
    evidence = verdict.evidence
    assert evidence.comparison.rows == 400 and evidence.canary_rows == evidence.champion_rows == 200
    assert verdict.metrics()["paired_rows"] == 400.0


def test_the_paired_test_sees_a_difference_two_independent_samples_would_not() -> None:
    """Losses on the same rows move together (hard rows are hard for both): pairing them removes that spread."""
    rows = paired_table(1.1, spread=8.0, noise=0.2)
    verdict = analyse_canary(rows, "mae", RULES)
    assert verdict.decision == REJECT, verdict.reason
    canary, champion = np.abs(rows["canary"] - 20.0), np.abs(rows["champion"] - 20.0)
    margin = 0.05 * champion.mean()
    welch = stats.ttest_ind(canary - margin, champion, equal_var=False, alternative="greater").pvalue
    assert welch > 0.05 > verdict.evidence.comparison.p_worse  # what the old unpaired check would have missed


def test_too_few_matured_rows_decides_nothing() -> None:
    verdict = analyse_canary(paired_table(3.0, labelled=99), "mae", RULES)
    assert verdict.decision == WAIT  # however clear the difference on those rows
    assert verdict.reason.startswith("not enough data yet: 99 matured rows scored by both versions (49 served by "
                                     "the canary, 50 by the champion), 100 needed")


def test_non_finite_canary_predictions_reject_it() -> None:
    rows = paired_table(0.8)
    canary_rows = rows.index[rows["arm"] == "canary"][-5:]
    rows.loc[canary_rows, "canary"] = np.nan
    verdict = analyse_canary(rows, "mae", RULES)
    assert verdict.decision == REJECT and "error rate 2.50%" in verdict.reason


def test_paired_comparison_needs_the_same_rows() -> None:
    with pytest.raises(ValueError, match="same rows"):
        compare_paired(np.ones(3), np.ones(4), 0.05)
    empty = compare_paired(np.array([]), np.array([]), 0.05)
    assert (empty.rows, empty.p_worse, empty.within_margin) == (0, None, True)
    constant = compare_paired(np.full(5, 2.0), np.full(5, 1.0), 0.05)  # no spread: the means decide
    assert (constant.p_worse, constant.p_noninferior, constant.within_margin) == (0.0, 1.0, False)


@pytest.mark.parametrize(
    ("running_for", "factor", "gates", "on_timeout", "decision", "words"),
    [
        (timedelta(days=13), 1.0, True, "no-harm", WAIT, "not enough data yet"),
        (None, 1.0, True, "no-harm", WAIT, "not enough data yet"),
        (timedelta(days=14), 1.0, True, "no-harm", PROMOTE, "shows no harm beyond the margin"),
        (timedelta(days=20), 1.15, True, "no-harm", REJECT, "worse than the champion's beyond the margin, though"),
        (timedelta(days=14), 1.0, False, "no-harm", REJECT, "never passed the offline gates"),
        (timedelta(days=14), 1.0, True, "reject", REJECT, "an undecided canary is rejected"),
    ],
    ids=["running", "start-unknown", "no-harm", "harm", "no-gates", "reject-rule"],
)
def test_a_canary_that_ran_out_of_time_is_settled_by_the_declared_rule(
    running_for: timedelta | None, factor: float, gates: bool, on_timeout: str, decision: str, words: str
) -> None:
    rules = CanaryConfig.model_validate({**RULES.model_dump(), "on_timeout": on_timeout, "min_predictions": 10_000})
    verdict = analyse_canary(paired_table(factor), "mae", rules)
    assert verdict.decision == WAIT  # too few rows for the tests: only the clock can end it
    settled = settle_canary(verdict, running_for, gates, rules)
    assert settled.decision == decision and words in settled.reason, settled.reason
    assert settled.settled == (running_for is not None and running_for >= timedelta(days=14))
    if settled.settled:
        assert settled.reason.startswith(f"the canary ran {running_for.days}d on the Retrain clock undecided "  # type: ignore[union-attr]
                                         "(release.canary.max_duration 14d)")


def test_no_live_row_is_no_evidence_of_harm() -> None:
    verdict = analyse_canary(paired_table(5.0, labelled=0), "mae", RULES)
    settled = settle_canary(verdict, timedelta(days=30), True, RULES)
    assert settled.decision == PROMOTE and "no matured row scored by both" in settled.reason


def test_a_decided_canary_is_not_settled_again() -> None:
    verdict = analyse_canary(paired_table(1.3), "mae", RULES)
    assert settle_canary(verdict, timedelta(days=99), True, RULES) is verdict


@pytest.mark.parametrize(
    ("champion_error", "previous_error", "rows", "fires"),
    [(12.0, 10.0, 300, True), (10.0, 12.0, 300, False), (10.2, 10.0, 300, False), (20.0, 10.0, 50, False)],
    ids=["champion-worse", "previous-worse", "within-margin", "too-few-rows"],
)
def test_the_rollback_rule_compares_the_champion_with_the_previous_one_on_the_same_rows(
    champion_error: float, previous_error: float, rows: int, fires: bool
) -> None:
    generator = np.random.default_rng(11)
    hardness = np.abs(generator.normal(1.0, 0.5, rows))  # the same rows are hard for both models
    champion = champion_error * hardness + generator.normal(0, 0.3, rows)
    previous = previous_error * hardness + generator.normal(0, 0.3, rows)
    verdict = judge_rollback(np.abs(champion), np.abs(previous), RollbackConfig(min_predictions=100))
    assert (verdict.breach is not None) == fires, verdict
    assert verdict.comparison.rows == rows and verdict.metrics()["paired_rows"] == rows
    if fires:
        assert verdict.breach.startswith("the champion is worse than the previous champion beyond the margin")


def test_losses_follow_the_metric() -> None:
    actual, predicted = np.array([0.0, 1.0]), np.array([0.2, 0.6])
    assert row_losses(actual, predicted, "mae").tolist() == pytest.approx([0.2, 0.4])
    assert row_losses(actual, predicted, "rmse").tolist() == pytest.approx([0.04, 0.16])
    assert row_losses(actual, predicted, "f1").tolist() == [0.0, 0.0]
    assert row_losses(actual, predicted, "log_loss")[1] == pytest.approx(-np.log(0.6))
    assert binary_labels(np.array([3.0, 30.0]), 15.0).tolist() == [0.0, 1.0]
    assert binary_labels(np.array([0.0, 1.0]), 15.0).tolist() == [0.0, 1.0]


def test_logged_inputs_get_the_timestamp_from_the_event_time_where_a_record_lacked_it() -> None:
    records = pd.DataFrame({"temp": [1.0, 2.0], "time_hour": ["2013-01-01T05:00:00", None]})
    events = pd.Series([datetime(2013, 1, 1, 5), datetime(2013, 1, 2, 7)])
    inputs = model_inputs(records, events, "time_hour")
    assert inputs["time_hour"].tolist() == ["2013-01-01T05:00:00", "2013-01-02T07:00:00"]
    assert model_inputs(records[["temp"]], events, "time_hour")["time_hour"].tolist() == list(events)
    assert records["time_hour"].isna().sum() == 1  # the input is not changed


def test_release_config_refuses_a_zero_approval_timeout_and_reads_canary_durations() -> None:
    with pytest.raises(ValueError, match="approval_timeout must be a positive duration"):
        ReleaseConfig(approval_timeout="0m")
    assert ReleaseConfig(approval_timeout="90m").approval_timeout == timedelta(minutes=90)
    canary = CanaryConfig(max_duration="30d", on_timeout="reject", superseded_by_newer=True)
    assert canary.max_duration == timedelta(days=30) and canary.model_dump(mode="json")["max_duration"] == "30d"
    with pytest.raises(ValueError, match="on_timeout"):
        CanaryConfig(on_timeout="promote")
