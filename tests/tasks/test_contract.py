"""The data contract: inference from real rows, widening, YAML round trip, and refusal of bad contracts."""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from retrain.config import ModelConfig, load_model_config
from retrain.contract import (
    ColumnType,
    Contract,
    contract_from_yaml,
    contract_to_yaml,
    read_contract,
    write_contract,
)
from retrain.errors import ConfigError
from tasks.contract import grows_with_time, infer_column_rule, infer_contract, widen_range
from tasks.validation import judge_batch, validate_batch

pytestmark = pytest.mark.data

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_CONFIG = REPO / "examples" / "flights.yaml"
EXAMPLE_CONTRACT = REPO / "examples" / "flights.contract.yaml"
NOW = datetime(2026, 11, 25)


@pytest.fixture(scope="module")
def january_contract(flights_small: pd.DataFrame) -> Contract:
    return infer_contract(flights_small, load_model_config(EXAMPLE_CONFIG))


def test_infer_reads_types_nulls_and_sets_from_real_rows(january_contract: Contract) -> None:
    columns = january_contract.columns

    assert columns["dep_time"].type is ColumnType.INTEGER  # stored as float by pandas, every value whole
    assert columns["temp"].type is ColumnType.FLOAT
    assert columns["time_hour"].type is ColumnType.DATETIME
    assert columns["origin"].allowed == ["EWR", "JFK", "LGA"]
    assert columns["tailnum"].allowed is None and columns["tailnum"].max_length == 16
    assert columns["wind_gust"].nullable and not columns["carrier"].nullable
    assert january_contract.key == ["time_hour", "carrier", "flight", "origin"]
    assert january_contract.timestamp == "time_hour"


def test_infer_sets_a_row_band_that_takes_the_first_whole_table_and_refuses_empty(
    flights_all: pd.DataFrame,
) -> None:

    contract = infer_contract(flights_all.iloc[:1000], load_model_config(EXAMPLE_CONFIG))
    full = infer_contract(flights_all, load_model_config(EXAMPLE_CONFIG))

    assert contract.batch.min_rows == full.batch.min_rows == 1
    assert full.batch.max_rows is not None and full.batch.max_rows >= len(flights_all)


def test_rows_satisfy_the_contract_inferred_from_them(flights_small: pd.DataFrame, january_contract: Contract) -> None:
    result = validate_batch(flights_small, january_contract, NOW)

    assert (result.read, result.clean_count, result.reasons) == (len(flights_small), len(flights_small), {})


def test_next_months_real_rows_pass_a_contract_inferred_on_january(
    flights_all: pd.DataFrame, january_contract: Contract
) -> None:
    february = flights_all[(flights_all["time_hour"] >= "2013-02-01") & (flights_all["time_hour"] < "2013-03-01")]
    result = judge_batch(validate_batch(february, january_contract, NOW), january_contract, NOW)

    assert result.status == "passed", result.violation
    assert result.quarantined_count / result.read < january_contract.batch.max_bad_share


def test_committed_example_contract_accepts_the_whole_example_table(flights_all: pd.DataFrame) -> None:
    contract = read_contract(EXAMPLE_CONTRACT)
    result = validate_batch(flights_all, contract, NOW)

    assert result.quarantined_count == 0, result.reasons
    assert contract.batch.min_rows <= len(flights_all) <= (contract.batch.max_rows or len(flights_all))
    assert set(contract.columns) == set(flights_all.columns)


@pytest.mark.parametrize(
    ("low", "high", "integral", "expected"),
    [
        (80, 4983, True, (0, 6209)),  # never went below zero: floor stays at zero
        (-43, 1301, True, (-379, 1637)),  # negative values widen downwards
        (5, 23, True, (0, 28)),  # whole numbers round outwards, to zero at most
        (2013, 2013, True, (1992, 2034)),  # a constant widens by 1% of its value
        (0, 0, True, (0, 1)),  # a constant zero widens by 1
        (10.94, 100.04, False, (0.0, 122.4)),
        (983.8, 1042.1, False, (969.2, 1057.0)),
    ],
)
def test_widen_range(low: float, high: float, integral: bool, expected: tuple[float, float]) -> None:
    assert widen_range(low, high, integral) == expected


def test_infer_column_rule_reads_numbers_stored_as_text() -> None:
    rule = infer_column_rule(pd.Series(["1", "2", "30", None]))

    assert (rule.type, rule.nullable, rule.min, rule.max) == (ColumnType.INTEGER, True, 0, 38)


def test_yaml_round_trip_keeps_every_field(january_contract: Contract, tmp_path: Path) -> None:
    path = write_contract(january_contract, tmp_path / "nested" / "model.contract.yaml")

    text = path.read_text()
    assert text.startswith("# Data contract for model 'flights-delay'")
    assert "  origin: {type: string, nullable: false, allowed: [EWR, JFK, LGA]}" in text
    assert read_contract(path) == january_contract
    assert contract_from_yaml(contract_to_yaml(january_contract)) == january_contract


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.replace("max_bad_share: 0.05", "max_bad_share: 2"), "batch.max_bad_share"),
        (lambda t: t.replace("origin: {type: string,", "origin: {type: integer,"), "columns.origin"),
        (lambda t: t.replace("time_hour: {type: datetime, nullable: false, offsets: convert}",
                             "time_hour: {type: string, nullable: false}"), "timestamp column"),
        (lambda t: t.replace("distance: {type: integer, nullable: false,",
                             "distance: {type: integer, nullable: false, offsets: convert,"), "offsets applies"),
        (lambda t: t.replace("distance: {type: integer, nullable: false,",
                             "distance: {type: integer, nullable: false, growing: true,"), "growing column has no max"),
        (lambda t: t.replace("carrier: {type: string, nullable: false", "carrier: {type: string, nullable: true"),
         "must have nullable: false"),
        (lambda t: re.sub(r"max_rows: \d+", "max_rows: 0", t), "batch.max_rows"),
        (lambda t: t.replace("max_bad_share", "max_bad_shares"), "max_bad_shares"),
        (lambda t: t.replace("distance: {type: integer, nullable: false, min: 0,",
                             "distance: {type: integer, nullable: false, min: 99999,"), "is above max"),
        (lambda t: "- just\n- a list\n", "must be a mapping"),
        (lambda t: "columns: {a: [", "not valid YAML"),
    ],
)
def test_a_broken_contract_is_a_config_error_naming_the_field(
    january_contract: Contract, edit: object, message: str
) -> None:
    text = edit(contract_to_yaml(january_contract))  # type: ignore[operator]

    with pytest.raises(ConfigError) as raised:
        contract_from_yaml(text, source="model.contract.yaml")
    assert "model.contract.yaml" in str(raised.value)
    assert message in str(raised.value)


def test_infer_needs_the_configured_timestamp_and_key(flights_small: pd.DataFrame) -> None:
    with pytest.raises(ConfigError, match="origin"):
        infer_contract(flights_small.drop(columns=["origin"]), load_model_config(EXAMPLE_CONFIG))


# ------------------------------------------------------------------------ keys and growing columns


def orders(first_id: int, count: int) -> pd.DataFrame:
    """Not flights: an order id that grows, a running total, a repeating category, odd timestamps and nulls."""
    ids = np.arange(first_id, first_id + count)
    placed = (pd.Timestamp("2024-05-01") + pd.to_timedelta(ids * 3, unit="min")).strftime("%Y-%m-%dT%H:%M:%SZ")
    amount = (ids % 37).astype("float64") + 0.5
    amount[ids % 10 == 0] = np.nan
    return pd.DataFrame({
        "order_id": ids,
        "placed": placed,
        "order_code": [f"ORD-{i:06d}" for i in ids],
        "shop": np.array(["a", "b", "c"], dtype=object)[ids % 3],
        "amount": amount,
        "items_sold_total": ids * 2 + 100,
    })


ORDERS_CONFIG = ModelConfig.model_validate({
    "name": "orders",
    "source": {"table": "orders", "timestamp": "placed", "key": ["order_id", "order_code"]},
    "target": {"column": "amount"},
    "features": {"numeric": ["items_sold_total"], "categorical": ["shop"]},
    "metric": "mae",
    "training_window": {"start": "2024-05-01", "end": "2024-06-01"},
})


def test_keys_and_growing_columns_get_no_range_and_the_file_says_why() -> None:
    contract = infer_contract(orders(0, 300), ORDERS_CONFIG)
    columns = contract.columns

    assert (columns["order_id"].min, columns["order_id"].max) == (None, None)
    assert columns["order_code"].allowed is None  # every value distinct: an identifier, not a category
    assert columns["shop"].allowed == ["a", "b", "c"]
    assert columns["items_sold_total"].growing and columns["items_sold_total"].max is None
    assert columns["amount"].max is not None and not columns["amount"].growing
    assert columns["placed"].offsets == "convert"
    text = contract_to_yaml(contract)
    assert "  order_id: {type: integer, nullable: false}  # key: no range" in text
    assert "  items_sold_total: {type: integer, nullable: false, growing: true}  # grows with time" in text
    assert contract_from_yaml(text) == contract

    later = judge_batch(validate_batch(orders(5_000, 300), contract, NOW), contract, NOW)  # ids far beyond
    assert (later.status, later.quarantined_count) == ("passed", 0)


@pytest.mark.parametrize(
    ("numbers", "grows"),
    [
        (np.arange(100), True),
        (np.arange(100)[::-1], False),  # falls with time
        (np.arange(100) % 24, False),  # an hour of the day
        (np.repeat([2013, 2014], 50), False),  # a year: too few distinct values to call it growing
    ],
)
def test_grows_with_time(numbers: np.ndarray, grows: bool) -> None:
    times = pd.Series(pd.date_range("2024-01-01", periods=100, freq="h"))
    assert grows_with_time(pd.Series(numbers), times) is grows


def test_inferred_feature_ranges_are_soft_the_target_hard_and_calendar_fields_capped(
    flights_small: pd.DataFrame, january_contract: Contract
) -> None:
    columns = january_contract.columns
    assert columns["precip"].hard is False and columns["temp"].hard is False  # features: counted, not quarantined
    assert columns["arr_delay"].hard is True  # the target keeps a hard rule
    # month/hour/minute are calendar fields: capped at their domain, not widened to 0..15
    frame = flights_small.assign(month=np.tile([1, 12], len(flights_small) // 2 + 1)[: len(flights_small)])
    contract = infer_contract(frame, load_model_config(EXAMPLE_CONFIG))
    assert (contract.columns["month"].min, contract.columns["month"].max) == (1, 12)
    assert contract.columns["minute"].min >= 0 and contract.columns["minute"].max <= 59
    assert contract.columns["hour"].min >= 0 and contract.columns["hour"].max <= 23
    assert "hard: false" in contract_to_yaml(contract) and "soft range" in contract_to_yaml(contract)
    assert contract_from_yaml(contract_to_yaml(contract)).columns["precip"].hard is False


def test_a_soft_range_counts_a_record_value_and_keeps_the_row(january_contract: Contract) -> None:
    rows = pd.DataFrame({name: [None] for name in january_contract.columns})
    frame = pd.concat([rows] * 3, ignore_index=True)
    frame["time_hour"] = ["2013-02-01T05:00:00", "2013-02-01T06:00:00", "2013-02-01T07:00:00"]
    frame["carrier"], frame["flight"], frame["origin"] = "UA", [1, 2, 3], "EWR"
    frame["arr_delay"] = [5.0, 5.0, 1e7]  # the last breaks the target's hard range
    frame["precip"] = [0.0, 50.0, 0.0]  # a record rainfall: outside the soft range, kept
    relaxed = january_contract.model_copy(update={"columns": {
        name: rule.model_copy(update={"nullable": True}) if name not in ("time_hour", "carrier", "flight", "origin")
        else rule for name, rule in january_contract.columns.items()}})
    result = validate_batch(frame, relaxed, None)
    assert result.clean_count == 2 and result.out_of_range == {"precip": 1}
    assert result.reasons == {"out_of_range:arr_delay": 1}
    precip = relaxed.columns["precip"].model_copy(update={"hard": True})
    hard = relaxed.model_copy(update={"columns": {**relaxed.columns, "precip": precip}})
    assert validate_batch(frame, hard, None).reasons == {"out_of_range:arr_delay": 1, "out_of_range:precip": 1}
