"""Request records against a model's inputs: the checks and conversions of `serving.records`, on inline values."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest

from retrain.warehouse import prediction_key
from serving.records import (
    ANY,
    DATETIME,
    FLOAT,
    INTEGER,
    STRING,
    InvalidRecords,
    as_instant,
    build_input_spec,
    check_records,
    clean_columns,
    event_time,
    kind_of_signature_type,
    record_key,
    record_problems,
    records_from_columns,
    records_from_split,
    value_problem,
)

SPEC = build_input_spec(
    features=("distance", "temp", "carrier"),
    model_kinds={"distance": ANY, "temp": FLOAT, "carrier": STRING},
    contract_kinds={"distance": INTEGER, "time_hour": DATETIME, "flight": INTEGER},
    key=("time_hour", "flight"),
    not_nullable=("time_hour", "flight", "distance"),
)
GOOD = {"distance": 1400, "temp": 39.9, "carrier": "UA", "time_hour": "2013-01-01T05:00:00", "flight": 1545}


def test_the_contract_names_a_columns_kind_before_the_model_does() -> None:
    assert SPEC.kinds == {"distance": INTEGER, "temp": FLOAT, "carrier": STRING, "time_hour": DATETIME,
                          "flight": INTEGER}
    assert SPEC.allowed == {"distance", "temp", "carrier", "time_hour", "flight"}
    assert SPEC.not_nullable == {"time_hour", "flight", "distance"}


@pytest.mark.parametrize(
    ("type_name", "kind"),
    [("double", FLOAT), ("long", INTEGER), ("string", STRING), ("datetime", DATETIME), ("boolean", ANY),
     ("binary", ANY)],
)
def test_signature_types_map_to_kinds(type_name: str, kind: str) -> None:
    assert kind_of_signature_type(type_name) == kind


@pytest.mark.parametrize(
    ("value", "kind", "problem"),
    [
        (3, INTEGER, None), (3.0, INTEGER, None), (3.5, INTEGER, "expected an integer, got float 3.5"),
        (True, INTEGER, "expected an integer, got bool True"), ("3", FLOAT, "expected a number, got str '3'"),
        (float("nan"), FLOAT, "expected a number that a float holds (finite, at most 1.8e+308), got float nan"),
        ("UA", STRING, None),
        (10**400, FLOAT, "got a 401-digit integer"), (10**400, INTEGER, "that a float holds"),
        (2**63, INTEGER, "that 64 bits hold (-2^63 to 2^63-1)"), (2**63 - 1, INTEGER, None),
        (1e20, DATETIME, "between 1677-09-21 and 2262-04-11"), (-1e15, DATETIME, "between 1677-09-21"),
        ("0001-01-01T00:00+01:00", DATETIME, "outside the instants Retrain handles"),
        ("9999-12-31T23:00-01:00", DATETIME, "outside the instants Retrain handles"),
        ("a\x00b", STRING, "without NUL characters"), ("\ud800", STRING, "lone surrogate"),
        (7, STRING, "expected text, got int 7"), ("2013-01-01T05:00+05:00", DATETIME, None),
        (1357016400000, DATETIME, None), ("yesterday", DATETIME, "expected ISO 8601 text or epoch milliseconds"),
        ({"a": 1}, ANY, "expected a number or text, got a JSON object"), ([1], FLOAT, "got a JSON array"),
    ],
)
def test_a_value_fits_its_kind_or_says_what_was_expected(value: Any, kind: str, problem: str | None) -> None:
    found = value_problem(value, kind)
    assert found is None if problem is None else problem in str(found)


@pytest.mark.parametrize(
    ("record", "field", "problem"),
    [
        ([1, 2], "(record)", "expected a JSON object"),
        ({k: v for k, v in GOOD.items() if k != "temp"}, "temp", "missing feature"),
        ({**GOOD, "colour": "red"}, "colour", "unknown field"),
        ({**GOOD, "distance": None}, "distance", "null is not allowed"),
        ({**GOOD, "carrier": 7}, "carrier", "expected text"),
    ],
)
def test_each_problem_of_a_record_names_its_field(record: Any, field: str, problem: str) -> None:
    problems = record_problems(3, record, SPEC)
    assert [(p.record, p.field) for p in problems] == [(3, field)] and problem in problems[0].problem


def test_a_null_feature_is_fine_where_the_contract_allows_it() -> None:
    assert record_problems(0, {**GOOD, "temp": None, "carrier": None}, SPEC) == []


def test_check_records_gives_each_records_key_and_lists_at_most_twenty_problems() -> None:
    without_key = {name: value for name, value in GOOD.items() if name not in SPEC.key}
    checked = check_records([GOOD, without_key], SPEC)
    assert checked.keys == [prediction_key([datetime(2013, 1, 1, 5), 1545]), None]
    with pytest.raises(InvalidRecords) as raised:
        check_records([{**GOOD, "carrier": 1}] * 50, SPEC)
    assert len(raised.value.problems) == 20 and str(raised.value).startswith("record 0, field 'carrier'")
    with pytest.raises(InvalidRecords, match="no records"):
        check_records([], SPEC)


@pytest.mark.parametrize(
    ("value", "instant"),
    [("2013-01-01T05:00:00", datetime(2013, 1, 1, 5)), ("2013-01-01T10:00+05:00", datetime(2013, 1, 1, 5)),
     (1357016400000, datetime(2013, 1, 1, 5)), (None, None)],
)
def test_instants_read_as_naive_utc(value: Any, instant: datetime | None) -> None:
    assert as_instant(value) == instant


def test_a_key_sent_as_text_or_epoch_milliseconds_joins_the_same_row() -> None:
    by_text = record_key(GOOD, SPEC)
    by_millis = record_key({**GOOD, "time_hour": 1357016400000, "flight": 1545.0}, SPEC)
    assert by_text == by_millis == prediction_key([datetime(2013, 1, 1, 5), 1545])


def test_mlflow_split_and_column_forms_become_records() -> None:
    assert records_from_split({"columns": ["a", "b"], "data": [[1, "x"], [2, None]]}) == [
        {"a": 1, "b": "x"}, {"a": 2, "b": None}]
    assert records_from_columns({"a": [1, 2], "b": ["x", None]}) == [{"a": 1, "b": "x"}, {"a": 2, "b": None}]


@pytest.mark.parametrize(
    ("payload", "field"),
    [({"columns": "a", "data": []}, "dataframe_split.columns"), ({"columns": ["a"], "data": {}},
                                                                   "dataframe_split.data"),
     ({"columns": ["a", "b"], "data": [[1]]}, "dataframe_split.data")],
)
def test_a_malformed_split_names_its_part(payload: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidRecords) as raised:
        records_from_split(payload)
    assert raised.value.problems[0].field == field


def test_columns_of_different_lengths_are_refused() -> None:
    with pytest.raises(InvalidRecords, match="same length"):
        records_from_columns({"a": [1, 2], "b": [1]})


def test_a_record_is_logged_at_its_own_timestamp_else_at_the_request_time() -> None:
    """The event time of a served prediction: the source's timestamp column when the record carries it (a replayed
    record lands on its replayed instant), else the request time; the timestamp may be sent though no feature."""
    spec = build_input_spec(("temp",), {"temp": FLOAT}, {"day": DATETIME}, timestamp="day")
    request = datetime(2026, 11, 5, 12)
    assert record_problems(0, {"temp": 1.0, "day": "2013-04-01T06:00+02:00"}, spec) == []
    assert event_time({"temp": 1.0, "day": "2013-04-01T06:00+02:00"}, spec, request) == datetime(2013, 4, 1, 4)
    assert event_time({"temp": 1.0, "day": 1364795200000}, spec, request) == datetime(2013, 4, 1, 5, 46, 40)
    assert event_time({"temp": 1.0}, spec, request) == request
    assert event_time({"temp": 1.0, "day": None}, spec, request) == request
    assert event_time(GOOD, SPEC, request) == request  # a spec without a timestamp column
    keyed = build_input_spec(("temp",), {"temp": FLOAT}, {"time_hour": DATETIME}, key=("time_hour",),
                             timestamp="time_hour")
    assert event_time({"temp": 1.0, "time_hour": "2013-01-01T05:00:00"}, keyed, request) == datetime(2013, 1, 1, 5)
    problems = record_problems(0, {"temp": 1.0, "day": "soon"}, spec)
    assert [(problem.field, problem.problem.startswith("expected")) for problem in problems] == [("day", True)]


def test_clean_records_are_checked_column_by_column() -> None:
    without_key = {name: value for name, value in GOOD.items() if name not in SPEC.key}
    records = [GOOD, {**GOOD, "temp": None, "carrier": None, "distance": 12.0}, without_key,
               {**GOOD, "time_hour": 1357016400000, "temp": 3}]
    columns = clean_columns(records, SPEC)

    assert columns == {name: [record[name] for record in records] for name in SPEC.features}
    assert check_records(records, SPEC).columns == columns
    assert check_records(records, SPEC).keys[0] == check_records(records, SPEC).keys[3]


@pytest.mark.parametrize(
    "change",
    [
        {"carrier": 1},  # a number in a text column
        {"carrier": "U\x00A"},  # NUL
        {"carrier": "\ud800"},  # a lone surrogate
        {"temp": float("nan")},  # not finite
        {"temp": 10**400},  # beyond a float
        {"distance": None},  # null where the contract forbids it
        {"distance": 12.5},  # not whole
        {"distance": 2**63},  # beyond int64
        {"distance": True},  # a boolean is no number
        {"flight": None},  # an optional key column sent as null: still refused
        {"time_hour": "soon"},  # not an instant
        {"extra": 1},  # an unknown field
    ],
)
def test_anything_the_columns_cannot_clear_is_checked_record_by_record(change: dict[str, Any]) -> None:
    records = [GOOD, {**GOOD, **change}]

    assert clean_columns(records, SPEC) is None
    problems = [problem for index, record in enumerate(records) for problem in record_problems(index, record, SPEC)]
    with pytest.raises(InvalidRecords) as raised:
        check_records(records, SPEC)
    assert raised.value.problems == problems and problems and problems[0].record == 1


def test_a_missing_feature_or_a_record_that_is_no_object_is_left_to_the_record_check() -> None:
    assert clean_columns([GOOD, {"temp": 1.0, "carrier": "UA"}], SPEC) is None
    assert clean_columns([GOOD, [1, 2]], SPEC) is None
