"""The demo's steps: months of NYC flights arriving day by day, served and labelled through HTTP, on the Retrain clock.

What a day brings is decided here, pure (which rows arrive, which carry faults, what the server is sent); what
happened is read back from the stores the flows wrote (ledger, batch ledger, prediction log) and summed up per
month. Nothing here decides anything about a model: the flows do, exactly as the deployments would run them.

Faults are realistic and few: a feed that writes "n/a" into a number, an unknown carrier code, a missing tail
number. Most days' faults are a handful of rows (quarantined with their reason, the rest lands); one day's feed is
broken in a fifth of its rows, which the contract refuses whole; the demo then plays the data engineer who fixes
the feed, and the next ingest lands that day.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

import httpx
import numpy as np
import pandas as pd
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from retrain.config import ModelConfig
from retrain.warehouse import (
    LedgerEntry,
    get_warehouse,
    read_batches,
    read_labelled_predictions,
    read_ledger,
    read_window,
    replace_source_rows,
    write_frame,
)

DAY = timedelta(days=1)
REQUEST_RECORDS = 100  # records per /predict request, as a scheduler sending a day's departures would batch them
FAULTS: dict[str, tuple[str, Any]] = {  # what a broken feed writes, and into which column
    "not_integer:distance": ("distance", "n/a"),
    "not_allowed:carrier": ("carrier", "ZZ"),
    "null:tailnum": ("tailnum", None),
}
REFUSED_SHARE = 0.2  # the broken day: a fifth of its rows, far above the contract's max_bad_share


@dataclass(frozen=True)
class DemoPlan:
    """The replay: its first day, how many days, which days bring faults, which day's feed is refused."""

    start: datetime
    days: int
    monitor_every: int
    faulty_days: Mapping[int, str] = field(default_factory=dict)  # day number → fault kind (a few rows)
    refused_day: int | None = None

    @property
    def end(self) -> datetime:
        return self.start + self.days * DAY

    def day(self, number: int) -> datetime:
        return self.start + number * DAY


def plan_replay(start: datetime, days: int, monitor_every: int) -> DemoPlan:
    """Faults on every fifth day (cycling through the kinds) and one refused feed a third into the replay."""
    kinds = list(FAULTS)
    faulty = {number: kinds[(number // 5) % len(kinds)] for number in range(2, days, 5)}
    refused = max(days // 3, 1) if days > 2 else None
    faulty.pop(refused, None)
    return DemoPlan(start, days, monitor_every, faulty, refused)


def rows_between(frame: pd.DataFrame, timestamp: str, start: datetime, end: datetime) -> pd.DataFrame:
    """The rows dated in `[start, end)` (naive UTC), in their order."""
    times = frame[timestamp]
    return frame[(times >= start) & (times < end)].reset_index(drop=True)


def with_faults(rows: pd.DataFrame, kind: str, count: int, seed: int) -> pd.DataFrame:
    """A copy of `rows` whose `count` seeded rows carry the fault `kind` (the column becomes text where needed)."""
    column, value = FAULTS[kind]
    broken = rows.copy()
    chosen = np.random.default_rng(seed).choice(len(rows), size=min(count, len(rows)), replace=False)
    broken[column] = broken[column].astype(object)
    broken.loc[broken.index[chosen], column] = value
    return broken


def records_of(rows: pd.DataFrame, columns: Sequence[str]) -> list[dict[str, Any]]:
    """Rows as a client sends them: JSON records of the given columns (instants as ISO text, nulls as null)."""
    return json.loads(rows[list(columns)].to_json(orient="records", date_format="iso"))


def request_id(record: Mapping[str, Any], key: Sequence[str]) -> str:
    """A flight's request id: its key, so a retried day lands on the same arm and logs nothing twice."""
    return "/".join(str(record[name]) for name in key)


def labels_of(rows: pd.DataFrame, key: Sequence[str], target: str) -> list[dict[str, Any]]:
    """The actual outcome of each row, labelled by request id (the key's text)."""
    records = records_of(rows, [*key, target])
    return [{"request_id": request_id(record, key), "actual": record[target]} for record in records
            if record[target] is not None]


def chunks(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[start:start + size] for start in range(0, len(items), size)]


# ------------------------------------------------------------------------------------------ what happened


STORY_ACTIONS = {"promoted": "promotions", "rolled-back": "rollbacks", "retrain-requested": "retrain_requests"}


@dataclass(frozen=True)
class MonthSummary:
    """One month of the replay: what arrived, what the flows decided, how the served model did."""

    month: str
    rows_in: int
    quarantined: int
    refused_batches: int
    retrains: int
    retrain_reasons: tuple[str, ...]
    rejections: int
    promotions: int
    rollbacks: int
    champion: str | None
    served: int
    labelled: int
    mae: float | None
    naive_mae: float | None
    naive: str | None = None  # which naive forecaster: the best of the model's (`gates.baselines`) on the replay


def month_key(moment: datetime) -> str:
    return f"{moment:%Y-%m}"


def summarise_months(
    batches: pd.DataFrame, ledger: Sequence[LedgerEntry], served: pd.DataFrame, naive: pd.Series,
    start: datetime, end: datetime,
) -> list[MonthSummary]:
    """The summary table, one row per month of `[start, end)` (pure: the frames the stores hold).

    Args:
        batches: The batch ledger of the source (`as_of` places a batch in a month).
        ledger: The model's release ledger (its `at` is the Retrain clock).
        served: Served predictions with `event_at`/`predicted_at`, `version`, `prediction`, `actual`.
        naive: The naive forecaster's prediction for each row of `served` (same index), named after it.
    """
    months = sorted({month_key(start + offset * DAY) for offset in range((end - start).days)})
    time_column = "event_at" if "event_at" in served else "predicted_at"
    served_month = pd.to_datetime(served[time_column]).map(month_key) if len(served) else pd.Series(dtype=object)
    batch_month = pd.to_datetime(batches["as_of"]).map(month_key) if len(batches) else pd.Series(dtype=object)
    summary = []
    champion: str | None = None
    for month in months:
        in_month = [entry for entry in sorted(ledger, key=lambda e: e.at) if month_key(entry.at) == month]
        for entry in in_month:
            if entry.action in ("promoted", "rolled-back") and entry.to_version:
                champion = entry.to_version
        mine = batches[batch_month == month] if len(batches) else batches
        rows = served[served_month == month] if len(served) else served
        matured = rows[rows["actual"].notna()] if len(rows) else rows
        summary.append(MonthSummary(
            month=month,
            rows_in=int(mine["rows_read"].sum()) if len(mine) else 0,
            quarantined=int(mine["rows_quarantined"].sum()) if len(mine) else 0,
            refused_batches=int((mine["status"] == "refused").sum()) if len(mine) else 0,
            retrains=sum(entry.action == "retrain-requested" for entry in in_month),
            retrain_reasons=tuple(entry.reason for entry in in_month if entry.action == "retrain-requested"),
            rejections=sum(entry.action in ("gated-out", "rejected") for entry in in_month),
            promotions=sum(entry.action == "promoted" for entry in in_month),
            rollbacks=sum(entry.action == "rolled-back" for entry in in_month),
            champion=champion,
            served=len(rows),
            labelled=len(matured),
            mae=_mae(matured["actual"], matured["prediction"]) if len(matured) else None,
            naive_mae=_mae(matured["actual"], naive.loc[matured.index]) if len(matured) else None,
            naive=str(naive.name) if naive.name is not None else None,
        ))
    return summary


def _mae(actual: pd.Series, predicted: pd.Series) -> float | None:
    value = float(np.mean(np.abs(actual.to_numpy(dtype="float64") - predicted.to_numpy(dtype="float64"))))
    return value if math.isfinite(value) else None


def story_counts(summary: Sequence[MonthSummary], ledger: Sequence[LedgerEntry]) -> dict[str, int]:
    """What the replay shows, counted: the checks of `retrain demo --json` read these."""
    return {
        "quarantined_batches": 0,  # filled from the batch ledger by the caller
        "refused_batches": sum(month.refused_batches for month in summary),
        "retrain_requests": sum(entry.action == "retrain-requested" for entry in ledger),
        "rejections": sum(entry.action in ("gated-out", "rejected") for entry in ledger),
        "promotions": sum(entry.action == "promoted" for entry in ledger),
        "rollbacks": sum(entry.action == "rolled-back" for entry in ledger),
        "served_predictions": sum(month.served for month in summary),
        "labelled_predictions": sum(month.labelled for month in summary),
    }


@dataclass(frozen=True, eq=False)
class ArrivedDay:
    """A day's flights: as they happened (`clean`, what the server predicts and the labels tell), and as the feed
    delivers them to the source table (`delivered`: with the day's faults, if any)."""

    clean: pd.DataFrame
    delivered: pd.DataFrame
    fault: str | None = None


def arrived_day(flights: pd.DataFrame, timestamp: str, plan: DemoPlan, number: int, seed: int = 2013) -> ArrivedDay:
    """The rows of day `number` of the plan, with its faults (a few rows, or a fifth of them on the refused day)."""
    rows = rows_between(flights, timestamp, plan.day(number), plan.day(number + 1))
    if number == plan.refused_day:
        kind = "not_integer:distance"
        return ArrivedDay(rows, with_faults(rows, kind, math.ceil(len(rows) * REFUSED_SHARE), seed + number), kind)
    kind = plan.faulty_days.get(number)
    if kind is None:
        return ArrivedDay(rows, rows)
    return ArrivedDay(rows, with_faults(rows, kind, 3, seed + number), kind)


# ------------------------------------------------------------------------------------------------ tasks


@task(name="read-example-flights", cache_policy=NO_CACHE)
def read_example_flights() -> pd.DataFrame:
    """The whole NYC flights 2013 example (from the installed package), ordered by time."""
    from tasks.example_data import read_flights_example

    return read_flights_example()


@task(name="load-history", cache_policy=NO_CACHE)
def load_history(config: ModelConfig, flights: pd.DataFrame, before: datetime) -> int:
    """The source table as it stood when the replay begins: every flight dated before `before`."""
    history = flights[flights[config.source.timestamp] < before]
    written = write_frame(get_warehouse(), history, config.source.table, if_exists="replace")
    get_run_logger().info("the source '%s' holds %d flights before %s", config.source.table, written, before)
    return written


@task(name="rows-of-day", cache_policy=NO_CACHE)
def rows_of_day(config: ModelConfig, flights: pd.DataFrame, plan: DemoPlan, number: int) -> ArrivedDay:
    day = arrived_day(flights, config.source.timestamp, plan, number)
    if day.fault is not None:
        get_run_logger().info("day %d brings faults: %s", number + 1, day.fault)
    return day


@task(name="watching-releases", cache_policy=NO_CACHE)
def watching_releases(config: ModelConfig, as_of: datetime) -> bool:
    """Whether the canary check has anything to look at: a canary, or a champion still in its bake window."""
    from mlflow.tracking import MlflowClient

    from retrain.release_state import read_release_state
    from retrain.settings import get_settings
    from retrain.stores import connect_mlflow

    connect_mlflow(get_settings())
    state = read_release_state(MlflowClient(), config.name)
    if state.canary is not None:
        return True
    if state.champion is None:
        return False
    promoted = next((entry for entry in read_ledger(get_warehouse(), config.name)
                     if entry.action in ("promoted", "rolled-back") and entry.to_version == state.champion), None)
    return promoted is not None and as_of - promoted.at < config.release.rollback.bake


@task(name="rows-arrive", cache_policy=NO_CACHE)
def rows_arrive(config: ModelConfig, rows: pd.DataFrame) -> int:
    """The day's rows land in the source table, as a feed would append them."""
    written = write_frame(get_warehouse(), rows, config.source.table, if_exists="append")
    get_run_logger().info("%d rows of %s arrived in '%s'", written, config.name, config.source.table)
    return written


@task(name="fix-the-feed", cache_policy=NO_CACHE)
def fix_the_feed(config: ModelConfig, broken: pd.DataFrame, fixed: pd.DataFrame, start: datetime,
                 end: datetime) -> int:
    """What the data engineer does after a refusal: the day's broken rows in the source are replaced by the
    feed's corrected ones, so the next ingest (its watermark did not move) lands the day."""
    replaced = replace_source_rows(get_warehouse(), config.source.table, config.source.timestamp, start, end, fixed)
    get_run_logger().warning("fixed the feed of %s: %d broken rows of [%s, %s) replaced by %d corrected ones",
                             config.source.table, len(broken), start, end, replaced)
    return replaced


@task(name="serve-the-day", cache_policy=NO_CACHE)
def serve_the_day(url: str, config: ModelConfig, rows: pd.DataFrame) -> int:
    """The day's flights are predicted by the prediction server through HTTP, as a client would ask."""
    columns = list(dict.fromkeys([*config.features.all, *config.source.key]))
    records = records_of(rows, columns)
    answered = 0
    with httpx.Client(base_url=url, timeout=60) as client:
        for part in chunks(records, REQUEST_RECORDS):
            response = client.post("/predict", json={
                "records": list(part), "request_ids": [request_id(record, config.source.key) for record in part]})
            response.raise_for_status()
            answered += len(response.json()["predictions"])
    return answered


@task(name="send-labels", cache_policy=NO_CACHE)
def send_labels(url: str, config: ModelConfig, rows: pd.DataFrame) -> int:
    """The day's actual delays come back through /feedback, by request id."""
    labels = labels_of(rows, config.source.key, config.target.column)
    stored = 0
    with httpx.Client(base_url=url, timeout=60) as client:
        for part in chunks(labels, 1000):
            response = client.post("/feedback", json={"labels": list(part), "source": "demo"})
            response.raise_for_status()
            stored += int(response.json()["new"])
    return stored


@task(name="reload-models", cache_policy=NO_CACHE)
def reload_models(url: str, token: str) -> dict[str, Any]:
    """Ask the server to look at the aliases now (a live server polls; a replay of a day a second cannot wait)."""
    with httpx.Client(base_url=url, timeout=120) as client:
        response = client.post("/reload", headers={"authorization": f"Bearer {token}"})
        response.raise_for_status()
        return dict(response.json())


@task(name="summarise-the-replay", cache_policy=NO_CACHE)
def summarise_replay(config: ModelConfig, start: datetime, end: datetime) -> tuple[list[MonthSummary],
                                                                                    dict[str, int]]:
    """The month table and the story counts, read back from the stores the flows wrote."""
    warehouse = get_warehouse()
    batches = read_batches(warehouse, config.source.table)
    moments = pd.to_datetime(batches["as_of"]) if len(batches) else pd.Series(dtype="datetime64[ns]")
    batches = batches[(moments >= start) & (moments <= end)] if len(batches) else batches
    ledger = [entry for entry in read_ledger(warehouse, config.name) if start <= entry.at <= end]
    served = read_labelled_predictions(warehouse, config.name, start, end, arms=["champion", "canary"])
    naive = naive_predictions(warehouse, config, served)
    summary = summarise_months(batches, ledger, served, naive, start, end)
    counts = story_counts(summary, ledger)
    counts["quarantined_batches"] = int(((batches["rows_quarantined"] > 0) & (batches["status"] == "passed")).sum()) \
        if len(batches) else 0
    return summary, counts


def naive_predictions(warehouse: Any, config: ModelConfig, served: pd.DataFrame) -> pd.Series:
    """The best of the model's naive forecasters (`gates.baselines`, or the defaults for its cadence) on the served
    rows, by the rules monitoring uses (`tasks.monitoring.live_naive_scores`): a constant learned before the replay,
    a last value or a season earlier from the labelled rows before each row, never the row itself. Named after it.
    """
    from retrain.baselines import entity_columns, forecast_all
    from tasks.monitoring import entity_rows, naive_lookback
    from tasks.training import configured_forecasters

    if served.empty:
        return pd.Series(dtype="float64")
    timestamp, target = config.source.timestamp, config.target.column
    times = pd.to_datetime(served["event_at"])
    first, last = times.min().to_pydatetime(), times.max().to_pydatetime()
    forecasters = configured_forecasters(config, times)
    entity = entity_columns(config.source.key, timestamp, config.gates.baseline_group)
    history = read_window(warehouse, config.source.clean, timestamp, first - naive_lookback(config, forecasters),
                          last + DAY, columns=list(dict.fromkeys([timestamp, target, *entity])))
    rows = entity_rows(served, config)
    matured = served["actual"].notna().to_numpy()
    best: pd.Series | None = None
    for forecaster in forecasters:
        predicted = forecast_all([forecaster], history, rows, timestamp=timestamp, target=target,
                                 entity=[column for column in rows.columns if column != timestamp],
                                 known_until=first if forecaster.is_constant else None)[forecaster.name]
        candidate = pd.Series(predicted, index=served.index, name=forecaster.name)
        error = _mae(served["actual"][matured], candidate[matured]) if matured.any() else None
        if best is None or (error is not None and error < best.attrs["mae"]):
            best = candidate
            best.attrs["mae"] = error if error is not None else math.inf
    return best if best is not None else pd.Series(dtype="float64")


def as_date(moment: datetime) -> date:
    return moment.date()
