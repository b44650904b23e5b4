"""Release gates as pure decisions: absolute threshold, the naive forecasters, then the champion on identical rows.

The baseline gate asks the least a model must do: beat, on the holdout, the best of the naive forecasters a
person would use (the constant its metric rewards, the last value, the same time one season earlier:
`retrain.baselines`) by `gates.baseline_margin`. It moves with the data, where a fixed threshold goes stale: a
drifting target can make a fixed threshold looser than the median, and a model that loses to "the same day last
week" is not worth serving.

The relative gate is a seeded paired bootstrap: rows are resampled together for both models, so the
noise they share cancels, and the challenger passes only when it beats the champion by more than the
margin in all but `significance` of the resamples. A tie never passes.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import mlflow
import numpy as np
import pandas as pd
from mlflow.tracking import MlflowClient
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from retrain import mlflow_keys as keys
from retrain.config import LOWER_IS_BETTER, ModelConfig
from retrain.outcomes import Verdict
from tasks.registry import get_alias_version
from tasks.training import METRIC_FUNCTIONS, FittedModel, is_improvement

BOOTSTRAP_CELLS = 2_000_000  # indices drawn per vectorised step: bounds memory to ~16 MB whatever the rows


@dataclass(frozen=True)
class ChampionScore:
    """The champion's predictions on the challenger's holdout rows, or why there are none.

    `unseen` marks the holdout rows after the champion's training window: a champion refitted on its whole window
    has learned the rows before its window's end, and scoring it on them would hold the challenger to an in-sample
    error. None when the champion's window is unknown.
    """

    version: str
    predictions: np.ndarray | None = None
    error: str | None = None
    unseen: np.ndarray | None = None


@dataclass(frozen=True)
class Decision:
    """What the gates decided and why, with every number a reviewer needs."""

    verdict: Verdict
    gate: str
    reason: str
    metric: str
    value: float
    threshold: float | None
    champion_value: float | None = None
    p_value: float | None = None
    baseline_value: float | None = None
    champion_version: str | None = None
    baseline_name: str | None = None

    @property
    def passed(self) -> bool:
        return self.verdict is not Verdict.REJECTED

    @property
    def settled(self) -> bool:
        """A rejection the same model would meet again against the same champion: a gate that compared
        numbers (threshold, baseline, a bootstrap against a scored champion), not a store that failed."""
        return self.verdict is Verdict.REJECTED and (
            self.gate in ("absolute", "baseline") or (self.gate == "relative" and self.p_value is not None)
        )


def check_threshold(metric: str, value: float, threshold: float | None) -> Decision | None:
    """The absolute gate; None when it passes (or no threshold is configured)."""
    if threshold is None or is_improvement(value, threshold, metric):
        return None
    relation = "below" if LOWER_IS_BETTER[metric] else "above"
    return Decision(
        verdict=Verdict.REJECTED,
        gate="absolute",
        reason=f"holdout {metric} {value:.4f} is not {relation} the threshold {threshold}",
        metric=metric,
        value=value,
        threshold=threshold,
    )


def check_baseline(
    metric: str, value: float, baseline: float | None, margin: float | None, baseline_name: str | None = None
) -> Decision | None:
    """The baseline gate against the best naive forecaster; None when it passes (or `baseline_margin: null`)."""
    if margin is None or baseline is None or is_improvement(value, baseline, metric, margin):
        return None
    relation = "below" if LOWER_IS_BETTER[metric] else "above"
    naive = f"the naive forecaster {baseline_name}'s" if baseline_name else "the naive baseline's"
    return Decision(
        verdict=Verdict.REJECTED,
        gate="baseline",
        reason=(
            f"holdout {metric} {value:.4f} is not {relation} {naive} {baseline:.4f} on the same rows by the margin "
            f"{margin}: the model does no better than {baseline_name or 'a constant'}"
        ),
        metric=metric,
        value=value,
        threshold=None,
        baseline_value=baseline,
        baseline_name=baseline_name,
    )


def paired_bootstrap_p_value(
    y_true: np.ndarray,
    challenger: np.ndarray,
    champion: np.ndarray,
    metric: str,
    margin: float,
    resamples: int,
    seed: int,
) -> float:
    """Share of paired resamples in which the challenger does NOT beat the champion by `margin`.

    Mean-decomposable metrics (MAE, MSE/RMSE, log loss) are computed on per-row losses in bulk; others
    (AUC, R², F1) are recomputed per resample.
    """
    generator = np.random.default_rng(seed)
    rows = len(y_true)
    failures = 0
    done = 0
    while done < resamples:
        count = min(max(BOOTSTRAP_CELLS // rows, 1), resamples - done)
        indices = generator.integers(0, rows, size=(count, rows))
        challenger_scores = _scores(y_true, challenger, indices, metric)
        champion_scores = _scores(y_true, champion, indices, metric)
        better = [is_improvement(c, h, metric, margin) for c, h in zip(challenger_scores, champion_scores, strict=True)]
        failures += count - int(np.sum(better))
        done += count
    return failures / resamples


def _scores(y_true: np.ndarray, predictions: np.ndarray, indices: np.ndarray, metric: str) -> np.ndarray:
    if metric == "mae":
        return np.abs(y_true - predictions)[indices].mean(axis=1)
    if metric == "rmse":
        return np.sqrt(((y_true - predictions) ** 2)[indices].mean(axis=1))
    if metric == "log_loss":
        clipped = np.clip(predictions, 1e-15, 1 - 1e-15)
        losses = -(y_true * np.log(clipped) + (1 - y_true) * np.log(1 - clipped))
        return losses[indices].mean(axis=1)
    function = METRIC_FUNCTIONS[metric]
    return np.array([function(y_true[row], predictions[row]) for row in indices])


def compare_with_champion(
    y_true: np.ndarray,
    challenger: np.ndarray,
    champion: np.ndarray | None,
    metric: str,
    threshold: float | None,
    margin: float,
    resamples: int,
    significance: float,
    seed: int,
    baseline: float | None = None,
    baseline_margin: float | None = None,
    baseline_name: str | None = None,
) -> Decision:
    """All gates but the infra check, in order: absolute, baseline, then relative against the champion.

    Args:
        champion: The champion's predictions on the same rows, or None when there is no champion.
        baseline: The best naive forecaster's score on the same rows (`baseline_name` names it).
        baseline_margin: How much the challenger must beat the baseline by; None turns the gate off.
    """
    y_true = np.asarray(y_true, dtype="float64")
    challenger = np.asarray(challenger, dtype="float64")
    function = METRIC_FUNCTIONS[metric]
    value = function(y_true, challenger)
    failed = check_threshold(metric, value, threshold)
    if failed is None:
        failed = check_baseline(metric, value, baseline, baseline_margin, baseline_name)
    if failed is not None:
        champion_value = None if champion is None else function(y_true, np.asarray(champion, dtype="float64"))
        return replace(failed, champion_value=champion_value, threshold=threshold, baseline_value=baseline,
                       baseline_name=baseline_name)
    if champion is None:
        passed = [] if threshold is None else [f"the threshold {threshold}"]
        if baseline is not None and baseline_margin is not None:
            naive = f"the best naive forecaster ({baseline_name})'s" if baseline_name else "the naive baseline's"
            passed.append(f"{naive} {baseline:.4f} (margin {baseline_margin})")
        return Decision(
            verdict=Verdict.CHAMPION,
            gate="baseline" if baseline_margin is not None else "absolute",
            reason=f"no champion yet; holdout {metric} {value:.4f} beats " + (" and ".join(passed) or "no gate"),
            metric=metric,
            value=value,
            threshold=threshold,
            baseline_value=baseline,
            baseline_name=baseline_name,
        )
    champion = np.asarray(champion, dtype="float64")
    champion_value = function(y_true, champion)
    p_value = paired_bootstrap_p_value(y_true, challenger, champion, metric, margin, resamples, seed)
    beats = is_improvement(value, champion_value, metric, margin) and p_value < significance
    comparison = (
        f"challenger {metric} {value:.4f} vs champion {champion_value:.4f} on {len(y_true)} identical rows, "
        f"margin {margin}, paired bootstrap p={p_value:.3f} (needs < {significance})"
    )
    return Decision(
        verdict=Verdict.CHALLENGER if beats else Verdict.REJECTED,
        gate="relative",
        reason=("beats the champion: " if beats else "does not beat the champion: ") + comparison,
        metric=metric,
        value=value,
        threshold=threshold,
        champion_value=champion_value,
        p_value=p_value,
        baseline_value=baseline,
        baseline_name=baseline_name,
    )


def champion_unscorable(metric: str, value: float, threshold: float | None, error: str) -> Decision:
    """Fail closed: a champion that exists but cannot be scored blocks the challenger."""
    return Decision(
        verdict=Verdict.REJECTED,
        gate="relative",
        reason=f"the champion could not be scored on the holdout, so no comparison is possible: {error}",
        metric=metric,
        value=value,
        threshold=threshold,
    )


def unseen_rows(times: pd.Series, champion_window_end: str | None) -> np.ndarray | None:
    """Which rows come at or after the champion's training window end (ISO text, its version's tag)."""
    if not champion_window_end:
        return None
    return (pd.to_datetime(times) >= pd.Timestamp(champion_window_end)).to_numpy()


def rows_to_compare(champion: ChampionScore, rows: int, min_rows: int) -> tuple[np.ndarray, str]:
    """The holdout rows the relative gate compares on, and how to say which: those the champion has not seen when
    there are at least `min_rows` of them; otherwise all of them (the champion may have fitted some: the gate is
    then stricter on the challenger, never looser), said so in the reason."""
    every = np.ones(rows, dtype=bool)
    if champion.unseen is None:
        return every, ""
    unseen = int(champion.unseen.sum())
    if unseen == rows:
        return every, ""
    if unseen >= min_rows:
        return champion.unseen, f" (the {unseen} holdout rows after the champion's training window)"
    return every, (f" (the champion's window covers {rows - unseen} of these rows: only {unseen} are new to it, "
                   f"fewer than {min_rows}, so the champion is scored on rows it may have fitted)")


def score_champion(
    client: MlflowClient, model_name: str, holdout: pd.DataFrame, timestamp: str | None = None
) -> ChampionScore | None:
    """Predict the raw holdout rows with the current champion; None when there is no champion.

    The champion gets the rows as they are in the table, like any user of the registered model, and
    takes the columns its own signature names. Any failure to load or predict comes back as an error,
    which the gate treats as a failure: a challenger is never released because the champion happened
    to be unreadable.
    """
    version = get_alias_version(client, model_name, "champion")
    if version is None:
        return None
    try:
        champion = mlflow.pyfunc.load_model(f"models:/{model_name}@champion")
        schema = champion.metadata.get_input_schema()
        rows = holdout[schema.input_names()] if schema is not None else holdout
        predictions = np.asarray(champion.predict(rows), dtype="float64").ravel()
    except Exception as error:  # noqa: BLE001 - every failure means "cannot compare": fail closed
        return ChampionScore(version=version, error=f"champion v{version}: {type(error).__name__}: {error}")
    if len(predictions) != len(holdout):
        return ChampionScore(version=version, error=f"champion v{version} returned {len(predictions)} predictions "
                             f"for {len(holdout)} rows")
    unseen = None
    if timestamp is not None and timestamp in holdout:
        unseen = unseen_rows(holdout[timestamp], client.get_model_version(model_name, version).tags.get(
            keys.WINDOW_END))
    return ChampionScore(version=version, predictions=predictions, unseen=unseen)


# --- Prefect tasks -------------------------------------------------------------------------------


@task(name="compare-with-champion", cache_policy=NO_CACHE)
def decide_release(fitted: FittedModel, champion: ChampionScore | None, config: ModelConfig) -> Decision:
    """Apply the gates to the challenger's holdout predictions and the champion's, on the same rows."""
    gates = config.gates
    metrics = fitted.metrics
    if champion is not None and champion.error is not None:
        failed = check_threshold(config.metric, metrics.value, gates.threshold) or check_baseline(
            config.metric, metrics.value, metrics.baseline, gates.baseline_margin, metrics.baseline_name
        )
        decision = replace(
            failed or champion_unscorable(config.metric, metrics.value, gates.threshold, champion.error),
            threshold=gates.threshold,
            baseline_value=metrics.baseline,
            baseline_name=metrics.baseline_name,
        )
    elif champion is None:
        decision = compare_with_champion(
            fitted.holdout_target, fitted.holdout_predictions, None, config.metric, gates.threshold, gates.margin,
            gates.bootstrap_resamples, gates.significance, seed=config.tuning.seed, baseline=metrics.baseline,
            baseline_margin=gates.baseline_margin, baseline_name=metrics.baseline_name,
        )
    else:
        # Threshold and naive forecasters on the whole holdout; the champion on the rows it has not fitted.
        compared, which = rows_to_compare(champion, len(fitted.holdout_target), config.split.min_rows)
        failed = check_threshold(config.metric, metrics.value, gates.threshold) or check_baseline(
            config.metric, metrics.value, metrics.baseline, gates.baseline_margin, metrics.baseline_name
        )
        if failed is not None:
            champion_value = METRIC_FUNCTIONS[config.metric](fitted.holdout_target[compared],
                                                             champion.predictions[compared])
            decision = replace(failed, threshold=gates.threshold, champion_value=champion_value)
        else:
            decision = compare_with_champion(
                fitted.holdout_target[compared], fitted.holdout_predictions[compared], champion.predictions[compared],
                config.metric, None, gates.margin, gates.bootstrap_resamples, gates.significance,
                seed=config.tuning.seed,
            )
            decision = replace(decision, threshold=gates.threshold, baseline_value=metrics.baseline,
                               baseline_name=metrics.baseline_name, reason=decision.reason + which)
    decision = replace(decision, champion_version=None if champion is None else champion.version)
    get_run_logger().info("gates: %s (%s)", decision.verdict, decision.reason)
    return decision
