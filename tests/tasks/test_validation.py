"""Validation on real flights rows with one fault injected per case: the exact outcome, and no row lost."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pandera.pandas as pa
import pytest

from retrain.contract import ColumnRule, ColumnType, Contract, read_contract
from retrain.errors import ConfigError, DataContractError
from tasks.ingest import check_requested_range, row_fingerprint, select_batch
from tasks.validation import (
    DUPLICATE_ACROSS_BATCHES,
    DUPLICATE_IN_BATCH,
    PASSED,
    REFUSED,
    ValidationResult,
    check_snapshot,
    coerce_column,
    compile_schema,
    enforce_batch_rules,
    judge_batch,
    validate_batch,
)

pytestmark = pytest.mark.data


EXAMPLE_CONTRACT = Path(__file__).resolve().parents[2] / "examples" / "flights.contract.yaml"
NOW = datetime(2026, 11, 25, 12, 0)
ROWS = 400
KEY = ["time_hour", "carrier", "flight", "origin"]


@pytest.fixture(scope="module")
def contract() -> Contract:
    return read_contract(EXAMPLE_CONTRACT)


@pytest.fixture
def batch(flights_small: pd.DataFrame) -> pd.DataFrame:
    """Real rows as the warehouse returns them: timestamps as SQLite text, everything else as stored."""
    frame = flights_small.iloc[:ROWS].copy()
    frame["time_hour"] = frame["time_hour"].dt.strftime("%Y-%m-%d %H:%M:%S.%f")
    return frame


def with_rule(contract: Contract, column: str, **changes: object) -> Contract:
    columns = {**contract.columns, column: contract.columns[column].model_copy(update=changes)}
    return contract.model_copy(update={"columns": columns})


def with_batch(contract: Contract, **changes: object) -> Contract:
    return contract.model_copy(update={"batch": contract.batch.model_copy(update=changes)})


def put(frame: pd.DataFrame, column: str, rows: list[int], values: list[object]) -> pd.DataFrame:
    frame[column] = frame[column].astype(object)
    for row, value in zip(rows, values, strict=True):
        frame.iat[row, frame.columns.get_loc(column)] = value
    return frame


@dataclass(frozen=True)
class Case:
    """One kind of bad input: how to inject it, and exactly what must come out."""

    inject: Callable[[pd.DataFrame], pd.DataFrame]
    status: str = PASSED
    rule: str | None = None
    reasons: dict[str, int] | None = None
    coerced: int = 0
    rows: int | None = None
    quarantined: int | None = None  # default: the sum of the reasons' rows (one reason per row)
    contract: Callable[[Contract], Contract] | None = None
    existing: Callable[[pd.DataFrame], pd.DataFrame] | None = None
    already_clean: int = 0  # rows equal to an existing clean row
    copies: int = 0  # byte-identical copies of an earlier row of the batch


CATALOGUE: dict[str, Case] = {
    "integers as text, coercible": Case(
        lambda f: put(f, "dep_time", [0, 1, 2], ["517", " 533 ", "542.0"]), coerced=3, reasons={}),
    "integers as text, not coercible": Case(
        lambda f: put(f, "dep_time", [0, 5, 9], ["abc", "5 17", "12.5"]), reasons={"not_integer:dep_time": 3}),
    "floats with stray characters": Case(
        lambda f: put(f, "temp", [3, 4], ["39.02°F", "~41"]), reasons={"not_number:temp": 2}),
    "decimal comma without opt-in": Case(
        lambda f: put(f, "temp", [3], ["39,02"]), reasons={"not_number:temp": 1}),
    "decimal comma with opt-in": Case(
        lambda f: put(f, "temp", [3, 4], ["39,02", " 40,1 "]), coerced=2, reasons={},
        contract=lambda c: with_rule(c, "temp", decimal_comma=True)),
    "out-of-range value": Case(
        lambda f: put(f, "distance", [7], [99_999]), reasons={"out_of_range:distance": 1}),
    "negative duration": Case(
        lambda f: put(f, "air_time", [8, 9], [-5, -120]), reasons={"out_of_range:air_time": 2}),
    "unknown category": Case(
        lambda f: put(f, "carrier", [10], ["ZZ"]), reasons={"not_allowed:carrier": 1}),
    "null in a required column": Case(
        lambda f: put(f, "carrier", [11], [None]), reasons={"null:carrier": 1}),
    "null in a required number column": Case(
        lambda f: put(f, "dep_delay", [12, 13], [np.nan, None]), reasons={"null:dep_delay": 2}),
    "spaces around a category": Case(
        lambda f: put(f, "carrier", [14], [" UA "]), coerced=1, reasons={}),
    "missing column": Case(
        lambda f: f.drop(columns=["dep_delay"]), status=REFUSED, rule="missing_column",
        reasons={"batch_refused:missing_column": ROWS}),
    "extra column": Case(lambda f: f.assign(gate="B12"), reasons={}),
    "renamed column": Case(
        lambda f: f.rename(columns={"distance": "dist"}), status=REFUSED, rule="missing_column",
        reasons={"batch_refused:missing_column": ROWS}),
    "wrong type for a whole column": Case(
        lambda f: f.assign(distance=pd.Series(["far"] * len(f), index=f.index)), status=REFUSED, rule="bad_share",
        reasons={"not_integer:distance": ROWS}),
    "numbers as text for a whole column": Case(
        lambda f: f.assign(distance=f["distance"].astype(str)), coerced=ROWS, reasons={}),
    "timestamp in the future": Case(
        lambda f: put(f, "time_hour", [15], ["2026-11-27 09:00:00"]), reasons={"future:time_hour": 1}),
    "unparseable timestamp": Case(
        lambda f: put(f, "time_hour", [16, 17], ["2013-13-45 99:00", "yesterday"]),
        reasons={"unparseable:time_hour": 2}),
    "timestamp as ISO text with an offset and spaces": Case(
        lambda f: put(f, "time_hour", [18], ["  2013-01-01T05:00:00-05:00  "]), reasons={}),
    "timestamp with an offset the contract refuses": Case(
        lambda f: put(f, "time_hour", [18, 19], ["2013-01-01T05:00:00-05:00", "2013-01-01T10:00:00Z"]),
        reasons={"offset:time_hour": 2}, contract=lambda c: with_rule(c, "time_hour", offsets="refuse")),
    "duplicate keys within the batch": Case(
        lambda f: pd.concat([f, f.iloc[[20, 21]].assign(dep_delay=[1.0, 2.0])], ignore_index=True), rows=ROWS + 2,
        reasons={DUPLICATE_IN_BATCH: 4}),
    "byte-identical copies within the batch land once": Case(
        lambda f: pd.concat([f, f.iloc[[20, 21, 20]]], ignore_index=True), rows=ROWS + 3, reasons={}, copies=3),
    "copies and a conflicting row of one key: all of that key quarantined": Case(
        lambda f: pd.concat([f, f.iloc[[20, 20]], f.iloc[[20]].assign(dep_delay=9.0)], ignore_index=True),
        rows=ROWS + 3, reasons={DUPLICATE_IN_BATCH: 2}, copies=2),
    "duplicate keys across batches (keys only: nothing to compare)": Case(
        lambda f: f, reasons={DUPLICATE_ACROSS_BATCHES: 3}, existing=lambda f: f.iloc[[30, 31, 32]][KEY]),
    "a key already clean with other content": Case(
        lambda f: f, reasons={DUPLICATE_ACROSS_BATCHES: 2},
        existing=lambda f: f.iloc[[30, 31]].assign(distance=[1, 2])),
    "rows already clean, equal in every column": Case(
        lambda f: f, reasons={}, already_clean=3, existing=lambda f: f.iloc[[30, 31, 32]]),
    "rows already clean, as the clean table types them": Case(
        lambda f: put(f, "dep_time", [30], [" 517 "]), reasons={}, already_clean=2, coerced=0,
        existing=lambda f: f.iloc[[30, 31]].assign(dep_time=[517, f["dep_time"].iloc[31]],
                                                   time_hour=f["time_hour"].iloc[[30, 31]].astype(str))),
    "numbers beyond what the column's type holds": Case(
        lambda f: put(put(f, "distance", [40, 41, 42], ["9" * 400, 10**400, 1e20]), "temp", [43], [10**400]),
        reasons={"not_integer:distance": 2, "too_large:distance": 1, "not_number:temp": 1}),
    "timestamps beyond pandas' range, or pushed out of it by their offset": Case(
        lambda f: put(f, "time_hour", [44, 45, 46], ["0001-01-01T00:00+01:00", "9999-12-31T23:00-01:00",
                                                     "1500-01-01"]),
        reasons={"unparseable:time_hour": 3}),
    "empty batch": Case(lambda f: f.iloc[0:0], status=REFUSED, rule="row_count", reasons={}, rows=0),
    "batch of only bad rows": Case(
        lambda f: f.iloc[:25].assign(origin="XXX"), status=REFUSED, rule="bad_share", rows=25,
        reasons={"not_allowed:origin": 25}),
    "unicode in a category": Case(
        lambda f: put(f, "dest", [40, 41], ["ZÜRICH✈", "東京"]), reasons={"not_allowed:dest": 2}),
    "very long string in a category": Case(
        lambda f: put(f, "carrier", [42], ["U" * 10_000]), reasons={"not_allowed:carrier": 1}),
    "very long free-text string": Case(
        lambda f: put(f, "tailnum", [43], ["N" * 10_000]), reasons={"too_long:tailnum": 1}),
    "every reason on one row": Case(
        lambda f: put(put(put(f, "dep_time", [44], ["abc"]), "carrier", [44], [None]), "distance", [44], [-1]),
        reasons={"not_integer:dep_time": 1, "null:carrier": 1, "out_of_range:distance": 1}, quarantined=1),
    "stale batch": Case(
        lambda f: f, status=REFUSED, rule="freshness", reasons={"batch_refused:freshness": ROWS},
        contract=lambda c: with_batch(c, max_age_hours=24)),
    "more rows than the band allows": Case(
        lambda f: f, status=REFUSED, rule="row_count", reasons={"batch_refused:row_count": ROWS},
        contract=lambda c: with_batch(c, max_rows=100)),
    "unknown column refused by the contract": Case(
        lambda f: f.assign(gate="B12"), status=REFUSED, rule="unknown_column",
        reasons={"batch_refused:unknown_column": ROWS},
        contract=lambda c: with_batch(c, unknown_columns="refuse")),
}


def run(case: Case, batch: pd.DataFrame, contract: Contract) -> tuple[pd.DataFrame, ValidationResult]:
    rules = case.contract(contract) if case.contract else contract
    frame = case.inject(batch.copy())
    existing = case.existing(batch) if case.existing else None
    return frame, judge_batch(validate_batch(frame, rules, NOW, existing), rules, NOW)


@pytest.mark.parametrize("name", list(CATALOGUE))
def test_catalogue_outcome_and_row_conservation(name: str, batch: pd.DataFrame, contract: Contract) -> None:
    case = CATALOGUE[name]
    frame, result = run(case, batch, contract)

    assert result.read == len(frame) == (case.rows if case.rows is not None else ROWS)
    assert result.read == result.clean_count + result.quarantined_count + result.already_clean_count \
        + result.copies_count
    assert (result.already_clean_count, result.copies_count) == (case.already_clean, case.copies)
    rows = result.quarantined["source_row"].tolist()
    assert len(set(rows)) == len(rows) and all(0 <= row < result.read for row in rows)
    assert result.status == case.status
    assert (result.violation.rule if result.violation else None) == case.rule
    assert result.coerced == case.coerced
    if case.reasons is not None:
        refusal = {k: v for k, v in result.reasons.items() if not k.startswith("batch_refused:")}
        expected_rows = {k: v for k, v in case.reasons.items() if not k.startswith("batch_refused:")}
        assert refusal == expected_rows
        assert {k: v for k, v in result.reasons.items() if k.startswith("batch_refused:")} == {
            k: v for k, v in case.reasons.items() if k.startswith("batch_refused:")
        }
    if case.status == REFUSED:
        assert result.clean_count == 0
        assert sorted([*rows, *result.already_clean, *result.copies]) == list(range(result.read))
        with pytest.raises(DataContractError) as raised:
            enforce_batch_rules(result, contract, NOW)
        assert raised.value.rule == case.rule
    else:
        expected = case.quarantined if case.quarantined is not None else sum((case.reasons or {}).values())
        assert result.quarantined_count == expected


def test_every_quarantined_row_is_a_distinct_input_row_with_its_raw_values(
    batch: pd.DataFrame, contract: Contract
) -> None:
    frame = put(put(batch.copy(), "dep_time", [5], ["abc"]), "dest", [6], ["ZÜRICH✈"])
    result = validate_batch(frame, contract, NOW)

    rows = result.quarantined["source_row"].tolist()
    assert rows == [5, 6]
    raw = [json.loads(text) for text in result.quarantined["raw"]]
    assert raw[0]["dep_time"] == "abc" and raw[0]["tailnum"] == frame.iloc[5]["tailnum"]
    assert raw[1]["dest"] == "ZÜRICH✈"
    assert "ZÜRICH✈" in result.quarantined["raw"].iloc[1]  # stored readable, not \u-escaped
    kept = set(range(ROWS)) - {5, 6}
    assert len(result.clean) == len(kept)


def test_coerced_values_land_typed(batch: pd.DataFrame, contract: Contract) -> None:
    frame = put(batch.copy(), "dep_time", [0, 1, 2], ["517", " 533 ", "542.0"])
    result = validate_batch(frame, contract, NOW)

    assert result.clean["dep_time"].dtype == "Int64"
    assert result.clean["dep_time"].iloc[:3].tolist() == [517, 533, 542]
    assert result.clean["time_hour"].dtype == "datetime64[ns]"


def test_a_few_bad_rows_leave_the_rest_passing(batch: pd.DataFrame, contract: Contract) -> None:
    frame = put(batch.copy(), "carrier", [1, 2], ["ZZ", "QQ"])
    result = judge_batch(validate_batch(frame, contract, NOW), contract, NOW)

    assert result.status == PASSED
    assert (result.clean_count, result.quarantined_count) == (ROWS - 2, 2)


@pytest.mark.parametrize(
    ("rule", "raw", "expected", "coerced", "failed"),
    [
        (ColumnRule(type=ColumnType.INTEGER), ["12", "12.0", " 12 ", 12, None], [12, 12, 12, 12, None], 3, 0),
        (ColumnRule(type=ColumnType.INTEGER), ["12.5", "abc", "1e400", "", 7.0], [None, None, None, None, 7], 0, 4),
        (ColumnRule(type=ColumnType.FLOAT), ["1.5", "1,5", "x", None], [1.5, None, None, None], 1, 2),
        (ColumnRule(type=ColumnType.FLOAT, decimal_comma=True), ["1,5", " -2,25 "], [1.5, -2.25], 2, 0),
        (ColumnRule(type=ColumnType.INTEGER, decimal_comma=True), ["12,0", "12,5"], [12, None], 1, 1),
        (ColumnRule(type=ColumnType.STRING), [" UA", "AA", 9, None], ["UA", "AA", "9", None], 2, 0),
        # Mixed columns as SQLite returns them (numbers beside a fault's text): the numbers take numpy's fast
        # conversion, a str subclass is still text, a bool or a Decimal still goes through to_numeric, and an
        # integer too long for a float is still a failure.
        (ColumnRule(type=ColumnType.INTEGER), [5.0, 6, np.str_(" 7 "), "x", None, float("nan")],
         [5, 6, 7, None, None, None], 1, 1),
        (ColumnRule(type=ColumnType.INTEGER), [5.0, 10**400, "8"], [5, None, 8], 1, 1),
        (ColumnRule(type=ColumnType.FLOAT), [1.5, True, "2.5"], [1.5, 1.0, 2.5], 1, 0),
    ],
)
def test_coerce_column(
    rule: ColumnRule, raw: list[object], expected: list[object], coerced: int, failed: int
) -> None:
    column = coerce_column(pd.Series(raw, dtype=object), rule)

    assert [None if pd.isna(value) else value for value in column.values.tolist()] == expected
    assert int(column.coerced.sum()) == coerced
    assert int(column.failed.sum()) == failed


def test_coerce_datetime_keeps_unparseable_as_failures() -> None:
    rule = ColumnRule(type=ColumnType.DATETIME)
    column = coerce_column(pd.Series(["2013-01-01 05:00:00", "2013-02-30 00:00:00", None, "soon"]), rule)

    assert column.values.iloc[0] == pd.Timestamp("2013-01-01 05:00")
    assert column.failed.tolist() == [False, True, False, True]
    assert int(column.coerced.sum()) == 0


def test_contract_compiles_to_a_pandera_schema_reporting_rows_and_columns(contract: Contract) -> None:
    compiled = compile_schema(contract.columns, contract.timestamp, NOW)
    assert isinstance(compiled.schema, pa.DataFrameSchema)
    assert set(compiled.schema.columns) == set(contract.columns)
    assert compiled.check_reasons["distance"] == ["out_of_range:distance"]
    assert compiled.check_reasons["time_hour"] == ["future:time_hour"]

    small = {name: contract.columns[name] for name in ("distance", "origin")}
    frame = pd.DataFrame({
        "distance": pd.array([100, 99_999, None], dtype="Int64"),
        "origin": pd.array(["JFK", "LGA", "XXX"], dtype="string[pyarrow]"),
    })
    with pytest.raises(pa.errors.SchemaErrors) as raised:
        compile_schema(small, None, None).schema.validate(frame, lazy=True)
    cases = raised.value.failure_cases
    assert sorted(zip(cases["index"], cases["column"], strict=True)) == [
        (1, "distance"), (2, "distance"), (2, "origin")
    ]


def test_enforce_batch_rules_names_rule_observed_and_limit(batch: pd.DataFrame, contract: Contract) -> None:
    frame = batch.iloc[:10].assign(origin="XXX")
    result = validate_batch(frame, contract, NOW)

    with pytest.raises(DataContractError) as raised:
        enforce_batch_rules(result, contract, NOW)
    assert (raised.value.rule, raised.value.observed, raised.value.limit) == ("bad_share", 1.0, 0.05)
    assert "not_allowed:origin (10)" in str(raised.value)


def test_check_snapshot_accepts_clean_rows_read_back(flights_small: pd.DataFrame, contract: Contract) -> None:
    snapshot = flights_small.iloc[:2000].copy()
    snapshot["dep_time"] = snapshot["dep_time"].astype("float64")  # what read_sql gives an integer column with NULLs
    snapshot["_batch_id"] = "b-1"

    check_snapshot(snapshot, contract)
    subset = ["time_hour", "carrier", "distance"]
    check_snapshot(snapshot[subset], contract, columns=subset)


def test_check_snapshot_refuses_rows_that_break_a_tightened_contract(
    flights_small: pd.DataFrame, contract: Contract
) -> None:
    tightened = with_rule(contract, "distance", max=1000)
    snapshot = flights_small.iloc[:2000]
    too_far = int((snapshot["distance"] > 1000).sum())

    with pytest.raises(DataContractError) as raised:
        check_snapshot(snapshot, tightened)
    assert raised.value.rule == "snapshot_rows"
    assert (raised.value.observed, raised.value.limit) == (too_far, 0)
    assert "out_of_range:distance" in str(raised.value)


@pytest.mark.parametrize(
    ("mutate", "rule"),
    [
        (lambda f: f.drop(columns=["carrier"]), "missing_column"),
        (lambda f: pd.concat([f, f.iloc[[0]]]), "snapshot_rows"),
        (lambda f: f.assign(hour=f["hour"] + 0.5), "snapshot_rows"),
    ],
)
def test_check_snapshot_refuses_broken_snapshots(
    flights_small: pd.DataFrame, contract: Contract, mutate: Callable[[pd.DataFrame], pd.DataFrame], rule: str
) -> None:
    with pytest.raises(DataContractError) as raised:
        check_snapshot(mutate(flights_small.iloc[:500]), contract)
    assert raised.value.rule == rule


def test_one_offset_never_shifts_the_other_timestamps(batch: pd.DataFrame, contract: Contract) -> None:
    """pandas' to_datetime(utc=True) applied the first offset it met to every naive value after it."""
    frame = put(batch.copy(), "time_hour", [0], ["2013-01-01T00:00:00+05:00"])
    result = validate_batch(frame, contract, NOW)

    expected = pd.to_datetime(batch["time_hour"]).tolist()
    expected[0] = pd.Timestamp("2012-12-31 19:00")
    assert result.clean["time_hour"].tolist() == expected


# ------------------------------------------------------------------------------ which rows a batch holds

START, HORIZON = datetime(2013, 1, 2), datetime(2013, 1, 4)


def odd_candidates() -> pd.DataFrame:
    return pd.DataFrame({
        "ts": ["2013-01-02 00:00:00", "2013-01-03T23:00:00-05:00", "2099-01-01 00:00:00", "not a time", None,
               "1970-01-01 00:00:00", "2013-01-03 12:00:00", "2013-01-02T01:00:00+05:00", "2013-01-03 23:59:59"],
        "value": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0],
    })


def test_a_batch_holds_rows_by_their_own_instant_and_ends_after_its_newest() -> None:
    chosen = select_batch(odd_candidates(), "ts", START, HORIZON, end_requested=False)

    # 2013-01-03T23:00-05:00 is 01-04 04:00 UTC: not arrived; 2013-01-02T01:00+05:00 is 01-01 20:00: before start
    assert chosen.frame["value"].tolist() == [1.0, 4.0, 5.0, 7.0, 9.0]
    assert chosen.range_end == datetime(2013, 1, 3, 23, 59, 59, 1)  # just after the newest row, not the horizon
    assert chosen.waiting == 2  # 2099 and the offset row dated after the horizon
    assert sorted(chosen.fingerprints) == [1, 2]  # positions of "not a time" and the null in the batch


def test_rows_without_a_usable_timestamp_join_one_batch_only() -> None:
    first = select_batch(odd_candidates(), "ts", START, HORIZON, end_requested=False)
    known = set(first.fingerprints.values())

    later = select_batch(odd_candidates(), "ts", first.range_end, datetime(2013, 1, 10), False, known)

    assert later.frame["value"].tolist() == [2.0]  # the offset row, whose time came; nothing timeless again
    assert later.fingerprints == {}


def test_a_requested_range_ends_where_asked_and_an_empty_one_where_it_began() -> None:
    asked = select_batch(odd_candidates(), "ts", START, datetime(2013, 1, 3), end_requested=True)
    assert (asked.range_end, asked.waiting) == (datetime(2013, 1, 3), 0)
    assert asked.frame["value"].tolist() == [1.0, 4.0, 5.0]

    nothing = select_batch(odd_candidates().iloc[[0]], "ts", datetime(2013, 1, 5), HORIZON + timedelta(days=2), False)
    assert (nothing.count, nothing.range_end) == (0, datetime(2013, 1, 5))


def test_a_rows_fingerprint_does_not_depend_on_how_its_batch_was_typed() -> None:
    assert row_fingerprint([517.0, "not a time", None]) == row_fingerprint([517, "not a time", float("nan")])
    assert row_fingerprint([517.5, "x"]) != row_fingerprint([517, "x"])
    assert row_fingerprint([12, "a"]) != row_fingerprint(["12", "a"])  # a number and its text are not one value


@pytest.mark.parametrize(("start", "end"), [(datetime(2013, 1, 5), datetime(2013, 1, 2)),
                                            (datetime(2013, 1, 5), datetime(2013, 1, 5))])
def test_a_range_that_holds_nothing_is_refused(start: datetime, end: datetime) -> None:
    with pytest.raises(ConfigError, match="is not before its end"):
        check_requested_range(start, end)
