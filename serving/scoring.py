"""MLflow's scoring protocol, as `mlflow models serve` speaks it on `/invocations`: bodies in, records out.

A client written against `mlflow models serve` only changes the URL: the same content types (`application/json`
with exactly one of `dataframe_split`, `dataframe_records`, `instances`, `inputs`, and optional `params`;
`text/csv` as `DataFrame.to_csv` writes it; `application/vnd.apache.parquet`), the same refusals (415 with a
plain-text reason for a content type, charset or content-type parameter it does not take; 400 with MLflow's
error body, `{"error_code": "BAD_REQUEST", "message": ...}`, for a body it cannot read or a record that does not
fit the model), and, as MLflow does, columns the model does not take are left out (the server says which, in the
`x-retrain-ignored-columns` header and its log). A missing value (JSON null or NaN, an empty CSV cell) is missing,
as in a DataFrame.

Pure: bytes and a content type in, records (dicts of JSON values) out; `/predict` keeps its own richer contract.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from serving.records import ANY, FLOAT, INTEGER, InvalidRecords, Problem, records_from_columns

CONTENT_TYPE_JSON = "application/json"
CONTENT_TYPE_CSV = "text/csv"
CONTENT_TYPE_PARQUET = "application/vnd.apache.parquet"
CONTENT_TYPES = (CONTENT_TYPE_CSV, CONTENT_TYPE_JSON, CONTENT_TYPE_PARQUET)
FORMATS = ("dataframe_split", "dataframe_records", "instances", "inputs")
REQUIRED_INPUT_FORMAT = f"The input must be a JSON dictionary with exactly one of the input fields {set(FORMATS)}"


class UnsupportedMediaType(Exception):
    """A content type, charset or content-type parameter the protocol does not take: 415, plain text."""


@dataclass(frozen=True)
class ScoringInput:
    """The records of a scoring request, in order, and the columns left out because the model does not take them."""

    records: list[dict[str, Any]]
    ignored: tuple[str, ...] = ()


def scoring_records(body: bytes, content_type: str | None, kinds: Mapping[str, str]) -> list[dict[str, Any]]:
    """The records of a scoring request body.

    Args:
        body: The request body.
        content_type: Its Content-Type header.
        kinds: The kind of each field the model takes (features and key), for reading CSV cells as what they are.

    Raises:
        UnsupportedMediaType: the content type cannot be read (answer 415).
        InvalidRecords: the body cannot be read as records (answer 400 BAD_REQUEST).
    """
    mime = media_type(content_type)
    if mime == CONTENT_TYPE_CSV:
        return _records_of_csv(_text(body), kinds)
    if mime == CONTENT_TYPE_PARQUET:
        return _records_of_parquet(body)
    return _records_of_json(body)


def media_type(content_type: str | None) -> str:
    """The media type of a Content-Type header, refusing what MLflow's scoring server refuses.

    Raises:
        UnsupportedMediaType: no content type, a charset other than UTF-8, a parameter other than charset, or a
            type other than JSON, CSV and Parquet.
    """
    if not content_type:
        raise UnsupportedMediaType(f"This predictor only supports the following content types: Types: "
                                   f"{list(CONTENT_TYPES)}. Got no Content-Type header.")
    mime, *pairs = [part.strip() for part in content_type.split(";")]
    parameters = {key.strip().lower(): value.strip() for key, _, value in (pair.partition("=") for pair in pairs)}
    if parameters.get("charset", "utf-8").lower() != "utf-8":
        raise UnsupportedMediaType("The scoring server only supports UTF-8")
    unknown = set(parameters) - {"charset"}
    if unknown:
        raise UnsupportedMediaType(f"Unrecognized content type parameters: {', '.join(sorted(unknown))}.")
    if mime.lower() not in CONTENT_TYPES:
        raise UnsupportedMediaType(f"This predictor only supports the following content types: Types: "
                                   f"{list(CONTENT_TYPES)}. Got '{content_type}'.")
    return mime.lower()


def keep_model_columns(records: Sequence[Any], allowed: frozenset[str]) -> ScoringInput:
    """The records without the columns the model does not take (MLflow leaves them out too), and their names.

    A missing value written as NaN is null, as a DataFrame reads it.
    """
    ignored: set[str] = set()
    kept: list[dict[str, Any]] = []
    for record in records:
        if not isinstance(record, dict):
            kept.append(record)
            continue
        extra = [name for name in record if name not in allowed]
        ignored.update(extra)
        kept.append({name: (None if isinstance(value, float) and math.isnan(value) else value)
                     for name, value in record.items() if name in allowed})
    return ScoringInput(kept, tuple(sorted(ignored)))


def _bad(message: str, field: str = "(body)") -> InvalidRecords:
    return InvalidRecords([Problem(None, field, message)])


def _text(body: bytes) -> str:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise _bad(f"Invalid input. Ensure that input is a valid UTF-8 encoded string. Error: '{error!r}'") from None


def _records_of_json(body: bytes) -> list[dict[str, Any]]:
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError) as error:  # JSONDecodeError is a ValueError
        raise _bad("Invalid input. Failed to parse input from JSON. Ensure that input is a valid JSON formatted "
                   f"string. Error: '{error!r}'") from None
    if not isinstance(payload, dict):
        received = "a list" if isinstance(payload, list) else f"unexpected input type '{type(payload).__name__}'"
        raise _bad(f"Invalid input. {REQUIRED_INPUT_FORMAT}. Received {received}.")
    given = [name for name in FORMATS if name in payload]
    if len(given) != 1:
        raise _bad(f"{REQUIRED_INPUT_FORMAT}. Received dictionary with input fields: {list(payload)}.")
    name = given[0]
    value = payload[name]
    if name == "dataframe_split":
        return _records_of_split(value)
    if name == "dataframe_records":
        if not isinstance(value, list):
            raise _bad(f"Dataframe records format must be a list of records. Got {_kind(value)}.", name)
        return value
    if isinstance(value, dict):
        return records_from_columns(value)
    if isinstance(value, list) and all(isinstance(item, dict) for item in value):
        return value
    raise _bad(f"'{name}' must be a list of records (objects of column: value) or an object of column: list of "
               f"values: this model takes named columns. Got {_kind(value)}.", name)


def _records_of_split(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, dict):
        raise _bad(f"Dataframe split format must be a dictionary. Got {_kind(value)}.", "dataframe_split")
    columns, data, index = value.get("columns"), value.get("data"), value.get("index")
    valid = isinstance(columns, list) and isinstance(data, list) and all(
        isinstance(row, list) and len(row) == len(columns) for row in data)
    if valid and index is not None:
        valid = isinstance(index, list) and len(index) == len(data)
    if not valid:
        raise _bad("Provided dataframe_split field is not a valid dataframe representation in 'split' format: "
                   "'columns' (a list of names), 'data' (rows of as many values) and optionally 'index' (one per "
                   "row)", "dataframe_split")
    return [dict(zip(columns, row, strict=True)) for row in data]


def _kind(value: Any) -> str:
    return {dict: "dictionary", list: "list", str: "string"}.get(type(value), type(value).__name__)


def _records_of_csv(text: str, kinds: Mapping[str, str]) -> list[dict[str, Any]]:
    import pandas as pd

    try:
        frame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, na_values=[""])
    except Exception as error:  # noqa: BLE001 - pandas raises many kinds for a body that is not CSV
        raise _bad("Failed to parse input as a Pandas DataFrame. Ensure that the input is a valid CSV-formatted "
                   "Pandas DataFrame produced using the `pandas.DataFrame.to_csv()` method. "
                   f"Error: '{error}'") from None
    records = []
    for row in frame.itertuples(index=False, name=None):
        records.append({name: _csv_value(cell, kinds.get(name, ANY)) for name, cell in zip(frame.columns, row,
                                                                                        strict=True)})
    return records


def _csv_value(cell: Any, kind: str) -> Any:
    """A CSV cell as the JSON value it stands for: a number where the model takes one and the cell reads as one
    (else the text, which the record check then names), text otherwise, None for an empty cell."""
    if cell is None or (isinstance(cell, float) and math.isnan(cell)):
        return None
    if kind not in (INTEGER, FLOAT, ANY):
        return cell
    try:
        number = float(cell)
    except ValueError:
        return cell
    if kind == INTEGER or (kind == ANY and number.is_integer() and "." not in cell and "e" not in cell.lower()):
        try:
            return int(cell)
        except ValueError:
            return number
    return number


def _records_of_parquet(body: bytes) -> list[dict[str, Any]]:
    import pandas as pd

    try:
        frame = pd.read_parquet(io.BytesIO(body))
    except Exception as error:  # noqa: BLE001 - pyarrow raises many kinds for a body that is not Parquet
        raise _bad("Failed to parse input as a Pandas DataFrame. Ensure that the input is a valid Parquet Pandas "
                   f"DataFrame produced using the `pandas.DataFrame.to_parquet()` method. Error: '{error}'") from None
    return [{name: _plain(value) for name, value in record.items()} for record in frame.to_dict("records")]


def _plain(value: Any) -> Any:
    if value is None or (not isinstance(value, list | dict) and value != value):  # noqa: PLR0124 - NaN and NaT
        return None
    if isinstance(value, datetime | date):
        return value.isoformat()
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    return value


__all__ = ["ScoringInput", "UnsupportedMediaType", "keep_model_columns", "media_type", "scoring_records"]
