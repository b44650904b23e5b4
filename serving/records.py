"""What a request's records must look like, and how they become the model's raw input rows.

A record is one raw row of the source table as JSON: every feature the model was trained on, optionally
the model's key columns (so a label can later arrive by key), nothing else. Types follow the data
contract (or, without one, the model's own metadata and signature): integer, float, string or datetime,
the way `pd.read_sql(...).to_json(orient="records")` writes a table row, so a datetime may come as ISO
text or as epoch milliseconds. Every problem names the record's index and the field, so a client can fix
its request without reading server logs; value ranges are not enforced here (the model answers an
unusual value, and monitoring sees it as drift).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from retrain.clock import EARLIEST, LATEST, parse_instant
from retrain.warehouse import prediction_key

INTEGER, FLOAT, STRING, DATETIME, ANY = "integer", "float", "string", "datetime", "any"
KINDS = (INTEGER, FLOAT, STRING, DATETIME, ANY)
MISSING_FEATURE = "missing feature (the model needs it; send null for an unknown value)"
MAX_PROBLEMS = 20  # enough to fix a request; a 10k-record body with one wrong column must not answer 10k lines
_EXPECTED = {
    INTEGER: "an integer",
    FLOAT: "a number",
    STRING: "text",
    DATETIME: "ISO 8601 text or epoch milliseconds",
    ANY: "a number or text",
}


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a request: which record (None for the request as a whole), which field, what."""

    record: int | None
    field: str
    problem: str

    def as_json(self) -> dict[str, Any]:
        return {"record": self.record, "field": self.field, "problem": self.problem}


class InvalidRecords(ValueError):
    """The request's records do not fit the model: a client's mistake, answered with HTTP 422."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        first = self.problems[0]
        where = f"record {first.record}, " if first.record is not None else ""
        super().__init__(f"{where}field '{first.field}': {first.problem}")


@dataclass(frozen=True)
class InputSpec:
    """The fields a record may hold and the kind of each: the model's features, then its key columns, and the
    source's timestamp column (optional: a record that carries it is logged at that event time)."""

    features: tuple[str, ...]
    kinds: Mapping[str, str]
    key: tuple[str, ...] = ()
    not_nullable: frozenset[str] = field(default_factory=frozenset)
    timestamp: str | None = None

    @property
    def allowed(self) -> frozenset[str]:
        return frozenset((*self.features, *self.key, *((self.timestamp,) if self.timestamp else ())))


@dataclass(frozen=True)
class CheckedRecords:
    """Records that passed, each record's key text (None without a key), and the model's features column by
    column (what the model encodes: built once, while checking)."""

    records: Sequence[Mapping[str, Any]]
    keys: list[str | None]
    columns: Mapping[str, list[Any]] = field(default_factory=dict)


def kind_of_signature_type(type_name: str) -> str:
    """An MLflow signature column type as one of our kinds (integer columns are `Any` in our signatures)."""
    return {
        "double": FLOAT,
        "float": FLOAT,
        "long": INTEGER,
        "integer": INTEGER,
        "string": STRING,
        "datetime": DATETIME,
        "boolean": ANY,
    }.get(type_name, ANY)


def build_input_spec(
    features: Sequence[str],
    model_kinds: Mapping[str, str],
    contract_kinds: Mapping[str, str] | None = None,
    key: Sequence[str] = (),
    not_nullable: Iterable[str] = (),
    timestamp: str | None = None,
) -> InputSpec:
    """The spec of a served model: its features with the contract's kind where the contract names the column
    (the contract is what the table promises), else the model's own; the key columns and the timestamp column
    (a datetime unless the contract says otherwise) from the contract."""
    contract_kinds = contract_kinds or {}
    kinds: dict[str, str] = {}
    for name in (*features, *key):
        kind = contract_kinds.get(name) or model_kinds.get(name) or ANY
        kinds[name] = kind if kind in KINDS else ANY
    if timestamp is not None and timestamp not in kinds:
        kind = contract_kinds.get(timestamp) or DATETIME
        kinds[timestamp] = kind if kind in KINDS else ANY
    return InputSpec(tuple(features), kinds, tuple(key), frozenset(not_nullable) & frozenset(kinds), timestamp)


INT64 = (-(2**63), 2**63 - 1)  # what an integer column holds
FLOAT_LARGEST = sys.float_info.max
# Epoch milliseconds of the instants Retrain handles (pandas' range), as pandas' `to_json` writes a timestamp.
EPOCH_MS = ((EARLIEST - datetime(1970, 1, 1)).total_seconds() * 1000, (LATEST - datetime(1970, 1, 1)).total_seconds()
            * 1000)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def finite_number(value: Any) -> bool:
    """A JSON number a float can hold: not NaN or infinite, and not an integer too long for a float (a
    400-digit integer parses in Python, and would overflow every conversion after)."""
    if not _is_number(value):
        return False
    if isinstance(value, int):
        return -FLOAT_LARGEST <= value <= FLOAT_LARGEST
    return math.isfinite(value)


def _instant_problem(value: Any) -> str | None:
    if _is_number(value):
        if not finite_number(value) or not EPOCH_MS[0] <= value <= EPOCH_MS[1]:
            return (f"expected {_EXPECTED[DATETIME]} between {EARLIEST:%Y-%m-%d} and {LATEST:%Y-%m-%d} (epoch "
                    f"milliseconds {EPOCH_MS[0]:.0f} to {EPOCH_MS[1]:.0f}), got {shown_value(value)}")
        return None
    if not isinstance(value, str):
        return f"expected {_EXPECTED[DATETIME]}, got {shown_value(value)}"
    try:
        parse_instant(value)
    except (TypeError, ValueError) as error:
        return f"expected {_EXPECTED[DATETIME]}: {error}"
    return None


def shown_value(value: Any) -> str:
    """A value as a message shows it: a long integer by its length, never 400 digits."""
    if isinstance(value, dict | list):
        return f"a JSON {'object' if isinstance(value, dict) else 'array'}"
    if isinstance(value, int) and not isinstance(value, bool) and len(str(abs(value))) > 30:
        return f"a {len(str(abs(value)))}-digit integer"
    return f"{type(value).__name__} {value!r}"


def _number_problem(value: Any, kind: str) -> str | None:
    if not finite_number(value):
        return (f"expected {_EXPECTED[kind]} that a float holds (finite, at most {FLOAT_LARGEST:.3g}), got "
                f"{shown_value(value)}")
    if kind == INTEGER:
        if not float(value).is_integer():
            return f"expected {_EXPECTED[INTEGER]}, got {shown_value(value)}"
        if not INT64[0] <= value <= INT64[1]:
            return f"expected {_EXPECTED[INTEGER]} that 64 bits hold (-2^63 to 2^63-1), got {shown_value(value)}"
    return None


def value_problem(value: Any, kind: str) -> str | None:
    """Why a non-null value does not fit its kind, or None when it does: the right JSON type, and a value the
    model's types hold (an integer in 64 bits, a number in a float, an instant in pandas' range)."""
    if kind == DATETIME:
        problem = _instant_problem(value)
    elif kind in (INTEGER, FLOAT):
        problem = _number_problem(value, kind) if _is_number(value) else (
            f"expected {_EXPECTED[kind]}, got {shown_value(value)}")
    elif kind == STRING:
        problem = None if isinstance(value, str) else f"expected {_EXPECTED[kind]}, got {shown_value(value)}"
    elif _is_number(value):
        problem = None if finite_number(value) else (
            f"expected {_EXPECTED[kind]} that a float holds, got {shown_value(value)}")
    else:
        problem = None if isinstance(value, str | bool) else f"expected {_EXPECTED[kind]}, got {shown_value(value)}"
    if problem is None and isinstance(value, str):
        problem = text_problem(value)
    return None if problem is None else problem[:300]


def text_problem(value: str) -> str | None:
    """Why text cannot be stored as it is (a NUL character, which PostgreSQL refuses in text; a lone surrogate,
    which is no character at all), or None."""
    if "\x00" in value:
        return "expected text without NUL characters (\\u0000)"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "expected text of whole characters, got a lone surrogate (\\ud800-\\udfff)"
    return None


def record_problems(index: int, record: Any, spec: InputSpec) -> list[Problem]:
    """Everything wrong with one record: not an object, a missing feature, an extra field, a wrong type."""
    if not isinstance(record, dict):
        return [Problem(index, "(record)", f"expected a JSON object of field: value, got {type(record).__name__}")]
    problems = [
        Problem(index, name, MISSING_FEATURE)
        for name in spec.features
        if name not in record
    ]
    allowed = spec.allowed
    problems += [
        Problem(index, name, f"unknown field: the model takes {sorted(spec.features)}"
                + (f" and the key {list(spec.key)}" if spec.key else "")
                + (f" and the timestamp '{spec.timestamp}'" if spec.timestamp and spec.timestamp not in spec.key
                   else ""))
        for name in record
        if name not in allowed
    ]
    for name, value in record.items():
        if name not in allowed:
            continue
        if value is None:
            if name in spec.not_nullable:
                problems.append(Problem(index, name, "null is not allowed here (the data contract says nullable: "
                                                     "false)"))
            continue
        problem = value_problem(value, spec.kinds[name])
        if problem:
            problems.append(Problem(index, name, problem))
    return problems


def as_instant(value: Any) -> datetime | None:
    """A datetime field as naive UTC: ISO text (an offset converted), or epoch milliseconds as pandas'
    `to_json` writes a timestamp column.

    Raises:
        ValueError: not an instant in the range Retrain handles.
    """
    if value is None:
        return None
    if _is_number(value):
        problem = _instant_problem(value)
        if problem:
            raise ValueError(problem)
        return datetime.fromtimestamp(value / 1000, tz=UTC).replace(tzinfo=None)
    return parse_instant(value)


def event_time(record: Mapping[str, Any], spec: InputSpec, request_time: datetime) -> datetime:
    """The record's instant on the Retrain clock: its timestamp column when it carries one (so a replayed
    record is logged at its own time), else the request time."""
    value = record.get(spec.timestamp) if spec.timestamp is not None else None
    if value is None:
        return request_time
    try:
        return as_instant(value) or request_time
    except (AttributeError, TypeError, ValueError, OverflowError, OSError):
        return request_time  # a timestamp of another kind (the contract's): the request time is the event


def record_key(record: Mapping[str, Any], spec: InputSpec) -> str | None:
    """The record's key as the prediction and label tables hold it; None when a key column is absent."""
    if not spec.key or any(record.get(name) is None for name in spec.key):
        return None
    values = [as_instant(record[name]) if spec.kinds[name] == DATETIME else record[name] for name in spec.key]
    return prediction_key(values)


def check_records(records: Sequence[Any], spec: InputSpec) -> CheckedRecords:
    """Valid records with their keys and their features column by column.

    Column by column first (`clean_columns`): a request whose every column is plainly of its kind passes in a
    few C-level passes per column. Anything those passes cannot clear (a wrong type, a null where none is
    allowed, a missing or unknown field, an instant, a number at the edge of its type) is checked record by
    record, which names the record and field of each problem exactly as before.

    Raises:
        InvalidRecords: no records, or any record with a problem (at most `MAX_PROBLEMS` are listed).
    """
    if not records:
        raise InvalidRecords([Problem(None, "records", "no records: send at least one")])
    columns = clean_columns(records, spec)
    if columns is None:
        problems: list[Problem] = []
        for index, record in enumerate(records):
            problems += record_problems(index, record, spec)
            if len(problems) >= MAX_PROBLEMS:
                break
        if problems:
            raise InvalidRecords(problems[:MAX_PROBLEMS])
        columns = {name: [record[name] for record in records] for name in spec.features}
    keys = [record_key(record, spec) for record in records] if spec.key else [None] * len(records)
    return CheckedRecords(records, keys, columns)


_NONE = type(None)
_NUMBERS = frozenset({int, float})
# Within these bounds a whole float or an int is an int64 and a float for sure; a value beyond them (or a float
# at the edge of int64, where float and int comparisons differ) is left to the exact check of `value_problem`.
_SAFE_MAGNITUDE = 2.0**62


def clean_columns(records: Sequence[Any], spec: InputSpec) -> dict[str, list[Any]] | None:
    """The features column by column when every record is a JSON object holding every feature and only allowed
    fields, and every field's values are plainly of its kind (see `column_is_clean`); None when any doubt is
    left, so the caller checks record by record and names each problem."""
    if not all(type(record) is dict for record in records):
        return None
    features = frozenset(spec.features)
    allowed = spec.allowed
    width = len(features)
    extra = False
    for record in records:
        names = record.keys()
        if not names >= features:
            return None
        if len(record) != width:
            if not names <= allowed:
                return None
            extra = True
    fields = list(spec.features)
    if extra:  # the key or the timestamp, on some records: checked where they are present
        fields += sorted(allowed - features)
    columns: dict[str, list[Any]] = {}
    for name in fields:
        if name in features:
            values = columns[name] = [record[name] for record in records]
        else:
            values = [record[name] for record in records if name in record]
        if not column_is_clean(values, spec.kinds[name], name not in spec.not_nullable):
            return None
    return columns


def column_is_clean(values: list[Any], kind: str, nullable: bool) -> bool:
    """Whether every value of a column plainly fits its kind, judged on the whole column: its set of types, one
    numpy conversion of its numbers, one scan of its joined text. False means "not proven", never "wrong": the
    record-by-record check then decides, and words each problem.

    Args:
        values: The column's values (None for null).
        kind: The field's kind.
        nullable: Whether null may appear.
    """
    types = set(map(type, values))
    if _NONE in types:
        if not nullable:
            return False
        types.discard(_NONE)
        values = [value for value in values if value is not None]
    if not types:
        return True
    if kind == STRING:
        return types == {str} and _texts_are_clean(values)
    if kind in (INTEGER, FLOAT):
        return types <= _NUMBERS and _numbers_are_clean(values, integer=kind == INTEGER)
    if kind == DATETIME:  # instants are parsed one by one (as ISO text or epoch milliseconds)
        clean = all(_instant_problem(value) is None for value in values)
    else:  # ANY: numbers and text (and booleans) each as they are
        clean = types <= {int, float, str, bool} and _numbers_are_clean(
            [value for value in values if type(value) in _NUMBERS], integer=False)
    return clean and _texts_are_clean([value for value in values if type(value) is str])


def _numbers_are_clean(values: list[Any], integer: bool) -> bool:
    if not values:
        return True
    try:
        numbers = np.array(values, dtype="float64")
    except (OverflowError, ValueError, TypeError):  # an int beyond a float: the exact check says so
        return False
    if not np.isfinite(numbers).all() or (np.abs(numbers) >= _SAFE_MAGNITUDE).any():
        return False
    return not integer or bool((numbers == np.floor(numbers)).all())


def _texts_are_clean(values: list[str]) -> bool:
    """No NUL and no lone surrogate in any value: one scan of them joined (a surrogate is refused by UTF-8
    wherever it stands, so joining cannot hide one)."""
    joined = "".join(values)
    if "\x00" in joined:
        return False
    try:
        joined.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def records_from_split(payload: Mapping[str, Any]) -> list[Any]:
    """MLflow's `dataframe_split` ({columns, data[, index]}) as records.

    Raises:
        InvalidRecords: the payload is not that shape, or a row's length differs from the columns'.
    """
    columns = payload.get("columns")
    data = payload.get("data")
    if not isinstance(columns, list) or not all(isinstance(name, str) for name in columns):
        raise InvalidRecords([Problem(None, "dataframe_split.columns", "expected a list of column names")])
    if not isinstance(data, list):
        raise InvalidRecords([Problem(None, "dataframe_split.data", "expected a list of rows")])
    records = []
    for index, row in enumerate(data):
        if not isinstance(row, list) or len(row) != len(columns):
            raise InvalidRecords([Problem(index, "dataframe_split.data",
                                          f"expected a list of {len(columns)} values, one per column")])
        records.append(dict(zip(columns, row, strict=True)))
    return records


def records_from_columns(payload: Mapping[str, Any]) -> list[Any]:
    """MLflow's column form of `inputs` ({column: [values]}) as records.

    Raises:
        InvalidRecords: a column is not a list, or the lists differ in length.
    """
    lengths = {len(values) if isinstance(values, list) else -1 for values in payload.values()}
    if -1 in lengths or len(lengths) > 1:
        raise InvalidRecords([Problem(None, "inputs", "expected every column to be a list of the same length")])
    size = lengths.pop() if lengths else 0
    return [{name: values[index] for name, values in payload.items()} for index in range(size)]
