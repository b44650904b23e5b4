"""The names Retrain writes into MLflow and reads back: run tags, run params, version tags, registered-model tags.

One owner for each name, because a name is an interface between rooms: training writes `retrain.window_start`
and monitoring reads it to find the champion's reference window; release writes `retrain.canary_share` and the
prediction server reads it to split traffic. A name spelled twice can drift apart, and a renamed tag would then
fail silently (a lookup that finds nothing), not loudly.
"""

from __future__ import annotations

# --- tags of a training run (and of monitoring runs, where noted) ---------------------------------------------
MODEL = "retrain.model"  # every run of the model, training and monitoring
KIND = "retrain.kind"  # "monitoring" on monitoring runs
FINGERPRINT = "retrain.fingerprint"  # the snapshot's content hash (also a version tag)
SETTINGS = "retrain.settings"  # the digest of the knobs that define the model (also a version tag and a param)
WINDOW_END = "retrain.window_end"  # also a param and a version tag
AS_OF = "retrain.as_of"  # also a param
DECISION = "retrain.decision"  # running, champion, challenger, rejected, skipped, failed, abandoned
REASON = "retrain.reason"
CHAMPION_VERSION = "retrain.champion_version"  # the champion the run was compared with ("none")
SETTLED = "retrain.settled"  # "true": a rejection the same model would meet again
GATE = "retrain.gate"  # the gate that decided (also a version tag)
VERSION = "retrain.version"  # the version registered from the run
STUDY = "retrain.study"  # the Optuna study (also a param)
FLOW_RUN_ID = "prefect.flow_run_id"  # the Prefect flow run that made the MLflow run
FLOW_RUN_NAME = "prefect.flow_run_name"

# --- params of a training run -----------------------------------------------------------------------------------
WINDOW_START = "retrain.window_start"
LOOKBACK = "retrain.lookback"
METRIC = "retrain.metric"
TASK = "retrain.task"
TARGET = "retrain.target"
TRIALS_BUDGET = "retrain.trials_budget"
THRESHOLD = "retrain.threshold"
MARGIN = "retrain.margin"
BASELINE_MARGIN = "retrain.baseline_margin"
ROWS = "retrain.rows"
ROWS_TRAIN = "retrain.rows_train"
ROWS_VALIDATION = "retrain.rows_validation"
ROWS_HOLDOUT = "retrain.rows_holdout"

# --- tags of a model version --------------------------------------------------------------------------------------
GATES = "retrain.gates"  # "passed" on every registered version: only a version that passed may be promoted
HOLDOUT_METRIC = "retrain.holdout_{metric}"  # the version's holdout metric, e.g. retrain.holdout_mae
LAST_ACTION = "retrain.last_action"
ACTION_FACT = "retrain.{action}_{fact}"  # retrain.promoted_at, retrain.registered_by, retrain.rejected_reason, ...

# --- tags of the registered model (release state beside the aliases) ----------------------------------------------
CANARY_SHARE = "retrain.canary_share"  # the canary's share of traffic while a canary runs
INTENT = "retrain.intent"  # a transition being applied (JSON): the next release command finishes it

# --- the model's own metadata (MLmodel) ---------------------------------------------------------------------------
METADATA_KEY = "retrain"  # metadata["retrain"]["features"]: each input column's kind, read by the server


def holdout_metric_tag(metric: str) -> str:
    """The version tag holding the holdout value of `metric` (`retrain.holdout_mae`)."""
    return HOLDOUT_METRIC.format(metric=metric)


def action_fact_tag(action: str, fact: str) -> str:
    """A dated fact about a version: `retrain.promoted_at`, `retrain.registered_by`, `retrain.restored_reason`."""
    return ACTION_FACT.format(action=action, fact=fact)
